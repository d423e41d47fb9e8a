//! Day-two operations: start-up checks (`doctor`), Prometheus metrics and
//! health endpoints, and read-only views of the pinned maps for the CLI.
//! Everything here only reads the dataplane; the agent's run loop bumps a
//! [`metrics::Metrics`] handle and nothing else.
pub mod checks;
pub mod families;
pub mod http;
pub mod inspect;
pub mod metrics;
pub mod names;
pub mod readiness;
pub mod scrape;
pub mod top;
