//! Wake-ups for the file source: inotify events on the watched directory
//! (the path itself, or a file's parent, so editors that replace a file by
//! renaming are seen), with a timeout as the fallback for what inotify
//! cannot report (NFS, a watch lost with its directory). Without inotify
//! (the per-user watch limit reached) every wait is a plain sleep, which is
//! the polling the source did before.
//!
//! An event only says "look again": the caller compares file stamps, so a
//! spurious wake-up costs one `stat` per file and is never a change.
use std::{
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    time::Duration,
};

use inotify::{EventMask, Inotify, WatchMask};

/// Events of the watched directory that can change what the source reads.
fn mask() -> WatchMask {
    WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::MODIFY
        | WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_FROM
        | WatchMask::MOVED_TO
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF
}

pub struct Wakeups {
    dir: PathBuf,
    inotify: Option<Inotify>,
    /// Whether the directory is being watched (a deleted directory ends its
    /// watch; it is added again once the directory is back).
    watching: bool,
    buf: Vec<u8>,
}

impl Wakeups {
    /// Wake-ups for changes under `path` (a YAML file or a directory).
    pub fn new(path: &Path) -> Self {
        let dir = if path.is_dir() {
            path.to_path_buf()
        } else {
            path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf()
        };
        let inotify = Inotify::init()
            .inspect_err(|e| tracing::warn!(error = %e, "inotify unavailable: the file source polls instead"))
            .ok();
        let mut w = Self { dir, inotify, watching: false, buf: vec![0; 4096] };
        w.rewatch();
        w
    }

    /// Whether events arrive (else every wait is a sleep).
    pub fn watching(&self) -> bool {
        self.watching
    }

    fn rewatch(&mut self) {
        if self.watching {
            return;
        }
        if let Some(i) = &mut self.inotify {
            match i.watches().add(&self.dir, mask()) {
                Ok(_) => self.watching = true,
                Err(e) => tracing::debug!(dir = %self.dir.display(), error = %e, "no inotify watch (yet); polling"),
            }
        }
    }

    /// Waits until an event arrives or `timeout` passes; true on an event.
    /// Every pending event is consumed.
    pub fn wait(&mut self, timeout: Duration) -> bool {
        self.rewatch();
        let Some(i) = self.inotify.as_mut().filter(|_| self.watching) else {
            std::thread::sleep(timeout);
            return false;
        };
        let mut pfd = libc::pollfd { fd: i.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd, alive for the call.
        if unsafe { libc::poll(&mut pfd, 1, ms) } <= 0 {
            return false;
        }
        let mut woke = false;
        while let Ok(events) = i.read_events(&mut self.buf) {
            let mut any = false;
            for e in events {
                any = true;
                if e.mask.contains(EventMask::IGNORED) {
                    // The directory went away with its watch.
                    self.watching = false;
                }
            }
            if !any {
                break;
            }
            woke = true;
        }
        woke
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn a_write_a_rename_and_a_removal_each_wake_at_once_and_quiet_times_out() {
        let dir = std::env::temp_dir().join(format!("lb-agent-wake-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.yaml");
        std::fs::write(&file, "x").unwrap();
        let mut w = Wakeups::new(&file);
        assert!(w.watching(), "inotify watches the file's directory");
        assert!(!w.wait(Duration::from_millis(50)), "nothing happened");

        let long = Duration::from_secs(30);
        let changes: [&dyn Fn(); 3] = [
            &|| std::fs::write(&file, "y").unwrap(),
            &|| {
                std::fs::write(dir.join("a.tmp"), "z").unwrap();
                std::fs::rename(dir.join("a.tmp"), &file).unwrap();
            },
            &|| std::fs::remove_file(&file).unwrap(),
        ];
        for change in changes {
            change();
            let t = Instant::now();
            assert!(w.wait(long), "the change woke the watcher");
            assert!(t.elapsed() < long, "before the timeout");
        }

        // The directory itself removed and made again: watched again.
        std::fs::remove_dir_all(&dir).unwrap();
        w.wait(Duration::from_millis(100));
        assert!(!w.watching(), "the watch ended with its directory");
        std::fs::create_dir_all(&dir).unwrap();
        w.wait(Duration::from_millis(1));
        assert!(w.watching(), "watched again once it is back");
        std::fs::write(&file, "again").unwrap();
        assert!(w.wait(long), "and its changes wake the watcher");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
