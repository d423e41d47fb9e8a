//! Booting a Debian kernel in QEMU: the kernel package downloaded with
//! `apt-get download` and unpacked (never installed), a busybox initramfs
//! with the modules it needs, QEMU under KVM where /dev/kvm can run the
//! guest and TCG otherwise ([`accel`]; this host's /dev/kvm is a
//! paravirtual kind a stock kernel cannot use). Used by the pktgen bench
//! (the bench crate's `vm`) and the `--kernels` test tier (tests/tests/kernels.rs).
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

pub fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The image package `linux-image-amd64` (a metapackage) depends on: the
/// distribution's current kernel.
pub fn default_kernel_package() -> Result<String> {
    let deps = sh(Command::new("apt-cache").args(["depends", "linux-image-amd64"]))?;
    deps.lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .map(str::to_string)
        .context("no linux-image-* dependency of linux-image-amd64")
}

/// The newest `linux-image-<series>.0-N-amd64` apt knows (e.g. series "6.1":
/// Debian 12's kernel, whichever suites the host has besides).
pub fn kernel_package(series: &str) -> Result<String> {
    let prefix = format!("linux-image-{series}.0-");
    // The metapackage's choice first, when it is of that series.
    if let Ok(p) = default_kernel_package() {
        if p.starts_with(&prefix) && p.ends_with("-amd64") {
            return Ok(p);
        }
    }
    let pattern = format!("^linux-image-{}\\.0-[0-9]+-amd64$", series.replace('.', "\\."));
    let found = sh(Command::new("apt-cache").args(["search", "--names-only", &pattern]))?;
    found
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .max_by_key(|p| p.trim_start_matches(&prefix).trim_end_matches("-amd64").parse::<u32>().unwrap_or(0))
        .map(str::to_string)
        .with_context(|| format!("apt knows no {prefix}N-amd64 package (apt-get update? a Debian 12 source?)"))
}

/// Package `pkg` unpacked under `dir` (downloaded on first use): (vmlinuz,
/// modules dir).
pub fn kernel(dir: &Path, pkg: &str) -> Result<(PathBuf, PathBuf)> {
    let root = dir.join("root");
    if !root.join("boot").exists() {
        std::fs::create_dir_all(dir)?;
        eprintln!("vm: apt-get download {pkg}");
        sh(Command::new("apt-get").args(["download", pkg]).current_dir(dir))?;
        let deb = std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .context("downloaded .deb")?;
        sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        let _ = std::fs::remove_file(&deb);
    }
    let vmlinuz = std::fs::read_dir(root.join("boot"))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-")))
        .context("no vmlinuz in the package")?;
    let ver = vmlinuz.file_name().unwrap().to_string_lossy().trim_start_matches("vmlinuz-").to_string();
    Ok((vmlinuz, root.join("lib/modules").join(ver)))
}

/// `name`'s module file and those of its dependencies, dependencies first.
pub fn with_deps(modules: &Path, name: &str, out: &mut Vec<PathBuf>) -> Result<()> {
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

pub fn find_module(modules: &Path, name: &str) -> Result<Option<PathBuf>> {
    let want: Vec<String> = [name.to_string(), name.replace('_', "-")].into_iter().collect();
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

/// A gzip'd newc cpio at `dir`/initramfs.cpio.gz with busybox, the modules
/// `mods` and their dependencies (decompressed, under /m) and `init` as
/// /init. `init` finds the modules, in load order, in `$MODULES`.
pub fn initramfs(dir: &Path, modules: &Path, mods: &[&str], init: &str) -> Result<PathBuf> {
    let tree = dir.join("initramfs");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "proc", "sys", "dev", "m", "host"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .context("busybox-static not installed")?;
    std::fs::copy(busybox, tree.join("bin/busybox"))?;
    let mut files = Vec::new();
    for m in mods {
        with_deps(modules, m, &mut files)?;
    }
    let mut names = Vec::new();
    for f in &files {
        let fname = f.file_name().unwrap().to_string_lossy().to_string();
        let plain = fname.split(".ko").next().unwrap().to_string() + ".ko";
        let dst = tree.join("m").join(&plain);
        if fname.ends_with(".xz") {
            sh(Command::new("sh").arg("-c").arg(format!("xz -dc '{}' > '{}'", f.display(), dst.display())))?;
        } else if fname.ends_with(".zst") {
            sh(Command::new("sh").arg("-c").arg(format!("zstd -qdc '{}' > '{}'", f.display(), dst.display())))?;
        } else {
            std::fs::copy(f, &dst)?;
        }
        names.push(plain);
    }
    let init = format!("#!/bin/busybox sh\nMODULES='{}'\n{init}", names.join(" "));
    std::fs::write(tree.join("init"), init)?;
    std::fs::set_permissions(tree.join("init"), std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let img = dir.join("initramfs.cpio.gz");
    sh(Command::new("sh").arg("-c").arg(format!(
        "cd '{}' && find . | cpio -o -H newc --quiet | gzip -1 > '{}'",
        tree.display(),
        img.display()
    )))?;
    Ok(img)
}

/// Host directories the guest sees at their own paths, each shared on its
/// own over 9p: the guest mounts fresh tmpfs on /tmp and /run over the
/// host's root, which would hide a checkout or target dir under them.
pub struct Shares(Vec<PathBuf>);

impl Shares {
    /// The fewest directories that cover `dirs` (one inside another is
    /// covered by it); relative paths are made absolute.
    pub fn covering(dirs: &[&Path]) -> Result<Shares> {
        let mut all = Vec::new();
        for d in dirs {
            let d = std::path::absolute(d).with_context(|| format!("making {} absolute", d.display()))?;
            if d.to_string_lossy().contains(['\'', '\n']) {
                bail!("{} cannot be shared with the VM: its path has a quote or a newline", d.display());
            }
            all.push(d);
        }
        all.sort();
        let mut out: Vec<PathBuf> = Vec::new();
        for d in all {
            if !out.iter().any(|o| d.starts_with(o)) {
                out.push(d);
            }
        }
        Ok(Shares(out))
    }

    pub fn dirs(&self) -> &[PathBuf] {
        &self.0
    }

    /// QEMU's `-virtfs` arguments, read-only, tags `xdplb0`, `xdplb1`, ...
    pub fn qemu_args(&self) -> Vec<String> {
        self.0
            .iter()
            .enumerate()
            .flat_map(|(i, d)| {
                // QEMU's option syntax escapes a comma by doubling it.
                let path = d.to_string_lossy().replace(',', ",,");
                ["-virtfs".to_string(), format!("local,path={path},mount_tag=xdplb{i},security_model=none,readonly=on,multidevs=remap")]
            })
            .collect()
    }

    /// /init lines mounting each share at its own path under `root` (run
    /// after the tmpfs mounts, so that they cover them); a failed mount
    /// prints `XDPLB-VM-NO-SHARE <dir>`.
    pub fn mount_script(&self, root: &str) -> String {
        self.0
            .iter()
            .enumerate()
            .map(|(i, d)| {
                let at = format!("{root}{}", d.display());
                format!(
                    "mkdir -p '{at}' 2>/dev/null; mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose xdplb{i} '{at}' || echo 'XDPLB-VM-NO-SHARE {}'\n",
                    d.display()
                )
            })
            .collect()
    }
}

/// How to boot: kernel, initramfs, memory, CPUs, extra QEMU arguments.
pub struct Boot<'a> {
    pub vmlinuz: &'a Path,
    pub initrd: &'a Path,
    pub mem_mb: u32,
    pub cpus: u32,
    pub extra: Vec<String>,
    /// A command that wraps QEMU (e.g. nsenter into a namespace).
    pub wrap: Vec<String>,
    pub timeout: Duration,
}

/// The accelerator guests run under: `"kvm"` when /dev/kvm can run a stock
/// kernel, `"tcg"` otherwise. A PVM /dev/kvm (this host's) opens and QEMU
/// starts, but the guest's kernel never prints a line; so the probe boots
/// `vmlinuz` under KVM and waits up to 5 s for its first console line
/// (under real KVM it comes in well under a second). The answer is kept
/// per host boot under the temp dir, so a run of many VMs probes once.
pub fn accel(vmlinuz: &Path) -> &'static str {
    static ACCEL: std::sync::OnceLock<&'static str> = std::sync::OnceLock::new();
    ACCEL.get_or_init(|| {
        let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let cache = std::env::temp_dir().join(format!("xdplb-vm-accel-{}", boot_id.trim()));
        match std::fs::read_to_string(&cache).as_deref() {
            Ok("kvm") => return "kvm",
            Ok("tcg") => return "tcg",
            _ => {}
        }
        let found = if kvm_runs_guest(vmlinuz) { "kvm" } else { "tcg" };
        // Only a cache: a probe next time if it cannot be written.
        let _ = std::fs::write(&cache, found);
        found
    })
}

fn kvm_runs_guest(vmlinuz: &Path) -> bool {
    let Ok(dev) = std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") else { return false };
    drop(dev);
    let log = std::env::temp_dir().join(format!("xdplb-kvm-probe-{}.log", std::process::id()));
    let Ok(out) = std::fs::File::create(&log) else { return false };
    let child = Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-cpu", "host", "-m", "128", "-nographic", "-no-reboot", "-nic", "none", "-kernel"])
        .arg(vmlinuz)
        .args(["-append", "console=ttyS0 panic=-1"])
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::null())
        .spawn();
    let Ok(mut child) = child else { return false };
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut ok = false;
    while Instant::now() < deadline {
        if std::fs::read_to_string(&log).is_ok_and(|t| t.contains("Linux version")) {
            ok = true;
            break;
        }
        if child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_file(&log);
    ok
}

/// Boots and waits for the guest to power off; the console goes to `log`.
/// Returns the console text and the wall time.
pub fn boot(b: &Boot, log: &Path) -> Result<(String, Duration)> {
    let start = Instant::now();
    let (prog, pre) = match b.wrap.split_first() {
        Some((p, rest)) => (p.as_str(), rest.iter().map(String::as_str).chain(["qemu-system-x86_64"]).collect::<Vec<_>>()),
        None => ("qemu-system-x86_64", vec![]),
    };
    let mut child = Command::new(prog)
        .args(pre)
        .args(accel_args(accel(b.vmlinuz)))
        .args(["-m", &b.mem_mb.to_string(), "-smp", &b.cpus.to_string()])
        .args(["-nographic", "-no-reboot", "-kernel"])
        .arg(b.vmlinuz)
        .arg("-initrd")
        .arg(b.initrd)
        .args(&b.extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(log)?)
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting qemu-system-x86_64 (apt-get install qemu-system-x86; `cargo xtask` provisions it)")?;
    let deadline = start + b.timeout;
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("the VM did not finish within {:?}; see {}", b.timeout, log.display());
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(log)?;
    if !status.success() {
        bail!("qemu failed ({status}); see {}", log.display());
    }
    Ok((text, start.elapsed()))
}

/// QEMU's arguments for `accel` (KVM with the host's CPU model).
fn accel_args(accel: &str) -> &'static [&'static str] {
    if accel == "kvm" {
        &["-accel", "kvm", "-cpu", "host"]
    } else {
        &["-accel", "tcg"]
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn shares_cover_nested_dirs_once_and_mount_at_their_own_paths() {
        use std::path::Path;
        let s = super::Shares::covering(&[
            Path::new("/tmp/ci/target"),
            Path::new("/tmp/ci"),
            Path::new("/srv/t,x/debug"),
            Path::new("/tmp/cix"),
        ])
        .unwrap();
        let dirs: Vec<&str> = s.dirs().iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(dirs, ["/srv/t,x/debug", "/tmp/ci", "/tmp/cix"], "/tmp/ci covers its target, not /tmp/cix");
        let args = s.qemu_args();
        assert_eq!(args.len(), 6);
        assert_eq!(args[1], "local,path=/srv/t,,x/debug,mount_tag=xdplb0,security_model=none,readonly=on,multidevs=remap");
        let script = s.mount_script("/host");
        assert!(script.contains("mkdir -p '/host/tmp/ci' 2>/dev/null; mount -t 9p"), "{script}");
        assert!(script.contains(" xdplb1 '/host/tmp/ci' || echo 'XDPLB-VM-NO-SHARE /tmp/ci'"), "{script}");
        assert_eq!(script.lines().count(), 3);
        assert!(super::Shares::covering(&[Path::new("/tmp/it's")]).is_err(), "a quote would break the script");
    }

    #[test]
    fn modules_are_found_by_name_with_dashes_or_underscores_and_compressed() {
        let dir = std::env::temp_dir().join(format!("xlbb-{}-mods", std::process::id()));
        let k = dir.join("kernel/drivers/net");
        std::fs::create_dir_all(&k).unwrap();
        std::fs::write(k.join("virtio_net.ko.xz"), b"").unwrap();
        std::fs::write(k.join("net-failover.ko"), b"").unwrap();
        assert_eq!(super::find_module(&dir, "virtio_net").unwrap(), Some(k.join("virtio_net.ko.xz")));
        assert_eq!(super::find_module(&dir, "net_failover").unwrap(), Some(k.join("net-failover.ko")));
        assert_eq!(super::find_module(&dir, "virtio").unwrap(), None, "virtio_net is not virtio");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
