//! Which Service a service id is: the maps hold only ids, the agent's plan
//! knows namespace/name/port. The agent writes the mapping after each sync
//! so the CLI can print names; without the file (an agent that never ran
//! here, another host) the CLI prints ids only.
//!
//! The file cannot live in the pin directory: bpffs holds only maps,
//! programs and links. It goes to /run/xdplb/<pin dir name>.services.json
//! (tmpfs: it describes this boot's maps, like the pins themselves).
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::control::plan::Plan;

/// The name of one service id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
    /// The Service port's name ("" for an unnamed single port).
    pub port: String,
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)?;
        if !self.port.is_empty() {
            write!(f, ":{}", self.port)?;
        }
        Ok(())
    }
}

pub type Names = BTreeMap<u32, ServiceName>;

/// Where the names of the maps pinned at `pin_dir` are kept.
pub fn path(pin_dir: &Path) -> PathBuf {
    let base = pin_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "xdplb".into());
    Path::new("/run/xdplb").join(format!("{base}.services.json"))
}

/// Removes the names file of the maps pinned at `pin_dir` (and a
/// half-written one), e.g. when they are unpinned.
pub fn remove(pin_dir: &Path) {
    let p = path(pin_dir);
    let _ = std::fs::remove_file(p.with_extension("json.tmp"));
    let _ = std::fs::remove_file(p);
}

pub fn from_plan(p: &Plan) -> Names {
    p.services
        .iter()
        .map(|s| {
            (
                s.id,
                ServiceName {
                    namespace: s.namespace.clone(),
                    name: s.name.clone(),
                    port: s.port_name.clone(),
                },
            )
        })
        .collect()
}

/// Writes atomically (temporary file + rename), so a reader never sees half.
pub fn write(pin_dir: &Path, names: &Names) -> std::io::Result<()> {
    let p = path(pin_dir);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = p.with_extension("json.tmp");
    std::fs::write(
        &tmp,
        serde_json::to_vec_pretty(names).map_err(std::io::Error::other)?,
    )?;
    std::fs::rename(tmp, p)
}

/// The names, or none when the file is absent or unreadable (never an error:
/// names are a convenience).
pub fn read(pin_dir: &Path) -> Names {
    std::fs::read(path(pin_dir))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}
