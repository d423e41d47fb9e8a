//! What a program did with a frame, in `lb-agent explain`'s terms: the
//! action (DNAT, REJECT, DROP, PASS) and the backend the frame was sent to.
use std::net::{Ipv4Addr, SocketAddrV4};

use lb_agent::explain::Action;
use lb_common::IPPROTO_TCP;

const IPPROTO_ICMP: u8 = 1;

use crate::packet::TCP_RST;

/// The action and backend of `program`'s return value `rc` and output
/// frame `out` for the input frame `input` (Ethernet + 20-byte IPv4 header).
/// A TCP reset or an ICMP port unreachable sent back is a REJECT.
pub fn observed(program: &str, rc: u32, input: &[u8], out: &[u8]) -> (Action, Option<SocketAddrV4>) {
    let dst = |f: &[u8]| SocketAddrV4::new(Ipv4Addr::new(f[30], f[31], f[32], f[33]), u16::from_be_bytes([f[36], f[37]]));
    let reset = out.len() >= 48 && out[23] == IPPROTO_TCP && out[47] & TCP_RST != 0;
    // ICMP destination unreachable, code 3 (port unreachable).
    let unreachable = out.len() >= 70 && out[23] == IPPROTO_ICMP && out[34] == 3 && out[35] == 3;
    let reset = reset || unreachable;
    // A reset swaps the addresses: not a DNAT.
    let rewritten = !reset && out.len() >= 38 && dst(out) != dst(input);
    let action = match (program, rc) {
        ("xdp_lb", 1) | ("tc_ingress", 2) => Action::Drop,
        _ if reset => Action::Reject,
        _ if rewritten => Action::Dnat,
        ("xdp_lb", 2) | ("tc_ingress", 0) => Action::Pass,
        _ => panic!("{program} returned {rc} without a reset or a rewrite"),
    };
    (action, rewritten.then(|| dst(out)))
}
