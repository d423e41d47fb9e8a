//! The agent's side of `service_ports` (`lb_common::maps::SERVICE_PORTS`):
//! XDP looks a packet up (service, conntrack) only when a bit marks its
//! destination port as a frontend's (or the packet may be a SNAT reply).
//! A frontend's port is marked before the frontend is written, and cleared
//! only after the last frontend on it (any protocol, either family) is
//! removed (`Dataplane::apply`), so no packet misses a frontend for want of
//! its bit. At load, the ports of the frontends the pinned maps already
//! hold are marked before any program is attached or relinked ([`seed`]: an
//! upgrade or a restart keeps balancing).
use std::{
    collections::BTreeSet,
    os::fd::{AsFd as _, BorrowedFd},
    path::Path,
};

use lb_common::{maps, Addr, Addr4, Addr6, ServiceKey, ServiceV4};

use crate::portbits::PortBits;

/// Calls `f` with the port of every frontend in the services map behind
/// `fd` (family `A`), read in batches. ClusterIP address entries (port 0,
/// protocol 0) match no packet and are left out.
pub fn each_port<A: Addr + bytemuck::Pod>(fd: BorrowedFd<'_>, mut f: impl FnMut([u8; 2])) -> std::io::Result<()> {
    crate::bpfsys::for_each_batch(fd, |k: &ServiceKey<A>, _: &ServiceV4| {
        if !k.is_address() {
            f(k.port)
        }
    })
}

/// Marks in `bits` the ports of the frontends pinned under `pin_dir` by an
/// earlier agent (`services_v4`, `services_v6`, as they are before a resize
/// moves them).
pub fn seed(bits: &PortBits, pin_dir: &Path) -> std::io::Result<()> {
    fn pinned<A: Addr + bytemuck::Pod>(bits: &PortBits, path: &Path) -> std::io::Result<()> {
        if !path.exists() {
            return Ok(());
        }
        let map = aya::maps::MapData::from_pin(path).map_err(std::io::Error::other)?;
        each_port::<A>(map.fd().as_fd(), |p| bits.mark(p))
    }
    pinned::<Addr4>(bits, &pin_dir.join(maps::SERVICES_V4))?;
    pinned::<Addr6>(bits, &pin_dir.join(maps::SERVICES_V6))
}

/// Clears the bits of `gone` (ports whose frontends a sync removed) that
/// no frontend left in the services maps behind `fds` still has.
pub fn unmark_unused(bits: &PortBits, mut gone: BTreeSet<[u8; 2]>, v4: BorrowedFd<'_>, v6: Option<BorrowedFd<'_>>) -> std::io::Result<()> {
    if gone.is_empty() {
        return Ok(());
    }
    each_port::<Addr4>(v4, |p| {
        gone.remove(&p);
    })?;
    if let Some(v6) = v6 {
        each_port::<Addr6>(v6, |p| {
            gone.remove(&p);
        })?;
    }
    for p in gone {
        bits.unmark(p);
    }
    Ok(())
}
