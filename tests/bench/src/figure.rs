//! One measured number with its unit and conditions: what the report
//! prints and writes, and the chart draws (a leaf both use).
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One measured (or derived) number.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Figure {
    /// `prog_cost`, `live`, `iptables`, ...
    pub section: String,
    /// What was measured, e.g. `xdp_lb/established`.
    pub name: String,
    /// The headline value (a median where rounds were repeated).
    pub value: f64,
    /// Best round, where rounds were repeated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    pub unit: String,
    /// Service count, backends, threads, repeat, method, ...
    pub conditions: Value,
}
