//! Topology-aware routing: which ready endpoints a node's Cluster-policy
//! traffic prefers, decided as kube-proxy's `pkg/proxy/topology.go` does.
//!
//! kube-proxy reads only EndpointSlice hints: when every ready endpoint has
//! a node hint and one names this node, it keeps the endpoints hinted for
//! this node (`PreferSameNode`); otherwise, when every ready endpoint has a
//! zone hint and one names this node's zone (label
//! `topology.kubernetes.io/zone`), those hinted for the zone
//! (`PreferSameZone`); otherwise all of them. The EndpointSlice controller
//! writes the hints from `spec.trafficDistribution` (zone hints = the
//! endpoint's zone; for `PreferSameNode` also node hints = its node). When no
//! endpoint carries a hint but the Service asks for a distribution (a slice
//! written by hand, a controller without the feature), the planner derives
//! those same hints, so the outcome is the one kube-proxy would reach once
//! the controller has run. Local policies ignore topology, as in kube-proxy.
use serde::Serialize;

use super::Candidate;
use crate::control::model::TrafficDistribution;

/// The topology decision for one service id, as `plan` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TopologyChoice {
    /// `PreferSameNode`, `PreferSameZone`, or `None` for every endpoint.
    pub mode: Option<&'static str>,
    /// The node or zone kept.
    pub target: Option<String>,
    /// `slice` (EndpointSlice hints) or `trafficDistribution` (derived).
    pub hints_from: &'static str,
    /// Why every endpoint is used although hints exist.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl std::fmt::Display for TopologyChoice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (&self.mode, &self.target, &self.note) {
            (Some(m), Some(t), _) => write!(f, "topology {m} {t} (hints from {})", self.hints_from),
            (_, _, Some(n)) => write!(f, "topology: all endpoints ({n})"),
            _ => write!(f, "topology: all endpoints"),
        }
    }
}

/// The hints of one candidate, as given or derived.
struct Hints {
    zones: Vec<String>,
    nodes: Vec<String>,
}

/// Narrows `ready` (the ready endpoints of a Cluster-policy service id) to
/// the ones this node prefers. Returns the choice when hints or a traffic
/// distribution are involved at all, `None` (and `ready` untouched) otherwise.
pub(super) fn apply(
    ready: &mut Vec<&Candidate>,
    distribution: Option<TrafficDistribution>,
    node: &str,
    zone: Option<&str>,
) -> Option<TopologyChoice> {
    let given = ready.iter().any(|c| !c.zone_hints.is_empty() || !c.node_hints.is_empty());
    let hints_from = match (given, distribution) {
        (true, _) => "slice",
        (false, Some(_)) => "trafficDistribution",
        (false, None) => return None,
    };
    let hints: Vec<Hints> = ready
        .iter()
        .map(|c| match (given, distribution) {
            (true, _) => Hints { zones: c.zone_hints.clone(), nodes: c.node_hints.clone() },
            (false, d) => Hints {
                zones: c.zone.iter().map(|z| z.to_string()).collect(),
                nodes: match d {
                    Some(TrafficDistribution::PreferSameNode) => c.node_name.iter().map(|n| n.to_string()).collect(),
                    _ => Vec::new(),
                },
            },
        })
        .collect();
    let mut choice = TopologyChoice { mode: None, target: None, hints_from, note: None };
    if ready.is_empty() {
        return Some(choice);
    }
    let has = |list: &[String], v: &str| list.iter().any(|x| x == v);
    let keep: Box<dyn Fn(&Hints) -> bool> = if hints.iter().all(|h| !h.nodes.is_empty()) && hints.iter().any(|h| has(&h.nodes, node)) {
        choice.mode = Some("PreferSameNode");
        choice.target = Some(node.to_string());
        Box::new(|h: &Hints| has(&h.nodes, node))
    } else if !hints.iter().all(|h| !h.zones.is_empty()) {
        choice.note = Some("an endpoint has no zone hint".into());
        return Some(choice);
    } else if let Some(z) = zone.filter(|z| hints.iter().any(|h| has(&h.zones, z))) {
        choice.mode = Some("PreferSameZone");
        choice.target = Some(z.to_string());
        Box::new(move |h: &Hints| has(&h.zones, z))
    } else {
        choice.note = Some(match zone {
            None => "this node has no topology.kubernetes.io/zone label".into(),
            Some(z) => format!("no endpoint hinted for zone {z}"),
        });
        return Some(choice);
    };
    let mut i = 0;
    ready.retain(|_| {
        i += 1;
        keep(&hints[i - 1])
    });
    Some(choice)
}
