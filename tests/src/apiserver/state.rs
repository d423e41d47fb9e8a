//! The double's state, with no I/O: objects by resource, one global
//! resourceVersion, the retained event history, the open watches and a log
//! of every request. The HTTP side ([`super::http`]) holds it behind a
//! mutex for short critical sections, so a mutation and the events it sends
//! to watches happen atomically, in resourceVersion order.
use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};
use tokio::sync::mpsc;

/// The resources the double serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Services,
    EndpointSlices,
    Nodes,
    /// coordination.k8s.io/v1 (leader election).
    Leases,
    /// core v1 Events (written by the allocator).
    Events,
    /// xdplb.io/v1alpha1, cluster-scoped (the CRD).
    LoadBalancerPools,
}

impl Resource {
    pub const ALL: [Resource; 6] = [
        Resource::Services,
        Resource::EndpointSlices,
        Resource::Nodes,
        Resource::Leases,
        Resource::Events,
        Resource::LoadBalancerPools,
    ];

    /// The API group ("" for core), as RBAC spells it.
    pub fn group(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io",
            Resource::Leases => "coordination.k8s.io",
            Resource::LoadBalancerPools => "xdplb.io",
            _ => "",
        }
    }
    pub fn plural(self) -> &'static str {
        match self {
            Resource::Services => "services",
            Resource::EndpointSlices => "endpointslices",
            Resource::Nodes => "nodes",
            Resource::Leases => "leases",
            Resource::Events => "events",
            Resource::LoadBalancerPools => "loadbalancerpools",
        }
    }
    pub fn api_version(self) -> &'static str {
        match self {
            Resource::EndpointSlices => "discovery.k8s.io/v1",
            Resource::Leases => "coordination.k8s.io/v1",
            Resource::LoadBalancerPools => "xdplb.io/v1alpha1",
            _ => "v1",
        }
    }
    pub fn kind(self) -> &'static str {
        match self {
            Resource::Services => "Service",
            Resource::EndpointSlices => "EndpointSlice",
            Resource::Nodes => "Node",
            Resource::Leases => "Lease",
            Resource::Events => "Event",
            Resource::LoadBalancerPools => "LoadBalancerPool",
        }
    }
    pub fn namespaced(self) -> bool {
        !matches!(self, Resource::Nodes | Resource::LoadBalancerPools)
    }
    /// The resource of `(group, plural)`, as found in a request path.
    pub fn from_path(group: &str, plural: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|r| r.group() == group && r.plural() == plural)
    }
    /// The resource of an object, from its `apiVersion` and `kind`.
    pub fn of(obj: &Value) -> Option<Self> {
        let (v, k) = (obj["apiVersion"].as_str()?, obj["kind"].as_str()?);
        Self::ALL
            .into_iter()
            .find(|r| r.api_version() == v && r.kind() == k)
    }
}

/// Why a write was refused: (HTTP code, reason, message).
pub type Refused = (u16, &'static str, String);

/// RFC 7386 JSON merge patch of `target` by `patch`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().expect("an object");
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        _ => *target = patch.clone(),
    }
}

/// `namespace` and `name` of an object ("" when missing).
pub fn key(obj: &Value) -> (String, String) {
    let f = |k: &str| obj["metadata"][k].as_str().unwrap_or_default().to_string();
    (f("namespace"), f("name"))
}

/// What a request selects: a namespace from the path, `metadata.name` and
/// `metadata.namespace` from a field selector (all the agent uses).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    pub namespace: Option<String>,
    pub name: Option<String>,
}

impl Selector {
    /// Parses a field selector; `Err` for anything but `metadata.name` and
    /// `metadata.namespace` equalities, as a server would refuse it.
    pub fn with_fields(mut self, fields: &str) -> Result<Self, String> {
        for term in fields.split(',').filter(|t| !t.is_empty()) {
            let (k, v) = term
                .split_once('=')
                .ok_or_else(|| format!("unsupported field selector {term:?}"))?;
            let v = v.trim_start_matches('=').to_string();
            match k {
                "metadata.name" => self.name = Some(v),
                "metadata.namespace" => self.namespace = Some(v),
                _ => return Err(format!("field label not supported: {k}")),
            }
        }
        Ok(self)
    }
    pub fn matches(&self, obj: &Value) -> bool {
        let (ns, name) = key(obj);
        self.namespace.as_ref().is_none_or(|n| *n == ns)
            && self.name.as_ref().is_none_or(|n| *n == name)
    }
}

/// One request as the double saw it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// `get`, `list`, `watch`, `create`, `update` or `patch` (RBAC verbs);
    /// `get` also for non-resource paths.
    pub verb: String,
    /// API group of the resource ("" for core and for non-resource paths).
    pub group: String,
    /// Resource plural (`services/status` for the subresource), or the path
    /// for non-resource requests (`/version`).
    pub resource: String,
    /// The `resourceVersion` query parameter, if any.
    pub resource_version: Option<String>,
    pub field_selector: Option<String>,
    /// The status code answered (200 for a watch that ends in a 410 event).
    pub status: u16,
}

/// An open watch: where its events go.
struct Watch {
    resource: Resource,
    selector: Selector,
    bookmarks: bool,
    tx: mpsc::UnboundedSender<String>,
}

/// A watch asked for a resourceVersion older than the retained history.
#[derive(Debug)]
pub struct Gone {
    pub asked: u64,
    pub oldest: u64,
}

pub struct State {
    rv: u64,
    objects: HashMap<Resource, BTreeMap<(String, String), Value>>,
    /// Events after `compacted`, in resourceVersion order: (rv, resource, line).
    history: Vec<(u64, Resource, Value, String)>,
    /// A watch from a resourceVersion below this gets 410 Gone.
    compacted: u64,
    watches: Vec<Watch>,
    pub requests: Vec<Request>,
    pub bookmarks_sent: u64,
    /// While false every request gets 503 (an API server that is down).
    pub available: bool,
    /// Resources whose every request gets 403 (RBAC not granting them).
    pub forbidden: BTreeSet<Resource>,
    /// Every answer waits this long first (a slow, overloaded server).
    pub delay: std::time::Duration,
    /// While true, list and get answers are cut off halfway (the length
    /// header promises the whole body) and the connection closed.
    pub truncate: bool,
}

impl Default for State {
    fn default() -> Self {
        Self {
            // Starts above 1 so "0" (any version) is never a real one.
            rv: 100,
            objects: HashMap::new(),
            history: Vec::new(),
            compacted: 0,
            watches: Vec::new(),
            requests: Vec::new(),
            bookmarks_sent: 0,
            available: true,
            forbidden: BTreeSet::new(),
            delay: std::time::Duration::ZERO,
            truncate: false,
        }
    }
}

/// One watch event as a JSON line.
pub fn event_line(kind: &str, object: &Value) -> String {
    json!({"type": kind, "object": object}).to_string()
}

impl State {
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    /// Creates or replaces an object (by namespace/name); returns its new
    /// resourceVersion. Panics on an object of an unknown kind: the caller is
    /// a test.
    pub fn apply(&mut self, mut obj: Value) -> u64 {
        let resource =
            Resource::of(&obj).unwrap_or_else(|| panic!("the double does not serve {obj}"));
        let k = key(&obj);
        assert!(!k.1.is_empty(), "an object needs metadata.name: {obj}");
        assert_eq!(resource.namespaced(), !k.0.is_empty(), "namespace of {obj}");
        self.rv += 1;
        let meta = &mut obj["metadata"];
        meta["resourceVersion"] = json!(self.rv.to_string());
        let kept = self.objects.get(&resource).and_then(|m| m.get(&k)).map(|o| o["metadata"]["creationTimestamp"].clone());
        if let Some(t) = kept.filter(|t| t.is_string() && meta.get("creationTimestamp").is_none()) {
            meta["creationTimestamp"] = t;
        }
        if meta.get("creationTimestamp").is_none() {
            // Ordered as the objects were created (the allocator and the
            // pools go by age); one a second from the start of 2000.
            let t = self.rv;
            meta["creationTimestamp"] = json!(format!("2000-01-{:02}T{:02}:{:02}:{:02}Z", 1 + t / 86_400 % 28, t / 3600 % 24, t / 60 % 60, t % 60));
        }
        if meta.get("uid").is_none() {
            meta["uid"] = json!(format!("uid-{}-{}-{}", resource.plural(), k.0, k.1));
        }
        let old = self
            .objects
            .entry(resource)
            .or_default()
            .insert(k, obj.clone());
        self.record(
            resource,
            if old.is_some() { "MODIFIED" } else { "ADDED" },
            obj,
        );
        self.rv
    }

    /// POST: creates an object in `namespace`; 409 if it exists. A
    /// `generateName` without a name gets a unique name.
    pub fn create(&mut self, resource: Resource, namespace: &str, mut obj: Value) -> Result<Value, Refused> {
        if Resource::of(&obj) != Some(resource) {
            return Err((400, "BadRequest", format!("the body is not a {}", resource.kind())));
        }
        if resource.namespaced() {
            obj["metadata"]["namespace"] = json!(namespace);
        }
        if obj["metadata"]["name"].as_str().unwrap_or_default().is_empty() {
            let prefix = obj["metadata"]["generateName"].as_str().unwrap_or_default().to_string();
            if prefix.is_empty() {
                return Err((422, "Invalid", "metadata.name or generateName is required".into()));
            }
            obj["metadata"]["name"] = json!(format!("{prefix}{}", self.rv + 1));
        }
        let (ns, name) = key(&obj);
        if self.get(resource, &ns, &name).is_some() {
            return Err((409, "AlreadyExists", format!("{} {name:?} already exists", resource.plural())));
        }
        self.apply(obj.clone());
        Ok(self.get(resource, &ns, &name).expect("just created"))
    }

    /// PUT: replaces an object; 409 when the body's resourceVersion is not
    /// the stored one (optimistic concurrency), 404 when it does not exist.
    pub fn replace(&mut self, resource: Resource, namespace: &str, name: &str, mut obj: Value) -> Result<Value, Refused> {
        if resource.namespaced() {
            obj["metadata"]["namespace"] = json!(namespace);
        }
        let Some(old) = self.get(resource, namespace, name) else {
            return Err((404, "NotFound", format!("{} {name:?} not found", resource.plural())));
        };
        if Resource::of(&obj) != Some(resource) || key(&obj).1 != name {
            return Err((400, "BadRequest", format!("the body is not {} {name:?}", resource.kind())));
        }
        let sent = obj["metadata"]["resourceVersion"].as_str().unwrap_or_default();
        let stored = old["metadata"]["resourceVersion"].as_str().unwrap_or_default();
        if sent.is_empty() || sent != stored {
            let msg = format!("Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again", resource.plural());
            return Err((409, "Conflict", msg));
        }
        self.apply(obj);
        Ok(self.get(resource, namespace, name).expect("just replaced"))
    }

    /// PATCH of the `status` subresource (merge patch): only `status`
    /// changes; a `metadata.resourceVersion` in the patch is a precondition.
    pub fn patch_status(&mut self, resource: Resource, namespace: &str, name: &str, patch: &Value) -> Result<Value, Refused> {
        let Some(mut obj) = self.get(resource, namespace, name) else {
            return Err((404, "NotFound", format!("{} {name:?} not found", resource.plural())));
        };
        if let Some(rv) = patch["metadata"]["resourceVersion"].as_str() {
            if obj["metadata"]["resourceVersion"].as_str() != Some(rv) {
                return Err((409, "Conflict", format!("{} {name:?} has been modified", resource.plural())));
            }
        }
        if let Some(status) = patch.get("status") {
            merge_patch(&mut obj["status"], status);
        }
        self.apply(obj);
        Ok(self.get(resource, namespace, name).expect("just patched"))
    }

    /// Deletes an object; returns whether it existed.
    pub fn delete(&mut self, resource: Resource, namespace: &str, name: &str) -> bool {
        let k = (namespace.to_string(), name.to_string());
        let Some(mut obj) = self.objects.entry(resource).or_default().remove(&k) else {
            return false;
        };
        // As the API server does: the deleted object carries the deletion's version.
        self.rv += 1;
        obj["metadata"]["resourceVersion"] = json!(self.rv.to_string());
        self.record(resource, "DELETED", obj);
        true
    }

    fn record(&mut self, resource: Resource, kind: &str, obj: Value) {
        let line = event_line(kind, &obj);
        // A closed receiver is a watch whose connection ended: forget it.
        self.watches.retain(|w| {
            w.resource != resource || !w.selector.matches(&obj) || w.tx.send(line.clone()).is_ok()
        });
        self.history.push((self.rv, resource, obj, line));
    }

    /// The objects a LIST returns, in namespace/name order.
    pub fn list(&self, resource: Resource, selector: &Selector) -> Vec<Value> {
        self.objects
            .get(&resource)
            .map(|m| {
                m.values()
                    .filter(|o| selector.matches(o))
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn get(&self, resource: Resource, namespace: &str, name: &str) -> Option<Value> {
        self.objects
            .get(&resource)?
            .get(&(namespace.to_string(), name.to_string()))
            .cloned()
    }

    /// Opens a watch from `from` (None: "any", which starts with the current
    /// objects as ADDED events). Events after `from` still in the history are
    /// queued first; a `from` older than the history is [`Gone`].
    pub fn watch(
        &mut self,
        resource: Resource,
        selector: Selector,
        from: Option<u64>,
        bookmarks: bool,
    ) -> Result<mpsc::UnboundedReceiver<String>, Gone> {
        let (tx, rx) = mpsc::unbounded_channel();
        match from {
            None => {
                for o in self.list(resource, &selector) {
                    let _ = tx.send(event_line("ADDED", &o));
                }
            }
            Some(n) if n < self.compacted => {
                return Err(Gone {
                    asked: n,
                    oldest: self.compacted,
                })
            }
            Some(n) => {
                let missed = self
                    .history
                    .iter()
                    .filter(|(rv, r, obj, _)| *rv > n && *r == resource && selector.matches(obj));
                for (_, _, _, line) in missed {
                    let _ = tx.send(line.clone());
                }
            }
        }
        self.watches.push(Watch {
            resource,
            selector,
            bookmarks,
            tx,
        });
        Ok(rx)
    }

    /// Forgets the history: a watch from any version before now gets 410.
    pub fn compact(&mut self) {
        self.history.clear();
        self.compacted = self.rv;
    }

    /// Ends every open watch (its connection is cut); returns how many.
    pub fn drop_watches(&mut self) -> usize {
        self.watches.retain(|w| !w.tx.is_closed());
        let n = self.watches.len();
        self.watches.clear();
        n
    }

    /// Watches still connected.
    pub fn open_watches(&mut self) -> usize {
        self.watches.retain(|w| !w.tx.is_closed());
        self.watches.len()
    }

    /// Sends a BOOKMARK at the current version to every watch that asked for
    /// bookmarks; returns how many were sent.
    pub fn bookmark(&mut self) -> usize {
        let rv = self.rv.to_string();
        let mut sent = 0;
        self.watches.retain(|w| {
            if !w.bookmarks {
                return true;
            }
            let r = w.resource;
            let obj = json!({"kind": r.kind(), "apiVersion": r.api_version(), "metadata": {"resourceVersion": rv}});
            let ok = w.tx.send(event_line("BOOKMARK", &obj)).is_ok();
            sent += usize::from(ok);
            ok
        });
        self.bookmarks_sent += sent as u64;
        sent
    }
}
