//! Loading the embedded eBPF object, pinning its maps, attaching programs.
use std::path::{Path, PathBuf};

use aya::{
    maps::ProgramArray,
    programs::{CgroupSockAddr, Program, SchedClassifier, TcAttachType, Xdp, XdpMode},
    util::KernelVersion,
    Ebpf, EbpfLoader,
};
use lb_common::maps::{self, programs};

use crate::{
    links, migrate,
    pins::{links_dir, next_path, program, ProgramLookupError},
};

/// Why the programs could not be loaded, each with the fix where there is one.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{} is not on a bpffs: mount one (`mount -t bpf bpf {}`) or choose a --pin-path under /sys/fs/bpf", .pin_dir.display(), .parent.display())]
    NotBpffs { pin_dir: PathBuf, parent: PathBuf },
    /// `reason` is printed in the message, not as a cause: the fix follows it.
    #[error("bpffs is not mounted at /sys/fs/bpf and mounting it failed ({reason}): run `mount -t bpf bpf /sys/fs/bpf` as root")]
    MountBpffs { reason: std::io::Error },
    #[error("creating {}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A pinned map of another layout, or its migration failed.
    #[error(transparent)]
    Pinned(#[from] migrate::Error),
    #[error("loading the eBPF object (its maps and BTF) into the kernel")]
    Object(#[source] aya::EbpfError),
    #[error(transparent)]
    Program(#[from] ProgramLookupError),
    /// The verifier refused a program. The message shows the tail of its
    /// log, where the reason is: aya's own message embeds the whole log,
    /// which runs to thousands of lines.
    #[error(
        "verifier rejected {program}: the kernel refused the program ({io_error}); last {VERIFIER_TAIL_LINES} lines of the verifier log:\n{log_tail}\n\
         This build does not fit this kernel: report it with `uname -r` and the lines above"
    )]
    Rejected {
        program: String,
        io_error: std::io::Error,
        log_tail: String,
    },
    /// Loading a program failed without a verifier log (or its fd could not
    /// be had).
    #[error("verifier rejected {program}")]
    Verifier {
        program: String,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A program array a hook tail-calls its IPv6 instance through.
    #[error("filling {array} with its IPv6 program")]
    FamilyArray {
        array: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("map {array} missing from the eBPF object")]
    FamilyArrayMissing { array: &'static str },
    /// Marking the pinned backends' ports in `reply_ports` (`replyports`).
    #[error("marking the pinned backends' ports in {}", maps::REPLY_PORTS)]
    ReplyPorts(#[source] std::io::Error),
    /// Marking the pinned frontends' ports in `service_ports` (`serviceports`).
    #[error("marking the pinned frontends' ports in {}", maps::SERVICE_PORTS)]
    ServicePorts(#[source] std::io::Error),
}

/// How many verifier log lines an error shows: the rejection reason is at
/// the end, and whole logs run to thousands of lines.
pub const VERIFIER_TAIL_LINES: usize = 20;

/// The last `n` non-empty lines of a verifier log.
pub fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Error {
    /// Why `program` did not load: with the verifier log's tail when the
    /// verifier refused it (the one place that explains a rejection, for
    /// `run` and `doctor` alike).
    pub fn program_load(program: &str, e: aya::programs::ProgramError) -> Self {
        match e {
            aya::programs::ProgramError::LoadError { io_error, verifier_log } => {
                Self::Rejected { program: program.into(), io_error, log_tail: log_tail(&verifier_log.to_string(), VERIFIER_TAIL_LINES) }
            }
            source => Self::Verifier { program: program.into(), source },
        }
    }
}

/// The eBPF object built by build.rs from lb-ebpf.
pub static BYTECODE: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/lb.o"));

/// Test-only programs of `cargo xtask bench` (lb-ebpf's `bench` binary).
#[cfg(feature = "bench")]
pub static BENCH_BYTECODE: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bench.o"));

// Where they were before `pins` existed; callers may name them either way.
pub use crate::pins::{MapSizes, DEFAULT_PIN_DIR};

/// Loads the programs; maps are pinned under `pin_dir`, reusing maps already
/// pinned there so a restart keeps every flow.
///
/// A pinned map is checked against what this build expects (aya does not):
/// a different type, key or value size is refused with an explanation; a
/// different size (e.g. a larger conntrack table) is migrated live: a new map
/// is created and filled from the old one, the pinned links switch to the new
/// programs, entries created meanwhile are copied again, and the new map takes
/// the old one's pin. A map of an earlier version's layout that this one
/// knows how to convert (`backends_v4` as a hash) goes the same way.
pub fn load(pin_dir: &Path, sizes: MapSizes) -> Result<Ebpf, Error> {
    load_object(BYTECODE, pin_dir, sizes)
}

/// As [`load`], from another build's object of the same layout: the bench
/// measures two dataplane builds with one binary this way (A/B runs).
pub fn load_object(bytecode: &[u8], pin_dir: &Path, sizes: MapSizes) -> Result<Ebpf, Error> {
    ensure_bpffs(pin_dir)?;
    std::fs::create_dir_all(pin_dir).map_err(|source| Error::CreateDir { path: pin_dir.to_path_buf(), source })?;
    let mut pins = Vec::new();
    let mut resized = Vec::new();
    for name in maps::ALL {
        let path = pin_dir.join(name);
        match migrate::check_pinned(&path, &migrate::expected(name, sizes))? {
            migrate::Pinned::Absent | migrate::Pinned::Matches => pins.push((*name, path)),
            migrate::Pinned::Resize { from } => {
                tracing::info!(map = name, from, to = migrate::expected(name, sizes).max_entries, "resizing pinned map; flows are kept");
                pins.push((*name, next_path(&path)));
                resized.push(*name);
            }
            migrate::Pinned::Convert { from } => {
                let to = migrate::expected(name, sizes);
                tracing::info!(map = name, ?from, to = ?to.map_type, max_entries = to.max_entries, "converting pinned map of an earlier version; flows are kept");
                pins.push((*name, next_path(&path)));
                resized.push(*name);
            }
        }
    }
    let mut loader = new_loader();
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    for name in maps::ALL {
        loader.map_max_entries(name, migrate::expected(name, sizes).max_entries);
    }
    let mut ebpf = loader.load(bytecode).map_err(Error::Object)?;
    let mut names = vec![programs::XDP_LB];
    names.extend(programs::XDP_TAIL.iter().map(|(name, _, _)| *name));
    names.extend([programs::TC_INGRESS, programs::TC_EGRESS]);
    names.extend(programs::TC_V6.iter().map(|(name, _)| *name));
    names.extend(programs::SOCK);
    load_programs(&mut ebpf, &names)?;
    // Each is loaded now; this checks that it is there and of its type.
    let _: &mut Xdp = program(&mut ebpf, programs::XDP_LB)?;
    for name in [programs::TC_INGRESS, programs::TC_EGRESS] {
        let _: &mut SchedClassifier = program(&mut ebpf, name)?;
    }
    for &name in programs::SOCK {
        let _: &mut CgroupSockAddr = program(&mut ebpf, name)?;
    }
    load_v6(&mut ebpf)?;
    // Before any program of this build is attached or relinked: the
    // replies of flows to the backends already pinned (an earlier agent's)
    // are found at tc egress.
    let map = ebpf.map(maps::REPLY_PORTS).ok_or(Error::FamilyArrayMissing { array: maps::REPLY_PORTS })?;
    crate::replyports::ReplyPorts::of_map(map).and_then(|rp| crate::replyports::seed(&rp, pin_dir)).map_err(Error::ReplyPorts)?;
    // And the frontends already pinned are looked up at XDP. (An object
    // without the map, an earlier build's in an A/B bench run, has no gate.)
    if let Some(map) = ebpf.map(maps::SERVICE_PORTS) {
        crate::portbits::PortBits::of_map(map).and_then(|sp| crate::serviceports::seed(&sp, pin_dir)).map_err(Error::ServicePorts)?;
    }
    if !resized.is_empty() {
        migrate::resize(&mut ebpf, pin_dir, &resized)?;
    }
    Ok(ebpf)
}

/// The programs that take the verifier longest, longest first (measured
/// on 6.18 with `RUST_LOG=lb_agent::loader=debug`: `tc_ingress_v6` 503k
/// verified instructions, `xdp_lb` 569k, `xdp_lb_v6` 455k, `tc_egress_v6`
/// 356k, `xdp_sctp_v6_nat` 270k, `tc_ingress` 214k; time is not quite in
/// proportion to the count). Only the order of loading: the rest follow
/// in `names` order.
const LONGEST_FIRST: &[&str] = &[
    programs::TC_INGRESS_V6,
    programs::XDP_LB,
    programs::XDP_LB_V6,
    programs::TC_EGRESS_V6,
    programs::TC_INGRESS,
    programs::XDP_SCTP_V6_NAT,
    programs::XDP_SCTP_V6,
    programs::TC_EGRESS,
];

/// Loads the programs `names` names (those the object has; the callers
/// check that each is there), on one thread per CPU: the kernel verifies
/// each program in the loading thread, and verifying them one after
/// another is most of a cold start (seconds; perf: `do_check_common`,
/// `states_equal`). The first failure in `names` order is the error.
fn load_programs(ebpf: &mut Ebpf, names: &[&'static str]) -> Result<(), Error> {
    // Longest first, each taken by whichever thread is free: a long one
    // started last would keep one thread busy after the others finished.
    let mut todo: Vec<(usize, &'static str, &mut Program)> = ebpf
        .programs_mut()
        .filter_map(|(n, p)| names.iter().position(|x| *x == n).map(|i| (i, names[i], p)))
        .collect();
    let rank = |name: &str| LONGEST_FIRST.iter().position(|x| *x == name).unwrap_or(LONGEST_FIRST.len());
    todo.sort_by_key(|(i, name, _)| std::cmp::Reverse((rank(name), *i)));
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, todo.len().max(1));
    let queue = std::sync::Mutex::new(todo);
    let next = || queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop();
    let load = || {
        let mut failed = Vec::new();
        while let Some((i, name, p)) = next() {
            let started = std::time::Instant::now();
            let r = match p {
                Program::Xdp(p) => p.load(),
                Program::SchedClassifier(p) => p.load(),
                Program::CgroupSockAddr(p) => p.load(),
                // Not of the type its caller expects: `program()` says so.
                _ => continue,
            };
            match r {
                // Where a cold start's time goes, program by program (the
                // instruction count from kernel 5.16 on).
                Ok(()) => tracing::debug!(
                    program = name,
                    verify_ms = started.elapsed().as_secs_f64() * 1e3,
                    verified_insns = p.info().ok().and_then(|i| i.verified_instruction_count()),
                    "program verified"
                ),
                Err(e) => failed.push((i, Error::program_load(name, e))),
            }
        }
        failed
    };
    let mut failed: Vec<(usize, Error)> = std::thread::scope(|s| {
        let helpers: Vec<_> = (1..threads).map(|_| s.spawn(load)).collect();
        let mut failed = load();
        for h in helpers {
            failed.extend(h.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        failed
    });
    failed.sort_by_key(|(i, _)| *i);
    match failed.into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

/// A loader of the object with its globals set for this kernel.
pub fn new_loader<'a>() -> EbpfLoader<'a> {
    static ON: u8 = 1;
    static OFF: u8 = 0;
    let mut loader = EbpfLoader::new();
    loader.override_global("SOCK_SET_RETVAL", if set_retval_supported() { &ON } else { &OFF }, true);
    loader
}

/// Whether the socket programs may call `bpf_set_retval` (kernel 5.18,
/// commit b44123b4a3dc): a refused node connect() then fails with
/// ECONNREFUSED, as kube-proxy's reject does; before, with EPERM.
pub fn set_retval_supported() -> bool {
    KernelVersion::current().is_ok_and(|v| v >= KernelVersion::new(5, 18, 0))
}

/// Loads the hooks' IPv6 instances (and IPv6 DSR's and SCTP's XDP programs) and puts each
/// in the program array that tail-calls it (the array may be a pinned one of
/// the previous agent: its entry is replaced, so IPv6 runs the new code).
fn load_v6(ebpf: &mut Ebpf) -> Result<(), Error> {
    let verifier = |program: &'static str| move |e| Error::program_load(program, e);
    let array_err = |array| move |source| Error::FamilyArray { array, source };
    let dup = |program: &'static str| move |source: std::io::Error| Error::program_load(program, aya::programs::ProgramError::from(source));
    // Loaded by `load_programs`.
    let mut fds = Vec::new();
    for &(name, array, index) in programs::XDP_TAIL {
        let p: &mut Xdp = program(ebpf, name)?;
        fds.push((array, index, p.fd().map_err(verifier(name))?.try_clone().map_err(dup(name))?));
    }
    for &(name, array) in programs::TC_V6 {
        let p: &mut SchedClassifier = program(ebpf, name)?;
        fds.push((array, 0, p.fd().map_err(verifier(name))?.try_clone().map_err(dup(name))?));
    }
    for (array, index, fd) in fds {
        let map = ebpf.map_mut(array).ok_or(Error::FamilyArrayMissing { array })?;
        let mut progs = ProgramArray::try_from(map).map_err(array_err(array))?;
        progs.set(index, &fd, 0).map_err(array_err(array))?;
    }
    Ok(())
}

/// Attaches to an uplink: XDP balances arriving service traffic, tc egress
/// rewrites replies leaving towards clients. With `pin_dir`, the links are
/// pinned there (they outlive the agent; a restart replaces the programs in
/// place) — without, they end with the process.
pub fn attach_uplink(ebpf: &mut Ebpf, iface: &str, mode: XdpMode, pin_dir: Option<&Path>) -> Result<(), links::Error> {
    let links = pin_dir.map(links_dir);
    links::attach_xdp(ebpf, iface, mode, links.as_deref())
        .map_err(|e| links::Error::Uplink { iface: iface.into(), mode: format!("{mode:?}"), source: Box::new(e) })?;
    links::attach_tc(ebpf, iface, programs::TC_EGRESS, TcAttachType::Egress, links.as_deref())
}

/// Attaches to the host side of a pod's veth: tc ingress balances what the
/// pod sends, tc egress rewrites replies going back to it. `pin_dir` as in
/// [`attach_uplink`].
pub fn attach_pod_iface(ebpf: &mut Ebpf, iface: &str, pin_dir: Option<&Path>) -> Result<(), links::Error> {
    let links = pin_dir.map(links_dir);
    links::attach_tc(ebpf, iface, programs::TC_INGRESS, TcAttachType::Ingress, links.as_deref())?;
    links::attach_tc(ebpf, iface, programs::TC_EGRESS, TcAttachType::Egress, links.as_deref())
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Makes sure the parent of `pin_dir` is a bpffs, mounting one at
/// /sys/fs/bpf when nothing is mounted there (as systemd does on most distros).
pub fn ensure_bpffs(pin_dir: &Path) -> Result<(), Error> {
    let parent = pin_dir.parent().unwrap_or(Path::new("/"));
    if is_bpffs(parent) {
        return Ok(());
    }
    let root = Path::new("/sys/fs/bpf");
    if parent != root {
        return Err(Error::NotBpffs { pin_dir: pin_dir.to_path_buf(), parent: parent.to_path_buf() });
    }
    std::fs::create_dir_all(root).ok();
    let c = |s: &str| std::ffi::CString::new(s).unwrap();
    let (src, target, fstype) = (c("bpf"), c("/sys/fs/bpf"), c("bpf"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(Error::MountBpffs { reason: std::io::Error::last_os_error() });
    }
    tracing::info!("mounted bpffs at /sys/fs/bpf");
    Ok(())
}

/// Whether `p` is on a bpffs (the pin directory's parent must be; `lb-agent
/// uninstall` deletes a pin directory only there).
pub fn is_bpffs(p: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs writes into the zeroed struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pin path off bpffs (and not under /sys/fs/bpf, where the agent
    /// would mount one) is refused with the fix, before anything is made.
    #[test]
    fn a_pin_path_off_bpffs_names_the_fix() {
        let e = load(Path::new("/tmp/xlbt-loader-unit/maps"), MapSizes::default()).unwrap_err();
        assert!(matches!(e, Error::NotBpffs { .. }), "{e:?}");
        assert_eq!(
            e.to_string(),
            "/tmp/xlbt-loader-unit/maps is not on a bpffs: mount one (`mount -t bpf bpf /tmp/xlbt-loader-unit`) or choose a --pin-path under /sys/fs/bpf"
        );
        assert!(!Path::new("/tmp/xlbt-loader-unit/maps").exists());
    }

    #[test]
    fn a_verifier_log_is_cut_to_its_tail() {
        let log: String = (1..=100).map(|i| format!("{i}: insn\n\n")).collect::<String>() + "R1 invalid mem access 'scalar'\n";
        let tail = log_tail(&log, 20);
        assert_eq!(tail.lines().count(), 20);
        assert!(tail.starts_with("82: insn") && tail.ends_with("invalid mem access 'scalar'"), "{tail}");
    }

    #[test]
    fn a_verifier_rejection_shows_the_program_error_and_the_logs_tail() {
        let log: String = (0..500).map(|i| format!("{i}: (bf) r{} = r1\n", i % 10)).collect::<String>()
            + "invalid access to packet, off=34 size=2, R2(id=0,off=34,r=14)\nprocessed 501 insns (limit 1000000)\n";
        let err = aya::programs::ProgramError::LoadError {
            io_error: std::io::Error::from_raw_os_error(libc::EACCES),
            verifier_log: aya_obj::VerifierLog::new(log),
        };
        let e = Error::program_load(programs::XDP_LB, err);
        assert!(matches!(e, Error::Rejected { .. }), "{e:?}");
        let msg = crate::chain::chain(&e);
        assert!(msg.starts_with("verifier rejected xdp_lb: the kernel refused the program (Permission denied"), "{msg}");
        assert!(msg.contains("last 20 lines of the verifier log:\n482: (bf)"), "{msg}");
        assert!(msg.contains("invalid access to packet, off=34") && msg.contains("uname -r"), "{msg}");
        assert!(!msg.contains("\n481: "), "only the tail: {msg}");
        // Other errors keep aya's as their cause.
        let other = Error::program_load(programs::XDP_LB, aya::programs::ProgramError::NotLoaded);
        assert!(matches!(other, Error::Verifier { .. }), "{other:?}");
        assert_eq!(other.to_string(), "verifier rejected xdp_lb");
    }
}
