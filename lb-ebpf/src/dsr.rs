//! Direct server return across nodes (`lb_common::dsr` has the wire format).
//!
//! On the balancing node (XDP on the uplink), a packet of a DSR flow is
//! rewritten to its backend (destination only: the client address stays),
//! gets the carrier naming the service it was sent to (IPv4: an option;
//! IPv6: a destination options header) and is forwarded by XDP itself to
//! the backend's node. A packet that would no longer fit its egress (over
//! IPv4 only a DF one: IPv6 routers never fragment) is answered with ICMP
//! "fragmentation needed" / ICMPv6 "packet too big" carrying the MTU less
//! the carrier, so the client's path MTU discovery makes room.
//!
//! On the backend's node (XDP on its uplink), a packet with the carrier
//! records the flow's reply half (`conntrack::record_dsr_reply`), loses the
//! carrier and goes on to the pod. The pod's replies are rewritten at tc
//! egress like any reply, to come from the service address, and leave
//! straight to the client; a SYN-ACK's MSS is lowered by the carrier's size
//! there, so the client's full-size segments still fit with it.
//!
//! One path for both families; what differs (the carrier's bytes, IPv4's
//! header checksum, when an oversized packet is answered) is [`Carrier`].
use aya_ebpf::{
    helpers::{bpf_csum_diff, bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::{TcContext, XdpContext},
};
use lb_common::{
    counter,
    dsr::{EXT6_LEN, IPPROTO_DSTOPTS, OPT6_LEN, OPT6_TYPE, OPT_LEN, OPT_TYPE},
    IPPROTO_TCP,
};
use lb_ebpf::{
    csum,
    too_big::{frame_len, head_for, head_len, Head, Quote},
};

use crate::{
    clock,
    conntrack::{self, Rewrite},
    family::{Family, V4, V6Of},
    forward::{self, Lookup},
    nat::{self, Side},
    parse::{Packet, ETH_LEN, IP_CHECK, TCP_SYN},
    stats::count,
    verdict::{framed, Verdict, MALFORMED},
};

/// What DSR's carrier is in a family (see the module doc).
pub trait Carrier: Family {
    /// Bytes the carrier adds to every forwarded packet (the MTU cost).
    const LEN: usize;
    /// Whether DSR runs in a program of its own (`xdp_dsr_v6`), tail-called
    /// by the family's XDP program, which has no room left for it under
    /// the verifier's limit.
    const OWN_PROGRAM: bool;
    /// Whether a packet that no longer fits its egress with the carrier is
    /// answered (else the kernel fragments it).
    fn must_answer(ctx: &XdpContext) -> bool;
    /// Inserts the carrier naming `addr:port` behind the fixed IP header
    /// (the packet has none of its own options or extension headers).
    fn add(ctx: &XdpContext, addr: &Self::Addr, port: [u8; 2]) -> Result<(), Verdict>;
    /// The service `p`'s carrier names, if it carries one (right behind the
    /// fixed header, nothing else in between).
    fn read(ctx: &XdpContext, p: &Packet<Self::Addr>) -> Option<(Self::Addr, [u8; 2])>;
    /// Whether the frame carries the carrier, from fixed offsets (before
    /// parsing; only for a family with `OWN_PROGRAM`).
    #[inline(always)]
    fn marked(_ctx: &XdpContext) -> bool {
        false
    }
    /// Takes the carrier [`Carrier::read`] found off; the packet as it is then.
    fn strip(ctx: &XdpContext, p: &Packet<Self::Addr>) -> Result<Packet<Self::Addr>, Verdict>;
}

/// Whether `p`'s headers have room for exactly a carrier (the cheap test
/// before [`xdp_decap`] reads the packet).
#[inline(always)]
pub fn may_carry<F: Carrier>(p: &Packet<F::Addr>) -> bool {
    p.l4 == ETH_LEN + F::IP_HDR + F::LEN
}

/// Sends a packet of a DSR flow (forward half `rw`) to its backend on
/// another node, or answers it with the ICMP error saying how much fits.
#[inline(always)]
pub fn xdp_forward<F: Carrier>(ctx: &XdpContext, p: &Packet<F::Addr>, rw: &Rewrite<F::Addr>) -> Result<Verdict, Verdict> {
    // The carrier goes behind a plain header; a client's own IPv4 options
    // or IPv6 extension headers would leave no defined place for it.
    if p.l4 != ETH_LEN + F::IP_HDR {
        return Err(MALFORMED);
    }
    let mut hop = forward::empty();
    let how = forward::lookup::<F>(ctx, p, p.src, rw.addr, F::LEN as u16, &mut hop);
    if let Lookup::FragNeeded(mtu) = how {
        if F::must_answer(ctx) {
            let mtu = mtu.saturating_sub(F::LEN as u16);
            return framed(F::SPLIT, || Some(too_big::<F>(ctx, mtu).unwrap_or_else(|v| v))).ok_or(MALFORMED);
        }
    }
    nat::xdp_rewrite::<F>(ctx, p, Side::Dst, rw)?;
    // The service end, as the client sent it (`p` is the parsed copy), rides along.
    if let Some(v) = framed(F::SPLIT, || F::add(ctx, &p.dst, p.dport).err()) {
        return Err(v);
    }
    if let Lookup::Found(hop) = how {
        if let Some(action) = forward::apply::<F>(ctx, hop, true) {
            count(counter::XDP_REDIRECTED);
            return Ok(Verdict::Action(action, counter::DSR_FORWARD));
        }
    }
    // No neighbour yet, TTL expiring, a non-DF packet too large: the
    // kernel forwards (or fragments) it, carrier and all.
    count(counter::FORWARD_FALLBACK);
    Ok(Verdict::Pass(counter::DSR_FORWARD))
}

/// Turns the packet into the ICMP error telling its sender to send at most
/// `mtu` bytes, quoting it (then XDP_TX).
#[inline(always)]
fn too_big<F: Carrier>(ctx: &XdpContext, mtu: u16) -> Result<Verdict, Verdict> {
    let head = head_len::<F::Addr>();
    let grow = head - ETH_LEN;
    // SAFETY: plain helper call on this program's context.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(grow as i32)) } != 0 {
        return Err(MALFORMED);
    }
    // `black_box`: LLVM would reuse an earlier, weaker check of another
    // pointer into the frame, which the verifier cannot relate (see nat.rs).
    let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
    if data + frame_len::<F::Addr>() > end {
        return Err(MALFORMED);
    }
    // SAFETY: the old Ethernet header (at `grow`), the quote behind the new
    // headers (at `head`) and the new headers lie inside the checked frame.
    unsafe {
        let macs = *((data + grow) as *const [u8; 12]);
        // Read where it lies: a copy would not fit IPv6's frame.
        let quote = (data + head) as *const Quote<F::Addr>;
        // The kernel's sum adds the words as loaded (little-endian): its
        // folded value is the wire-order sum with the bytes swapped.
        let native = bpf_csum_diff(core::ptr::null_mut(), 0, quote as *mut u32, core::mem::size_of::<Quote<F::Addr>>() as u32, 0);
        let sum = csum::fold(native as u32).swap_bytes() as u32;
        head_for(&mut *(data as *mut Head<F::Addr>), &macs, &*quote, sum, mtu);
    }
    let delta = frame_len::<F::Addr>() as i32 - (end - data) as i32;
    // SAFETY: plain helper call; the frame only shrinks.
    if unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return Err(MALFORMED);
    }
    Ok(Verdict::Bounce(counter::DSR_FRAG_NEEDED))
}

/// On the backend's node: if `p` carries the DSR carrier, records its
/// flow's reply half, takes the carrier off and returns the packet as it
/// is now (for the hook to send on); `Ok(None)`: not a DSR packet.
#[inline(always)]
pub fn xdp_decap<F: Carrier>(ctx: &XdpContext, p: &Packet<F::Addr>) -> Result<Option<Packet<F::Addr>>, Verdict> {
    if !may_carry::<F>(p) {
        return Ok(None);
    }
    let Some((svc_addr, svc_port)) = F::read(ctx, p) else { return Ok(None) };
    conntrack::record_dsr_reply::<F>(p, &svc_addr, svc_port, clock::now());
    F::strip(ctx, p).map(Some)
}

/// On the backend's node, a DSR flow's SYN-ACK leaving for the client: its
/// MSS (when it is the first option, as every common stack sends it) is
/// lowered by the carrier's size, so the client's segments fit with the
/// carrier on the balancing node's egress.
#[inline(always)]
pub fn tc_clamp_mss<F: Carrier>(ctx: &TcContext, p: &Packet<F::Addr>) -> Result<(), Verdict> {
    if p.proto != IPPROTO_TCP || p.tcp_flags & TCP_SYN == 0 {
        return Ok(());
    }
    let Ok(off) = ctx.load::<u8>(p.l4 + 12) else { return Ok(()) };
    if ((off >> 4) as usize) * 4 < 24 {
        return Ok(());
    }
    let Ok(opt) = ctx.load::<[u8; 4]>(p.l4 + 20) else { return Ok(()) };
    let mss = u16::from_be_bytes([opt[2], opt[3]]);
    if [opt[0], opt[1]] != TCP_OPT_MSS || mss <= 536 + F::LEN as u16 {
        return Ok(());
    }
    let new = (mss - F::LEN as u16).to_be_bytes();
    let failed = |_| Verdict::Drop(counter::DROP_CSUM);
    ctx.l4_csum_replace(p.l4_check(), u16::from_ne_bytes([opt[2], opt[3]]) as u64, u16::from_ne_bytes(new) as u64, 2)
        .map_err(failed)?;
    ctx.store(p.l4 + 22, &new, 0).map_err(failed)?;
    count(counter::DSR_MSS_CLAMPED);
    Ok(())
}

/// TCP option kind and length of the MSS.
const TCP_OPT_MSS: [u8; 2] = [2, 4];
/// Ethernet + an IPv4 header without options: what moves when the option
/// is added or taken off.
const HDR4: usize = ETH_LEN + 20;
/// The IPv4 DF bit, in the high byte of the fragment word.
const DF: u8 = 0x40;

/// IPv4: an option (IHL 5 → 7), in the header checksum.
impl Carrier for V4 {
    const LEN: usize = OPT_LEN;
    const OWN_PROGRAM: bool = false;

    #[inline(always)]
    fn must_answer(ctx: &XdpContext) -> bool {
        // `black_box`: LLVM would reuse an earlier, weaker check of another
        // pointer into the frame, which the verifier cannot relate (see nat.rs).
        let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
        if data + HDR4 > end {
            return false;
        }
        // SAFETY: bounds-checked above.
        unsafe { *((data + ETH_LEN + 6) as *const u8) & DF != 0 }
    }

    #[inline(always)]
    fn add(ctx: &XdpContext, addr: &[u8; 4], port: [u8; 2]) -> Result<(), Verdict> {
        // SAFETY: plain helper call on this program's context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(OPT_LEN as i32)) } != 0 {
            return Err(MALFORMED);
        }
        // `black_box`: see `must_answer`.
        let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
        if data + HDR4 + OPT_LEN > end {
            return Err(MALFORMED);
        }
        let opt = [OPT_TYPE, OPT_LEN as u8, port[0], port[1], addr[0], addr[1], addr[2], addr[3]];
        // SAFETY: the headers and the option's room were bounds-checked above.
        unsafe {
            let mut hdr = *((data + OPT_LEN) as *const [u8; HDR4]);
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
            *(data as *mut [u8; HDR4]) = hdr;
            *((data + HDR4) as *mut [u8; OPT_LEN]) = opt;
        }
        Ok(())
    }

    #[inline(always)]
    fn read(ctx: &XdpContext, _p: &Packet) -> Option<([u8; 4], [u8; 2])> {
        // `black_box`: see `must_answer`.
        let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
        if data + HDR4 + OPT_LEN > end {
            return None;
        }
        // SAFETY: bounds-checked above.
        let opt = unsafe { *((data + HDR4) as *const [u8; OPT_LEN]) };
        if opt[0] != OPT_TYPE || opt[1] != OPT_LEN as u8 {
            return None;
        }
        Some(([opt[4], opt[5], opt[6], opt[7]], [opt[2], opt[3]]))
    }

    #[inline(always)]
    fn strip(ctx: &XdpContext, p: &Packet) -> Result<Packet, Verdict> {
        // `black_box`: see `must_answer`.
        let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
        if data + HDR4 + OPT_LEN > end {
            return Err(MALFORMED);
        }
        // SAFETY: bounds-checked above.
        let (mut hdr, opt) = unsafe { (*(data as *const [u8; HDR4]), *((data + HDR4) as *const [u8; OPT_LEN])) };
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
        // SAFETY: [data + OPT_LEN, data + OPT_LEN + HDR4) is inside the checked range.
        unsafe { *((data + OPT_LEN) as *mut [u8; HDR4]) = hdr };
        // SAFETY: plain helper call on this program's context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, OPT_LEN as i32) } != 0 {
            return Err(MALFORMED);
        }
        Ok(Packet { l4: HDR4, ip_len: len - OPT_LEN as u16, ..*p })
    }
}

/// Ethernet + the fixed IPv6 header: what moves when the extension header
/// is added or taken off.
const HDR6: usize = ETH_LEN + 40;
/// Offsets of the payload length and the next header, from the frame's start.
const PLEN6: usize = ETH_LEN + 4;
const NEXT6: usize = ETH_LEN + 6;
/// The extension header's length field: (24 − 8) / 8.
const EXT6_HDRLEN: u8 = (EXT6_LEN / 8 - 1) as u8;

/// IPv6: a destination options header right behind the fixed header (no
/// checksum covers it: the L4 pseudo header holds the addresses only).
impl<const L4: u8> Carrier for V6Of<L4> {
    const LEN: usize = EXT6_LEN;
    const OWN_PROGRAM: bool = true;

    #[inline(always)]
    fn must_answer(_ctx: &XdpContext) -> bool {
        true
    }

    #[inline(always)]
    fn marked(ctx: &XdpContext) -> bool {
        let (data, end) = (ctx.data(), ctx.data_end());
        if data + HDR6 + 4 > end {
            return false;
        }
        // SAFETY: bounds-checked above.
        let (ethertype, next, ext) = unsafe { (*((data + 12) as *const [u8; 2]), *((data + NEXT6) as *const u8), *((data + HDR6) as *const [u8; 4])) };
        ethertype == [0x86, 0xdd] && next == IPPROTO_DSTOPTS && [ext[1], ext[2], ext[3]] == [EXT6_HDRLEN, OPT6_TYPE, OPT6_LEN]
    }

    #[inline(always)]
    fn add(ctx: &XdpContext, addr: &[u8; 16], port: [u8; 2]) -> Result<(), Verdict> {
        // SAFETY: plain helper call on this program's context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(EXT6_LEN as i32)) } != 0 {
            return Err(MALFORMED);
        }
        // `black_box`: see V4's `must_answer`.
        let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
        if data + HDR6 + EXT6_LEN > end {
            return Err(MALFORMED);
        }
        // SAFETY: the headers and the extension header's room were bounds-checked above.
        unsafe {
            let mut hdr = *((data + EXT6_LEN) as *const [u8; HDR6]);
            let next = hdr[NEXT6];
            let plen = u16::from_be_bytes([hdr[PLEN6], hdr[PLEN6 + 1]]) + EXT6_LEN as u16;
            hdr[PLEN6..PLEN6 + 2].copy_from_slice(&plen.to_be_bytes());
            hdr[NEXT6] = IPPROTO_DSTOPTS;
            *(data as *mut [u8; HDR6]) = hdr;
            let ext = &mut *((data + HDR6) as *mut [u8; EXT6_LEN]);
            ext[..4].copy_from_slice(&[next, EXT6_HDRLEN, OPT6_TYPE, OPT6_LEN]);
            ext[4..20].copy_from_slice(addr);
            ext[20..].copy_from_slice(&[port[0], port[1], 0, 0]);
        }
        Ok(())
    }

    #[inline(always)]
    fn read(ctx: &XdpContext, _p: &Packet<[u8; 16]>) -> Option<([u8; 16], [u8; 2])> {
        // `black_box`: see V4's `must_answer`.
        let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
        if data + HDR6 + EXT6_LEN > end {
            return None;
        }
        // SAFETY: bounds-checked above.
        let (next, ext) = unsafe { (*((data + NEXT6) as *const u8), &*((data + HDR6) as *const [u8; EXT6_LEN])) };
        if next != IPPROTO_DSTOPTS || ext[1..4] != [EXT6_HDRLEN, OPT6_TYPE, OPT6_LEN] {
            return None;
        }
        let mut addr = [0u8; 16];
        addr.copy_from_slice(&ext[4..20]);
        Some((addr, [ext[20], ext[21]]))
    }

    #[inline(always)]
    fn strip(ctx: &XdpContext, p: &Packet<[u8; 16]>) -> Result<Packet<[u8; 16]>, Verdict> {
        // `black_box`: see V4's `must_answer`.
        let (data, end) = (core::hint::black_box(ctx.data()), ctx.data_end());
        if data + HDR6 + EXT6_LEN > end {
            return Err(MALFORMED);
        }
        // SAFETY: bounds-checked above; the header moves inside the same range.
        unsafe {
            let mut hdr = *(data as *const [u8; HDR6]);
            let plen = u16::from_be_bytes([hdr[PLEN6], hdr[PLEN6 + 1]]) - EXT6_LEN as u16;
            hdr[PLEN6..PLEN6 + 2].copy_from_slice(&plen.to_be_bytes());
            hdr[NEXT6] = *((data + HDR6) as *const u8);
            *((data + EXT6_LEN) as *mut [u8; HDR6]) = hdr;
        }
        // SAFETY: plain helper call on this program's context.
        if unsafe { bpf_xdp_adjust_head(ctx.ctx, EXT6_LEN as i32) } != 0 {
            return Err(MALFORMED);
        }
        Ok(Packet { l4: HDR6, ip_len: p.ip_len - EXT6_LEN as u16, ..*p })
    }
}
