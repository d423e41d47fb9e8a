//! Direct server return across nodes (`lb_common::dsr` has the wire format).
//!
//! On the balancing node (XDP on the uplink), a packet of a DSR flow is
//! rewritten to its backend (destination only: the client address stays),
//! gets the option naming the service it was sent to, and is forwarded by
//! XDP itself to the backend's node. A DF packet that would no longer fit
//! its egress is answered with an ICMP "fragmentation needed" carrying the
//! MTU less the option, so the client's path MTU discovery makes room.
//!
//! On the backend's node (XDP on its uplink), a packet with the option
//! records the flow's reply half (`conntrack::record_dsr_reply`), loses the
//! option and goes on to the pod. The pod's replies are rewritten at tc
//! egress like any reply, to come from the service address, and leave
//! straight to the client; a SYN-ACK's MSS is lowered by the option's size
//! there, so the client's full-size segments still fit with the option.
use aya_ebpf::{
    helpers::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    counter,
    dsr::{OPT_LEN, OPT_TYPE},
    IPPROTO_TCP,
};
use lb_ebpf::{csum, too_big};

use crate::{
    clock,
    conntrack::{self, Rewrite},
    family::V4,
    forward::{self, Lookup},
    nat::{self, Side},
    parse::{Packet, ETH_LEN, IP_CHECK, TCP_SYN},
    stats::count,
    verdict::{Verdict, MALFORMED},
};

/// Ethernet + an IPv4 header without options: what moves when the option
/// is added or taken off.
const HDR: usize = ETH_LEN + 20;
/// The IPv4 DF bit, in the high byte of the fragment word.
const DF: u8 = 0x40;
/// TCP option kind and length of the MSS.
const TCP_OPT_MSS: [u8; 2] = [2, 4];

/// Sends a packet of a DSR flow (forward half `rw`) to its backend on
/// another node, or answers it with "fragmentation needed".
#[inline(always)]
pub fn xdp_forward(ctx: &XdpContext, p: &Packet, rw: &Rewrite) -> Result<Verdict, Verdict> {
    // The option goes behind a plain header; a client's own IP options
    // (next to never seen) would leave no defined place for it.
    if p.l4 != HDR {
        return Err(MALFORMED);
    }
    let mut fib = forward::blank();
    let how = forward::lookup::<V4>(ctx, p, p.src, rw.addr, OPT_LEN as u16, &mut fib);
    if let Lookup::FragNeeded(mtu) = how {
        if dont_fragment(ctx) {
            return frag_needed(ctx, mtu.saturating_sub(OPT_LEN as u16));
        }
    }
    // The service end, as the client sent it, rides along.
    let (svc_addr, svc_port) = (p.dst, p.dport);
    nat::xdp_rewrite::<V4>(ctx, p, Side::Dst, rw)?;
    add_option(ctx, svc_addr, svc_port)?;
    if let Lookup::Found = how {
        if let Some(action) = forward::apply::<V4>(ctx, &fib, true) {
            count(counter::XDP_REDIRECTED);
            return Ok(Verdict::Action(action, counter::DSR_FORWARD));
        }
    }
    // No neighbour yet, TTL expiring, a non-DF packet too large: the
    // kernel forwards (or fragments) it, option and all.
    count(counter::FORWARD_FALLBACK);
    Ok(Verdict::Pass(counter::DSR_FORWARD))
}

#[inline(always)]
fn dont_fragment(ctx: &XdpContext) -> bool {
    // `black_box`: LLVM would reuse an earlier, weaker check of another
    // pointer into the frame, which the verifier cannot relate (see nat.rs).
    let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
    if data + HDR > end {
        return false;
    }
    // SAFETY: bounds-checked above.
    unsafe { *((data + ETH_LEN + 6) as *const u8) & DF != 0 }
}

/// Inserts the option behind the IPv4 header (IHL 5 → 7).
#[inline(always)]
fn add_option(ctx: &XdpContext, addr: [u8; 4], port: [u8; 2]) -> Result<(), Verdict> {
    // SAFETY: plain helper call on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OPT_LEN as i32)) } != 0 {
        return Err(MALFORMED);
    }
    // `black_box`: LLVM would reuse an earlier, weaker check of another
    // pointer into the frame, which the verifier cannot relate (see nat.rs).
    let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
    if data + HDR + OPT_LEN > end {
        return Err(MALFORMED);
    }
    let opt = [OPT_TYPE, OPT_LEN as u8, port[0], port[1], addr[0], addr[1], addr[2], addr[3]];
    // SAFETY: the headers and the option's room were bounds-checked above.
    unsafe {
        let mut hdr = *((data + OPT_LEN) as *const [u8; HDR]);
        let ip = ETH_LEN;
        let len = u16::from_be_bytes([hdr[ip + 2], hdr[ip + 3]]);
        let mut c = u16::from_be_bytes([hdr[ip + IP_CHECK], hdr[ip + IP_CHECK + 1]]);
        c = csum::replace2(c, [hdr[ip], hdr[ip + 1]], [0x47, hdr[ip + 1]]);
        c = csum::replace2(c, len.to_be_bytes(), (len + OPT_LEN as u16).to_be_bytes());
        // Added words: as if they replaced zeros.
        c = csum::replace4(c, [0; 4], [opt[0], opt[1], opt[2], opt[3]]);
        c = csum::replace4(c, [0; 4], [opt[4], opt[5], opt[6], opt[7]]);
        hdr[ip] = 0x47;
        hdr[ip + 2..ip + 4].copy_from_slice(&(len + OPT_LEN as u16).to_be_bytes());
        hdr[ip + IP_CHECK..ip + IP_CHECK + 2].copy_from_slice(&c.to_be_bytes());
        *(data as *mut [u8; HDR]) = hdr;
        *((data + HDR) as *mut [u8; OPT_LEN]) = opt;
    }
    Ok(())
}

/// Turns the packet into an ICMP "fragmentation needed" (`mtu`) back to its
/// sender, quoting it (then XDP_TX).
#[inline(always)]
fn frag_needed(ctx: &XdpContext, mtu: u16) -> Result<Verdict, Verdict> {
    const GROW: usize = too_big::HEAD_LEN - ETH_LEN;
    // SAFETY: plain helper call on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(GROW as i32)) } != 0 {
        return Err(MALFORMED);
    }
    // `black_box`: LLVM would reuse an earlier, weaker check of another
    // pointer into the frame, which the verifier cannot relate (see nat.rs).
    let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
    if data + too_big::FRAME_LEN > end {
        return Err(MALFORMED);
    }
    // SAFETY: the old Ethernet header (at GROW) and the quote behind the new
    // headers (at HEAD_LEN) lie inside the bounds-checked frame.
    unsafe {
        let macs = *((data + GROW) as *const [u8; 12]);
        let quote = *((data + too_big::HEAD_LEN) as *const [u8; too_big::QUOTE_LEN]);
        *(data as *mut [u8; too_big::HEAD_LEN]) = too_big::head_for(&macs, &quote, mtu);
    }
    let delta = too_big::FRAME_LEN as i32 - (end - data) as i32;
    // SAFETY: plain helper call; the frame only shrinks.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(MALFORMED);
    }
    Ok(Verdict::Bounce(counter::DSR_FRAG_NEEDED))
}

/// On the backend's node: if `p` carries the DSR option, records its flow's
/// reply half, takes the option off and returns the packet as it is now
/// (for the hook to send on); `Ok(None)`: not a DSR packet.
#[inline(always)]
pub fn xdp_decap(ctx: &XdpContext, p: &Packet) -> Result<Option<Packet>, Verdict> {
    if p.l4 != HDR + OPT_LEN {
        return Ok(None);
    }
    // `black_box`: LLVM would reuse an earlier, weaker check of another
    // pointer into the frame, which the verifier cannot relate (see nat.rs).
    let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
    if data + HDR + OPT_LEN > end {
        return Ok(None);
    }
    // SAFETY: bounds-checked above.
    let (mut hdr, opt) = unsafe { (*(data as *const [u8; HDR]), *((data + HDR) as *const [u8; OPT_LEN])) };
    if opt[0] != OPT_TYPE || opt[1] != OPT_LEN as u8 {
        return Ok(None);
    }
    conntrack::record_dsr_reply::<V4>(p, [opt[4], opt[5], opt[6], opt[7]], [opt[2], opt[3]], clock::now());
    let ip = ETH_LEN;
    let len = u16::from_be_bytes([hdr[ip + 2], hdr[ip + 3]]);
    let mut c = u16::from_be_bytes([hdr[ip + IP_CHECK], hdr[ip + IP_CHECK + 1]]);
    c = csum::replace2(c, [hdr[ip], hdr[ip + 1]], [0x45, hdr[ip + 1]]);
    c = csum::replace2(c, len.to_be_bytes(), (len - OPT_LEN as u16).to_be_bytes());
    c = csum::replace4(c, [opt[0], opt[1], opt[2], opt[3]], [0; 4]);
    c = csum::replace4(c, [opt[4], opt[5], opt[6], opt[7]], [0; 4]);
    hdr[ip] = 0x45;
    hdr[ip + 2..ip + 4].copy_from_slice(&(len - OPT_LEN as u16).to_be_bytes());
    hdr[ip + IP_CHECK..ip + IP_CHECK + 2].copy_from_slice(&c.to_be_bytes());
    // SAFETY: [data + OPT_LEN, data + OPT_LEN + HDR) is inside the checked range.
    unsafe { *((data + OPT_LEN) as *mut [u8; HDR]) = hdr };
    // SAFETY: plain helper call on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, OPT_LEN as i32) } != 0 {
        return Err(MALFORMED);
    }
    Ok(Some(Packet { l4: HDR, ip_len: len - OPT_LEN as u16, ..*p }))
}

/// On the backend's node, a DSR flow's SYN-ACK leaving for the client: its
/// MSS (when it is the first option, as every common stack sends it) is
/// lowered by the option's size, so the client's segments fit with the
/// option on the balancing node's egress.
#[inline(always)]
pub fn tc_clamp_mss(ctx: &TcContext, p: &Packet) -> Result<(), Verdict> {
    if p.proto != IPPROTO_TCP || p.tcp_flags & TCP_SYN == 0 {
        return Ok(());
    }
    let Ok(off) = ctx.load::<u8>(p.l4 + 12) else { return Ok(()) };
    if ((off >> 4) as usize) * 4 < 24 {
        return Ok(());
    }
    let Ok(opt) = ctx.load::<[u8; 4]>(p.l4 + 20) else { return Ok(()) };
    let mss = u16::from_be_bytes([opt[2], opt[3]]);
    if [opt[0], opt[1]] != TCP_OPT_MSS || mss <= 536 + OPT_LEN as u16 {
        return Ok(());
    }
    let new = (mss - OPT_LEN as u16).to_be_bytes();
    let failed = |_| Verdict::Drop(counter::DROP_CSUM);
    ctx.l4_csum_replace(p.l4_check(), u16::from_ne_bytes([opt[2], opt[3]]) as u64, u16::from_ne_bytes(new) as u64, 2)
        .map_err(failed)?;
    ctx.store(p.l4 + 22, &new, 0).map_err(failed)?;
    count(counter::DSR_MSS_CLAMPED);
    Ok(())
}
