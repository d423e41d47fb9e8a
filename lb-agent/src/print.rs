//! `lb-agent plan` output: a table for people, JSON for programs.
use std::fmt::Write as _;

use lb_agent::{
    control::plan::{BackendState, Plan},
    family::socket,
    table::{left, Table},
};

/// The plan as text: one block per service id, its frontends, then its
/// backends (slotted ones first).
pub fn table(plan: &Plan) -> String {
    let mut out = String::new();
    let addrs: Vec<String> = plan.node_addresses.iter().map(|a| a.to_string()).collect();
    let _ = writeln!(
        out,
        "node addresses (NodePorts): {}",
        if addrs.is_empty() {
            "none".into()
        } else {
            addrs.join(", ")
        }
    );
    let _ = writeln!(
        out,
        "{} service ids, {} frontends, {} backends, {} slots\n",
        plan.services.len(),
        plan.contents.services.keys().filter(|k| !k.is_address()).count()
            + plan.contents_v6.services.keys().filter(|k| !k.is_address()).count(),
        plan.contents.backends.len() + plan.contents_v6.backends.len(),
        plan.contents.slots.len() + plan.contents_v6.slots.len()
    );
    // One table for every service, so the columns line up across them.
    let mut t = Table::new(&[left("", 9), left("", 24), left("", 12), left("", 20), left("", 9), left("", 0)]).indent("  ");
    for s in &plan.services {
        let port = if s.port_name.is_empty() { "-" } else { &s.port_name };
        let mut notes = vec![format!("id {}", s.id), s.algorithm.to_string()];
        if s.affinity_timeout_s > 0 {
            notes.push(format!("ClientIP affinity {}s", s.affinity_timeout_s));
        }
        if s.local_only {
            notes.push("local endpoints only".into());
        }
        if s.usable_elsewhere {
            notes.push("none here, some on other nodes: new flows dropped".into());
        }
        if s.fallback_terminating {
            notes.push("no ready endpoint: using terminating ones".into());
        }
        if let Some(t) = &s.topology {
            notes.push(t.to_string());
        }
        t.text(format!("{}/{} port {} {} ({:?}; {})", s.namespace, s.name, port, s.family, s.scope, notes.join(", ")));
        for f in &s.frontends {
            t.row(["frontend".into(), format!("{}/{}", socket(f.addr, f.port), f.proto.as_str()), format!("{:?}", f.kind)]);
        }
        if s.backends.is_empty() {
            t.text("  (no endpoints: new connections are dropped)");
        }
        for b in &s.backends {
            let state = match b.state {
                BackendState::Active => "active",
                BackendState::Terminating => "terminating",
            };
            let slot = b.slot.map_or("existing flows only".to_string(), |s| format!("slot {s}"));
            t.row([
                "backend".into(),
                socket(b.addr, b.port).to_string(),
                state.into(),
                slot,
                format!("id {}", b.id),
                b.node_name.as_deref().unwrap_or_default().to_string(),
            ]);
        }
        t.text("");
    }
    out += &t.to_string();
    out
}

#[cfg(test)]
mod tests {
    use lb_agent::control::{
        ids::Ids,
        model::Model,
        plan::{plan, PlanConfig},
    };

    #[test]
    fn the_table_shows_frontends_backends_and_their_state() {
        let mut m = Model::default();
        m.add_yaml(include_str!("../tests/data/cluster.yaml"), "test");
        let cfg = PlanConfig {
            node_name: "node-a".into(),
            ..Default::default()
        };
        let text = super::table(&plan(&m, &cfg, &mut Ids::new(100, 1000)));
        for want in [
            "node addresses (NodePorts): 192.168.1.1, fd00::1",
            "5 service ids, 6 frontends, 10 backends, 9 slots",
            "shop/web port http IPv4 (Internal; id 5, round-robin, ClientIP affinity 600s)",
            "  frontend  192.168.1.1:30080/TCP    NodePort",
            "10.244.1.11:8080         terminating  existing flows only",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
    }
}
