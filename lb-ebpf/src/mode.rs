//! How an external client's new flow to a backend on another node gets
//! there: SNAT (the default) or DSR, per protocol, from the node's
//! `--lb-mode` (`config_flags`) unless the service sets its own
//! (`service_flags::LB_MODE`, from the `xdplb.io/lb-mode` annotation); the
//! rule itself is `lb_common::dsr::uses_dsr`, shared with `lb-agent explain`.
use crate::maps::config;

/// Whether such a flow of protocol `proto` to a service with `svc_flags` uses DSR.
#[inline(always)]
pub fn dsr(svc_flags: u8, proto: u8) -> bool {
    let cfg = match config.get(0) {
        Some(c) => c.flags,
        None => 0,
    };
    lb_common::dsr::uses_dsr(svc_flags, cfg, proto)
}
