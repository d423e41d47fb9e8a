//! One Service planned alone gives what a whole plan gives: after each
//! change, the maps patched with the delta equal the whole plan's contents,
//! and changes that reach beyond one Service are planned whole.
use lb_common::algorithm;

use super::*;
use crate::control::{model::tests::parse, plan::replan};

fn cfg() -> PlanConfig {
    PlanConfig { node_name: "node-a".into(), default_algorithm: algorithm::RANDOM, ..Default::default() }
}

fn cap() -> Capacity {
    Capacity { services: 1 << 16, slots: 1 << 20, source_ranges: 1 << 10 }
}

/// A Service `name` (ClusterIP 10.96.0.<n>, dual-stack when `v6`) and its
/// slice with endpoints 10.0.<n>.<e> for `eps`.
fn service(name: &str, n: u8, eps: &[u8], extra: &str) -> String {
    let addrs: Vec<String> = eps.iter().map(|e| format!("{{addresses: [10.0.{n}.{e}], nodeName: node-a}}")).collect();
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: {name}, namespace: ns{extra}}}\n\
         spec: {{clusterIP: 10.96.0.{n}, ports: [{{name: http, port: 80}}, {{name: dns, port: 53, protocol: UDP}}]}}\n---\n\
         apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}-1, namespace: ns, labels: {{kubernetes.io/service-name: {name}}}}}\n\
         addressType: IPv4\nports: [{{name: http, port: 8080}}, {{name: dns, port: 5353, protocol: UDP}}]\nendpoints: [{}]\n---\n",
        addrs.join(", ")
    )
}

const NODE: &str = "apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus: {addresses: [{type: InternalIP, address: 192.168.1.1}]}\n---\n";

/// The agent's loop in small: a whole plan first, then deltas where they
/// apply, each checked against the whole plan of the same model.
struct Loop {
    inc: Incremental,
    ids: Ids,
    known: MapContents<Addr4>,
    known_v6: MapContents<Addr6>,
    /// The last model, with its objects shared into the next one.
    model: Model,
}

impl Loop {
    fn start(text: &str) -> Self {
        let model = parse(text);
        let planned = replan(&model, &cfg(), &Ids::new(1024, 1 << 20));
        let mut inc = Incremental::new();
        let (known, known_v6) = (planned.plan.contents.clone(), planned.plan.contents_v6.clone());
        inc.reset(&model, planned.plan.services, planned.contested);
        Self { inc, ids: planned.ids, known, known_v6, model }
    }

    /// Moves to the objects of `text`, sharing the unchanged ones as the
    /// sources do; returns whether the step was a delta, and its writes.
    fn step(&mut self, text: &str) -> Option<usize> {
        let mut next = parse(text);
        for (k, v) in next.services.iter_mut() {
            if let Some(old) = self.model.services.get(k).filter(|o| *o == v) {
                *v = old.clone();
            }
        }
        for (k, v) in next.slices.iter_mut() {
            if let Some(old) = self.model.slices.get(k).filter(|o| *o == v) {
                *v = old.clone();
            }
        }
        let whole = replan(&next, &cfg(), &self.ids);
        let delta = self.inc.delta(&next, &cfg(), &mut self.ids, &self.known, &self.known_v6, cap());
        let out = match delta {
            Some(d) => {
                self.known.patch(&d.diff);
                self.known_v6.patch(&d.diff_v6);
                assert_eq!(self.known, whole.plan.contents, "the delta's IPv4 maps are the whole plan's");
                assert_eq!(self.known_v6, whole.plan.contents_v6, "the delta's IPv6 maps are the whole plan's");
                assert_eq!(self.ids, whole.ids, "the ids follow as a whole plan's would");
                Some(d.diff.len() + d.diff_v6.len())
            }
            None => {
                self.known = whole.plan.contents.clone();
                self.known_v6 = whole.plan.contents_v6.clone();
                self.ids = whole.ids.clone();
                self.inc.reset(&next, whole.plan.services, whole.contested);
                None
            }
        };
        self.model = next;
        out
    }
}

#[test]
fn endpoint_and_service_changes_are_planned_alone_and_match_a_whole_plan() {
    let base = |b: &[u8]| format!("{NODE}{}{}{}", service("a", 1, &[1, 2, 3], ""), service("b", 2, b, ""), service("c", 3, &[1], ""));
    let mut l = Loop::start(&base(&[1, 2]));
    // One endpoint more: a backend and a slot per port, the two counts.
    assert_eq!(l.step(&base(&[1, 2, 3])), Some(2 * 3), "b gains an endpoint");
    assert_eq!(l.step(&base(&[1, 3])), Some(2 * 4), "b loses one: its backend, the last slot moved into its place, the count");
    assert_eq!(l.step(&base(&[1, 3])), Some(0), "nothing changed");
    // A new Service, then the old one gone.
    let more = format!("{}{}", base(&[1, 3]), service("d", 4, &[7], ""));
    assert!(l.step(&more).is_some_and(|n| n > 0), "d added alone");
    assert!(l.step(&base(&[1, 3])).is_some_and(|n| n > 0), "d removed alone");
    // An annotation: b becomes Maglev.
    let maglev = format!("{NODE}{}{}{}", service("a", 1, &[1, 2, 3], ""), service("b", 2, &[1, 3], ", annotations: {xdplb.io/algorithm: maglev}"), service("c", 3, &[1], ""));
    // Two backends: a table of 61 per port.
    assert!(l.step(&maglev).is_some_and(|n| n > 2 * 61), "b's Maglev tables written");
    assert!(l.step(&base(&[1, 3])).is_some_and(|n| n > 2 * 61), "and removed");
}

#[test]
fn changes_that_reach_other_services_are_planned_whole() {
    let a = service("a", 1, &[1], "");
    let mut l = Loop::start(&format!("{NODE}{a}{}", service("b", 2, &[1], "")));
    // b's slice names a's endpoint: one backend id for both.
    let shared = service("b", 2, &[1], "").replace("10.0.2.1", "10.0.1.1");
    assert_eq!(l.step(&format!("{NODE}{a}{shared}")), None, "a backend shared with a");
    assert_eq!(l.step(&format!("{NODE}{a}{}", service("b", 2, &[1], ""))), None, "unshared again: b's old entry was shared");
    assert!(l.step(&format!("{NODE}{a}{}", service("b", 2, &[1, 2], ""))).is_some(), "b alone again");
    // b takes a's ClusterIP: a frontend two Services claim.
    let clash = service("b", 2, &[1, 2], "").replace("10.96.0.2", "10.96.0.1");
    assert_eq!(l.step(&format!("{NODE}{a}{clash}")), None);
    assert_eq!(l.step(&format!("{NODE}{a}{}", service("b", 2, &[1, 2], ""))), None, "contested last time: whole again");
    // The Node changes: every NodePort may move.
    let node2 = NODE.replace("192.168.1.1", "192.168.1.2");
    assert_eq!(l.step(&format!("{node2}{a}{}", service("b", 2, &[1, 2], ""))), None);
    assert!(l.step(&format!("{node2}{a}{}", service("b", 2, &[2], ""))).is_some());
}
