//! lb-agent: loads xdplb's eBPF programs, keeps their pinned maps in step
//! with the desired state, and reads them back for operators.
pub mod bpfsys;
pub mod dataplane;
pub mod lbmode;
pub mod links;
pub mod linkwatch;
pub mod loader;
pub mod migrate;
pub mod diff;
pub mod error;
pub mod fit;
pub mod lbip;
pub mod control;
pub mod ctclean;
pub mod explain;
pub mod family;
pub mod ops;
pub mod pinfs;
pub mod pins;
pub mod podifaces;
pub mod privs;
pub mod snat;
pub mod socklb;
pub mod sync;
pub mod table;
pub mod tcfilter;
