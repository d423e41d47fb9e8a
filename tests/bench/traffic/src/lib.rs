//! The benchmark's traffic, defined once for its two senders: `bench_gen`
//! (XDP live frames, `lb-ebpf/src/bin/bench.rs`) and the AF_PACKET sender
//! of the skb-path comparison (`tests/bench/src/sender.rs`), so both put
//! the same flows on the wire. A crate of its own, `no_std` for the eBPF
//! side, so that lb-common keeps only the dataplane's kernel/user boundary:
//! no production program uses it.
#![no_std]
use bytemuck::{Pod, Zeroable};

/// Every benchmark frame: Ethernet + IPv4 (no options) + UDP or TCP, 64 bytes.
pub const TRAFFIC_FRAME_LEN: usize = 64;

const IP_CHECK: usize = 14 + 10;
const IP_SRC: usize = 14 + 12;
const IP_DST: usize = 14 + 16;
const L4: usize = 14 + 20;
const UDP_CHECK: usize = L4 + 6;
const TCP_FLAGS: usize = L4 + 12;
const TCP_CHECK: usize = L4 + 16;
const IPPROTO_TCP: u8 = 6;
const TCP_SYN: u8 = 0x02;

/// What the senders send. Value of the `bench_gen_cfg` map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Pod, Zeroable)]
pub struct TrafficConfig {
    /// Established flows per sender thread (CPU): (destination, source
    /// port, source address) tuples reused round-robin.
    pub flows: u32,
    /// Destinations are `dst_base + 0 .. dst_base + dsts - 1`.
    pub dsts: u32,
    /// First destination address, network order.
    pub dst_base: [u8; 4],
    /// 0: every frame belongs to an established flow. N: every Nth frame
    /// opens a new flow (a TCP template is sent as a SYN), never seen before.
    pub new_every: u32,
    /// The template (destination `dst_base`, source 192.168.1.x; TCP: an
    /// ACK with a valid checksum; UDP: checksum 0 or valid).
    pub frame: [u8; TRAFFIC_FRAME_LEN],
}
const _: () = assert!(core::mem::size_of::<TrafficConfig>() == 16 + TRAFFIC_FRAME_LEN);
const _: () = assert!(core::mem::offset_of!(TrafficConfig, new_every) == 12 && core::mem::offset_of!(TrafficConfig, frame) == 16);
#[cfg(feature = "user")]
// SAFETY: `#[repr(C)]` and `bytemuck::Pod` (no padding, no invalid bit patterns).
unsafe impl aya::Pod for TrafficConfig {}

/// The addresses and flags of frame number `n` of one sender.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TrafficFlow {
    pub src: [u8; 4],
    pub dst: [u8; 4],
    pub sport: u16,
    /// Opens a new flow (TCP: sent as a SYN).
    pub new: bool,
}

impl TrafficConfig {
    /// Frame `n` of the sender on `cpu`: established flows come from
    /// 192.168.x.(10 + cpu), ports 10,000..60,000; new flows from
    /// 198.18.0.0/15 (the benchmarking range), ports 1,024..65,023, so the two
    /// never meet and new 5-tuples repeat only after billions of frames.
    /// `None` for a configuration with no flows or destinations.
    #[inline(always)]
    pub fn flow(&self, n: u32, cpu: u32) -> Option<TrafficFlow> {
        if self.dsts == 0 {
            return None;
        }
        let base = u32::from_be_bytes(self.dst_base);
        if self.new_every != 0 && n.is_multiple_of(self.new_every) {
            let k = n / self.new_every;
            let rest = k / self.dsts;
            let host = ((rest / 64_000) << 6 | (cpu & 63)) & 0x1_ffff;
            return Some(TrafficFlow {
                src: (u32::from_be_bytes([198, 18, 0, 0]) + host).to_be_bytes(),
                dst: base.wrapping_add(k % self.dsts).to_be_bytes(),
                sport: (1024 + rest % 64_000) as u16,
                new: true,
            });
        }
        if self.flows == 0 {
            return None;
        }
        let flow = n % self.flows;
        let rest = flow / self.dsts;
        Some(TrafficFlow {
            src: [192, 168, 1u8.wrapping_add((rest / 50_000) as u8), 10u8.wrapping_add(cpu as u8)],
            dst: base.wrapping_add(flow % self.dsts).to_be_bytes(),
            sport: (10_000 + rest % 50_000) as u16,
            new: false,
        })
    }
}

/// Rewrites a copy of the template into `f`'s flow, updating the IPv4 and
/// L4 checksums incrementally (RFC 1624). A UDP checksum of 0 stays 0.
#[inline(always)]
pub fn write_flow(f: &mut [u8; TRAFFIC_FRAME_LEN], flow: &TrafficFlow) {
    let old_src = [f[IP_SRC], f[IP_SRC + 1], f[IP_SRC + 2], f[IP_SRC + 3]];
    let old_dst = [f[IP_DST], f[IP_DST + 1], f[IP_DST + 2], f[IP_DST + 3]];
    let old_port = [f[L4], f[L4 + 1]];
    let new_port = flow.sport.to_be_bytes();
    f[IP_SRC..IP_SRC + 4].copy_from_slice(&flow.src);
    f[IP_DST..IP_DST + 4].copy_from_slice(&flow.dst);
    f[L4..L4 + 2].copy_from_slice(&new_port);
    let mut ip = Sum::of_check(f[IP_CHECK], f[IP_CHECK + 1]);
    ip.replace4(old_src, flow.src);
    ip.replace4(old_dst, flow.dst);
    f[IP_CHECK..IP_CHECK + 2].copy_from_slice(&ip.check());
    if f[14 + 9] == IPPROTO_TCP {
        let mut c = Sum::of_check(f[TCP_CHECK], f[TCP_CHECK + 1]);
        c.replace4(old_src, flow.src);
        c.replace4(old_dst, flow.dst);
        c.replace2(old_port, new_port);
        if flow.new {
            let old = [f[TCP_FLAGS], f[TCP_FLAGS + 1]];
            f[TCP_FLAGS + 1] = TCP_SYN;
            c.replace2(old, [f[TCP_FLAGS], TCP_SYN]);
        }
        f[TCP_CHECK..TCP_CHECK + 2].copy_from_slice(&c.check());
    } else if f[UDP_CHECK] | f[UDP_CHECK + 1] != 0 {
        let mut c = Sum::of_check(f[UDP_CHECK], f[UDP_CHECK + 1]);
        c.replace4(old_src, flow.src);
        c.replace4(old_dst, flow.dst);
        c.replace2(old_port, new_port);
        // 0 means "no checksum" in UDP; its one's-complement twin is 0xffff.
        let out = c.check();
        f[UDP_CHECK..UDP_CHECK + 2].copy_from_slice(if out == [0, 0] { &[0xff, 0xff] } else { &out });
    }
}

/// A one's-complement sum being updated: HC' = ~(~HC + ~m + m').
struct Sum(u32);

impl Sum {
    #[inline(always)]
    fn of_check(hi: u8, lo: u8) -> Self {
        Sum(!u16::from_be_bytes([hi, lo]) as u32)
    }

    #[inline(always)]
    fn replace2(&mut self, old: [u8; 2], new: [u8; 2]) {
        self.0 += !u16::from_be_bytes(old) as u32 + u16::from_be_bytes(new) as u32;
    }

    #[inline(always)]
    fn replace4(&mut self, old: [u8; 4], new: [u8; 4]) {
        self.replace2([old[0], old[1]], [new[0], new[1]]);
        self.replace2([old[2], old[3]], [new[2], new[3]]);
    }

    #[inline(always)]
    fn check(&self) -> [u8; 2] {
        let mut s = self.0;
        s = (s & 0xffff) + (s >> 16);
        s = (s & 0xffff) + (s >> 16);
        (!(s as u16)).to_be_bytes()
    }
}
