//! `--source file:<path>`: Kubernetes objects from a YAML file or a
//! directory of them, followed live.
//!
//! Change detection polls (size, mtime, inode) of every YAML file every
//! 200 ms: no inotify crate, and it sees editors that replace a file by
//! renaming as well as those that write in place. After a change it waits
//! until nothing has changed for 100 ms (debounce), so a burst of edits
//! (`kubectl get ... > dir/x.yaml`, a `cp` of many files) becomes one model.
//! The watcher is a plain thread: polling is blocking I/O and must not hold
//! an async worker.
use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use tokio::sync::watch;

use crate::control::model::{self, LoadError, Model};

/// How often the files are checked.
pub const POLL: Duration = Duration::from_millis(200);
/// How long the files must stay unchanged before they are read.
pub const DEBOUNCE: Duration = Duration::from_millis(100);

/// What identifies one state of the files on disk.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot(Vec<(PathBuf, u64, Option<SystemTime>, u64)>);

fn snapshot(path: &Path) -> Snapshot {
    // An unreadable path is a state too (empty): when it comes back, that is a change.
    let files = model::yaml_files(path).unwrap_or_default();
    Snapshot(
        files
            .into_iter()
            .filter_map(|f| {
                let m = std::fs::metadata(&f).ok()?;
                Some((f, m.len(), m.modified().ok(), m.ino()))
            })
            .collect(),
    )
}

/// Loads `path` once, then follows it: the receiver sees a new model after
/// every (debounced) change. Fails if the first load fails, so a typo in
/// `--source` is an error at start rather than an empty cluster.
pub fn watch(path: PathBuf) -> Result<watch::Receiver<Model>, LoadError> {
    // Snapshot before loading: an edit in between is then seen as a change.
    let mut last = snapshot(&path);
    let first = Model::load(&path)?;
    let (tx, rx) = watch::channel(first);
    let spawned = std::thread::Builder::new().name("file-source".into()).spawn(move || {
        while !tx.is_closed() {
            std::thread::sleep(POLL);
            let mut now = snapshot(&path);
            if now == last {
                continue;
            }
            loop {
                std::thread::sleep(DEBOUNCE);
                let again = snapshot(&path);
                if again == now {
                    break;
                }
                now = again;
            }
            last = now;
            match Model::load(&path) {
                Ok(m) => {
                    tracing::debug!(path = %path.display(), "objects changed");
                    tx.send_replace(m);
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
    fn a_missing_path_is_an_error_at_start() {
        assert!(watch(PathBuf::from("/nonexistent/xdplb")).is_err());
    }
}
