//! Link events of this network namespace (netlink `RTMGRP_LINK`): a new or
//! vanished interface wakes the agent at once, so a new pod's interface is
//! attached before its first packets instead of at the next periodic scan.
//! The messages themselves are not parsed: any link event means "scan again".
//! [`LinkEvents::routing`] hears every change that can move a FIB lookup's
//! answer (routes, neighbours, links, addresses, rules, nexthop objects):
//! the programs' cached next hops are then made stale (`lb_common::hop`).
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::io::unix::AsyncFd;

/// A netlink socket subscribed to link events.
pub struct LinkEvents {
    fd: AsyncFd<OwnedFd>,
}

impl LinkEvents {
    /// Subscribes to the link events of the calling thread's network namespace.
    pub fn new() -> io::Result<Self> {
        Self::subscribe(libc::RTMGRP_LINK as u32, &[])
    }

    /// Subscribes to every change that can change where a packet is
    /// forwarded: IPv4 and IPv6 routes, addresses and rules, neighbours,
    /// links, and nexthop objects (groups without a legacy mask bit are
    /// joined by number).
    pub fn routing() -> io::Result<Self> {
        let groups = libc::RTMGRP_LINK
            | libc::RTMGRP_NEIGH
            | libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV4_RULE
            | libc::RTMGRP_IPV6_IFADDR
            | libc::RTMGRP_IPV6_ROUTE;
        Self::subscribe(groups as u32, &[libc::RTNLGRP_IPV6_RULE, libc::RTNLGRP_NEXTHOP])
    }

    /// A netlink route socket in the legacy multicast `groups` (bit mask)
    /// and the numbered `extra` groups.
    fn subscribe(groups: u32, extra: &[u32]) -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain data; all-zero is valid (pid 0: the kernel assigns one).
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = groups;
        // SAFETY: a valid sockaddr_nl of the size given, on our socket.
        let rc = unsafe {
            libc::bind(fd.as_raw_fd(), std::ptr::addr_of!(addr).cast(), std::mem::size_of::<libc::sockaddr_nl>() as u32)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        for group in extra {
            // SAFETY: setsockopt(2) with a u32 of the size given, on our socket.
            let rc = unsafe {
                libc::setsockopt(fd.as_raw_fd(), libc::SOL_NETLINK, libc::NETLINK_ADD_MEMBERSHIP, std::ptr::from_ref(group).cast(), 4)
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        // SAFETY: an OwnedFd: the descriptor stays open and the same until
        // the AsyncFd (its owner) is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?;
        Ok(Self { fd })
    }

    /// Waits for the next event(s); drains every message queued so a burst
    /// (a veth pair: two links, several changes each) wakes once. Lost
    /// events (a full queue) count as one.
    pub async fn changed(&mut self) -> io::Result<()> {
        loop {
            let mut guard = self.fd.readable().await?;
            let mut got = false;
            let mut buf = [0u8; 8192];
            loop {
                // SAFETY: recv(2) into a buffer of the length given.
                let n = unsafe { libc::recv(self.fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    got = true;
                    continue;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    // Events were lost (the queue overflowed): a scan finds them.
                    Some(libc::ENOBUFS) => got = true,
                    Some(libc::EINTR) => {}
                    _ if n == 0 => break,
                    _ => return Err(e),
                }
            }
            if got {
                return Ok(());
            }
        }
    }
}

/// Waits for the next event(s) of `events`; forever without a
/// subscription. A read error is handed to `lost` and ends the subscription.
pub async fn next_change(events: &mut Option<LinkEvents>, lost: impl FnOnce(&io::Error)) {
    match events.as_mut() {
        Some(ev) => {
            if let Err(e) = ev.changed().await {
                lost(&e);
                *events = None;
            }
        }
        None => std::future::pending().await,
    }
}

/// The routing changes that make cached next hops stale
/// ([`LinkEvents::routing`]); without a subscription (netlink refused)
/// it never fires, and cached next hops then follow no change: logged.
pub struct RoutingEvents {
    events: Option<LinkEvents>,
}

impl RoutingEvents {
    pub fn new() -> Self {
        let events = LinkEvents::routing()
            .map_err(|e| tracing::error!(error = %e, "subscribing to routing events failed: XDP's cached next hops will not follow route or neighbour changes"))
            .ok();
        Self { events }
    }

    /// Waits for the next change(s) (forever without a subscription).
    pub async fn changed(&mut self) {
        next_change(&mut self.events, |e| {
            tracing::error!(error = %e, "reading routing events failed: XDP's cached next hops will not follow route or neighbour changes")
        })
        .await
    }
}

impl Default for RoutingEvents {
    fn default() -> Self {
        Self::new()
    }
}
