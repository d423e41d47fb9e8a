//! `--pktgen-vm`: the users' "benchmark with pktgen in a VM" workflow, as a
//! check that it works with xdplb, not as the headline rate. A Debian kernel
//! (from the linux-image package, unpacked under `target/bench/vm/`, never
//! installed) boots in QEMU (TCG: this host's /dev/kvm is a paravirtual kind
//! a stock kernel cannot use) with a busybox initramfs whose /init loads
//! virtio_net and pktgen and sends UDP to a service VIP through virtio-net
//! into a tap device, on which our XDP program runs in a namespace. The
//! figures: pps pktgen reports, packets XDP saw and rewrote, packets the
//! kernel forwarded to the backend.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};
use lb_common::{counter, IPPROTO_UDP};
use serde_json::json;

use super::report::Report;
use crate::{
    lb::Lb,
    netns::Netns,
    services::{contents, Svc},
};

const TAP: &str = "xlbtap0";
const TAP_MAC: &str = "02:00:00:00:07:01";
const VIP: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 96, 0, 10);
const BACKEND: std::net::Ipv4Addr = std::net::Ipv4Addr::new(10, 0, 9, 2);

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The unpacked kernel package under `dir`: (vmlinuz, modules dir).
fn kernel(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let root = dir.join("root");
    if !root.join("boot").exists() {
        std::fs::create_dir_all(dir)?;
        // linux-image-amd64 is a metapackage: the image is its dependency.
        let deps = sh(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
        let pkg = deps
            .lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .find(|p| p.starts_with("linux-image-"))
            .context("no linux-image-* dependency of linux-image-amd64")?
            .to_string();
        eprintln!("vm: apt-get download {pkg}");
        sh(Command::new("apt-get")
            .args(["download", &pkg])
            .current_dir(dir))?;
        let deb = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("downloaded .deb")?;
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    let vmlinuz = std::fs::read_dir(root.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .context("no vmlinuz in the package")?;
    let ver = vmlinuz
        .file_name()
        .unwrap()
        .to_string_lossy()
        .trim_start_matches("vmlinuz-")
        .to_string();
    Ok((vmlinuz, root.join("lib/modules").join(ver)))
}

/// `name`'s module file and those of its dependencies, dependencies first.
fn with_deps(modules: &Path, name: &str, out: &mut Vec<PathBuf>) -> Result<()> {
    let file = find_module(modules, name)?;
    let Some(file) = file else { return Ok(()) }; // built in
    if out.contains(&file) {
        return Ok(());
    }
    let deps = sh(Command::new("modinfo").args(["-F", "depends"]).arg(&file))?;
    for d in deps.trim().split(',').filter(|d| !d.is_empty()) {
        with_deps(modules, d, out)?;
    }
    out.push(file);
    Ok(())
}

fn find_module(modules: &Path, name: &str) -> Result<Option<PathBuf>> {
    let want: Vec<String> = [name.to_string(), name.replace('_', "-")]
        .into_iter()
        .collect();
    let mut stack = vec![modules.join("kernel")];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d)?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Some(f) = p.file_name().and_then(|f| f.to_str()) {
                let stem = f.split(".ko").next().unwrap_or("");
                if f.contains(".ko") && want.iter().any(|w| w == stem) {
                    return Ok(Some(p));
                }
            }
        }
    }
    Ok(None)
}

/// A gzip'd newc cpio with busybox, the modules (decompressed) and /init.
fn initramfs(dir: &Path, modules: &Path, count: u64) -> Result<PathBuf> {
    let tree = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "m"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox-static not installed")?;
    std::fs::copy(busybox, tree.join("bin/busybox"))?;
    let mut files = Vec::new();
    for m in ["virtio_pci", "virtio_net", "pktgen"] {
        with_deps(modules, m, &mut files)?;
    }
    let mut names = Vec::new();
    for f in &files {
        let fname = f.file_name().unwrap().to_string_lossy().to_string();
        let plain = fname.split(".ko").next().unwrap().to_string() + ".ko";
        let dst = tree.join("m").join(&plain);
        if fname.ends_with(".xz") {
            let out = sh(Command::new("sh").arg("-c").arg(format!(
                "xz -dc '{}' > '{}'",
                f.display(),
                dst.display()
            )));
            out?;
        } else if fname.ends_with(".zst") {
            sh(Command::new("sh").arg("-c").arg(format!(
                "zstd -qdc '{}' > '{}'",
                f.display(),
                dst.display()
            )))?;
        } else {
            std::fs::copy(f, &dst)?;
        }
        names.push(plain);
    }
    let init = format!(
        "#!/bin/busybox sh\n/bin/busybox --install -s /bin\nmount -t proc proc /proc\nmount -t sysfs sys /sys\n\
         for m in {mods}; do insmod /m/$m || echo \"insmod $m failed\"; done\n\
         ip link set eth0 up\nip addr add 192.168.7.2/24 dev eth0\nsleep 1\n\
         echo 'add_device eth0' > /proc/net/pktgen/kpktgend_0\n\
         c=/proc/net/pktgen/eth0\n\
         for l in 'count {count}' 'pkt_size 60' 'delay 0' 'dst {VIP}' 'dst_mac {TAP_MAC}' 'udp_dst_min 80' 'udp_dst_max 80' \
         'udp_src_min 1024' 'udp_src_max 65000' 'flag UDPSRC_RND' 'src_min 192.168.7.2' 'src_max 192.168.7.2'; do echo \"$l\" > $c; done\n\
         echo XDPLB-PKTGEN-START\necho start > /proc/net/pktgen/pgctrl\n\
         echo XDPLB-PKTGEN-RESULT; cat $c\necho XDPLB-PKTGEN-END\npoweroff -f\n",
        mods = names.join(" "),
    );
    std::fs::write(tree.join("init"), init)?;
    std::fs::set_permissions(
        tree.join("init"),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    let img = dir.join("initramfs.cpio.gz");
    sh(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        tree.display(),
        img.display()
    )))?;
    Ok(img)
}

pub fn run(out_dir: &Path, count: u64, r: &mut Report) -> Result<()> {
    let dir = out_dir.join("vm");
    let (vmlinuz, modules) = kernel(&dir)?;
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
    crate::topology::veth(&ns, "be0", &backend, "eth0");
    crate::topology::addr_up(&ns, "be0", "10.0.9.1/24");
    crate::topology::addr_up(&backend, "eth0", &format!("{BACKEND}/24"));
    let mut lb = Lb::attach(&ns, TAP, &[]);
    lb.program(&contents(&[Svc::new(
        1,
        IPPROTO_UDP,
        lb_common::algorithm::RANDOM,
    )
    .frontend(VIP, 80)
    .backend(1, BACKEND, 8080)]));

    let log = dir.join("qemu.log");
    let start = Instant::now();
    let mut child = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", ns.name()))
        .args([
            "qemu-system-x86_64",
            "-accel",
            "tcg",
            "-m",
            "512",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
            "-kernel",
        ])
        .arg(&vmlinuz)
        .arg("-initrd")
        .arg(&img)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={TAP},script=no,downscript=no"),
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:00:07:02",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (provisioned by `cargo xtask bench --pktgen-vm`)")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the VM did not finish within 300 s; see {}", log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let wall = start.elapsed().as_secs_f64();
    let text = std::fs::read_to_string(&log)?;
    ensure!(
        status.success(),
        "qemu failed ({status}); see {}",
        log.display()
    );
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
    let cond = json!({"accel": "tcg", "kernel": vmlinuz.file_name().unwrap().to_string_lossy(), "frames": count, "frame_bytes": 60,
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

    #[test]
    fn modules_are_found_by_name_with_dashes_or_underscores_and_compressed() {
        let dir = std::env::temp_dir().join(format!("xlbb-{}-mods", std::process::id()));
        let k = dir.join("kernel/drivers/net");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("virtio_net.ko.xz"), b"").unwrap();
        std::fs::write(k.join("net-failover.ko"), b"").unwrap();
        assert_eq!(
            super::find_module(&dir, "virtio_net").unwrap(),
            Some(k.join("virtio_net.ko.xz"))
        );
        assert_eq!(
            super::find_module(&dir, "net_failover").unwrap(),
            Some(k.join("net-failover.ko"))
        );
        assert_eq!(
            super::find_module(&dir, "virtio").unwrap(),
            None,
            "virtio_net is not virtio"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
