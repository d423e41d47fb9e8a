//! Network namespaces that clean up after themselves.
//!
//! Names are `xlbt-<pid>-<n>`: unique per process, and a later run removes
//! those whose process is gone (after a SIGKILL, say). A SIGINT/SIGTERM
//! handler removes this process's namespaces before exiting, and `Drop`
//! removes them on success and on panic.
use std::{
    fs::File,
    os::fd::AsRawFd,
    process::{Command, Output},
    sync::{
        atomic::{AtomicU32, Ordering},
        Mutex, Once,
    },
};

const PREFIX: &str = "xlbt-";
static NEXT: AtomicU32 = AtomicU32::new(0);
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());
static INIT: Once = Once::new();

/// A network namespace, deleted on drop.
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a new, empty namespace with loopback up.
    pub fn new() -> Self {
        INIT.call_once(|| {
            remove_stale();
            install_signal_cleanup();
        });
        let name = format!("{PREFIX}{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        run(Command::new("ip").args(["netns", "add", &name]));
        LIVE.lock().unwrap().push(name.clone());
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs `ip <args>` inside the namespace; panics with its stderr on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run(self.cmd("ip").args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) {
        run(self.cmd("sysctl").args(["-qw", &format!("{key}={value}")]));
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns
    /// its result. Sockets made there belong to the namespace for good.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let file = self.file();
        std::thread::spawn(move || {
            enter(&file);
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }

    /// Like [`Netns::run`], without waiting.
    pub fn spawn<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let file = self.file();
        std::thread::spawn(move || {
            enter(&file);
            f()
        })
    }

    fn file(&self) -> File {
        File::open(format!("/run/netns/{}", self.name)).expect("opening the namespace file")
    }

    /// The index of interface `iface` in this namespace.
    pub fn ifindex(&self, iface: &str) -> u32 {
        let out = run(self.cmd("cat").arg(format!("/sys/class/net/{iface}/ifindex")));
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("an ifindex")
    }

    /// Reads a counter of an interface (`rx_packets`, `tx_bytes`, ...).
    pub fn iface_stat(&self, iface: &str, stat: &str) -> u64 {
        let out = run(self.cmd("cat").arg(format!("/sys/class/net/{iface}/statistics/{stat}")));
        String::from_utf8_lossy(&out.stdout).trim().parse().expect("a number")
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
        LIVE.lock().unwrap_or_else(|e| e.into_inner()).retain(|n| n != &self.name);
    }
}

/// Moves the calling thread into the namespace behind `file`.
pub fn enter(file: &File) {
    // SAFETY: setns on a valid namespace fd; it affects only this thread.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
}

/// Runs a command, panicking with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    if !out.status.success() {
        panic!("{cmd:?} failed: {}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    }
    out
}

/// Whether `name` is `<prefix><pid>-...` of a process that no longer
/// exists: what a test (or the bench) left behind after a SIGKILL.
pub fn owner_gone(name: &str, prefixes: &[&str]) -> bool {
    let rest = prefixes.iter().find_map(|p| name.strip_prefix(p));
    rest.and_then(|r| r.split('-').next()).is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Deletes namespaces left by test processes that no longer exist.
fn remove_stale() {
    let Ok(dir) = std::fs::read_dir("/run/netns") else { return };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if owner_gone(&name, &[PREFIX]) {
            let _ = Command::new("ip").args(["netns", "del", &name]).output();
        }
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    // Not async-signal-safe, but the process is about to exit and the test
    // harness holds no other lock while tests run `ip`.
    let names = LIVE.try_lock().map(|l| l.clone()).unwrap_or_default();
    for n in names {
        let _ = Command::new("ip").args(["netns", "del", &n]).output();
    }
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) };
}

fn install_signal_cleanup() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: installs a plain handler function.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}
