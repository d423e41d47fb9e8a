//! `--pktgen-vm`: the users' "benchmark with pktgen in a VM" workflow, as a
//! check that it works with xdplb, not as the headline rate. A Debian kernel
//! (from the linux-image package, unpacked under `target/bench/vm/`, never
//! installed) boots in QEMU (KVM where /dev/kvm can run it, else TCG: this
//! host's /dev/kvm is a paravirtual kind a stock kernel cannot use; the
//! figures' `accel` says which) with a busybox initramfs whose /init loads
//! virtio_net and pktgen and sends UDP to a service VIP through virtio-net
//! into a tap device, on which our XDP program runs in a namespace. The
//! figures: pps pktgen reports, packets XDP saw and rewrote, packets the
//! kernel forwarded to the backend.
use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, Result};
use lb_common::{counter, IPPROTO_UDP};
use serde_json::json;

use super::report::Report;
use xdplb_tests::{
    lb::Lb,
    netns::Netns,
    services::{contents, Svc},
    vm,
};

const TAP: &str = "xlbtap0";
const TAP_MAC: &str = "02:00:00:00:07:01";
const VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 10);
const BACKEND: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 9, 2);

/// The pktgen initramfs: /init loads virtio-net and pktgen and sends
/// `count` UDP frames to the VIP.
fn initramfs(dir: &Path, modules: &Path, count: u64) -> Result<PathBuf> {
    let init = format!(
        "/bin/busybox --install -s /bin\nmount -t proc proc /proc\nmount -t sysfs sys /sys\n\
         for m in $MODULES; do insmod /m/$m || echo \"insmod $m failed\"; done\n\
         ip link set eth0 up\nip addr add 192.168.7.2/24 dev eth0\nsleep 1\n\
         echo 'add_device eth0' > /proc/net/pktgen/kpktgend_0\n\
         c=/proc/net/pktgen/eth0\n\
         for l in 'count {count}' 'pkt_size 60' 'delay 0' 'dst {VIP}' 'dst_mac {TAP_MAC}' 'udp_dst_min 80' 'udp_dst_max 80' \
         'udp_src_min 1024' 'udp_src_max 65000' 'flag UDPSRC_RND' 'src_min 192.168.7.2' 'src_max 192.168.7.2'; do echo \"$l\" > $c; done\n\
         echo XDPLB-PKTGEN-START\necho start > /proc/net/pktgen/pgctrl\n\
         echo XDPLB-PKTGEN-RESULT; cat $c\necho XDPLB-PKTGEN-END\npoweroff -f\n",
    );
    vm::initramfs(dir, modules, &["virtio_pci", "virtio_net", "pktgen"], &init)
}

pub fn run(out_dir: &Path, count: u64, r: &mut Report) -> Result<()> {
    let dir = out_dir.join("vm");
    let (vmlinuz, modules) = vm::kernel(&dir, &vm::default_kernel_package()?)?;
    let img = initramfs(&dir, &modules, count)?;

    let ns = Netns::new();
    ns.ip(&["tuntap", "add", "dev", TAP, "mode", "tap"]);
    ns.ip(&["link", "set", TAP, "address", TAP_MAC]);
    ns.ip(&["addr", "add", "192.168.7.1/24", "dev", TAP]);
    ns.ip(&["link", "set", TAP, "up"]);
    ns.sysctl("net.ipv4.ip_forward", "1");
    // The backend: a namespace behind a veth (no listener: it drops the
    // datagrams); forwarded = packets sent out of the node's side.
    let backend = Netns::new();
    xdplb_tests::topology::veth(&ns, "be0", &backend, "eth0");
    xdplb_tests::topology::addr_up(&ns, "be0", "10.0.9.1/24");
    xdplb_tests::topology::addr_up(&backend, "eth0", &format!("{BACKEND}/24"));
    let mut lb = Lb::attach(&ns, TAP, &[]);
    lb.program(&contents(&[Svc::new(
        1,
        IPPROTO_UDP,
        lb_common::algorithm::RANDOM,
    )
    .frontend(VIP, 80)
    .backend(1, BACKEND, 8080)]));

    let log = dir.join("qemu.log");
    let boot = vm::Boot {
        vmlinuz: &vmlinuz,
        initrd: &img,
        mem_mb: 512,
        cpus: 1,
        extra: [
            "-append",
            "console=ttyS0 panic=-1 quiet",
            "-netdev",
            &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:00:07:02",
        ]
        .map(String::from)
        .to_vec(),
        wrap: vec!["nsenter".into(), format!("--net=/run/netns/{}", ns.name())],
        timeout: Duration::from_secs(300),
    };
    let (text, wall) = vm::boot(&boot, &log)?;
    let wall = wall.as_secs_f64();
    let (pps, sent, usec) = parse_pktgen(&text).with_context(|| {
        let tail: Vec<&str> = text.lines().rev().take(30).collect();
        format!(
            "no pktgen result in the VM's console:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    })?;
    let seen = lb.counter(counter::PACKETS) as f64;
    let nat = lb.counter(counter::NAT_FORWARD) as f64;
    let fwd: f64 = ns
        .cmd("cat")
        .arg("/sys/class/net/be0/statistics/tx_packets")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(0.0);
    let cond = json!({"accel": vm::accel(&vmlinuz), "kernel": vmlinuz.file_name().unwrap().to_string_lossy(), "frames": count, "frame_bytes": 60,
                      "path": "guest pktgen -> virtio-net -> tap (native XDP xdp_lb) -> kernel forwarding -> veth to the backend namespace",
                      "vm_wall_s": (wall * 10.0).round() / 10.0, "what": "workflow check, not the headline rate"});
    r.add("vm", "vm/pktgen_sent_pps", pps, None, "pps", cond.clone());
    r.add("vm", "vm/pktgen_sent", sent, None, "packets", cond.clone());
    r.add(
        "vm",
        "vm/xdp_seen",
        seen.max(1e-9),
        None,
        "packets",
        cond.clone(),
    );
    // Over pktgen's own sending time: XDP runs in the tap's send path.
    r.add(
        "vm",
        "vm/xdp_seen_pps",
        (seen / (usec / 1e6)).max(1e-9),
        None,
        "pps",
        cond.clone(),
    );
    r.add(
        "vm",
        "vm/xdp_rewritten",
        nat.max(1e-9),
        None,
        "packets",
        cond.clone(),
    );
    r.add(
        "vm",
        "vm/forwarded_to_backend",
        fwd.max(1e-9),
        None,
        "packets",
        cond,
    );
    drop(lb);
    Ok(())
}

/// pktgen's result, from the part of the console between our markers:
/// (pps, packets sent, sending time in µs). The lines look like
/// `Result: OK: 7956168(c7942409+d13758) usec, 500000 (60byte,0frags)` and
/// `  62844pps 30Mb/sec (30165120bps) errors: 0`.
pub fn parse_pktgen(console: &str) -> Option<(f64, f64, f64)> {
    let result = console
        .split("XDPLB-PKTGEN-RESULT")
        .nth(1)?
        .split("XDPLB-PKTGEN-END")
        .next()?;
    let pps = result
        .split_whitespace()
        .find_map(|w| w.strip_suffix("pps")?.parse().ok())?;
    let line = result
        .lines()
        .find_map(|l| l.trim().strip_prefix("Result: OK:"))?;
    let usec = line.split('(').next()?.trim().parse().ok()?;
    let sent = line
        .split(", ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((pps, sent, usec))
}

#[cfg(test)]
mod tests {
    #[test]
    fn pktgen_result_is_parsed_from_the_console() {
        let console = "noise\nXDPLB-PKTGEN-RESULT\nParams: count 500000\n  pkts-sofar: 500000  errors: 0\n\
                       Result: OK: 7956168(c7942409+d13758) usec, 500000 (60byte,0frags)\n  62844pps 30Mb/sec (30165120bps) errors: 0\n\
                       XDPLB-PKTGEN-END\n[   10.78] reboot: Power down\n";
        assert_eq!(
            super::parse_pktgen(console),
            Some((62844.0, 500000.0, 7956168.0))
        );
        assert_eq!(
            super::parse_pktgen("XDPLB-PKTGEN-RESULT\nResult: ERROR\nXDPLB-PKTGEN-END"),
            None
        );
    }
}

