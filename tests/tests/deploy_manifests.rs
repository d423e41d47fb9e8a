//! The Kubernetes manifests under deploy/ against the agent they deploy.
//!
//! Every object parses into its k8s-openapi type and serialises back to the
//! same JSON, so a misspelt or misplaced field (which Kubernetes would drop or
//! refuse) fails here; the ClusterRole grants exactly the API calls the agent
//! makes; the DaemonSet probes the agent's real endpoints on its default
//! port, mounts the paths it uses, and passes options `lb-agent run` accepts.
//! No cluster needed.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
    process::Command,
};

use k8s_openapi::{
    api::{
        apps::v1::{DaemonSet, Deployment},
        core::v1::{ConfigMap, Container, Namespace, Service, ServiceAccount},
        networking::v1::{Ingress, IngressClass},
        rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};
use serde_json::Value;
use xdplb_tests::agent::agent_binary;

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

/// Every YAML document under deploy/, as JSON, with the file it came from.
fn documents() -> Vec<(PathBuf, Value)> {
    let mut files = Vec::new();
    yaml_files(&deploy_dir(), &mut files);
    files.sort();
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for d in serde_norway::Deserializer::from_str(&text) {
            let v: serde_norway::Value = serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{}: invalid YAML: {e}", f.display()));
            if v.is_null() {
                continue;
            }
            docs.push((f.clone(), serde_json::to_value(v).unwrap()));
        }
    }
    docs
}

/// Parses `v` as `T` and checks that nothing was lost on the way back.
fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(file: &Path, v: &Value) -> T {
    let name = v
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    let typed: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "{}: {name}: not a valid {}: {e}",
            file.display(),
            std::any::type_name::<T>()
        )
    });
    let back = serde_json::to_value(&typed).unwrap();
    if &back != v {
        panic!(
            "{}: {name}: fields unknown to the {} schema were dropped:\nwritten: {}\nparsed:  {}",
            file.display(),
            std::any::type_name::<T>(),
            serde_json::to_string_pretty(v).unwrap(),
            serde_json::to_string_pretty(&back).unwrap()
        );
    }
    typed
}

/// The Kubernetes objects under deploy/, typed.
#[derive(Default)]
struct Objects {
    namespaces: Vec<Namespace>,
    service_accounts: Vec<ServiceAccount>,
    cluster_roles: Vec<ClusterRole>,
    cluster_role_bindings: Vec<ClusterRoleBinding>,
    daemon_sets: Vec<(PathBuf, DaemonSet)>,
    /// Kustomizations and agent configurations: (file, JSON).
    kustomizations: Vec<(PathBuf, Value)>,
    agent_configs: Vec<PathBuf>,
    deployments: Vec<Deployment>,
    services: Vec<Service>,
    ingresses: Vec<Ingress>,
    ingress_classes: Vec<IngressClass>,
    pod_monitors: Vec<Value>,
    count: usize,
}

fn objects() -> Objects {
    let mut o = Objects::default();
    for (file, v) in documents() {
        let api = v
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or_default();
        let kind = v.get("kind").and_then(Value::as_str);
        match kind {
            // The agent's `--config` files: a mapping of option names.
            None if file.file_name().is_some_and(|n| n == "config.yaml") => {
                o.agent_configs.push(file)
            }
            // Prometheus rules (deploy/observability): observability_rules.rs checks them.
            None if file.file_name().is_some_and(|n| n == "rules.yaml") => {}
            None => panic!("{}: a document without `kind`", file.display()),
            Some("Kustomization" | "Component") if api.starts_with("kustomize.config.k8s.io/") => {
                o.kustomizations.push((file, v))
            }
            // The Prometheus Operator's kinds (deploy/observability): no
            // k8s-openapi types; observability_rules.rs checks the rules and
            // the pod monitor is checked against the DaemonSet below.
            Some("PrometheusRule") if api == "monitoring.coreos.com/v1" => {}
            Some("PodMonitor") if api == "monitoring.coreos.com/v1" => o.pod_monitors.push(v),
            Some("Namespace") => o.namespaces.push(round_trip(&file, &v)),
            Some("ServiceAccount") => o.service_accounts.push(round_trip(&file, &v)),
            Some("ClusterRole") => o.cluster_roles.push(round_trip(&file, &v)),
            Some("ClusterRoleBinding") => o.cluster_role_bindings.push(round_trip(&file, &v)),
            Some("DaemonSet") => o.daemon_sets.push((file.clone(), round_trip(&file, &v))),
            Some("Role") => drop(round_trip::<Role>(&file, &v)),
            Some("RoleBinding") => drop(round_trip::<RoleBinding>(&file, &v)),
            Some("ConfigMap") => drop(round_trip::<ConfigMap>(&file, &v)),
            Some("Deployment") => o.deployments.push(round_trip(&file, &v)),
            Some("Service") => o.services.push(round_trip(&file, &v)),
            Some("Ingress") => o.ingresses.push(round_trip(&file, &v)),
            Some("IngressClass") => o.ingress_classes.push(round_trip(&file, &v)),
            Some(k) => panic!(
                "{}: kind {k} ({api}) is not checked here: add it to this test",
                file.display()
            ),
        }
        o.count += 1;
    }
    o
}

#[test]
fn every_manifest_parses_into_its_kubernetes_type_without_losing_a_field() {
    let o = objects();
    assert!(
        o.count >= 8,
        "found only {} documents under {}",
        o.count,
        deploy_dir().display()
    );
    assert_eq!(o.daemon_sets.len(), 1, "one DaemonSet, the agent's");
    assert!(!o.kustomizations.is_empty() && !o.agent_configs.is_empty());
}

/// (group, resource, verb) triples a ClusterRole grants; wildcards refused.
fn grants(role: &ClusterRole) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for r in role.rules.iter().flatten() {
        assert!(
            r.non_resource_urls.is_none() && r.resource_names.is_none(),
            "{r:?}"
        );
        for g in r.api_groups.iter().flatten() {
            for res in r.resources.iter().flatten() {
                for verb in &r.verbs {
                    assert!(
                        ![g, res, verb].iter().any(|s| s.contains('*')),
                        "wildcard in {r:?}"
                    );
                    out.insert((g.clone(), res.clone(), verb.clone()));
                }
            }
        }
    }
    out
}

#[test]
fn the_cluster_role_grants_exactly_the_agents_api_calls() {
    let o = objects();
    let agent_role = o
        .cluster_roles
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some("xdplb"))
        .expect("ClusterRole xdplb");
    // The agent's own list of its API calls (the kube source's reflectors).
    let want = lb_agent::control::source::kube::kube_api_call_set();
    assert_eq!(grants(agent_role), want);

    // Bound to the ServiceAccount the DaemonSet runs as, in its namespace.
    let (_, ds) = &o.daemon_sets[0];
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let sa = pod
        .service_account_name
        .as_deref()
        .expect("serviceAccountName");
    let ns = ds.metadata.namespace.as_deref().expect("namespace");
    assert!(o
        .service_accounts
        .iter()
        .any(|s| s.metadata.name.as_deref() == Some(sa)
            && s.metadata.namespace.as_deref() == Some(ns)));
    assert!(o
        .namespaces
        .iter()
        .any(|n| n.metadata.name.as_deref() == Some(ns)));
    let binding = o
        .cluster_role_bindings
        .iter()
        .find(|b| b.role_ref.name == "xdplb")
        .expect("ClusterRoleBinding");
    assert_eq!(binding.role_ref.kind, "ClusterRole");
    let subjects = binding.subjects.as_deref().unwrap_or_default();
    assert!(
        subjects.iter().any(|s| s.kind == "ServiceAccount"
            && s.name == sa
            && s.namespace.as_deref() == Some(ns)),
        "{subjects:?}"
    );
}

fn the_container(ds: &DaemonSet) -> &Container {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    assert_eq!(pod.containers.len(), 1);
    &pod.containers[0]
}

/// The port of the agent's default `--metrics-addr`.
fn default_metrics_port() -> u16 {
    lb_agent::ops::http::DEFAULT_METRICS_ADDR
        .parse::<std::net::SocketAddr>()
        .unwrap()
        .port()
}

#[test]
fn the_daemon_set_probes_the_agents_endpoints_on_its_metrics_port() {
    let o = objects();
    let (_, ds) = &o.daemon_sets[0];
    let c = the_container(ds);
    let port = default_metrics_port();
    let named: BTreeMap<&str, i32> = c
        .ports
        .iter()
        .flatten()
        .filter_map(|p| Some((p.name.as_deref()?, p.container_port)))
        .collect();
    let resolve = |p: &IntOrString| match p {
        IntOrString::Int(n) => *n,
        IntOrString::String(name) => *named
            .get(name.as_str())
            .unwrap_or_else(|| panic!("no port named {name}")),
    };
    for (probe, path) in [
        (&c.liveness_probe, lb_agent::ops::http::HEALTHZ_PATH),
        (&c.readiness_probe, lb_agent::ops::http::READYZ_PATH),
    ] {
        let get = probe
            .as_ref()
            .and_then(|p| p.http_get.as_ref())
            .expect("an httpGet probe");
        assert_eq!(get.path.as_deref(), Some(path));
        assert_eq!(resolve(&get.port), i32::from(port), "probe of {path}");
        assert!(
            get.host.is_none(),
            "kubelet probes the node address (hostNetwork)"
        );
    }
    let ann = ds
        .spec
        .as_ref()
        .unwrap()
        .template
        .metadata
        .as_ref()
        .unwrap()
        .annotations
        .clone()
        .unwrap_or_default();
    assert_eq!(
        ann.get("prometheus.io/scrape").map(String::as_str),
        Some("true")
    );
    assert_eq!(ann.get("prometheus.io/port"), Some(&port.to_string()));
    assert_eq!(
        ann.get("prometheus.io/path").map(String::as_str),
        Some("/metrics")
    );

    // Kubelet and Prometheus come from outside the process: every agent
    // configuration serves on all addresses, at the default port.
    for f in &o.agent_configs {
        let cfg: BTreeMap<String, serde_norway::Value> =
            serde_norway::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
        let addr: std::net::SocketAddr = cfg["metrics-addr"]
            .as_str()
            .expect("metrics-addr")
            .parse()
            .unwrap();
        assert!(
            addr.ip().is_unspecified() && addr.port() == port,
            "{}: metrics-addr {addr}",
            f.display()
        );
    }
}

#[test]
fn the_daemon_set_runs_on_every_node_with_capabilities_not_privileged() {
    let o = objects();
    let (_, ds) = &o.daemon_sets[0];
    let spec = ds.spec.as_ref().unwrap();
    let pod = spec.template.spec.as_ref().unwrap();
    assert_eq!(pod.host_network, Some(true));
    let tolerations = pod.tolerations.as_deref().unwrap_or_default();
    assert!(
        tolerations
            .iter()
            .any(|t| t.operator.as_deref() == Some("Exists")
                && t.key.is_none()
                && t.effect.is_none()),
        "{tolerations:?}"
    );
    let update = spec.update_strategy.as_ref().unwrap();
    assert_eq!(update.type_.as_deref(), Some("RollingUpdate"));
    assert_eq!(
        update.rolling_update.as_ref().unwrap().max_unavailable,
        Some(IntOrString::Int(1))
    );

    let c = the_container(ds);
    let sc = c.security_context.as_ref().expect("securityContext");
    assert_ne!(sc.privileged, Some(true));
    let caps = sc.capabilities.as_ref().expect("capabilities");
    assert_eq!(caps.drop.as_deref(), Some(&["ALL".to_string()][..]));
    // The three `lb-agent doctor` checks for (ops::checks::privileges).
    let mut add = caps.add.clone().unwrap_or_default();
    add.sort();
    assert_eq!(add, ["BPF", "NET_ADMIN", "SYS_ADMIN"]);
    let res = c.resources.as_ref().expect("resources");
    assert!(res
        .requests
        .as_ref()
        .is_some_and(|r| r.contains_key("cpu") && r.contains_key("memory")));
    assert!(res
        .limits
        .as_ref()
        .is_some_and(|l| l.contains_key("memory")));

    let env = c.env.as_deref().unwrap_or_default();
    let node = env
        .iter()
        .find(|e| e.name == "NODE_NAME")
        .expect("NODE_NAME");
    let field = node
        .value_from
        .as_ref()
        .and_then(|v| v.field_ref.as_ref())
        .expect("fieldRef");
    assert_eq!(field.field_path, "spec.nodeName");
}

/// The hostPath volume mounted at an ancestor of `path`, if any:
/// (mountPath, hostPath, mountPropagation, readOnly).
fn mount_covering(ds: &DaemonSet, path: &str) -> Option<(String, String, Option<String>, bool)> {
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let c = the_container(ds);
    c.volume_mounts
        .iter()
        .flatten()
        .filter(|m| Path::new(path).starts_with(&m.mount_path))
        .find_map(|m| {
            let v = pod.volumes.iter().flatten().find(|v| v.name == m.name)?;
            let host = v.host_path.as_ref()?;
            Some((
                m.mount_path.clone(),
                host.path.clone(),
                m.mount_propagation.clone(),
                m.read_only == Some(true),
            ))
        })
}

#[test]
fn the_daemon_set_mounts_the_paths_the_agent_uses() {
    let o = objects();
    let (_, ds) = &o.daemon_sets[0];
    // The pinned maps and links: the host's bpffs, the same path inside, so
    // they outlive the pod and the next pod finds them.
    let pins = lb_agent::loader::DEFAULT_PIN_DIR;
    let (mount, host, propagation, ro) =
        mount_covering(ds, pins).unwrap_or_else(|| panic!("nothing mounts {pins}"));
    assert_eq!(mount, host, "the host's {host} at the same path");
    assert_eq!(
        Path::new(pins).parent(),
        Some(Path::new(&mount)),
        "the pin dir's parent is the bpffs mount"
    );
    assert!(!ro, "the agent pins there");
    // Bidirectional needs a privileged pod; the host mounts bpffs itself.
    assert_eq!(propagation.as_deref(), Some("HostToContainer"));
    let btf = "/sys/kernel/btf/vmlinux";
    let (mount, host, _, ro) =
        mount_covering(ds, btf).unwrap_or_else(|| panic!("nothing mounts {btf}"));
    assert!(
        mount == host && ro,
        "{mount} from the host's {host}, read-only"
    );

    // The socket programs attach to the host's cgroup2 root, not the
    // container's cgroup namespace view.
    let (mount, host, _, ro) = mount_covering(ds, "/sys/fs/cgroup").expect("nothing mounts the host's /sys/fs/cgroup");
    assert!(mount == host && !ro, "{mount} from the host's {host}, writable (attaching needs the directory)");

    // --config points into the ConfigMap's mount, at a key the
    // kustomization generates.
    let c = the_container(ds);
    let args = c.args.as_deref().unwrap_or_default();
    assert_eq!(args.first().map(String::as_str), Some("run"));
    let cfg = args
        .iter()
        .skip_while(|a| *a != "--config")
        .nth(1)
        .expect("--config FILE");
    let m = c
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| Path::new(cfg).parent() == Some(Path::new(&m.mount_path)))
        .expect("a mount holding --config");
    let pod = ds.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == m.name)
        .unwrap();
    let cm = vol
        .config_map
        .as_ref()
        .expect("a ConfigMap volume")
        .name
        .clone();
    let generated =
        o.kustomizations.iter().any(|(_, k)| {
            k["configMapGenerator"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|g| {
                    g["name"] == cm.as_str()
                        && g["files"].as_array().into_iter().flatten().any(|f| {
                            Path::new(cfg).file_name().and_then(|n| n.to_str()) == f.as_str()
                        })
                })
        });
    assert!(generated, "no configMapGenerator makes {cm} with {cfg}");
}

#[test]
fn every_agent_configuration_is_accepted_by_lb_agent_run() {
    // `install` checks its options with `run`'s own parser, and `--config`
    // expands into them: a key `run` does not know fails here.
    let o = objects();
    for f in &o.agent_configs {
        let root = std::env::temp_dir().join(format!("xlbt-{}-cfgcheck", std::process::id()));
        let out = Command::new(agent_binary())
            .args(["install", "--root"])
            .arg(&root)
            .arg("--config")
            .arg(f)
            .args(["--source", "kube"])
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&root);
        assert!(
            out.status.success(),
            "{}: {}",
            f.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Applies the JSON-patch operations the overlays use (add, replace).
fn apply(doc: &mut Value, ops: &[Value], file: &Path) {
    for op in ops {
        let path = op["path"].as_str().unwrap();
        let (parent, last) = path.rsplit_once('/').unwrap();
        let target = doc.pointer_mut(parent).unwrap_or_else(|| {
            panic!(
                "{}: patch path {path}: no {parent} in the base",
                file.display()
            )
        });
        match (op["op"].as_str(), target) {
            (Some("add"), Value::Array(a)) if last == "-" => a.push(op["value"].clone()),
            (Some("add" | "replace"), Value::Object(m)) => {
                if op["op"] == "replace" {
                    assert!(
                        m.contains_key(last),
                        "{}: replace {path}: nothing there in the base",
                        file.display()
                    );
                }
                m.insert(last.to_string(), op["value"].clone());
            }
            (o, _) => panic!(
                "{}: patch op {o:?} at {path} not understood here",
                file.display()
            ),
        }
    }
}

#[test]
fn kustomizations_reference_files_that_exist_and_patches_that_apply() {
    let o = objects();
    let base_ds = documents()
        .into_iter()
        .find(|(_, v)| v["kind"] == "DaemonSet")
        .unwrap()
        .1;
    for (file, k) in &o.kustomizations {
        let dir = file.parent().unwrap();
        let mut refs: Vec<&str> = k["resources"]
            .as_array()
            .into_iter()
            .chain(k["components"].as_array())
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        for g in k["configMapGenerator"].as_array().into_iter().flatten() {
            refs.extend(
                g["files"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str),
            );
        }
        for r in refs {
            assert!(
                dir.join(r).exists(),
                "{}: {r} does not exist",
                file.display()
            );
        }
        for p in k["patches"].as_array().into_iter().flatten() {
            assert_eq!(
                p["target"]["kind"],
                "DaemonSet",
                "{}: only DaemonSet patches are checked",
                file.display()
            );
            let ops: Vec<Value> = serde_norway::from_str(p["patch"].as_str().unwrap()).unwrap();
            let mut patched = base_ds.clone();
            apply(&mut patched, &ops, file);
            round_trip::<DaemonSet>(file, &patched);
        }
    }
}

#[test]
fn the_example_services_select_pods_and_ports_that_exist() {
    // What a cluster would only reveal at run time: a Service whose selector
    // matches no pod, a named targetPort no container declares, an Ingress
    // pointing at a missing Service, port or class.
    let o = objects();
    assert!(!o.services.is_empty() && !o.ingresses.is_empty());
    for svc in &o.services {
        let (name, ns) = (
            svc.metadata.name.as_deref().unwrap(),
            svc.metadata.namespace.as_deref(),
        );
        let spec = svc.spec.as_ref().unwrap();
        let selector = spec.selector.clone().unwrap_or_default();
        let pods: Vec<_> = o
            .deployments
            .iter()
            .filter(|d| d.metadata.namespace.as_deref() == ns)
            .filter_map(|d| Some(d.spec.as_ref()?.template.clone()))
            .filter(|t| {
                let labels = t
                    .metadata
                    .as_ref()
                    .and_then(|m| m.labels.clone())
                    .unwrap_or_default();
                selector.iter().all(|(k, v)| labels.get(k) == Some(v))
            })
            .collect();
        assert!(
            !selector.is_empty() && !pods.is_empty(),
            "Service {name} selects no Deployment's pods"
        );
        for port in spec.ports.iter().flatten() {
            if let Some(IntOrString::String(target)) = &port.target_port {
                for t in &pods {
                    let declared = t
                        .spec
                        .iter()
                        .flat_map(|s| &s.containers)
                        .flat_map(|c| c.ports.iter().flatten());
                    assert!(
                        declared
                            .clone()
                            .any(|p| p.name.as_deref() == Some(target.as_str())),
                        "Service {name}: targetPort {target} is no container port of its pods"
                    );
                }
            }
        }
    }
    for ing in &o.ingresses {
        let ns = ing.metadata.namespace.as_deref();
        let spec = ing.spec.as_ref().unwrap();
        let class = spec
            .ingress_class_name
            .as_deref()
            .expect("ingressClassName");
        assert!(
            o.ingress_classes
                .iter()
                .any(|c| c.metadata.name.as_deref() == Some(class)),
            "no IngressClass {class}"
        );
        for rule in spec.rules.iter().flatten() {
            for path in rule.http.iter().flat_map(|h| &h.paths) {
                let b = path.backend.service.as_ref().expect("a Service backend");
                let svc = o
                    .services
                    .iter()
                    .find(|s| {
                        s.metadata.namespace.as_deref() == ns
                            && s.metadata.name.as_deref() == Some(b.name.as_str())
                    })
                    .unwrap_or_else(|| panic!("Ingress backend {} does not exist", b.name));
                let number = b
                    .port
                    .as_ref()
                    .and_then(|p| p.number)
                    .expect("a port number");
                let ports = svc.spec.as_ref().unwrap().ports.clone().unwrap_or_default();
                assert!(
                    ports.iter().any(|p| p.port == number),
                    "Service {} has no port {number}",
                    b.name
                );
            }
        }
    }
    // The controller's VIP is a LoadBalancer Service: what xdplb balances.
    let lb = o
        .services
        .iter()
        .filter(|s| s.spec.as_ref().unwrap().type_.as_deref() == Some("LoadBalancer"));
    assert_eq!(
        lb.count(),
        1,
        "the ingress controller's Service is the one LoadBalancer"
    );
}

#[test]
fn the_pod_monitor_scrapes_the_agents_metrics_port_as_job_xdplb_per_node() {
    let o = objects();
    let (_, ds) = &o.daemon_sets[0];
    let pod_labels = ds.spec.as_ref().unwrap().template.metadata.as_ref().unwrap().labels.clone().unwrap();
    let ports: Vec<String> = the_container(ds).ports.iter().flatten().filter_map(|p| p.name.clone()).collect();
    assert_eq!(o.pod_monitors.len(), 1);
    let pm = &o.pod_monitors[0];
    for (k, v) in pm["spec"]["selector"]["matchLabels"].as_object().unwrap() {
        assert_eq!(pod_labels.get(k).map(String::as_str), v.as_str(), "the PodMonitor selects {k}={v}: no agent pod has it");
    }
    let ep = &pm["spec"]["podMetricsEndpoints"][0];
    assert!(ports.contains(&ep["port"].as_str().unwrap().to_string()), "port {} not in {ports:?}", ep["port"]);
    assert_eq!(ep["path"], "/metrics");
    // The rules and the dashboard select job="xdplb" and a node per instance.
    let relabel = ep["relabelings"].as_array().unwrap();
    assert!(relabel.iter().any(|r| r["targetLabel"] == "job" && r["replacement"] == "xdplb"), "{relabel:?}");
    assert!(relabel.iter().any(|r| r["targetLabel"] == "instance" && r["sourceLabels"][0] == "__meta_kubernetes_pod_node_name"), "{relabel:?}");
}
