//! `--source file:<path>`: Kubernetes objects from a YAML file or a
//! directory of them, followed live.
//!
//! Change detection compares (size, mtime, inode) of every YAML file, which
//! sees editors that replace a file by renaming as well as those that write
//! in place. It looks when inotify reports an event in the directory (see
//! [`super::wake`]), and every 2 s regardless; without inotify it polls
//! every 200 ms. After a change it waits until nothing has changed for
//! 100 ms (debounce), so a burst of edits (`kubectl get ... > dir/x.yaml`,
//! a `cp` of many files) becomes one model. The watcher is a plain thread:
//! it blocks and must not hold an async worker.
//!
//! Only files whose (size, mtime, inode) changed are read and parsed again;
//! the objects of the others are kept per file, so an edit of one small
//! file next to a large one costs the small one.
use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::sync::watch;

use super::wake::Wakeups;
use crate::control::model::{self, LoadError, Model};

/// How often the files are checked without inotify.
pub const POLL: Duration = Duration::from_millis(200);
/// How often they are checked with inotify, for what it cannot report.
pub const RECHECK: Duration = Duration::from_secs(2);
/// How long the files must stay unchanged before they are read.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// What identifies one state of a file: size, mtime, inode.
type Stamp = (u64, Option<SystemTime>, u64);

/// What identifies one state of the files on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot(Vec<(PathBuf, Stamp)>);

fn snapshot(path: &Path) -> Snapshot {
    // An unreadable path is a state too (empty): when it comes back, that is a change.
    let files = model::yaml_files(path).unwrap_or_default();
    Snapshot(
        files
            .into_iter()
            .filter_map(|f| {
                let m = std::fs::metadata(&f).ok()?;
                Some((f, (m.len(), m.modified().ok(), m.ino())))
            })
            .collect(),
    )
}

/// The objects of each file, with the stamp they were read at.
#[derive(Default)]
struct Files {
    parsed: BTreeMap<PathBuf, (Stamp, Model)>,
}

impl Files {
    /// The model of the files in `snap` (taken before reading, so a change
    /// while reading shows in the next snapshot): files with a new stamp are
    /// parsed, the others reused, gone ones forgotten. Returns the model and
    /// how many files were parsed. On an error nothing is lost: the files
    /// parsed so far are kept for next time.
    fn load(&mut self, snap: &Snapshot) -> Result<(Model, usize), LoadError> {
        let mut parsed = 0;
        // `snap` is in name order (`yaml_files` sorts).
        self.parsed.retain(|f, _| snap.0.binary_search_by(|(p, _)| p.cmp(f)).is_ok());
        for (file, stamp) in &snap.0 {
            if self.parsed.get(file).is_some_and(|(s, _)| s == stamp) {
                continue;
            }
            let m = Model::load_file(file)?;
            self.parsed.insert(file.clone(), (*stamp, m));
            parsed += 1;
        }
        Ok((self.model(), parsed))
    }

    /// The model of every file parsed.
    fn model(&self) -> Model {
        // In name order, so a later file wins on duplicates (as `Model::load`).
        let mut model = Model::default();
        for (_, m) in self.parsed.values() {
            model.extend(m);
        }
        model
    }
}

/// Loads `path` once, then follows it: the receiver sees a new model after
/// every (debounced) change. Fails if the first load fails, so a typo in
/// `--source` is an error at start rather than an empty cluster.
pub fn watch(path: PathBuf) -> Result<watch::Receiver<Arc<Model>>, LoadError> {
    read(path)?.watch()
}

/// The files of `path` read once, not parsed yet: reading is where the
/// first load can fail, parsing only warns. The agent reads before it
/// loads anything and parses while the kernel verifies its programs.
pub struct FirstRead {
    path: PathBuf,
    /// Taken before reading (see [`Files::load`]).
    snap: Snapshot,
    /// Each file of `snap`, in its order.
    texts: Vec<String>,
}

/// [`watch`]'s first step: every file's text.
pub fn read(path: PathBuf) -> Result<FirstRead, LoadError> {
    // A missing path is an error here, not an empty snapshot.
    model::yaml_files(&path)?;
    let snap = snapshot(&path);
    let texts = snap.0.iter().map(|(file, _)| model::read_file(file)).collect::<Result<_, _>>()?;
    Ok(FirstRead { path, snap, texts })
}

impl FirstRead {
    /// [`watch`]'s second step: the files parsed into the first model, then
    /// followed. Fails only if the following thread cannot be had.
    pub fn watch(self) -> Result<watch::Receiver<Arc<Model>>, LoadError> {
        let FirstRead { path, snap, texts } = self;
        let mut files = Files::default();
        for ((file, stamp), text) in snap.0.iter().zip(texts) {
            files.parsed.insert(file.clone(), (*stamp, Model::parse_file(&text, file)));
        }
        follow(path, snap, files)
    }
}

/// Sends the first model of `files`, then a new one after every
/// (debounced) change of `path` from `last` on.
fn follow(path: PathBuf, mut last: Snapshot, mut files: Files) -> Result<watch::Receiver<Arc<Model>>, LoadError> {
    let (tx, rx) = watch::channel(Arc::new(files.model()));
    let spawned = std::thread::Builder::new().name("file-source".into()).spawn(move || {
        let mut wake = Wakeups::new(&path);
        while !tx.is_closed() {
            wake.wait(if wake.watching() { RECHECK } else { POLL });
            let mut now = snapshot(&path);
            if now == last {
                continue;
            }
            loop {
                let event = wake.wait(DEBOUNCE);
                let again = snapshot(&path);
                if !event && again == now {
                    break;
                }
                now = again;
            }
            last = now;
            let started = Instant::now();
            match files.load(&last) {
                Ok((m, parsed)) => {
                    tracing::debug!(path = %path.display(), parsed_files = parsed, elapsed_us = started.elapsed().as_micros() as u64, "objects changed");
                    tx.send_replace(Arc::new(m));
                }
                // Keep the last good model: a file caught half-written or
                // briefly removed must not empty the maps.
                Err(e) => tracing::warn!(error = %e, "reading the source failed; keeping the previous objects"),
            }
        }
    });
    if let Err(e) = spawned {
        return Err(LoadError::Read {
            path: PathBuf::from("<file-source thread>"),
            source: e,
        });
    }
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    const SVC: &str = "apiVersion: v1\nkind: Service\nmetadata: {namespace: default, name: NAME}\nspec: {clusterIP: 10.96.0.1, ports: [{port: 80}]}\n";

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("lb-agent-file-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    #[tokio::test]
    async fn follows_edits_and_coalesces_bursts() {
        let dir = temp_dir("burst");
        std::fs::write(dir.join("a.yaml"), SVC.replace("NAME", "a")).unwrap();
        std::fs::write(dir.join("ignored.txt"), SVC.replace("NAME", "txt")).unwrap();
        let mut rx = watch(dir.clone()).expect("first load");
        assert_eq!(
            rx.borrow_and_update().services.len(),
            1,
            "only *.yaml/*.yml files count"
        );

        // Twenty files written within ~40 ms: one (debounced) new model.
        let start = Instant::now();
        for i in 0..20 {
            std::fs::write(
                dir.join(format!("s{i}.yml")),
                SVC.replace("NAME", &format!("s{i}")),
            )
            .unwrap();
            std::thread::sleep(Duration::from_millis(2));
        }
        tokio::time::timeout(Duration::from_secs(3), rx.changed())
            .await
            .expect("a change within 3 s")
            .unwrap();
        let n = rx.borrow_and_update().services.len();
        assert_eq!(n, 21, "every file of the burst in one model");
        assert!(start.elapsed() >= DEBOUNCE, "debounced");
        // Nothing more comes for the same burst.
        assert!(
            tokio::time::timeout(Duration::from_millis(600), rx.changed())
                .await
                .is_err(),
            "one model per burst"
        );

        std::fs::remove_file(dir.join("s0.yml")).unwrap();
        tokio::time::timeout(Duration::from_secs(3), rx.changed())
            .await
            .expect("a removal is a change")
            .unwrap();
        assert_eq!(rx.borrow_and_update().services.len(), 20);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn only_changed_files_are_parsed_again() {
        let dir = temp_dir("reparse");
        std::fs::write(dir.join("a.yaml"), SVC.replace("NAME", "a")).unwrap();
        std::fs::write(dir.join("b.yaml"), SVC.replace("NAME", "b")).unwrap();
        let mut files = Files::default();
        let names = |m: &Model| m.services.keys().map(|k| k.name.clone()).collect::<Vec<_>>();
        let (m, parsed) = files.load(&snapshot(&dir)).unwrap();
        assert_eq!((names(&m), parsed), (vec!["a".into(), "b".into()], 2));
        let (again, parsed) = files.load(&snapshot(&dir)).unwrap();
        assert_eq!((&again, parsed), (&m, 0), "nothing changed, nothing parsed");

        // b replaced by a rename (a new inode), then a new file that
        // redefines a: only the changed files are read, and the later file
        // still wins.
        let tmp = dir.join("b.tmp");
        std::fs::write(&tmp, SVC.replace("NAME", "b2")).unwrap();
        std::fs::rename(&tmp, dir.join("b.yaml")).unwrap();
        let (m, parsed) = files.load(&snapshot(&dir)).unwrap();
        assert_eq!((names(&m), parsed), (vec!["a".into(), "b2".into()], 1));
        std::fs::write(dir.join("c.yaml"), SVC.replace("NAME", "a").replace("10.96.0.1", "10.96.0.3")).unwrap();
        let (m, parsed) = files.load(&snapshot(&dir)).unwrap();
        assert_eq!(parsed, 1);
        let a = &m.services[&crate::control::model::ObjectRef::new("default", "a")];
        assert_eq!(a.cluster_ips, [std::net::IpAddr::from([10, 96, 0, 3])], "c.yaml comes after a.yaml");

        // A removed file takes its objects along, and a's first definition is back.
        std::fs::remove_file(dir.join("c.yaml")).unwrap();
        let (m, parsed) = files.load(&snapshot(&dir)).unwrap();
        assert_eq!(parsed, 0);
        let a = &m.services[&crate::control::model::ObjectRef::new("default", "a")];
        assert_eq!(a.cluster_ips, [std::net::IpAddr::from([10, 96, 0, 1])]);
        assert_eq!(m, Model::load(&dir).unwrap(), "the same model as a full load");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_missing_path_is_an_error_at_start() {
        assert!(watch(PathBuf::from("/nonexistent/xdplb")).is_err());
    }

    /// The agent loads its programs only after `read`: a file that cannot
    /// be read fails there, not in the parse that follows.
    #[test]
    fn an_unreadable_file_fails_the_read_and_a_good_read_parses_all() {
        let dir = temp_dir("read");
        std::fs::write(dir.join("a.yaml"), SVC.replace("NAME", "a")).unwrap();
        std::fs::write(dir.join("b.yaml"), [0xff, 0xfe, b'\n']).unwrap();
        let e = read(dir.clone()).err().expect("not UTF-8: a read error");
        assert!(e.to_string().starts_with(&format!("reading {}", dir.join("b.yaml").display())), "{e}");
        std::fs::write(dir.join("b.yaml"), SVC.replace("NAME", "b")).unwrap();
        let first = read(dir.clone()).expect("read").watch().expect("parsed");
        assert_eq!(*first.borrow().as_ref(), Model::load(&dir).unwrap());
        assert_eq!(first.borrow().services.len(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
