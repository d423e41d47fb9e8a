//! XDP's cached next hops (`lb_common::hop`) against the kernel's routing:
//! which netlink events make them stale, and what the agent writes then.
//!
//! - Every route, link, address, rule and nexthop event bumps the
//!   generation (`Dataplane::bump_next_hop_gen`).
//! - A neighbour event bumps it only when what a FIB lookup answers from
//!   the entry may have changed: its link-layer address changed, it was
//!   deleted, it became unusable (INCOMPLETE, FAILED) or usable again, or
//!   it is one not seen before. The REACHABLE / STALE / DELAY / PROBE
//!   churn of a busy node with the same address bumps nothing (before,
//!   each flip emptied the whole cache). Bridge FDB and proxy entries are
//!   no next hops: ignored.
//! - A read error, an overrun (ENOBUFS: events were lost) among them, turns
//!   the cache off at once (`Dataplane::next_hops_off`: every packet asks
//!   the FIB), logged once; the subscription is made again with backoff,
//!   and the cache is back on, at a new generation, once it is. Off rather
//!   than a bump per timer tick: between ticks a changed MAC would be used.
use std::{collections::HashMap, time::Duration};

use tokio::time::Instant;

use crate::{
    dataplane::Dataplane,
    linkwatch::LinkEvents,
    netlink::{attrs, messages},
};

/// The routing socket's queue: ~40,000 neighbour notifications, a burst
/// well past what a node's neighbour table holds (gc_thresh3: 1,024).
pub const RECEIVE_BUFFER: usize = 4 << 20;
/// Resubscribing: the first retry, doubled per failure (to subscribe, or
/// to read before a read succeeded) up to the last.
const RETRY_FIRST: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// Neighbours whose last link-layer address is kept; one beyond bumps on
/// every event of its own.
pub const NEIGHBOURS_MAX: usize = 16_384;
const WARN_EVERY: Duration = Duration::from_secs(60);

/// What one wake-up of [`HopWatch::next`] means for the cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HopChange {
    /// Something that can move a FIB lookup's answer changed: bump.
    Stale,
    /// Only events that change no answer (neighbour state refreshes with
    /// the same link-layer address): nothing to do.
    Unchanged,
    /// The subscription is lost (read error or overrun): changes are not
    /// heard, the cache must be off until [`HopChange::Subscribed`].
    Lost,
    /// Subscribed (again): changes while unsubscribed were not heard, so
    /// everything cached is stale; the cache may be on.
    Subscribed,
}

impl HopChange {
    /// Writes what the change means: a new generation with the cache on,
    /// or the cache off. Returns the new generation, if one was written.
    pub fn apply(self, dp: &mut Dataplane) -> crate::dataplane::Result<Option<u32>> {
        match self {
            HopChange::Stale | HopChange::Subscribed => dp.bump_next_hop_gen().map(Some),
            HopChange::Lost => dp.next_hops_off().map(Some),
            HopChange::Unchanged => Ok(None),
        }
    }
}

/// The routing subscription, resubscribed when lost, and the neighbours'
/// last link-layer addresses.
pub struct HopWatch {
    events: Option<LinkEvents>,
    neighbours: Neighbours,
    receive_buffer: usize,
    retry_at: Instant,
    retry_delay: Duration,
    /// Losses are logged as warnings at most once a minute (a storm of
    /// route changes can overrun the queue again and again), and the
    /// resubscription after a logged one.
    warn_after: Instant,
    warned: bool,
}

impl HopWatch {
    /// Subscribes in the calling thread's network namespace; if that
    /// fails (logged), [`Self::next`] keeps trying.
    pub fn new(receive_buffer: usize) -> Self {
        let events = LinkEvents::routing(receive_buffer)
            .map_err(|e| tracing::warn!(error = %e, "subscribing to routing events failed: XDP's next-hop cache is off (every forwarded packet asks the FIB) until a retry succeeds"))
            .ok();
        let now = Instant::now();
        let warned = events.is_none();
        Self { events, neighbours: Neighbours::new(NEIGHBOURS_MAX), receive_buffer, retry_at: now, retry_delay: RETRY_FIRST, warn_after: now, warned }
    }

    /// What to write now: [`HopChange::Subscribed`] or [`HopChange::Lost`].
    pub fn current(&self) -> HopChange {
        if self.events.is_some() {
            HopChange::Subscribed
        } else {
            HopChange::Lost
        }
    }

    /// Waits for the next batch of events, or while unsubscribed for the
    /// next successful subscription. Cancel-safe (a `select!` arm).
    pub async fn next(&mut self) -> HopChange {
        loop {
            let Self { events, neighbours, .. } = self;
            if let Some(ev) = events.as_mut() {
                let mut stale = false;
                return match ev.read(|d| stale |= neighbours.datagram_stale(d)).await {
                    Ok(()) => {
                        self.retry_delay = RETRY_FIRST;
                        if stale {
                            HopChange::Stale
                        } else {
                            HopChange::Unchanged
                        }
                    }
                    Err(e) => {
                        let now = Instant::now();
                        self.warned = now >= self.warn_after;
                        if self.warned {
                            self.warn_after = now + WARN_EVERY;
                            tracing::warn!(error = %e, retry_ms = self.retry_delay.as_millis() as u64, "reading routing events failed (ENOBUFS: a burst overran the queue): XDP's next-hop cache is off (every forwarded packet asks the FIB) until subscribed again");
                        } else {
                            tracing::debug!(error = %e, "reading routing events failed again: the next-hop cache is off until subscribed again");
                        }
                        self.events = None;
                        self.retry_at = now + self.retry_delay;
                        // Lost again before a read succeeded: wait longer.
                        self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
                        HopChange::Lost
                    }
                };
            }
            tokio::time::sleep_until(self.retry_at).await;
            match LinkEvents::routing(self.receive_buffer) {
                Ok(ev) => {
                    if std::mem::take(&mut self.warned) {
                        tracing::info!("subscribed to routing events again: XDP's next-hop cache is back on, at a new generation");
                    }
                    self.events = Some(ev);
                    // What a neighbour did meanwhile is unknown.
                    self.neighbours.forget();
                    return HopChange::Subscribed;
                }
                Err(e) => {
                    self.retry_delay = (self.retry_delay * 2).min(RETRY_MAX);
                    tracing::debug!(error = %e, retry_ms = self.retry_delay.as_millis() as u64, "subscribing to routing events failed again");
                    self.retry_at = Instant::now() + self.retry_delay;
                }
            }
        }
    }
}

/// `struct ndmsg`'s size.
const NDMSG: usize = 12;
/// Types below this are netlink's own (NOOP, ERROR, DONE, OVERRUN).
const NLMSG_MIN_TYPE: u16 = 0x10;
/// `NUD_VALID`: the states in which the kernel uses an entry's address.
const NUD_VALID: u16 = libc::NUD_PERMANENT | libc::NUD_NOARP | libc::NUD_REACHABLE | libc::NUD_PROBE | libc::NUD_STALE | libc::NUD_DELAY;

/// A neighbour: family, interface and address (IPv4 in the first 4 bytes).
type NeighKey = (u8, u32, [u8; 16]);

/// A link-layer address (at most `MAX_ADDR_LEN`, 32 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct LlAddr {
    len: u8,
    bytes: [u8; 32],
}

impl LlAddr {
    fn of(b: &[u8]) -> Self {
        let len = b.len().min(32);
        let mut bytes = [0; 32];
        bytes[..len].copy_from_slice(&b[..len]);
        Self { len: len as u8, bytes }
    }
}

/// One neighbour event, as netlink gave it.
#[derive(Debug)]
pub struct Neigh<'a> {
    pub deleted: bool,
    pub family: u8,
    pub ifindex: u32,
    pub state: u16,
    pub flags: u8,
    pub dst: &'a [u8],
    pub lladdr: Option<&'a [u8]>,
}

impl<'a> Neigh<'a> {
    /// A neighbour message's body (`struct ndmsg` and its attributes);
    /// `None` if it is cut or has no destination.
    fn parse(deleted: bool, body: &'a [u8]) -> Option<Self> {
        let hdr = body.get(..NDMSG)?;
        let (mut dst, mut lladdr) = (None, None);
        for (kind, value) in attrs(&body[NDMSG..]) {
            match kind {
                libc::NDA_DST => dst = Some(value),
                libc::NDA_LLADDR => lladdr = Some(value),
                _ => {}
            }
        }
        Some(Self {
            deleted,
            family: hdr[0],
            ifindex: u32::from_ne_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]),
            state: u16::from_ne_bytes([hdr[8], hdr[9]]),
            flags: hdr[10],
            dst: dst.filter(|d| d.len() <= 16)?,
            lladdr,
        })
    }
}

/// The last link-layer address of each neighbour heard of (`None`: it was
/// unusable), up to a bound.
pub struct Neighbours {
    known: HashMap<NeighKey, Option<LlAddr>>,
    max: usize,
}

impl Neighbours {
    pub fn new(max: usize) -> Self {
        Self { known: HashMap::new(), max }
    }

    /// Forgets every neighbour: after events were lost.
    pub fn forget(&mut self) {
        self.known.clear();
    }

    /// How many neighbours are remembered.
    pub fn len(&self) -> usize {
        self.known.len()
    }

    pub fn is_empty(&self) -> bool {
        self.known.is_empty()
    }

    /// Whether the netlink datagram `d` holds an event that makes cached
    /// next hops stale; every neighbour event in it is remembered. What
    /// cannot be read (a cut message) counts as stale.
    pub fn datagram_stale(&mut self, d: &[u8]) -> bool {
        let mut stale = false;
        for msg in messages(d) {
            let Ok((kind, body)) = msg else { return true };
            // Evaluated for every message: each neighbour's is remembered.
            let this = match kind {
                libc::RTM_NEWNEIGH | libc::RTM_DELNEIGH => match Neigh::parse(kind == libc::RTM_DELNEIGH, body) {
                    Some(n) => self.update(&n),
                    None => true,
                },
                k if k < NLMSG_MIN_TYPE => false,
                _ => true,
            };
            stale |= this;
        }
        stale
    }

    /// Remembers `n`; whether a FIB answer through it may have changed.
    pub fn update(&mut self, n: &Neigh) -> bool {
        if !matches!(i32::from(n.family), libc::AF_INET | libc::AF_INET6) || n.flags & libc::NTF_PROXY != 0 {
            return false;
        }
        let mut addr = [0; 16];
        addr[..n.dst.len()].copy_from_slice(n.dst);
        let key = (n.family, n.ifindex, addr);
        let usable = !n.deleted && n.state & NUD_VALID != 0;
        let now = usable.then(|| LlAddr::of(n.lladdr.unwrap_or(&[])));
        let stale = match (self.known.get(&key), &now) {
            (Some(Some(before)), Some(after)) => before != after,
            // Unusable before and now: nothing could be cached through it.
            (Some(None), None) => false,
            // Not seen yet (anything may be cached), went, or changed usability.
            _ => true,
        };
        if n.deleted {
            self.known.remove(&key);
        } else if self.known.len() < self.max || self.known.contains_key(&key) {
            self.known.insert(key, now);
        }
        stale
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::NLMSG_HDR;

    use libc::{NUD_DELAY as DELAY, NUD_FAILED as FAILED, NUD_INCOMPLETE as INCOMPLETE, NUD_PROBE as PROBE, NUD_REACHABLE as REACHABLE, NUD_STALE as STALE};

    fn neigh(family: i32, state: u16, lladdr: Option<&'static [u8]>) -> Neigh<'static> {
        Neigh { deleted: false, family: family as u8, ifindex: 3, state, flags: 0, dst: &[10, 0, 0, 1], lladdr }
    }

    const A: &[u8] = &[2, 0, 0, 0, 0, 0xa];
    const B: &[u8] = &[2, 0, 0, 0, 0, 0xb];

    #[test]
    fn only_a_new_address_a_deletion_or_a_change_of_usability_is_stale() {
        let mut n = Neighbours::new(8);
        let v4 = libc::AF_INET;
        assert!(n.update(&neigh(v4, REACHABLE, Some(A))), "first seen: anything may be cached");
        for state in [STALE, DELAY, PROBE, REACHABLE, STALE] {
            assert!(!n.update(&neigh(v4, state, Some(A))), "state {state:#x}, same address");
        }
        assert!(n.update(&neigh(v4, REACHABLE, Some(B))), "a new address");
        assert!(n.update(&neigh(v4, FAILED, None)), "unusable");
        assert!(!n.update(&neigh(v4, INCOMPLETE, None)), "still unusable");
        assert!(n.update(&neigh(v4, REACHABLE, Some(B))), "usable again");
        assert!(n.update(&Neigh { deleted: true, ..neigh(v4, REACHABLE, Some(B)) }), "deleted");
        assert!(n.is_empty(), "a deleted neighbour is forgotten");
        assert!(!n.update(&neigh(libc::AF_BRIDGE, REACHABLE, Some(A))), "a bridge FDB entry is no next hop");
        assert!(!n.update(&Neigh { flags: libc::NTF_PROXY, ..neigh(v4, REACHABLE, Some(A)) }), "nor a proxy entry");
    }

    #[test]
    fn past_the_bound_a_neighbour_bumps_on_every_event() {
        let mut n = Neighbours::new(1);
        assert!(n.update(&neigh(libc::AF_INET, REACHABLE, Some(A))));
        let other = Neigh { ifindex: 4, ..neigh(libc::AF_INET, REACHABLE, Some(A)) };
        assert!(n.update(&other));
        assert!(n.update(&Neigh { state: STALE, ..other }), "not remembered: stale again");
        assert!(!n.update(&neigh(libc::AF_INET, STALE, Some(A))), "the remembered one is still followed");
        assert_eq!(n.len(), 1);
    }

    /// A netlink message: header, then `body`.
    fn msg(kind: u16, body: &[u8]) -> Vec<u8> {
        let len = (NLMSG_HDR + body.len()) as u32;
        let mut m = [&len.to_ne_bytes()[..], &kind.to_ne_bytes(), &[0; 10], body].concat();
        m.resize(m.len().next_multiple_of(4), 0);
        m
    }

    fn attr(kind: u16, v: &[u8]) -> Vec<u8> {
        let mut a = [&((4 + v.len()) as u16).to_ne_bytes()[..], &kind.to_ne_bytes(), v].concat();
        a.resize(a.len().next_multiple_of(4), 0);
        a
    }

    fn ndmsg(state: u16, lladdr: &[u8]) -> Vec<u8> {
        let hdr = [&[libc::AF_INET as u8, 0, 0, 0][..], &3u32.to_ne_bytes(), &state.to_ne_bytes(), &[0, 1]].concat();
        [hdr, attr(libc::NDA_DST, &[10, 0, 0, 1]), attr(libc::NDA_LLADDR, lladdr)].concat()
    }

    #[test]
    fn a_datagram_is_read_message_by_message() {
        let mut n = Neighbours::new(8);
        let first = [msg(libc::RTM_NEWNEIGH, &ndmsg(REACHABLE, A)), msg(libc::RTM_NEWNEIGH, &ndmsg(STALE, A))].concat();
        assert!(n.datagram_stale(&first), "first seen");
        assert_eq!(n.len(), 1);
        assert!(!n.datagram_stale(&msg(libc::RTM_NEWNEIGH, &ndmsg(REACHABLE, A))));
        assert!(n.datagram_stale(&msg(libc::RTM_NEWROUTE, &[0; 12])), "a route");
        assert!(!n.datagram_stale(&msg(libc::NLMSG_NOOP as u16, &[])));
        let cut = msg(libc::RTM_NEWNEIGH, &ndmsg(REACHABLE, A));
        assert!(n.datagram_stale(&cut[..cut.len() - 4]), "cut: unknown, stale");
        assert!(n.datagram_stale(&msg(libc::RTM_DELNEIGH, &ndmsg(REACHABLE, A))));
        assert!(n.is_empty());
    }
}
