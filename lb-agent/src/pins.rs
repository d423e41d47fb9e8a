//! Where the agent's kernel objects live and how they are found: the pin
//! directory and its layout (maps, links, a resized map's temporary pin), the
//! sizes of the maps that scale with the cluster, and program lookup in a
//! loaded object. A leaf: the loader, link and migration modules all use it.
use std::path::{Path, PathBuf};

use aya::Ebpf;
use lb_common::maps::default_size;

/// Default directory of the pinned maps.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xdplb";

/// Sizes of the maps that scale with the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub services: u32,
    pub backends: u32,
    pub slots: u32,
    pub conntrack: u32,
    pub affinity: u32,
    /// The IPv6 instances of conntrack and affinity (LRU maps preallocate
    /// every entry, and most clusters carry less IPv6: sized on their own).
    pub conntrack_v6: u32,
    pub affinity_v6: u32,
    /// Balanced node sockets of each family (`sock_revnat_v4` / `_v6`).
    pub sockets: u32,
    pub sockets_v6: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            services: default_size::SERVICES,
            backends: default_size::BACKENDS,
            slots: default_size::SLOTS,
            conntrack: default_size::CONNTRACK,
            affinity: default_size::AFFINITY,
            conntrack_v6: default_size::CONNTRACK_V6,
            affinity_v6: default_size::AFFINITY_V6,
            sockets: default_size::SOCK_REVNAT,
            sockets_v6: default_size::SOCK_REVNAT_V6,
        }
    }
}

/// Where the links of `pin_dir`'s programs are pinned.
pub fn links_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("links")
}

/// Where a resized map is pinned until it replaces the old one (bpffs
/// refuses names with a dot).
pub fn next_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push("_next");
    PathBuf::from(p)
}

/// A program the embedded object should have and has not (a build error).
#[derive(Debug, thiserror::Error)]
pub enum ProgramLookupError {
    #[error("program {0} missing from the object")]
    Missing(String),
    #[error("program {name} has an unexpected type")]
    Type {
        name: String,
        #[source]
        source: aya::programs::ProgramError,
    },
}

/// The program `name` of a loaded object, as its type `T`.
pub(crate) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, ProgramLookupError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| ProgramLookupError::Missing(name.to_string()))?;
    p.try_into().map_err(|source| ProgramLookupError::Type { name: name.to_string(), source })
}
