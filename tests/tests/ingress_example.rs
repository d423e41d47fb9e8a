//! deploy/examples/ingress-nginx, end to end in network namespaces: clients
//! reach a LoadBalancer VIP, xdplb (XDP on the uplink) balances it to the
//! "controller pod" where nginx (Debian's package, standing in for
//! ingress-nginx) routes by Host header to two ClusterIPs, which xdplb (tc on
//! the pod's host-side veth) balances over each application's backends. All
//! of it programmed by the real agent from Service and EndpointSlice YAML.
//!
//! ```text
//! client 192.168.1.2 ─ up0 [XDP] node [tc pod0] ─ controller pod 10.0.3.2 (nginx :80)
//!   → VIP 203.0.113.10:80             br0 ─ a-0, a-1 (10.0.2.11-12:8080)
//!                                         ─ b-0, b-1 (10.0.2.13-14:8080)
//! ```
//! Needs root and nginx (`cargo xtask provision` installs nginx-light).
use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Stdio},
    time::Duration,
};

use k8s_openapi::api::networking::v1::Ingress;
use xdplb_tests::{
    agent::{objects_dir_with, Agent},
    netns::Netns,
    servers::Server,
    topology::{backend_addr, Topology, CLIENT_ADDR, POD_ADDR, POD_IFACE},
    wait_for,
};

/// The controller Service's LoadBalancer address: off the client's subnet,
/// routed to the node as a VIP announced by BGP/ARP would be.
const VIP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
/// ClusterIPs of the two applications (web/a, web/b).
const CLUSTER_IPS: [(&str, Ipv4Addr); 2] = [
    ("a", Ipv4Addr::new(10, 96, 0, 11)),
    ("b", Ipv4Addr::new(10, 96, 0, 12)),
];

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join("deploy/examples/ingress-nginx")
}

/// (host, service name, service port) of the example's Ingress rules.
fn example_routes() -> Vec<(String, String, i32)> {
    let text = std::fs::read_to_string(example_dir().join("ingress.yaml"))
        .expect("the example's ingress.yaml");
    let ingress: Ingress = serde_norway::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .find_map(|v: serde_norway::Value| {
            (v["kind"] == "Ingress").then(|| serde_norway::from_value(v).expect("a valid Ingress"))
        })
        .expect("an Ingress in ingress.yaml");
    let ann = ingress.metadata.annotations.unwrap_or_default();
    assert_eq!(
        ann.get("nginx.ingress.kubernetes.io/service-upstream")
            .map(String::as_str),
        Some("true"),
        "the controller must proxy to the ClusterIPs, or xdplb balances nothing behind it"
    );
    let mut routes = Vec::new();
    for rule in ingress.spec.unwrap().rules.unwrap_or_default() {
        for p in rule.http.unwrap().paths {
            let svc = p.backend.service.unwrap();
            routes.push((
                rule.host.clone().unwrap(),
                svc.name,
                svc.port.unwrap().number.unwrap(),
            ));
        }
    }
    routes
}

/// The Service and EndpointSlice YAML of the example, as the API server
/// would hold it once the Deployments run: the controller's LoadBalancer
/// Service (its VIP in status) with the controller pod as endpoint, and
/// `a`/`b` with two backends each.
fn objects() -> (String, String) {
    let mut services = format!(
        "apiVersion: v1
kind: Service
metadata: {{name: ingress-nginx-controller, namespace: ingress-nginx}}
spec:
  type: LoadBalancer
  externalTrafficPolicy: Local
  clusterIP: 10.96.0.100
  clusterIPs: [10.96.0.100]
  ports: [{{name: http, port: 80, targetPort: http, nodePort: 30100, protocol: TCP}}]
status:
  loadBalancer:
    ingress: [{{ip: {VIP}}}]
"
    );
    let mut slices = format!(
        "apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: ingress-nginx-controller-x1
  namespace: ingress-nginx
  labels: {{kubernetes.io/service-name: ingress-nginx-controller}}
addressType: IPv4
ports: [{{name: http, port: 80, protocol: TCP}}]
endpoints:
- addresses: [{POD_ADDR}]
  conditions: {{ready: true, serving: true, terminating: false}}
  nodeName: node-0
"
    );
    for (i, (name, ip)) in CLUSTER_IPS.iter().enumerate() {
        services += &format!(
            "---
apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: web
  annotations: {{xdplb.io/algorithm: round-robin}}
spec:
  type: ClusterIP
  clusterIP: {ip}
  clusterIPs: [{ip}]
  ports: [{{name: http, port: 80, targetPort: http, protocol: TCP}}]
"
        );
        slices += &format!(
            "---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-x1
  namespace: web
  labels: {{kubernetes.io/service-name: {name}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
"
        );
        for b in [2 * i, 2 * i + 1] {
            slices += &format!(
                "- addresses: [{}]\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: node-0\n",
                backend_addr(b)
            );
        }
    }
    (services, slices)
}

/// nginx in the controller pod's namespace; stopped and its files removed
/// on drop.
struct Nginx {
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// One server block per Ingress rule, proxying to the rule's Service's
    /// ClusterIP (what ingress-nginx does with `service-upstream`); any
    /// other Host gets 404.
    fn start(pod: &Netns, routes: &[(String, String, i32)]) -> Self {
        let dir = std::env::temp_dir().join(format!("xlbt-{}-nginx", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut servers = String::new();
        for (host, svc, port) in routes {
            let ip = CLUSTER_IPS
                .iter()
                .find(|(n, _)| n == svc)
                .unwrap_or_else(|| panic!("no ClusterIP for {svc}"))
                .1;
            servers += &format!(
                "  server {{ listen 80; server_name {host}; location / {{ proxy_pass http://{ip}:{port}; }} }}\n"
            );
        }
        let d = dir.display();
        // master_process off: one process, so killing it stops nginx. Every
        // path in our directory: nothing of the host's nginx is touched.
        let conf = format!(
            "daemon off;\nmaster_process off;\npid {d}/nginx.pid;\nerror_log {d}/error.log info;\nevents {{}}\nhttp {{\n  \
             access_log {d}/access.log;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n  \
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n  \
             proxy_connect_timeout 3s;\n  proxy_next_upstream off;\n  \
             server {{ listen 80 default_server; return 404; }}\n{servers}}}\n"
        );
        std::fs::write(dir.join("nginx.conf"), conf).unwrap();
        let child = pod
            .cmd("nginx")
            .arg("-p")
            .arg(&dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nginx (apt-get install nginx-light, or `cargo xtask provision`)");
        let nginx = Self { child, dir };
        let listening = wait_for(Duration::from_secs(10), || {
            pod.run(|| {
                TcpStream::connect_timeout(
                    &SocketAddr::from((POD_ADDR, 80)),
                    Duration::from_millis(200),
                )
                .is_ok()
            })
        });
        assert!(listening, "nginx did not start:\n{}", nginx.log());
        nginx
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An HTTP/1.0 GET for `host` to `to`; (status code, body).
fn get(to: SocketAddr, host: &str) -> std::io::Result<(u16, String)> {
    xdplb_tests::servers::http_request(to, host, "/")
}

#[test]
fn requests_through_the_loadbalancer_vip_reach_the_service_of_their_host() {
    let routes = example_routes();
    assert_eq!(routes.len(), 2, "{routes:?}");
    let t = Topology::new(4);
    // The VIP is routed to the node, as a LoadBalancer's announcement does.
    t.client
        .ip(&["route", "add", &format!("{VIP}/32"), "via", "192.168.1.1"]);
    let _servers: Vec<Server> = (0..4)
        .map(|i| {
            Server::start(
                &t.backends[i],
                8080,
                &format!("{}-{}", ["a", "b"][i / 2], i % 2),
            )
        })
        .collect();
    let (services, slices) = objects();
    let dir = objects_dir_with(&services, &slices);
    // tc on the controller pod's host-side veth balances what nginx sends.
    let mut agent = Agent::start_with(&t.node, &dir, &["--pod-iface", POD_IFACE]);
    let dp = agent.maps();
    let programmed = wait_for(Duration::from_secs(20), || {
        agent.assert_alive();
        dp.contents().is_ok_and(|c| {
            let has = |ip: Ipv4Addr| {
                c.services
                    .keys()
                    .any(|k| k.addr == ip.octets() && u16::from_be_bytes(k.port) == 80)
            };
            has(VIP) && CLUSTER_IPS.iter().all(|(_, ip)| has(*ip))
        })
    });
    assert!(
        programmed,
        "the VIP and ClusterIPs never reached the maps:\n{}",
        agent.log()
    );
    let nginx = Nginx::start(&t.pod, &routes);

    // 20 requests per hostname, interleaved, each on a fresh connection.
    let to = SocketAddr::from((VIP, 80));
    let hosts: Vec<String> = routes.iter().map(|(h, _, _)| h.clone()).collect();
    let tally: BTreeMap<(String, String), usize> = t.client.run(move || {
        let mut tally = BTreeMap::new();
        for i in 0..40 {
            let host = &hosts[i % 2];
            let (code, body) =
                get(to, host).unwrap_or_else(|e| panic!("request {i} for {host}: {e}"));
            let key = (
                host.clone(),
                if code == 200 {
                    body
                } else {
                    format!("HTTP {code}")
                },
            );
            *tally.entry(key).or_default() += 1;
        }
        tally
    });
    eprintln!("answers by (host, backend): {tally:?}");
    for (host, svc, _) in &routes {
        let answered: BTreeMap<&str, usize> = tally
            .iter()
            .filter(|((h, _), _)| h == host)
            .map(|((_, b), n)| (b.as_str(), *n))
            .collect();
        assert_eq!(
            answered.values().sum::<usize>(),
            20,
            "{host}: {tally:?}\nnginx:\n{}",
            nginx.log()
        );
        assert!(
            answered.keys().all(|b| b.starts_with(&format!("{svc}-"))),
            "{host} must reach only Service {svc}'s backends: {answered:?}\nnginx:\n{}",
            nginx.log()
        );
        // The ClusterIP is balanced too: round-robin over both backends.
        assert_eq!(
            answered.len(),
            2,
            "{host}: both of {svc}'s backends answer: {answered:?}"
        );
    }

    // externalTrafficPolicy: Local, no SNAT: nginx saw the client's address.
    let access = std::fs::read_to_string(nginx.dir.join("access.log")).unwrap_or_default();
    assert!(
        access.lines().count() >= 40,
        "nginx logged every request:\n{access}"
    );
    let client = format!("{} ", CLIENT_ADDR);
    assert!(
        access.lines().all(|l| l.starts_with(&client)),
        "client addresses preserved:\n{access}"
    );

    // Routing is by Host: an unknown one gets nginx's default server.
    let other = t.client.run(move || get(to, "c.example"));
    assert_eq!(other.expect("request for c.example").0, 404);
    agent.assert_alive();
}
