//! `lb-agent plan` output: a table for people, JSON for programs.
use std::fmt::Write as _;

use lb_agent::control::plan::{BackendState, Plan};

/// The plan as text: one block per service id, its frontends, then its
/// backends (slotted ones first).
pub fn table(plan: &Plan) -> String {
    let mut out = String::new();
    let addrs: Vec<String> = plan.node_addresses.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(out, "node addresses (NodePorts): {}", if addrs.is_empty() { "none".into() } else { addrs.join(", ") });
    let _ = writeln!(
        out,
        "{} service ids, {} frontends, {} backends, {} slots\n",
        plan.services.len(),
        plan.contents.services.len(),
        plan.contents.backends.len(),
        plan.contents.slots.len()
    );
    for s in &plan.services {
        let port = if s.port_name.is_empty() { "-" } else { &s.port_name };
        let mut notes = vec![format!("id {}", s.id), s.algorithm.to_string()];
        if s.affinity_timeout_s > 0 {
            notes.push(format!("ClientIP affinity {}s", s.affinity_timeout_s));
        }
        if s.local_only {
            notes.push("local endpoints only".into());
        }
        if s.fallback_terminating {
            notes.push("no ready endpoint: using terminating ones".into());
        }
        let _ = writeln!(out, "{}/{} port {} ({:?}; {})", s.namespace, s.name, port, s.scope, notes.join(", "));
        for f in &s.frontends {
            let _ = writeln!(out, "  frontend  {:<24} {:?}", format!("{}:{}/{}", f.addr, f.port, f.proto.as_str()), f.kind);
        }
        if s.backends.is_empty() {
            let _ = writeln!(out, "  (no endpoints: new connections are dropped)");
        }
        for b in &s.backends {
            let state = match b.state {
                BackendState::Active => "active",
                BackendState::Terminating => "terminating",
            };
            let slot = b.slot.map_or("existing flows only".to_string(), |s| format!("slot {s}"));
            let _ = writeln!(
                out,
                "  backend   {:<24} {:<12} {:<20} id {:<6} {}",
                format!("{}:{}", b.addr, b.port),
                state,
                slot,
                b.id,
                b.node_name.as_deref().unwrap_or("")
            );
        }
        out.push('\n');
    }
    out
}
