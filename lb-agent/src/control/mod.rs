//! The control path: Kubernetes objects from a source become a model, the
//! model becomes a plan (pure), the plan's map contents become a diff that
//! `dataplane::apply` writes. Ids that must survive re-plans and restarts
//! live in `ids`.
pub mod ids;
pub mod incremental;
pub mod maglev;
pub mod model;
pub mod plan;
pub mod source;
