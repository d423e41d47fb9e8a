//! The double itself, over raw HTTP: LIST, WATCH with history, bookmarks,
//! field selectors, 410 after compaction, cut watches, 503 while down.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    time::Duration,
};

use serde_json::Value;

use super::{objects, ApiServer, Resource};

fn send(addr: SocketAddr, path: &str) -> BufReader<TcpStream> {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nAccept: application/json\r\n\r\n"
    )
    .unwrap();
    BufReader::new(s)
}

/// A plain request: (status, JSON body).
fn get(addr: SocketAddr, path: &str) -> (u16, Value) {
    let mut r = send(addr, path);
    let mut text = String::new();
    r.read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let code = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, serde_json::from_str(body).expect("a JSON body"))
}

/// A watch response read chunk by chunk.
struct Watch(BufReader<TcpStream>);

/// What the next read of a watch gives.
#[derive(Debug)]
enum Next {
    Event(Value),
    /// The last (empty) chunk: the server ended the watch cleanly.
    End,
    /// The connection closed without the last chunk.
    Cut,
}

impl Watch {
    fn open(addr: SocketAddr, path: &str) -> Self {
        let mut r = send(addr, path);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.starts_with("HTTP/1.1 200"), "{line}");
        while line != "\r\n" {
            line.clear();
            r.read_line(&mut line).unwrap();
        }
        Self(r)
    }
    fn next(&mut self) -> Next {
        let mut size = String::new();
        if self.0.read_line(&mut size).unwrap_or(0) == 0 {
            return Next::Cut;
        }
        let n = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if n == 0 {
            return Next::End;
        }
        let mut data = vec![0; n + 2];
        self.0.read_exact(&mut data).expect("a chunk");
        Next::Event(serde_json::from_slice(&data[..n]).expect("a JSON event"))
    }
    fn event(&mut self) -> (String, Value) {
        match self.next() {
            Next::Event(e) => (
                e["type"].as_str().unwrap_or_default().to_string(),
                e["object"].clone(),
            ),
            other => panic!("expected an event, got {other:?}"),
        }
    }
}

fn rv(obj: &Value) -> u64 {
    obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .expect("a resourceVersion")
}

const IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

#[test]
fn list_then_watch_sees_every_change_in_order() {
    let api = ApiServer::start();
    api.apply(objects::service("shop", "web", IP, 80));
    let (code, list) = get(api.addr(), "/api/v1/services?&limit=500");
    assert_eq!(code, 200);
    assert_eq!(list["kind"], "ServiceList");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(1));
    let from = rv(&list);
    assert_eq!(from, api.resource_version());

    let mut w = Watch::open(
        api.addr(),
        &format!("/api/v1/services?&watch=true&resourceVersion={from}"),
    );
    let mut svc = objects::service("shop", "web", IP, 8080);
    api.apply(svc.clone());
    api.apply(objects::service("other", "db", IP, 5432));
    assert!(api.delete(Resource::Services, "shop", "web"));
    let (t1, o1) = w.event();
    let (t2, o2) = w.event();
    let (t3, o3) = w.event();
    assert_eq!(
        (t1.as_str(), t2.as_str(), t3.as_str()),
        ("MODIFIED", "ADDED", "DELETED")
    );
    assert_eq!(o1["spec"]["ports"][0]["port"], 8080);
    assert!(
        rv(&o1) < rv(&o2) && rv(&o2) < rv(&o3),
        "one global, increasing version"
    );
    assert_eq!(rv(&o3), api.resource_version());
    // Namespaced list and the object path.
    let (_, shop) = get(api.addr(), "/api/v1/namespaces/shop/services");
    assert_eq!(shop["items"].as_array().map(Vec::len), Some(0));
    svc["metadata"]["name"] = "web2".into();
    api.apply(svc);
    assert_eq!(
        get(api.addr(), "/api/v1/namespaces/shop/services/web2").0,
        200
    );
    assert_eq!(
        get(api.addr(), "/api/v1/namespaces/shop/services/nope").0,
        404
    );
    assert_eq!(get(api.addr(), "/api/v1/secrets").0, 404);

    let calls = api.calls();
    for (verb, resource) in [
        ("list", "services"),
        ("watch", "services"),
        ("get", "services"),
    ] {
        assert!(
            calls.contains(&(String::new(), resource.into(), verb.into())),
            "{calls:?}"
        );
    }
    assert_eq!(api.count("watch", "services"), 1);
}

#[test]
fn a_watch_resumes_from_history_and_gets_410_after_compaction() {
    let api = ApiServer::start();
    let first = api.apply(objects::node("node-a", Ipv4Addr::new(192, 168, 1, 1)));
    api.apply(objects::node("node-b", Ipv4Addr::new(192, 168, 1, 2)));
    api.apply(objects::slice(
        "shop",
        "web-1",
        "web",
        8080,
        &[Ipv4Addr::new(10, 0, 2, 11)],
        "node-a",
    ));

    // Resuming at `first` replays what came after it, for this resource only.
    let mut w = Watch::open(
        api.addr(),
        &format!("/api/v1/nodes?watch=true&resourceVersion={first}"),
    );
    let (t, o) = w.event();
    assert_eq!(
        (t.as_str(), o["metadata"]["name"].as_str()),
        ("ADDED", Some("node-b"))
    );

    // A field selector keeps only node-a.
    let now = api.resource_version();
    let mut only_a = Watch::open(
        api.addr(),
        &format!(
            "/api/v1/nodes?fieldSelector=metadata.name%3Dnode-a&watch=true&resourceVersion={now}"
        ),
    );
    api.apply(objects::node("node-b", Ipv4Addr::new(192, 168, 1, 3)));
    api.apply(objects::node("node-a", Ipv4Addr::new(192, 168, 1, 4)));
    let (_, o) = only_a.event();
    assert_eq!(o["metadata"]["name"], "node-a");
    let (_, o) = w.event();
    assert_eq!(
        o["metadata"]["name"], "node-b",
        "the first watch sees both, in order"
    );

    api.compact();
    let mut gone = Watch::open(
        api.addr(),
        &format!("/api/v1/nodes?watch=true&resourceVersion={first}"),
    );
    let (t, status) = gone.event();
    assert_eq!(
        (t.as_str(), status["code"].as_u64()),
        ("ERROR", Some(410)),
        "{status}"
    );
    assert!(matches!(gone.next(), Next::End), "a 410 ends the watch");
    // From the current version nothing is missing: no 410.
    let now = api.resource_version();
    let mut ok = Watch::open(
        api.addr(),
        &format!("/api/v1/nodes?watch=true&resourceVersion={now}"),
    );
    api.delete(Resource::Nodes, "", "node-b");
    assert_eq!(ok.event().0, "DELETED");
}

#[test]
fn bookmarks_cuts_timeouts_and_downtime() {
    let api = ApiServer::start();
    let now = api.resource_version();
    let mut with = Watch::open(
        api.addr(),
        &format!("/apis/discovery.k8s.io/v1/endpointslices?watch=true&resourceVersion={now}&allowWatchBookmarks=true"),
    );
    let mut without = Watch::open(
        api.addr(),
        &format!("/api/v1/services?watch=true&resourceVersion={now}"),
    );
    assert!(crate::wait_for(Duration::from_secs(3), || api
        .open_watches()
        == 2));
    api.apply(objects::service("shop", "web", IP, 80));
    assert_eq!(api.bookmark(), 1, "only the watch that allows bookmarks");
    // The periodic ticker may have sent one first: the last one is ours.
    let (mut t, mut o) = with.event();
    while rv(&o) < api.resource_version() {
        (t, o) = with.event();
    }
    assert_eq!(
        (t.as_str(), o["kind"].as_str()),
        ("BOOKMARK", Some("EndpointSlice"))
    );
    assert_eq!(without.event().0, "ADDED");

    assert_eq!(api.drop_watches(), 2);
    for w in [&mut with, &mut without] {
        // Periodic bookmarks may still be queued before the cut.
        let mut next = w.next();
        while matches!(&next, Next::Event(e) if e["type"] == "BOOKMARK") {
            next = w.next();
        }
        assert!(matches!(next, Next::Cut), "cut, not ended: {next:?}");
    }

    let mut short = Watch::open(
        api.addr(),
        &format!("/api/v1/nodes?watch=true&resourceVersion={now}&timeoutSeconds=1"),
    );
    assert!(
        matches!(short.next(), Next::End),
        "timeoutSeconds ends the watch cleanly"
    );

    api.set_forbidden(Resource::Nodes, true);
    assert_eq!(get(api.addr(), "/api/v1/nodes").0, 403);
    assert_eq!(get(api.addr(), "/api/v1/services").0, 200);
    api.set_forbidden(Resource::Nodes, false);

    api.set_available(false);
    let (code, status) = get(api.addr(), "/api/v1/nodes");
    assert_eq!((code, status["code"].as_u64()), (503, Some(503)));
    api.set_available(true);
    assert_eq!(get(api.addr(), "/api/v1/nodes").0, 200);
    assert_eq!(get(api.addr(), "/version").0, 200);
}

/// A request with a JSON body: (status, JSON body).
fn send_body(addr: SocketAddr, method: &str, path: &str, body: &Value) -> (u16, Value) {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let body = body.to_string();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut text = String::new();
    BufReader::new(s).read_to_string(&mut text).expect("response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let code = head.split(' ').nth(1).and_then(|c| c.parse().ok()).expect("a status code");
    (code, serde_json::from_str(body).expect("a JSON body"))
}

#[test]
fn leases_are_replaced_only_from_their_current_version() {
    let api = ApiServer::start();
    let path = "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases";
    let lease = serde_json::json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "xdplb"}, "spec": {"holderIdentity": "a"}});
    let (code, created) = send_body(api.addr(), "POST", path, &lease);
    assert_eq!(code, 201, "{created}");
    assert_eq!(send_body(api.addr(), "POST", path, &lease).0, 409, "exists");
    let mut mine = created.clone();
    mine["spec"]["holderIdentity"] = "b".into();
    let (code, replaced) = send_body(api.addr(), "PUT", &format!("{path}/xdplb"), &mine);
    assert_eq!(code, 200, "{replaced}");
    // The same old version again: someone else wrote in between.
    let (code, body) = send_body(api.addr(), "PUT", &format!("{path}/xdplb"), &mine);
    assert_eq!((code, body["reason"].as_str()), (409, Some("Conflict")));
    assert_eq!(get(api.addr(), &format!("{path}/xdplb")).1["spec"]["holderIdentity"], "b");
    assert!(api.calls().contains(&("coordination.k8s.io".into(), "leases".into(), "update".into())));
}

#[test]
fn a_service_status_is_merge_patched_and_events_are_created() {
    let api = ApiServer::start();
    api.apply(objects::service("shop", "web", Ipv4Addr::new(10, 96, 0, 1), 80));
    let patch = serde_json::json!({"status": {"loadBalancer": {"ingress": [{"ip": "192.0.2.1"}]}}});
    let (code, svc) = send_body(api.addr(), "PATCH", "/api/v1/namespaces/shop/services/web/status", &patch);
    assert_eq!(code, 200, "{svc}");
    assert_eq!(svc["status"]["loadBalancer"]["ingress"][0]["ip"], "192.0.2.1");
    assert_eq!(svc["spec"]["clusterIP"], "10.96.0.1", "the rest stays");
    assert_eq!(send_body(api.addr(), "PATCH", "/api/v1/namespaces/shop/services/nope/status", &patch).0, 404);
    let ev = serde_json::json!({"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "web."},
        "reason": "PoolExhausted", "involvedObject": {"kind": "Service", "name": "web", "namespace": "shop"}});
    let (code, ev) = send_body(api.addr(), "POST", "/api/v1/namespaces/shop/events", &ev);
    assert_eq!(code, 201, "{ev}");
    assert_eq!(api.list(Resource::Events).len(), 1);
    assert!(api.calls().contains(&("".into(), "services/status".into(), "patch".into())));
    let pools = get(api.addr(), "/apis/xdplb.io/v1alpha1/loadbalancerpools");
    assert_eq!((pools.0, pools.1["kind"].as_str()), (200, Some("LoadBalancerPoolList")));
}
