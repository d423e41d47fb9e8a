//! Link events of this network namespace (netlink `RTMGRP_LINK`): a new or
//! vanished interface wakes the agent at once, so a new pod's interface is
//! attached before its first packets instead of at the next periodic scan.
//! The messages themselves are not parsed: any link event means "scan again".
//! [`LinkEvents::routing`] hears every change that can move a FIB lookup's
//! answer (routes, neighbours, links, addresses, rules, nexthop objects),
//! read by `hopwatch` for the programs' cached next hops (`lb_common::hop`).
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
        Self::subscribe(libc::RTMGRP_LINK as u32, &[], None)
    }

    /// Subscribes to every change that can change where a packet is
    /// forwarded: IPv4 and IPv6 routes, addresses and rules, neighbours,
    /// links, and nexthop objects (groups without a legacy mask bit are
    /// joined by number). `receive_buffer`: the socket's queue in bytes
    /// (a burst larger than it overruns: [`Self::read`] fails with ENOBUFS).
    pub fn routing(receive_buffer: usize) -> io::Result<Self> {
        let groups = libc::RTMGRP_LINK
            | libc::RTMGRP_NEIGH
            | libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV4_RULE
            | libc::RTMGRP_IPV6_IFADDR
            | libc::RTMGRP_IPV6_ROUTE;
        Self::subscribe(groups as u32, &[libc::RTNLGRP_IPV6_RULE, libc::RTNLGRP_NEXTHOP], Some(receive_buffer))
    }

    /// A netlink route socket in the legacy multicast `groups` (bit mask)
    /// and the numbered `extra` groups.
    fn subscribe(groups: u32, extra: &[u32], receive_buffer: Option<usize>) -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before use.
        let raw = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if let Some(bytes) = receive_buffer {
            set_receive_buffer(&fd, bytes)?;
        }
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

    /// Waits for the next event(s) and hands every datagram queued to
    /// `each`, so a burst wakes once; returns once at least one was read.
    /// Any read error ends the call, ENOBUFS among them: the queue
    /// overflowed and events were lost (the socket itself goes on).
    /// Cancel-safe: nothing is read before the socket is readable.
    pub async fn read(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        // Netlink notifications fit in a page or two; a longer datagram is
        // cut, which `each` must treat as unknown.
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let mut guard = self.fd.readable().await?;
            let mut got = false;
            loop {
                // SAFETY: recv(2) into a buffer of the length given.
                let n = unsafe { libc::recv(self.fd.get_ref().as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                if n > 0 {
                    got = true;
                    each(&buf[..n as usize]);
                    continue;
                }
                if n == 0 {
                    break;
                }
                let e = io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Some(libc::EINTR) => {}
                    _ => return Err(e),
                }
            }
            if got {
                return Ok(());
            }
        }
    }

    /// Waits for the next event(s) (see [`Self::read`]). Lost events (a
    /// full queue) count as one: the caller rescans anyway.
    pub async fn changed(&mut self) -> io::Result<()> {
        match self.read(|_| {}).await {
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(()),
            other => other,
        }
    }
}

/// Sets the socket's receive queue to `bytes`: above `net.core.rmem_max`
/// with CAP_NET_ADMIN (SO_RCVBUFFORCE), else as far as that allows.
fn set_receive_buffer(fd: &OwnedFd, bytes: usize) -> io::Result<()> {
    let v = i32::try_from(bytes).unwrap_or(i32::MAX);
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_RCVBUF] {
        // SAFETY: setsockopt(2) with an i32 of the size given, on our socket.
        let rc = unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, std::ptr::from_ref(&v).cast(), 4) };
        if rc == 0 {
            return Ok(());
        }
    }
    Err(io::Error::last_os_error())
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
