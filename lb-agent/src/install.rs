//! `lb-agent install` and `lb-agent uninstall`: xdplb on a plain node,
//! without Kubernetes (labs, the benchmark VM). Install copies this binary,
//! writes a systemd unit whose ExecStart is `lb-agent run` with the options
//! given, and makes the objects directory the file source follows. Uninstall
//! removes the same files, the pinned maps and links and the netlink tc
//! filters, which detaches the programs: the node is left as it was.
//!
//! Both work under `--root DIR` (an image being built, a test's temporary
//! directory); only the pinned objects are always the live kernel's.
use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::Parser as _;

use crate::cli::{Cli, Command as CliCommand, InstallArgs, UninstallArgs};

/// Where each installed file goes, relative to `--root`.
pub const BIN_PATH: &str = "usr/local/bin/lb-agent";
pub const UNIT_PATH: &str = "etc/systemd/system/xdplb.service";
pub const CONFIG_DIR: &str = "etc/xdplb";
/// The default file source: a directory, so `kubectl get ... -o yaml`
/// exports can be dropped in side by side; followed live.
pub const DEFAULT_SOURCE: &str = "file:/etc/xdplb/objects";
/// The unit's name, as `systemctl` spells it.
pub const UNIT: &str = "xdplb.service";

pub fn install(a: InstallArgs) -> Result<()> {
    let run = run_options(&a.run)?;
    let bin = std::env::current_exe().context("locating this lb-agent binary")?;
    let dest = a.root.join(BIN_PATH);
    copy_binary(&bin, &dest)?;
    let unit = a.root.join(UNIT_PATH);
    write_file(&unit, &unit_text(&run))?;
    let objects = a.root.join(CONFIG_DIR).join("objects");
    std::fs::create_dir_all(&objects).with_context(|| format!("creating {}", objects.display()))?;

    let under = if a.root == Path::new("/") {
        String::new()
    } else {
        format!(" (under {})", a.root.display())
    };
    println!("installed{under}:");
    println!("  /{BIN_PATH}");
    println!("  /{UNIT_PATH}");
    println!(
        "  /{CONFIG_DIR}/objects/   Service, EndpointSlice and Node YAML go here (followed live)"
    );
    if let Some(src) =
        source_path(&run).filter(|p| !a.root.join(p.strip_prefix("/").unwrap_or(p)).exists())
    {
        println!(
            "note: --source {} does not exist yet; the agent refuses to start until it does",
            src.display()
        );
    }
    println!("next:");
    println!("  systemctl daemon-reload && systemctl enable --now xdplb");
    println!(
        "  lb-agent doctor {}   # kernel, privileges, bpffs, interfaces",
        ifaces(&run)
            .iter()
            .map(|i| format!("--iface {i}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!("  lb-agent services            # what is programmed");
    Ok(())
}

pub fn uninstall(a: UninstallArgs) -> Result<()> {
    let unit = a.root.join(UNIT_PATH);
    // Stop the agent first: a running agent would keep its programs attached
    // through its own file descriptors after the pins are gone.
    if a.root == Path::new("/") && Path::new("/run/systemd/system").exists() && unit.exists() {
        let ok = Command::new("systemctl")
            .args(["disable", "--now", UNIT])
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            bail!(
                "`systemctl disable --now {UNIT}` failed: stop the agent, then run uninstall again"
            );
        }
    }
    let mut removed = Vec::new();
    for f in [unit.clone(), a.root.join(BIN_PATH)] {
        if remove_if_present(&f, false)? {
            removed.push(f.display().to_string());
        }
    }
    if !a.keep_config && remove_if_present(&a.root.join(CONFIG_DIR), true)? {
        removed.push(a.root.join(CONFIG_DIR).display().to_string());
    }
    // The service names the CLI shows belong to the pinned maps.
    lb_agent::ops::names::remove(&a.pin_path);
    // Netlink tc filters (kernels without TCX) have no pins: they are found
    // on this namespace's interfaces by their priority, handle and name.
    let filters = lb_agent::links::remove_netlink_filters().context("removing xdplb's tc filters")?;
    if filters > 0 {
        removed.push(format!("{filters} tc filter(s) of xdplb (programs detached)"));
    }
    if remove_pins(&a.pin_path)? {
        removed.push(format!(
            "{} (maps unpinned, programs detached)",
            a.pin_path.display()
        ));
    }
    if a.root == Path::new("/") && Path::new("/run/systemd/system").exists() {
        let _ = Command::new("systemctl").arg("daemon-reload").status();
    }
    if removed.is_empty() {
        println!("nothing to remove: xdplb is not installed");
    } else {
        println!("removed:");
        for r in removed {
            println!("  {r}");
        }
    }
    Ok(())
}

/// The unit's `run` options: `given`, checked by the `run` parser itself (so
/// a typo fails now, not at boot), with the default source if none is given.
pub fn run_options(given: &[String]) -> Result<Vec<String>> {
    if let Some(r) = given
        .iter()
        .find(|a| *a == "--root" || a.starts_with("--root="))
    {
        bail!("{r}: put --root before the run options (`lb-agent install --root DIR --iface eth0 ...`)");
    }
    let mut run = given.to_vec();
    if !run
        .iter()
        .any(|a| a == "--source" || a.starts_with("--source="))
    {
        run.push(format!("--source={DEFAULT_SOURCE}"));
    }
    let argv = ["lb-agent", "run"]
        .into_iter()
        .map(String::from)
        .chain(run.iter().cloned())
        .map(OsString::from);
    match Cli::try_parse_from(argv) {
        Ok(Cli {
            command: CliCommand::Run(_),
            ..
        }) => Ok(run),
        Ok(_) => bail!("not options of `lb-agent run`: {}", given.join(" ")),
        Err(e) => bail!(
            "the run options are not valid for `lb-agent run`:\n{}",
            e.render()
        ),
    }
}

/// The systemd unit that runs `lb-agent run <run>`.
pub fn unit_text(run: &[String]) -> String {
    let exec = std::iter::once(format!("/{BIN_PATH}"))
        .chain(std::iter::once("run".to_string()))
        .chain(run.iter().map(|a| systemd_quote(a)))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "\
# Written by `lb-agent install`; `lb-agent uninstall` removes it.
[Unit]
Description=xdplb service load balancer (lb-agent)
# The uplink must exist and have its address before XDP attaches to it.
After=network-online.target
Wants=network-online.target

[Service]
Type=exec
ExecStart={exec}
# Programs stay attached and maps pinned while the agent is down, so a
# restart loses no flow; come back quickly all the same.
Restart=always
RestartSec=2
# SIGTERM: the agent stops, leaving programs attached and maps pinned.
KillSignal=SIGTERM
Environment=RUST_LOG=info
# Root, but only the capabilities the agent needs: CAP_BPF (maps, programs),
# CAP_NET_ADMIN (XDP and tc attach), CAP_SYS_ADMIN (bpffs mount, pinning,
# other programs' ids). No memlock limit to lift: kernels >= 5.11 (we need
# 5.15) charge BPF memory to the cgroup, not RLIMIT_MEMLOCK.
CapabilityBoundingSet=CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN
AmbientCapabilities=CAP_BPF CAP_NET_ADMIN CAP_SYS_ADMIN
NoNewPrivileges=yes
# No ProtectHome/PrivateTmp: a --source under /home or /tmp must stay readable.

[Install]
WantedBy=multi-user.target
"
    )
}

/// `arg` as one ExecStart word: systemd splits on whitespace, honours
/// quotes and backslashes, and expands `%` specifiers and `$` variables.
pub fn systemd_quote(arg: &str) -> String {
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    if !escaped.is_empty()
        && !escaped
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'))
    {
        return escaped;
    }
    let inner = escaped.replace('\\', "\\\\").replace('"', "\\\"");
    format!("\"{inner}\"")
}

/// The `--source file:<path>` of the run options, if a file source.
fn source_path(run: &[String]) -> Option<PathBuf> {
    let mut it = run.iter();
    while let Some(a) = it.next() {
        let v = match a.strip_prefix("--source=") {
            Some(v) => v.to_string(),
            None if a == "--source" => it.next()?.clone(),
            None => continue,
        };
        return v.strip_prefix("file:").map(PathBuf::from);
    }
    None
}

fn ifaces(run: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    let mut it = run.iter();
    while let Some(a) = it.next() {
        if let Some(v) = a.strip_prefix("--iface=") {
            out.push(v.to_string());
        } else if a == "--iface" {
            out.extend(it.next().cloned());
        }
    }
    out
}

/// Copies through a temporary file and a rename: replacing the binary of a
/// running agent in place fails (ETXTBSY), a rename does not.
fn copy_binary(from: &Path, to: &Path) -> Result<()> {
    if std::fs::canonicalize(from).ok() == std::fs::canonicalize(to).ok() && to.exists() {
        return Ok(()); // Already installed there: nothing to copy.
    }
    let dir = to.parent().context("binary path has no parent")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let tmp = dir.join(".lb-agent.tmp");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::rename(&tmp, to)
        .with_context(|| format!("moving the binary into {}", to.display()))?;
    Ok(())
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn remove_if_present(path: &Path, dir: bool) -> Result<bool> {
    let r = if dir {
        std::fs::remove_dir_all(path)
    } else {
        std::fs::remove_file(path)
    };
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).with_context(|| format!("removing {}", path.display())),
    }
}

/// Removes the pin directory: links first (each unpinned link detaches its
/// program, with no agent holding it), then the maps. Only on a bpffs: a
/// wrong --pin-path must not delete an ordinary directory.
fn remove_pins(pin_dir: &Path) -> Result<bool> {
    if !pin_dir.exists() {
        return Ok(false);
    }
    if !lb_agent::loader::is_bpffs(pin_dir) {
        bail!(
            "{} is not on a bpffs: not removing it (pass the --pin-path given to `lb-agent run`)",
            pin_dir.display()
        );
    }
    remove_if_present(&lb_agent::pins::links_dir(pin_dir), true)?;
    remove_if_present(pin_dir, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn run_options_are_checked_and_get_the_default_source() {
        let run = run_options(&s(&["--iface", "eth0", "--pod-iface", "veth*"])).unwrap();
        assert_eq!(
            run,
            s(&[
                "--iface",
                "eth0",
                "--pod-iface",
                "veth*",
                "--source=file:/etc/xdplb/objects"
            ])
        );
        let given = s(&["--iface=eth0", "--source", "file:/srv/objects.yaml"]);
        assert_eq!(
            run_options(&given).unwrap(),
            given,
            "a given source is kept"
        );
        let err = run_options(&s(&["--iface", "eth0", "--xdp-mode", "fast"])).unwrap_err();
        assert!(format!("{err:#}").contains("--xdp-mode"), "{err:#}");
        assert!(
            run_options(&s(&["--source=file:/x"])).is_err(),
            "--iface is required by run"
        );
        let err = run_options(&s(&["--iface", "eth0", "--root", "/mnt"])).unwrap_err();
        assert!(format!("{err:#}").contains("put --root before"), "{err:#}");
    }

    #[test]
    fn exec_start_words_survive_systemd_splitting() {
        assert_eq!(systemd_quote("veth*"), "veth*");
        assert_eq!(systemd_quote("a b"), "\"a b\"");
        assert_eq!(systemd_quote("100%"), "100%%");
        assert_eq!(systemd_quote("$HOME"), "$$HOME");
        assert_eq!(systemd_quote(r#"x"y"#), r#""x\"y""#);
        let unit = unit_text(&s(&["--iface", "eth0", "--source=file:/etc/xdplb/objects"]));
        assert!(unit.contains("\nExecStart=/usr/local/bin/lb-agent run --iface eth0 --source=file:/etc/xdplb/objects\n"), "{unit}");
        assert!(
            unit.contains("\nRestart=always\n") && unit.contains("\nAfter=network-online.target\n"),
            "{unit}"
        );
    }
}
