//! How an external client's new flow to a backend on another node gets
//! there: SNAT (the default) or DSR, per protocol, from the node's
//! `--lb-mode` (`config_flags`) unless the service sets its own
//! (`service_flags::LB_MODE`, from the `xdplb.io/lb-mode` annotation).
use lb_common::{config_flags, service_flags, IPPROTO_TCP, IPPROTO_UDP};

use crate::maps::config;

/// Whether such a flow of protocol `proto` to a service with `svc_flags` uses DSR.
#[inline(always)]
pub fn dsr(svc_flags: u8, proto: u8) -> bool {
    let (tcp, udp) = if svc_flags & service_flags::LB_MODE != 0 {
        (svc_flags & service_flags::DSR_TCP != 0, svc_flags & service_flags::DSR_UDP != 0)
    } else {
        match config.get(0) {
            Some(c) => (c.flags & config_flags::DSR_TCP != 0, c.flags & config_flags::DSR_UDP != 0),
            None => (false, false),
        }
    };
    (proto == IPPROTO_TCP && tcp) || (proto == IPPROTO_UDP && udp)
}
