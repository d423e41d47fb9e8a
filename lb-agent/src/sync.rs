//! Bringing the maps to a desired state with only the difference, without
//! reading them back on every change.
//!
//! The [`Syncer`] remembers what the maps hold after each successful apply
//! and diffs the next desired state against that. It reads the real maps
//! only when that memory cannot be trusted: at start (a previous agent's
//! maps are adopted, never flushed), after an apply that failed part-way
//! (some writes landed, some did not), and on a periodic reconcile, which
//! repairs entries someone else changed or deleted.
//!
//! One syncer per address family, the same generic code for both.
use std::time::{Duration, Instant};

use lb_common::{Addr, Addr4};

use crate::{
    dataplane::{Dataplane, MapFamily, Result},
    diff::{diff, Diff, MapContents},
};

/// One family's agent-owned maps, as the syncer needs them (the pinned
/// maps, or a fake in tests).
pub trait Maps<A: Addr = Addr4> {
    /// Everything the maps hold now.
    fn read(&self) -> Result<MapContents<A>>;
    /// Applies `d` in dependency order; may fail part-way.
    fn apply(&mut self, d: &Diff<A>) -> Result<()>;
}

impl<A: MapFamily> Maps<A> for Dataplane {
    fn read(&self) -> Result<MapContents<A>> {
        self.family_contents()
    }
    fn apply(&mut self, d: &Diff<A>) -> Result<()> {
        Dataplane::apply(self, d)
    }
}

/// What one sync or reconcile did.
#[derive(Debug, Default)]
pub struct Outcome<A: Addr = Addr4> {
    pub diff: Diff<A>,
    /// Whether the real maps were read for it (not only the remembered state).
    pub read: bool,
    /// Time spent reading the maps (zero when not read).
    pub read_time: Duration,
    /// Time spent computing the diff.
    pub diff_time: Duration,
    /// Time spent writing it.
    pub apply_time: Duration,
}

pub struct Syncer<A: Addr = Addr4> {
    /// What the maps hold, as far as the last apply tells; `None` when
    /// unknown (they are read before the next diff).
    known: Option<MapContents<A>>,
    /// When the maps were last read.
    last_read: Instant,
    reconcile_every: Option<Duration>,
}

impl<A: Addr> Syncer<A> {
    /// Starts from `current`, the maps as just read (at start: what a
    /// previous agent left). `reconcile_every` = None never re-reads them
    /// unprompted.
    pub fn new(current: MapContents<A>, reconcile_every: Option<Duration>) -> Self {
        Self { known: Some(current), last_read: Instant::now(), reconcile_every }
    }

    /// What the maps hold as of the last successful apply (None: unknown).
    pub fn known(&self) -> Option<&MapContents<A>> {
        self.known.as_ref()
    }

    /// Whether the periodic re-read is due.
    pub fn reconcile_due(&self) -> bool {
        self.reconcile_every.is_some_and(|every| self.last_read.elapsed() >= every)
    }

    /// Makes the maps hold `desired`, writing only the difference. On an
    /// error the remembered state is dropped, so the next sync starts from
    /// what the maps really hold.
    pub fn sync(&mut self, maps: &mut impl Maps<A>, desired: MapContents<A>) -> Result<Outcome<A>> {
        let mut out = Outcome::default();
        let t = Instant::now();
        let current = match self.known.take() {
            Some(known) => known,
            None => {
                out.read = true;
                self.last_read = Instant::now();
                maps.read()?
            }
        };
        out.read_time = t.elapsed();
        let t = Instant::now();
        out.diff = diff(&current, &desired);
        drop(current);
        out.diff_time = t.elapsed();
        let t = Instant::now();
        maps.apply(&out.diff)?;
        out.apply_time = t.elapsed();
        self.known = Some(desired);
        Ok(out)
    }

    /// Writes `d`, a diff of part of the maps computed by the caller (one
    /// Service's old entries against its new ones), and patches the
    /// remembered state with it: the maps are neither read nor diffed
    /// whole. On an error the state is dropped, as in [`Syncer::sync`].
    /// Needs a known state (None when it is unknown: sync whole instead).
    pub fn sync_part(&mut self, maps: &mut impl Maps<A>, d: Diff<A>) -> Option<Result<Outcome<A>>> {
        let mut known = self.known.take()?;
        let t = Instant::now();
        if let Err(e) = maps.apply(&d) {
            return Some(Err(e));
        }
        let apply_time = t.elapsed();
        known.patch(&d);
        self.known = Some(known);
        Some(Ok(Outcome { diff: d, apply_time, ..Default::default() }))
    }

    /// Re-reads the maps and rewrites whatever differs from the last
    /// successful sync (an entry deleted or changed by hand or by another
    /// writer). Does nothing while the state is unknown: the retry of the
    /// failed sync reads the maps anyway.
    pub fn reconcile(&mut self, maps: &mut impl Maps<A>) -> Result<Option<Outcome<A>>> {
        let Some(desired) = self.known.take() else {
            return Ok(None);
        };
        // Unknown until the re-read and the repair both succeed.
        self.sync(maps, desired).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use lb_common::{Addr6, Backend, ServiceKey, ServiceV4, SlotKey};

    use super::*;
    use crate::family::{Family, IpFamily};

    /// One family's maps in memory, whose backend writes can fail.
    #[derive(Default)]
    struct Fake<A: Addr = Addr4> {
        contents: MapContents<A>,
        /// Fail after this many more backend upserts (None: never).
        fail_after: Option<usize>,
    }

    impl<A: Addr> Maps<A> for Fake<A> {
        fn read(&self) -> Result<MapContents<A>> {
            Ok(self.contents.clone())
        }
        fn apply(&mut self, d: &Diff<A>) -> Result<()> {
            for (k, v) in &d.backends.upsert {
                if let Some(n) = self.fail_after.as_mut() {
                    if *n == 0 {
                        return Err(crate::dataplane::Error::Full { map: "backends_v4", what: format!("backend {k}"), flag: "--max-backends" });
                    }
                    *n -= 1;
                }
                self.contents.backends.insert(*k, *v);
            }
            for (k, v) in &d.slots.upsert {
                self.contents.slots.insert(*k, *v);
            }
            for (k, v) in &d.services.upsert {
                self.contents.services.insert(*k, *v);
            }
            for k in &d.services.remove {
                self.contents.services.remove(k);
            }
            for k in &d.slots.remove {
                self.contents.slots.remove(k);
            }
            for k in &d.backends.remove {
                self.contents.backends.remove(k);
            }
            Ok(())
        }
    }

    /// One service with backends `ids` (addresses 10.0.0.<id>).
    fn state(ids: &[u32]) -> MapContents {
        state_of(ids)
    }

    /// [`state`] in family `A` (IPv6: fd00::<id>).
    fn state_of<A: Family>(ids: &[u32]) -> MapContents<A> {
        let addr = |last: u8| match A::FAMILY {
            IpFamily::IPv4 => A::from_ip(std::net::Ipv4Addr::new(10, 0, 0, last).into()),
            IpFamily::IPv6 => A::from_ip(std::net::Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, last.into()).into()),
        };
        let mut c = MapContents::default();
        let key = ServiceKey { addr: addr(1).unwrap(), port: 80u16.to_be_bytes(), proto: 6, scope: 0 };
        c.services.insert(key, ServiceV4 { id: 1, count: ids.len() as u32, ..Default::default() });
        for (i, id) in ids.iter().enumerate() {
            c.backends.insert(*id, Backend { addr: addr(*id as u8).unwrap(), port: 8080u16.to_be_bytes(), weight: 1, ..Default::default() });
            c.slots.insert(SlotKey { service_id: 1, slot: i as u32 + 1 }, *id);
        }
        c
    }

    /// The IPv6 family's syncer works as IPv4's: the same generic code.
    #[test]
    fn an_ipv6_syncer_writes_only_the_difference_too() {
        let mut maps = Fake::<Addr6>::default();
        let mut s = Syncer::new(MapContents::default(), None);
        let out = s.sync(&mut maps, state_of(&[1, 2])).unwrap();
        assert_eq!(out.diff.len(), 5, "a frontend, two backends, two slots");
        let out = s.sync(&mut maps, state_of(&[1, 2, 3])).unwrap();
        assert!(!out.read);
        assert_eq!(out.diff.len(), 3, "backend 3, its slot, the service's count");
        assert_eq!(maps.contents, state_of::<Addr6>(&[1, 2, 3]));
        assert_eq!(maps.contents.backends[&3].addr.to_ip(), "fd00::3".parse::<std::net::IpAddr>().unwrap());
    }

    #[test]
    fn a_sync_diffs_against_the_last_apply_without_reading() {
        let mut maps = Fake { contents: state(&[1, 2]), ..Default::default() };
        let mut s = Syncer::new(maps.read().unwrap(), None);
        let out = s.sync(&mut maps, state(&[1, 2])).unwrap();
        assert!(out.diff.is_empty() && !out.read, "the adopted maps need no write");
        let out = s.sync(&mut maps, state(&[1, 2, 3])).unwrap();
        assert!(!out.read);
        // backend 3, its slot, the service's count.
        assert_eq!(out.diff.len(), 3);
        assert_eq!(maps.contents, state(&[1, 2, 3]));
    }

    #[test]
    fn a_failed_apply_is_retried_from_the_real_maps() {
        let mut maps = Fake { contents: state(&[1]), ..Default::default() };
        let mut s = Syncer::new(maps.read().unwrap(), None);
        // Two new backends; the map takes only one of them.
        maps.fail_after = Some(1);
        assert!(s.sync(&mut maps, state(&[1, 2, 3])).is_err());
        assert_eq!(maps.contents.backends.len(), 2, "backend 2 landed before the failure");
        // The desired state changes back: backend 2, written part-way, must
        // go, though the last good sync never knew it.
        maps.fail_after = None;
        let out = s.sync(&mut maps, state(&[1])).unwrap();
        assert!(out.read, "the maps are read after a failed apply");
        assert_eq!(out.diff.backends.remove, vec![2]);
        assert_eq!(maps.contents, state(&[1]));
        let out = s.sync(&mut maps, state(&[1])).unwrap();
        assert!(!out.read && out.diff.is_empty());
    }

    #[test]
    fn a_reconcile_repairs_what_someone_else_changed() {
        let mut maps = Fake::default();
        let mut s = Syncer::new(MapContents::default(), Some(Duration::ZERO));
        s.sync(&mut maps, state(&[1, 2])).unwrap();
        assert!(s.reconcile_due());
        // Deleted and changed by hand.
        maps.contents.backends.remove(&2);
        maps.contents.slots.insert(SlotKey { service_id: 1, slot: 1 }, 9);
        let out = s.reconcile(&mut maps).unwrap().expect("a reconcile");
        assert!(out.read);
        assert_eq!(out.diff.len(), 2, "{:?}", out.diff);
        assert_eq!(maps.contents, state(&[1, 2]));
        // Nothing to repair the next time.
        assert!(s.reconcile(&mut maps).unwrap().expect("a reconcile").diff.is_empty());
    }

    #[test]
    fn no_reconcile_without_an_interval_or_while_the_state_is_unknown() {
        let mut maps = Fake { fail_after: Some(0), ..Default::default() };
        let mut s = Syncer::new(MapContents::default(), None);
        assert!(!s.reconcile_due());
        assert!(s.sync(&mut maps, state(&[1])).is_err());
        assert!(s.reconcile(&mut maps).unwrap().is_none(), "the retry reads the maps instead");
    }
}
