//! The agent's side of `reply_ports` (`lb_common::maps::REPLY_PORTS`): tc
//! egress looks a packet up in conntrack only when a bit marks its source
//! port as one a reply of ours may have. Every backend's port is marked
//! before the backend is written (`Dataplane::apply`), so no flow to it, and
//! no reply, exists before its bit; at load, the ports of the backends the
//! pinned maps already hold are marked before any program is attached or
//! relinked ([`seed`]: an upgrade keeps the replies of live flows). Bits are
//! never cleared.
//!
//! The array is memory-mapped and bits are set with atomic ORs, as the
//! programs set theirs (DSR replies): neither side can lose the other's.
use std::{os::fd::AsFd as _, path::Path};

use lb_common::{maps, BackendId, BackendV4, BackendV6};

/// The mapped bitmap (`portbits`).
pub use crate::portbits::PortBits as ReplyPorts;

/// Marks in `rp` the ports of the backends pinned under `pin_dir` by an
/// earlier agent: `backends_v4` and `backends_v6` as they are before a
/// resize or conversion moves them (an array, or an earlier version's hash,
/// both keyed by backend id), read in batches.
pub fn seed(rp: &ReplyPorts, pin_dir: &Path) -> std::io::Result<()> {
    fn ports<V: bytemuck::Pod>(rp: &ReplyPorts, path: &Path, port: impl Fn(&V) -> Option<[u8; 2]>) -> std::io::Result<()> {
        if !path.exists() {
            return Ok(());
        }
        let map = aya::maps::MapData::from_pin(path).map_err(std::io::Error::other)?;
        crate::bpfsys::for_each_batch(map.fd().as_fd(), |_: &BackendId, v: &V| {
            if let Some(p) = port(v) {
                rp.mark(p);
            }
        })
    }
    ports(rp, &pin_dir.join(maps::BACKENDS_V4), |b: &BackendV4| (!b.is_empty()).then_some(b.port))?;
    ports(rp, &pin_dir.join(maps::BACKENDS_V6), |b: &BackendV6| (!b.is_empty()).then_some(b.port))
}
