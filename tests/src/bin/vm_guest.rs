//! `xdplb-vm-guest`: the `--kernels` tier's scenario, run inside a QEMU VM
//! booted with another kernel (tests/tests/kernels.rs boots it; the guest
//! sees the host's files read-only over 9p, so this binary and lb-agent run
//! from the host's target directory). On the guest's kernel it runs the real
//! agent in the test topology and checks, with real TCP connections:
//! - a ClusterIP is balanced from outside (XDP + tc egress) and from a pod
//!   (tc ingress + egress), replies reverse-NATed (the handshake completes);
//! - on a kernel without TCX the tc programs are netlink filters, one per
//!   hook, replaced in place on SIGTERM and SIGKILL restarts (never two, a
//!   long-lived connection keeps its backend), kept while no agent runs;
//! - SCTP (sctp.ko, which this host's kernel lacks): real associations
//!   through an SCTP Service whose port changes (3868 → 3869, so every
//!   packet's CRC32c changes), to its ClusterIP and NodePort from outside
//!   (XDP, complete CRCs) and from a pod (tc, offloaded CRCs), messages both
//!   ways and larger than the MTU, the endpoints validating every CRC;
//!   over IPv6 too, from a pod (tc) and from outside (XDP: `xdp_lb_v6`
//!   hands SCTP to `xdp_sctp_v6`) to the ClusterIP and the NodePort;
//! - the node's own sockets (the socket programs on the guest's cgroup2
//!   root): an IPv4 socket and a dual-stack IPv6 one dialling the
//!   IPv4-mapped ClusterIP reach both backends and see the ClusterIP as
//!   their peer; an unserved port is refused with ECONNREFUSED; node SCTP
//!   sockets are not seen by those programs (connect, one-to-many sendto,
//!   sctp_connectx: no hook runs): their INIT is answered at tc egress with
//!   an ABORT, and connect() fails with ECONNREFUSED;
//! - `lb-agent doctor`, run before the agent, tells what the agent then
//!   does on this kernel: the tc attach path (netlink filters on the hooks,
//!   or TCX link pins), native XDP on the uplink, socket balancing of the
//!   node's own connections (cgroup links pinned, node connections to the
//!   ClusterIP balanced and counted), every program accepted by the
//!   verifier; after the start it reports the pinned maps as adoptable;
//! - `lb-agent uninstall` removes the filters, the XDP link and the cgroup
//!   programs.
//!
//! Prints `XDPLB-FIGURE name value` lines and `XDPLB-GUEST-OK` at the end;
//! any failed check panics (exit 101).
use std::{
    collections::{BTreeMap, BTreeSet},
    io::ErrorKind,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpStream},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use xdplb_tests::{
    agent::{agent_binary, objects_dir, programmed, programmed_at, programmed_ip, write, Agent, WEB_CLUSTER_IP},
    netns::Netns,
    sctp,
    servers::{tally, Conn, Server},
    tc::{filters, one_filter_each, replaced, HOOKS},
    topology::{backend_addr, backend_addr6, Topology, CLIENT_ADDR6, NODE_ADDR6, POD_ADDR6, POD_IFACE, UPLINK},
    wait_for,
};

const TO: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(WEB_CLUSTER_IP), 80);
/// Small maps: the VM has little memory and hash maps are preallocated.
const SIZES: &[&str] = &[
    "--max-services", "1024", "--max-backends", "1024", "--max-slots", "4096", "--max-flows", "16384", "--max-affinity", "1024",
];
const WAIT: Duration = Duration::from_secs(180);
/// The agent as production runs it: the node's own connections balanced at
/// connect() (the guest's root cgroup).
const SOCKET_LB: &str = "--socket-lb=auto";

fn figure(name: &str, value: impl std::fmt::Display) {
    println!("XDPLB-FIGURE {name} {value}");
}

fn xdp_attached(ns: &Netns) -> bool {
    ns.ip(&["link", "show", UPLINK]).contains("xdp")
}

/// How XDP is attached to the uplink, as `ip link` shows it: "xdp"
/// (native), "xdpgeneric", or "" (none).
fn xdp_mode(ns: &Netns) -> &'static str {
    let show = ns.ip(&["link", "show", UPLINK]);
    let flags: Vec<&str> = show.split_whitespace().collect();
    ["xdpgeneric", "xdp", "xdpdrv", "xdpoffload"].into_iter().find(|m| flags.contains(m)).map(|m| if m == "xdpdrv" { "xdp" } else { m }).unwrap_or("")
}

/// How many of our socket programs the kernel has attached to `cgroup`
/// (`bpftool cgroup show`).
fn socket_programs_on(cgroup: &str) -> usize {
    let out = Command::new("bpftool").args(["cgroup", "show", cgroup]).output().expect("running bpftool");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bpftool cgroup show {cgroup}: {text}{}", String::from_utf8_lossy(&out.stderr));
    // "ID AttachType [AttachFlags] Name": the flags column may be empty.
    let names: Vec<&str> = text.lines().filter_map(|l| l.split_whitespace().last()).collect();
    // The kernel keeps 15 bytes of a name; bpftool prints the full one
    // from BTF where it can.
    let ours = |p: &str| names.iter().any(|n| *n == p || (n.len() >= 15 && p.starts_with(n)));
    lb_common::maps::programs::SOCK.iter().filter(|p| ours(p)).count()
}

/// `lb-agent doctor --json` in the node's namespace, as `run` would be
/// invoked there with `extra`: check name → (ok, detail), and whether
/// doctor passed.
fn doctor_with(t: &Topology, pin_dir: &Path, extra: &[&str]) -> (BTreeMap<String, (bool, String)>, bool) {
    let out = Command::new("nsenter")
        .arg(format!("--net=/run/netns/{}", t.node.name()))
        .arg(agent_binary())
        .args(["doctor", "--json", SOCKET_LB, "--iface", UPLINK, "--pin-path"])
        .arg(pin_dir)
        .args(SIZES)
        .args(extra)
        .output()
        .expect("running lb-agent doctor");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("doctor {extra:?}: {text}");
    let checks: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("doctor's JSON: {e}: {text}"));
    let checks = checks
        .into_iter()
        .map(|c| (c["name"].as_str().unwrap_or("").to_string(), (c["ok"] == true, c["detail"].as_str().unwrap_or("").to_string())))
        .collect();
    (checks, out.status.success())
}

/// [`doctor_with`] the agent's own flags; every check must pass.
fn doctor(t: &Topology, pin_dir: &Path) -> BTreeMap<String, (bool, String)> {
    let (checks, ok) = doctor_with(t, pin_dir, &[]);
    assert!(ok, "doctor failed: {checks:?}");
    checks
}

fn detail<'a>(report: &'a BTreeMap<String, (bool, String)>, name: &str) -> &'a str {
    let (ok, d) = report.get(name).unwrap_or_else(|| panic!("doctor has no {name:?} check: {report:?}"));
    assert!(ok, "doctor's {name:?} check failed: {d}");
    d
}

/// Balances `n` connections from `ns` and asserts both backends answered.
fn balanced(ns: &Netns, n: usize, what: &str) {
    let start = Instant::now();
    let got = tally(ns, TO, n);
    assert_eq!(got.values().sum::<usize>(), n, "{what}: {got:?}");
    assert!(got.len() == 2 && got.values().all(|c| *c >= 1), "{what}: both backends answer: {got:?}");
    figure(&format!("{what}_connections"), n);
    figure(&format!("{what}_per_backend"), format!("{got:?}").replace(' ', ""));
    figure(&format!("{what}_ms_per_connection"), start.elapsed().as_millis() / n as u128);
}

/// The SCTP Service `shop/diameter`: its ClusterIP, port, NodePort and
/// target port.
const DIAMETER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 30);
const DIAMETER: (u16, u16, u16) = (3868, 30868, 3869);

/// Real SCTP associations through `shop/diameter` from outside (ClusterIP
/// and NodePort: XDP DNAT, tc egress reverse NAT) and from a pod (tc
/// ingress): each carries messages of 5 to 9,000 bytes (one to seven
/// packets each way) and its backend answers every one; both backends
/// answer in turn (round-robin). The endpoints' kernels check every CRC32c,
/// so a wrong update is a lost association, not a silent pass.
fn sctp_balanced(t: &Topology, agent: &Agent) {
    let dp = Agent::maps_of(agent);
    let (port, node_port, _) = DIAMETER;
    assert!(
        wait_for(WAIT, || programmed_at(&dp, DIAMETER_IP, port, lb_common::IPPROTO_SCTP).is_some_and(|(n, _)| n == 2)),
        "the SCTP service was not programmed:\n{}",
        agent.log()
    );
    let before = dp.counters().expect("counters");
    let client = Ipv4Addr::new(192, 168, 1, 2);
    let pod = Ipv4Addr::new(10, 0, 3, 2);
    let node = Ipv4Addr::new(192, 168, 1, 1);
    let runs = [
        (&t.client, client, SocketAddrV4::new(DIAMETER_IP, port), "sctp_clusterip_client", 6),
        (&t.client, client, SocketAddrV4::new(node, node_port), "sctp_nodeport_client", 4),
        (&t.pod, pod, SocketAddrV4::new(DIAMETER_IP, port), "sctp_clusterip_pod", 4),
    ];
    for (ns, from, to, what, n) in runs {
        let start = Instant::now();
        let mut seen = BTreeMap::<String, usize>::new();
        for i in 0..n {
            let who = ns.run(move || -> std::io::Result<String> {
                let mut s = sctp::connect(from.into(), to.into(), Duration::from_secs(30))?;
                let mut who = Vec::new();
                for size in [5usize, 1200, 4000, 9000] {
                    let msg: Vec<u8> = (0..size).map(|j| (i * 31 + j) as u8).collect();
                    who.push(sctp::ask(&mut s, &msg)?);
                }
                who.dedup();
                assert_eq!(who.len(), 1, "one association, one backend: {who:?}");
                Ok(who.remove(0))
            });
            let who = who.unwrap_or_else(|e| panic!("{what}: association {i} to {to}: {e}"));
            *seen.entry(who).or_default() += 1;
        }
        assert!(seen.len() == 2 && seen.values().all(|c| *c >= 1), "{what}: both backends answer: {seen:?}");
        figure(&format!("{what}_associations"), n);
        figure(&format!("{what}_per_backend"), format!("{seen:?}").replace(' ', ""));
        figure(&format!("{what}_ms_per_association"), start.elapsed().as_millis() / n as u128);
    }
    let after = dp.counters().expect("counters");
    let delta = |i: u32| after[i as usize] - before[i as usize];
    let (updated, offloaded) = (delta(lb_common::counter::SCTP_CRC_UPDATED), delta(lb_common::counter::SCTP_CRC_OFFLOADED));
    figure("sctp_crc_updated", updated);
    figure("sctp_crc_offloaded", offloaded);
    // The client sends complete CRCs (its offload is off): XDP updated
    // them. Pods and backends send offloaded ones: tc left them zero.
    assert!(updated > 0 && offloaded > 0, "both CRC paths were taken: updated {updated}, offloaded {offloaded}");
}

/// Node processes' connections to the ClusterIP, through an IPv4 socket
/// and a dual-stack IPv6 one (`::ffff:<ClusterIP>`: connect6 and
/// getpeername6 over the IPv4 maps); an unserved port of it is refused.
fn node_sockets(t: &Topology) {
    let mapped = SocketAddr::new(IpAddr::V6(WEB_CLUSTER_IP.to_ipv6_mapped()), TO.port());
    for to in [TO, mapped] {
        let seen: BTreeSet<String> = (0..4)
            .map(|_| {
                let mut c = Conn::new(t.node.run(move || TcpStream::connect_timeout(&to, Duration::from_secs(10))).unwrap_or_else(|e| panic!("node socket to {to}: {e}")));
                assert_eq!(c.peer(), to, "getpeername() shows the service");
                c.ask().expect("the backend answers a node socket")
            })
            .collect();
        assert_eq!(seen.len(), 2, "node sockets to {to}, round-robin: {seen:?}");
    }
    let unserved = SocketAddr::new(TO.ip(), TO.port() + 1);
    let err = t.node.run(move || TcpStream::connect_timeout(&unserved, Duration::from_secs(10))).expect_err("an unserved ClusterIP port");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "refused at connect(): {err}");
    figure("node_sockets", "ipv4,ipv4_mapped,refused");
}

/// Node processes' SCTP sockets to the SCTP ClusterIP, by every call that
/// opens an association (connect() on one-to-one and one-to-many sockets,
/// sendto() on a one-to-many one, sctp_connectx()), and to a port it does
/// not serve: no socket hook runs for any of them (SCTP's own connect and
/// sendmsg code never calls the cgroup programs: neither `sock_balanced`
/// nor `sock_no_backend` moves), so the INIT leaves for the ClusterIP
/// itself, here by a default route out of the uplink as on a real node;
/// tc egress answers it with an ABORT (`sctp_node_init_aborted`), and every
/// connect fails at once with ECONNREFUSED (a one-to-many sendto()
/// returns, and the recv() for its reply fails with ENOTCONN).
fn node_sctp(t: &Topology, agent: &Agent) {
    let dp = Agent::maps_of(agent);
    let served = SocketAddrV4::new(DIAMETER_IP, DIAMETER.0);
    let unserved = SocketAddrV4::new(DIAMETER_IP, DIAMETER.0 + 2);
    t.node.ip(&["route", "add", "default", "via", "192.168.1.2"]);
    let dials = sctp::DIALS.map(|how| (how, served)).into_iter().chain([(sctp::Dial::Connect, unserved)]);
    for (how, to) in dials {
        let before = dp.counters().expect("counters");
        let start = Instant::now();
        let got = t.node.run(move || sctp::dial(how, to.into(), Duration::from_secs(3)));
        let ms = start.elapsed().as_millis();
        let after = dp.counters().expect("counters");
        let d = |i: u32| after[i as usize] - before[i as usize];
        let what = format!("node_sctp_{how:?}_{}", to.port());
        figure(&what, format!("{:?}_in_{ms}_ms", got.as_ref().map_err(|e| e.raw_os_error())));
        assert_eq!((d(lb_common::counter::SOCK_BALANCED), d(lb_common::counter::SOCK_NO_BACKEND)), (0, 0), "{what}: a socket hook ran for SCTP");
        assert_eq!(d(lb_common::counter::SCTP_NODE_ABORTED), 1, "{what}: its INIT was answered with an ABORT");
        let err = got.expect_err(&format!("{what}: the node's INIT to the ClusterIP was balanced"));
        // The one-to-many socket's association ends: the recv() waiting
        // for the reply fails, its socket having no association left.
        let want = match how {
            sctp::Dial::SeqpacketSendto => ErrorKind::NotConnected,
            _ => ErrorKind::ConnectionRefused,
        };
        assert_eq!(err.kind(), want, "{what}: {err}");
        assert!(ms < 2000, "{what}: refused at once, not after {ms} ms");
    }
    t.node.ip(&["route", "del", "default"]);
    figure("node_sctp", "no_socket_hook,aborted,refused");
}

/// The SCTP Service `shop/diameter6` over IPv6: its ClusterIP, port,
/// NodePort and target port.
const DIAMETER6_IP: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x30);
const DIAMETER6: (u16, u16, u16) = (3868, 30870, 3870);
/// Associations over IPv6 from the pod, and from outside to the ClusterIP
/// and to the NodePort.
const SCTP6_ASSOCIATIONS: usize = 50;
const SCTP6_EXTERNAL: [usize; 2] = [30, 20];

/// `n` real SCTP associations over IPv6 from `from` (in `ns`) to `to`, each
/// carrying messages of 5, 1,200 and 9,000 bytes answered by its backend;
/// every one must complete on one backend, and both backends answer
/// (round-robin). Figures under `what`.
fn sctp6_associations(ns: &Netns, from: Ipv6Addr, to: SocketAddr, n: usize, what: &str) {
    let start = Instant::now();
    let (mut seen, mut failed) = (BTreeMap::<String, usize>::new(), Vec::new());
    for i in 0..n {
        let who = ns.run(move || -> std::io::Result<String> {
            let mut s = sctp::connect(from.into(), to, Duration::from_secs(30))?;
            let mut who = Vec::new();
            for size in [5usize, 1200, 9000] {
                let msg: Vec<u8> = (0..size).map(|j| (i * 31 + j) as u8).collect();
                who.push(sctp::ask(&mut s, &msg)?);
            }
            who.dedup();
            match who.len() {
                1 => Ok(who.remove(0)),
                _ => Err(std::io::Error::other(format!("one association, several backends: {who:?}"))),
            }
        });
        match who {
            Ok(who) => *seen.entry(who).or_default() += 1,
            Err(e) => failed.push(format!("association {i}: {e}")),
        }
    }
    figure(&format!("{what}_associations"), n);
    figure(&format!("{what}_failed"), failed.len());
    figure(&format!("{what}_per_backend"), format!("{seen:?}").replace(' ', ""));
    figure(&format!("{what}_ms_per_association"), start.elapsed().as_millis() / n as u128);
    assert!(failed.is_empty(), "{what}: IPv6 SCTP associations failed: {failed:?}");
    assert!(seen.len() == 2 && seen.values().all(|c| *c >= 1), "{what}: both IPv6 backends answer: {seen:?}");
}

/// Real SCTP associations over IPv6 to `shop/diameter6` (3868 → 3870; the
/// NodePort 30870 → 3870), every one counted (none may fail), both
/// backends reached; the endpoints' kernels check every CRC:
/// from a pod to its ClusterIP ([`SCTP6_ASSOCIATIONS`]: tc_ingress_v6
/// DNAT, tc_egress_v6 reverse NAT; the 9,000-byte message a GSO buffer
/// from the pod's socket, see tc.rs `pull_headers`), and from outside to
/// the ClusterIP and the NodePort ([`SCTP6_EXTERNAL`]: xdp_lb_v6 hands
/// each packet to xdp_sctp_v6 and its rewrite stage, complete CRCs
/// updated; tc_egress_v6 reverse NAT).
/// Then the node's own association to the IPv6 ClusterIP: refused at once
/// by the IPv6 ABORT at tc egress (ECONNREFUSED).
fn sctp6_balanced(t: &Topology, agent: &Agent) {
    let dp = Agent::maps_of(agent);
    let (port, node_port, _) = DIAMETER6;
    let to = SocketAddr::new(DIAMETER6_IP.into(), port);
    let to_node_port = SocketAddr::new(NODE_ADDR6.into(), node_port);
    assert!(
        wait_for(WAIT, || [to, to_node_port].iter().all(|a| programmed_ip(&dp, a.ip(), a.port(), lb_common::IPPROTO_SCTP).is_some_and(|(n, _)| n == 2))),
        "the IPv6 SCTP service was not programmed (ClusterIP and NodePort):\n{}",
        agent.log()
    );
    let before = dp.counters().expect("counters");
    sctp6_associations(&t.pod, POD_ADDR6, to, SCTP6_ASSOCIATIONS, "sctp6_clusterip_pod");
    let offloaded = dp.counters().expect("counters")[lb_common::counter::SCTP_CRC_OFFLOADED as usize] - before[lb_common::counter::SCTP_CRC_OFFLOADED as usize];
    figure("sctp6_crc_offloaded", offloaded);
    assert!(offloaded > 0, "the pod's and backends' offloaded CRCs were left to the kernel");
    let before = dp.counters().expect("counters");
    sctp6_associations(&t.client, CLIENT_ADDR6, to, SCTP6_EXTERNAL[0], "sctp6_clusterip_client");
    sctp6_associations(&t.client, CLIENT_ADDR6, to_node_port, SCTP6_EXTERNAL[1], "sctp6_nodeport_client");
    let after = dp.counters().expect("counters");
    let delta = |i: u32| after[i as usize] - before[i as usize];
    figure("sctp6_external_crc_updated", delta(lb_common::counter::SCTP_CRC_UPDATED));
    // The client sends complete CRCs (its offload is off): XDP updated them.
    assert!(delta(lb_common::counter::SCTP_CRC_UPDATED) > 0, "XDP updated the outside client's CRCs");
    assert_eq!((delta(lb_common::counter::PASS_SCTP6_PROGRAM), delta(lb_common::counter::DROP_SCTP6_PROGRAM)), (0, 0), "xdp_sctp_v6 and its rewrite stage ran");


    // The node's own association over IPv6, by a default route out of the uplink.
    t.node.ip(&["-6", "route", "add", "default", "via", &CLIENT_ADDR6.to_string()]);
    let before = dp.counters().expect("counters")[lb_common::counter::SCTP_NODE_ABORTED as usize];
    let t0 = Instant::now();
    let got = t.node.run(move || sctp::connect(NODE_ADDR6.into(), to, Duration::from_secs(3)).map(|_| ()));
    let ms = t0.elapsed().as_millis();
    let aborted = dp.counters().expect("counters")[lb_common::counter::SCTP_NODE_ABORTED as usize] - before;
    t.node.ip(&["-6", "route", "del", "default"]);
    figure("node_sctp6", format!("{:?}_in_{ms}_ms", got.as_ref().map_err(|e| e.raw_os_error())));
    assert_eq!(aborted, 1, "the node's IPv6 INIT was answered with an ABORT");
    let err = got.expect_err("the node's IPv6 INIT to the ClusterIP was balanced");
    assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    assert!(ms < 2000, "refused at once, not after {ms} ms");
}

fn main() {
    let start = Instant::now();
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    figure("kernel", release.trim());
    let t = Topology::new(2);
    let _servers: Vec<Server> = (0..2).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
    assert!(t.client.run(sctp::available), "this kernel has no SCTP (sctp.ko not loaded)");
    let _sctp: Vec<sctp::Echo> = (0..2).map(|i| sctp::Echo::start(&t.backends[i], DIAMETER.2, &format!("backend-{i}"))).collect();
    t.add_ipv6();
    let _sctp6: Vec<sctp::Echo> =
        (0..2).map(|i| sctp::Echo::start_on(&t.backends[i], SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), DIAMETER6.2), &format!("backend6-{i}"))).collect();
    // What doctor says this kernel will do, before anything is loaded.
    let predicted = doctor(&t, Path::new("/sys/fs/bpf/xlbt-doctor"));
    if detail(&predicted, "tc attach").starts_with("netlink") {
        // TCX forced where the kernel has none: doctor (and so `run`'s
        // start-up check) refuses, naming the fix.
        let (forced, ok) = doctor_with(&t, Path::new("/sys/fs/bpf/xlbt-doctor"), &["--tc-attach", "tcx"]);
        let (tc_ok, tc) = &forced["tc attach"];
        assert!(!ok && !tc_ok && tc.contains("no TCX") && tc.contains("--tc-attach auto"), "{tc}");
    }
    // The node's IPv6 address too (the harness names its IPv4 one): IPv6
    // NodePorts are served on it.
    let node6 = NODE_ADDR6.to_string();
    let mut args = vec!["--pod-iface", POD_IFACE, SOCKET_LB];
    args.extend_from_slice(SIZES);
    let objects = objects_dir(&[0, 1]);
    let (port, node_port, target) = DIAMETER;
    write(&objects, "diameter.yaml", &sctp::service_yaml(DIAMETER_IP.into(), port, node_port, target, &[backend_addr(0).into(), backend_addr(1).into()]));
    let (port6, node_port6, target6) = DIAMETER6;
    write(&objects, "diameter6.yaml", &sctp::service_yaml(DIAMETER6_IP.into(), port6, node_port6, target6, &[backend_addr6(0).into(), backend_addr6(1).into()]));
    args.extend(["--node-address", &node6]);
    let mut agent = Agent::start_with(&t.node, &objects, &args);
    let dp = agent.maps();
    assert!(wait_for(WAIT, || programmed(&dp).is_some_and(|(n, _)| n == 2)), "not programmed:\n{}", agent.log());
    assert!(wait_for(WAIT, || agent.log().contains("attached tc to pod interface")), "pod0 not attached:\n{}", agent.log());
    figure("agent_ready_s", start.elapsed().as_secs());

    // The attach path the agent chose, and the kernel's own view, against
    // doctor's prediction.
    let log = agent.log();
    let netlink = log.contains("netlink cls_bpf filters");
    figure("tc_attach", if netlink { "netlink" } else { "tcx" });
    let tc = detail(&predicted, "tc attach");
    assert_eq!(tc.starts_with("netlink"), netlink, "doctor said {tc:?}; the agent's log:\n{log}");
    assert_eq!(tc.starts_with("TCX"), !netlink, "doctor said {tc:?}");
    let links: Vec<String> = std::fs::read_dir(agent.pin_dir.join("links"))
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    figure("link_pins", links.join(","));
    assert!(links.contains(&format!("{UPLINK}@xdp_lb")), "the XDP link is pinned: {links:?}");
    let tc_pins = links.iter().filter(|l| l.contains("@tc_")).count();
    assert_eq!(tc_pins, if netlink { 0 } else { HOOKS.len() }, "tc link pins: {links:?}");
    // Native XDP: doctor probed the driver; the agent attached in that mode.
    let xdp = detail(&predicted, &format!("native XDP on {UPLINK}"));
    assert!(xdp.contains("supported by the driver"), "{xdp}");
    figure("xdp_mode", xdp_mode(&t.node));
    assert_eq!(xdp_mode(&t.node), "xdp", "doctor said native XDP works: {}", t.node.ip(&["link", "show", UPLINK]));
    // Socket balancing: doctor named the cgroup; the agent attached there.
    let sock = detail(&predicted, "socket LB");
    let cgroup = sock.rsplit("programs on cgroup ").next().filter(|_| sock.contains("balanced at connect")).unwrap_or_else(|| panic!("doctor: {sock}"));
    figure("socket_lb_cgroup", cgroup);
    assert!(log.contains(&format!("node sockets to services are balanced at connect cgroup={cgroup}")), "doctor said {sock:?}; the agent's log:\n{log}");
    let sock_pins = links.iter().filter(|l| l.starts_with("cgroup@")).count();
    assert_eq!(sock_pins, lb_common::maps::programs::SOCK.len(), "cgroup link pins: {links:?}");
    assert_eq!(socket_programs_on(cgroup), lb_common::maps::programs::SOCK.len(), "the kernel's view of {cgroup}");
    // The verifier: doctor loaded every program; the agent runs them all.
    let programs = detail(&predicted, "programs");
    for p in [lb_common::maps::programs::XDP_LB, lb_common::maps::programs::TC_INGRESS, lb_common::maps::programs::TC_EGRESS].iter().chain(lb_common::maps::programs::SOCK) {
        assert!(programs.contains(p), "doctor did not load {p}: {programs}");
    }
    let kernel = detail(&predicted, "kernel version");
    // Debian's release string is "6.1.0-N-amd64", the version "6.1.M".
    let major_minor = |v: &str| v.split(['.', '-', ' ']).take(2).collect::<Vec<_>>().join(".");
    assert_eq!(major_minor(kernel), major_minor(release.trim()), "doctor: {kernel}, uname: {release}");
    // Doctor again beside the running agent: the maps are adoptable, the
    // driver busy with our program.
    let beside = doctor(&t, &agent.pin_dir);
    let pinned = detail(&beside, "pinned maps");
    assert!(pinned.contains("match this build; `run` adopts them"), "{pinned}");
    assert!(detail(&beside, &format!("native XDP on {UPLINK}")).contains("attached already"));
    assert!(xdp_attached(&t.node));
    let mut ids = one_filter_each(&t.node, "first start");

    // Real connections: outside → XDP DNAT → backend → tc egress reverse
    // NAT; pod → tc ingress DNAT → backend → tc egress reverse NAT.
    balanced(&t.client, 20, "client");
    balanced(&t.pod, 10, "pod");
    node_sockets(&t);
    // The node's own connections: pointed at a backend at connect() by the
    // socket programs (the node has no route that the ClusterIP could
    // take otherwise), each counted.
    let before = dp.counters().expect("counters")[lb_common::counter::SOCK_BALANCED as usize];
    balanced(&t.node, 8, "node");
    let sock_balanced = dp.counters().expect("counters")[lb_common::counter::SOCK_BALANCED as usize] - before;
    figure("node_sock_balanced", sock_balanced);
    assert!(sock_balanced >= 8, "8 node connections, {sock_balanced} balanced at connect");
    sctp_balanced(&t, &agent);
    node_sctp(&t, &agent);
    sctp6_balanced(&t, &agent);

    // Restarts: a held connection keeps its backend, every hook keeps one filter.
    let mut held = Conn::new(t.client.run(|| TcpStream::connect(TO)).expect("held connection"));
    let first = held.ask().expect("held connection answers");
    let t0 = Instant::now();
    agent.restart(&t.node);
    ids = replaced(&t.node, &ids, &mut agent);
    figure("sigterm_restart_replaced_s", t0.elapsed().as_secs());
    assert_eq!(held.ask().expect("held connection after SIGTERM restart"), first);
    agent.kill9();
    // No agent: the filters and the XDP link stay, and so does balancing.
    assert_eq!(one_filter_each(&t.node, "no agent running"), ids);
    assert!(xdp_attached(&t.node));
    balanced(&t.client, 6, "no_agent_client");
    assert_eq!(held.ask().expect("held connection with no agent"), first);
    let t0 = Instant::now();
    let mut again = vec!["--pod-iface", POD_IFACE, SOCKET_LB];
    again.extend_from_slice(SIZES);
    agent.start_again(&t.node, &again);
    replaced(&t.node, &ids, &mut agent);
    figure("sigkill_restart_replaced_s", t0.elapsed().as_secs());
    assert_eq!(held.ask().expect("held connection after SIGKILL restart"), first);
    balanced(&t.client, 6, "after_restarts_client");
    figure("restarts", 2);

    // Uninstall (the agent stopped, as systemd would have): nothing left.
    agent.kill9();
    let out = agent.uninstall(&t.node);
    let said = String::from_utf8_lossy(&out.stdout);
    println!("{said}");
    assert!(out.status.success(), "uninstall failed: {said}{}", String::from_utf8_lossy(&out.stderr));
    for (iface, hook, _) in HOOKS {
        assert_eq!(filters(&t.node, iface, hook), vec![], "uninstall left a filter on {iface} {hook}");
    }
    assert!(!xdp_attached(&t.node), "uninstall left XDP attached");
    assert_eq!(socket_programs_on(cgroup), 0, "uninstall left socket programs on {cgroup}");
    assert!(!Path::new(&agent.pin_dir).exists());
    let refused = t.client.run(|| TcpStream::connect_timeout(&TO, Duration::from_secs(2)).is_err());
    assert!(refused, "the VIP still answers after uninstall");
    figure("guest_s", start.elapsed().as_secs());
    println!("XDPLB-GUEST-OK");
}
