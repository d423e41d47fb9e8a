//! The two ways the bench puts `xdplb_bench_traffic` frames on the
//! generator's veth, one pinned thread per CPU:
//!
//! - [`Sender::LiveFrames`]: our live-frames generator, `bench_gen` run by
//!   BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES. Frames are XDP
//!   frames from the start: the rate an XDP program on the uplink can reach.
//! - [`Sender::Skb`]: an AF_PACKET socket (PACKET_QDISC_BYPASS, `sendmmsg`
//!   of 64 frames): every frame is an skb, as with trafgen or a pod's own
//!   traffic. kube-proxy's iptables rules only ever see skbs, so the
//!   comparison with them uses this sender on both sides.
//!
//! On veth the receiver runs on the sender's CPU, so a rate is sender +
//! node together; the sections also report CPU-ns per packet over a
//! drop-only baseline of the same sender.
use std::{
    sync::{
        atomic::{AtomicU32, Ordering},
        Barrier,
    },
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use aya::programs::{TestRun, TestRunAttrs, TestRunOptions};
use xdplb_bench_traffic::{write_flow, TrafficConfig, TRAFFIC_FRAME_LEN};

use super::{progs::BenchProgs, topo::Topo};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sender {
    LiveFrames,
    Skb,
}

impl Sender {
    /// The report section the sender's figures go to.
    pub fn section(self) -> &'static str {
        match self {
            Sender::LiveFrames => "live",
            Sender::Skb => "skb",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Sender::LiveFrames => "live-frames generator (bench_gen, BPF_PROG_TEST_RUN + BPF_F_TEST_XDP_LIVE_FRAMES)",
            Sender::Skb => "AF_PACKET sendmmsg, PACKET_QDISC_BYPASS (skb path)",
        }
    }
}

/// Sends `repeat` frames per thread from `threads` pinned threads; returns
/// (frames counted by the sink's bench_drop, seconds).
pub fn blast(sender: Sender, progs: &mut BenchProgs, t: &Topo, cfg: &TrafficConfig, threads: usize, repeat: u32) -> Result<(u64, f64)> {
    progs.set_traffic(*cfg)?;
    progs.reset_drops()?;
    let gen_file = std::fs::File::open(format!("/run/netns/{}", t.gen.name()))?;
    let barrier = Barrier::new(threads + 1);
    let p = progs.xdp("bench_gen");
    let secs = std::thread::scope(|s| -> Result<f64> {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (gen_file, barrier) = (&gen_file, &barrier);
                s.spawn(move || -> Result<()> {
                    xdplb_tests::netns::enter(gen_file);
                    super::pin(Some(i));
                    match sender {
                        Sender::LiveFrames => {
                            let ctx = xdp_md(t.gen_ifindex, i as u32);
                            barrier.wait();
                            let opts = TestRunOptions {
                                data_in: Some(&cfg.frame),
                                ctx_in: Some(&ctx),
                                repeat,
                                attrs: TestRunAttrs::new().xdp_live_frames(64),
                                ..Default::default()
                            };
                            p.test_run(opts).context("live-frames BPF_PROG_TEST_RUN")?;
                        }
                        Sender::Skb => {
                            let mut socket = PacketSocket::new(t.gen_ifindex)?;
                            barrier.wait();
                            socket.send(cfg, i as u32, repeat)?;
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        barrier.wait();
        let start = Instant::now();
        for h in handles {
            h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))?;
        }
        Ok(start.elapsed().as_secs_f64())
    })?;
    Ok((progs.drops()?, secs))
}

/// `struct xdp_md` as BPF_PROG_TEST_RUN takes it for live frames.
pub fn xdp_md(ifindex: u32, queue: u32) -> [u8; 24] {
    let mut b = [0u8; 24];
    b[4..8].copy_from_slice(&(TRAFFIC_FRAME_LEN as u32).to_ne_bytes()); // data_end
    b[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    b[16..20].copy_from_slice(&queue.to_ne_bytes());
    b
}

/// Frames per `sendmmsg`.
const BATCH: usize = 64;
/// Most CPUs a sender thread can be pinned to.
const MAX_CPUS: usize = 64;

/// Frame counter of each CPU's sender, kept across blasts like bench_gen's
/// per-CPU one, so new flows stay new from one blast to the next.
static SKB_SEQ: [AtomicU32; MAX_CPUS] = [const { AtomicU32::new(0) }; MAX_CPUS];

/// A transmit-only AF_PACKET socket on one interface.
struct PacketSocket {
    fd: std::os::fd::OwnedFd,
    to: libc::sockaddr_ll,
}

impl PacketSocket {
    fn new(ifindex: u32) -> Result<Self> {
        // Protocol 0: the socket receives nothing.
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            bail!("AF_PACKET socket: {} (needs CAP_NET_RAW)", std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        let one: libc::c_int = 1;
        // Straight to the driver, as trafgen does: no qdisc on the measured path.
        // SAFETY: `one` outlives the call; the length matches.
        let r = unsafe {
            libc::setsockopt(std::os::fd::AsRawFd::as_raw_fd(&fd), libc::SOL_PACKET, libc::PACKET_QDISC_BYPASS, &one as *const _ as *const _, 4)
        };
        if r != 0 {
            bail!("PACKET_QDISC_BYPASS: {}", std::io::Error::last_os_error());
        }
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        to.sll_family = libc::AF_PACKET as u16;
        to.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        to.sll_ifindex = ifindex as i32;
        to.sll_halen = 6;
        Ok(Self { fd, to })
    }

    /// Sends `count` frames of `cfg`'s traffic as CPU `cpu`'s sender.
    fn send(&mut self, cfg: &TrafficConfig, cpu: u32, count: u32) -> Result<()> {
        let seq = &SKB_SEQ[cpu as usize % MAX_CPUS];
        let mut frames = [[0u8; TRAFFIC_FRAME_LEN]; BATCH];
        let mut iov: [libc::iovec; BATCH] = unsafe { std::mem::zeroed() };
        let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
        for i in 0..BATCH {
            iov[i] = libc::iovec { iov_base: frames[i].as_mut_ptr().cast(), iov_len: TRAFFIC_FRAME_LEN };
            msgs[i].msg_hdr.msg_iov = &mut iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_name = (&mut self.to as *mut libc::sockaddr_ll).cast();
            msgs[i].msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        }
        let mut left = count as usize;
        while left > 0 {
            let n = left.min(BATCH);
            for f in frames.iter_mut().take(n) {
                let k = seq.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                let flow = cfg.flow(k, cpu).context("traffic with no flows or destinations")?;
                *f = cfg.frame;
                write_flow(f, &flow);
            }
            let mut done = 0;
            while done < n {
                // SAFETY: `msgs[done..n]` point into `frames`/`iov`/`self.to`, all alive.
                let r = unsafe {
                    libc::sendmmsg(std::os::fd::AsRawFd::as_raw_fd(&self.fd), msgs[done..].as_mut_ptr(), (n - done) as u32, 0)
                };
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    if e.raw_os_error() == Some(libc::ENOBUFS) || e.kind() == std::io::ErrorKind::Interrupted {
                        std::thread::yield_now();
                        continue;
                    }
                    bail!("sendmmsg on the AF_PACKET socket: {e}");
                }
                done += r as usize;
            }
            left -= n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use xdplb_bench_traffic::{write_flow, TrafficConfig};

    use xdplb_tests::packet::{verify_checksums, Frame, TCP_ACK};

    fn config(frame: Vec<u8>, new_every: u32) -> TrafficConfig {
        TrafficConfig { flows: 100, dsts: 7, dst_base: [10, 96, 0, 1], new_every, frame: frame.try_into().unwrap() }
    }

    /// Every generated frame has valid checksums, new TCP flows are SYNs,
    /// and new flows never reuse an established flow's 5-tuple.
    #[test]
    fn generated_frames_are_valid_and_new_flows_are_distinct() {
        let src = "192.168.1.10".parse().unwrap();
        let dst = "10.96.0.1".parse().unwrap();
        let tcp = Frame::tcp(src, 10_000, dst, 80, TCP_ACK).payload(&[0; 10]).bytes();
        let udp = Frame::udp(src, 10_000, dst, 80).payload(&[0; 22]).bytes();
        for template in [tcp, udp] {
            let cfg = config(template, 3);
            let mut seen_new = std::collections::HashSet::new();
            let mut established = std::collections::HashSet::new();
            for n in 1..3000u32 {
                let flow = cfg.flow(n, 1).unwrap();
                let mut f = cfg.frame;
                write_flow(&mut f, &flow);
                verify_checksums(&f).unwrap_or_else(|e| panic!("frame {n}: {e}"));
                assert_eq!(&f[26..30], &flow.src);
                assert_eq!(&f[30..34], &flow.dst);
                assert_eq!(flow.new, n % 3 == 0);
                if f[23] == 6 {
                    assert_eq!(f[47], if flow.new { 0x02 } else { 0x10 }, "TCP flags of frame {n}");
                }
                let tuple = (flow.src, flow.dst, flow.sport);
                if flow.new {
                    assert!(seen_new.insert(tuple), "new flow {tuple:?} repeated");
                } else {
                    established.insert(tuple);
                }
            }
            assert_eq!(established.len(), 100);
            assert!(seen_new.is_disjoint(&established));
        }
    }
}
