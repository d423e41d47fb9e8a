//! The double's HTTP/1.1 side, hand-written on a tokio `TcpListener`: one
//! request per connection (`Connection: close`, which every client honours),
//! no TLS. GET (get, list, watch) on every resource; POST (create) and PUT
//! (update, with resourceVersion checks) of Leases and Events; PATCH (merge
//! patch) of a Service's `status` subresource. LIST and GET answer with a `Content-Length` body; a
//! WATCH answers with chunked JSON lines, one event per chunk, until its
//! `timeoutSeconds` (ended cleanly with the last chunk), the client leaves,
//! or a test cuts it (closed without the last chunk, as a network failure
//! looks to the client).
use std::{
    collections::HashMap,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use serde_json::{json, Value};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};

use super::state::{Request, Resource, Selector, State};

/// A request head larger than this is refused (kube-rs sends well under 1 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// A watch without `timeoutSeconds` ends after this, as the API server's default.
const DEFAULT_WATCH_TIMEOUT: Duration = Duration::from_secs(1800);

pub(super) fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A test that panicked while holding the lock leaves usable state.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

/// Accepts connections forever, one task each.
pub(super) async fn serve(listener: TcpListener, state: Arc<Mutex<State>>) {
    loop {
        if let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(connection(sock, state.clone()));
        }
    }
}

/// What a path names.
enum Route {
    /// `/version`, `/api`, `/apis`: a fixed body.
    NonResource(Value),
    Collection {
        resource: Resource,
        namespace: Option<String>,
    },
    Item {
        resource: Resource,
        namespace: String,
        name: String,
        /// `status` for the subresource.
        status: bool,
    },
    NotFound,
}

fn route(path: &str) -> Route {
    match path {
        "/version" => {
            return Route::NonResource(
                json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-xdplb-double", "platform": "linux/amd64"}),
            )
        }
        "/api" => {
            return Route::NonResource(
                json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}),
            )
        }
        "/apis" => {
            let groups: Vec<Value> = [("discovery.k8s.io", "v1"), ("coordination.k8s.io", "v1"), ("xdplb.io", "v1alpha1")]
                .iter()
                .map(|(g, v)| {
                    let gv = json!({"groupVersion": format!("{g}/{v}"), "version": v});
                    json!({"name": g, "versions": [gv], "preferredVersion": gv})
                })
                .collect();
            return Route::NonResource(json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}));
        }
        _ => {}
    }
    let (group, rest) = if let Some(r) = path.strip_prefix("/api/v1/") {
        ("", r)
    } else if let Some(r) = path.strip_prefix("/apis/discovery.k8s.io/v1/") {
        ("discovery.k8s.io", r)
    } else if let Some(r) = path.strip_prefix("/apis/coordination.k8s.io/v1/") {
        ("coordination.k8s.io", r)
    } else if let Some(r) = path.strip_prefix("/apis/xdplb.io/v1alpha1/") {
        ("xdplb.io", r)
    } else {
        return Route::NotFound;
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    let (namespace, segs) = match segs.as_slice() {
        ["namespaces", ns, tail @ ..] if !tail.is_empty() => (Some(ns.to_string()), tail),
        s => (None, s),
    };
    let found = |plural: &str| {
        Resource::from_path(group, plural).filter(|r| r.namespaced() || namespace.is_none())
    };
    match segs {
        [plural] => match found(plural) {
            Some(resource) => Route::Collection {
                resource,
                namespace,
            },
            None => Route::NotFound,
        },
        [plural, name] => match found(plural) {
            Some(resource) => Route::Item {
                resource,
                namespace: namespace.unwrap_or_default(),
                name: name.to_string(),
                status: false,
            },
            None => Route::NotFound,
        },
        [plural, name, "status"] => match found(plural) {
            Some(resource) => Route::Item {
                resource,
                namespace: namespace.unwrap_or_default(),
                name: name.to_string(),
                status: true,
            },
            None => Route::NotFound,
        },
        _ => Route::NotFound,
    }
}

/// `%XX` and `+` decoding of one query component.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query(q: &str) -> HashMap<String, String> {
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// A Kubernetes `Status` body.
fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

async fn connection(mut sock: TcpStream, state: Arc<Mutex<State>>) {
    let Some((head, body)) = read_request(&mut sock).await else {
        return;
    };
    let mut line = head.lines().next().unwrap_or_default().split(' ');
    let (method, target) = (
        line.next().unwrap_or_default(),
        line.next().unwrap_or_default(),
    );
    let (path, q) = target.split_once('?').unwrap_or((target, ""));
    let q = query(q);
    let route = route(path);
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    let (verb, group, resource) = match &route {
        Route::Collection { resource, .. } => (
            match method {
                "POST" => "create",
                _ if watch => "watch",
                _ => "list",
            },
            resource.group(),
            resource.plural().to_string(),
        ),
        Route::Item { resource, status, .. } => (
            match method {
                "PUT" => "update",
                "PATCH" => "patch",
                _ => "get",
            },
            resource.group(),
            if *status { format!("{}/status", resource.plural()) } else { resource.plural().to_string() },
        ),
        _ => ("get", "", path.to_string()),
    };
    let mut request = Request {
        verb: verb.to_string(),
        group: group.to_string(),
        resource,
        resource_version: q.get("resourceVersion").cloned(),
        field_selector: q.get("fieldSelector").cloned(),
        status: 200,
    };
    // Decide under the lock, write after it: a slow client never blocks a test.
    let answer = {
        let mut st = lock(&state);
        let answer = answer(&mut st, method, route, watch, &q, &body);
        request.status = match &answer {
            Answer::Body(code, _) => *code,
            Answer::Watch(_) | Answer::Gone(_) => 200,
        };
        st.requests.push(request);
        (answer, st.delay, st.truncate)
    };
    let (answer, delay, truncate) = answer;
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    match answer {
        Answer::Body(code, body) if truncate => respond_truncated(&mut sock, code, &body).await,
        Answer::Body(code, body) => respond(&mut sock, code, &body).await,
        Answer::Gone(event) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let _ = tx.send(event);
            drop(tx);
            // The channel ends after the event: the watch is over, cleanly.
            stream(sock, rx, DEFAULT_WATCH_TIMEOUT, true).await
        }
        Answer::Watch(rx) => {
            let timeout = q
                .get("timeoutSeconds")
                .and_then(|t| t.parse().ok())
                .map_or(DEFAULT_WATCH_TIMEOUT, Duration::from_secs);
            stream(sock, rx, timeout, false).await
        }
    }
}

/// The answer to a write (POST, PUT, PATCH), done on `st`.
fn write(st: &mut State, method: &str, route: Route, body: &[u8]) -> Answer {
    let Ok(obj) = serde_json::from_slice::<Value>(body) else {
        return Answer::Body(400, status(400, "BadRequest", "the body is not JSON"));
    };
    let done = match (method, route) {
        ("POST", Route::Collection { resource: resource @ (Resource::Leases | Resource::Events), namespace }) => {
            st.create(resource, namespace.as_deref().unwrap_or_default(), obj).map(|o| (201, o))
        }
        ("PUT", Route::Item { resource: resource @ Resource::Leases, namespace, name, status: false }) => {
            st.replace(resource, &namespace, &name, obj).map(|o| (200, o))
        }
        ("PATCH", Route::Item { resource: resource @ Resource::Services, namespace, name, status: true }) => {
            st.patch_status(resource, &namespace, &name, &obj).map(|o| (200, o))
        }
        _ => Err((405, "MethodNotAllowed", "the double does not serve this write".to_string())),
    };
    match done {
        Ok((code, o)) => Answer::Body(code, o),
        Err((code, reason, msg)) => Answer::Body(code, status(code, reason, &msg)),
    }
}

enum Answer {
    Body(u16, Value),
    Watch(mpsc::UnboundedReceiver<String>),
    /// A watch from an expired version: one ERROR event with a 410 Status.
    Gone(String),
}

fn answer(
    st: &mut State,
    method: &str,
    route: Route,
    watch: bool,
    q: &HashMap<String, String>,
    body: &[u8],
) -> Answer {
    if !st.available {
        // Open watches were cut when the server went down (see ApiServer).
        return Answer::Body(
            503,
            status(503, "ServiceUnavailable", "the API server double is down"),
        );
    }
    if let Route::Collection { resource, .. } | Route::Item { resource, .. } = &route {
        if st.forbidden.contains(resource) {
            let msg = format!("{} is forbidden: the double denies it", resource.plural());
            return Answer::Body(403, status(403, "Forbidden", &msg));
        }
    }
    if matches!(method, "POST" | "PUT" | "PATCH") {
        return write(st, method, route, body);
    }
    if method != "GET" {
        return Answer::Body(
            405,
            status(405, "MethodNotAllowed", "the double serves GET, POST, PUT and PATCH only"),
        );
    }
    match route {
        Route::NonResource(body) => Answer::Body(200, body),
        Route::NotFound => Answer::Body(
            404,
            status(404, "NotFound", "the double does not serve this path"),
        ),
        Route::Item {
            resource,
            namespace,
            name,
            ..
        } => match st.get(resource, &namespace, &name) {
            Some(o) => Answer::Body(200, o),
            None => Answer::Body(
                404,
                status(
                    404,
                    "NotFound",
                    &format!("{} {name:?} not found", resource.plural()),
                ),
            ),
        },
        Route::Collection {
            resource,
            namespace,
        } => {
            let fields = q
                .get("fieldSelector")
                .map(String::as_str)
                .unwrap_or_default();
            let selector = match (Selector {
                namespace,
                name: None,
            })
            .with_fields(fields)
            {
                Ok(s) => s,
                Err(e) => return Answer::Body(400, status(400, "BadRequest", &e)),
            };
            let from = match q.get("resourceVersion").map(String::as_str) {
                None | Some("" | "0") => None,
                Some(v) => match v.parse::<u64>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        return Answer::Body(
                            400,
                            status(400, "BadRequest", &format!("invalid resourceVersion {v:?}")),
                        )
                    }
                },
            };
            if !watch {
                let items = st.list(resource, &selector);
                return Answer::Body(
                    200,
                    json!({"kind": format!("{}List", resource.kind()), "apiVersion": resource.api_version(),
                           "metadata": {"resourceVersion": st.resource_version().to_string()}, "items": items}),
                );
            }
            let bookmarks = matches!(
                q.get("allowWatchBookmarks").map(String::as_str),
                Some("true" | "1")
            );
            match st.watch(resource, selector, from, bookmarks) {
                Ok(rx) => Answer::Watch(rx),
                Err(g) => {
                    let msg = format!("too old resource version: {} ({})", g.asked, g.oldest);
                    Answer::Gone(super::state::event_line(
                        "ERROR",
                        &status(410, "Expired", &msg),
                    ))
                }
            }
        }
    }
}

/// Reads a request: its head (up to the blank line) and its body
/// (`Content-Length` bytes); `None` if the client left first or the request
/// is absurd.
async fn read_request(sock: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = sock.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_HEAD {
            return None;
        }
    };
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let length = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if length > MAX_HEAD {
        return None;
    }
    let mut body = buf.split_off(end);
    while body.len() < length {
        let n = sock.read(&mut chunk).await.ok().filter(|&n| n > 0)?;
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(length);
    Some((head, body))
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        422 => "Unprocessable Entity",
        _ => "Service Unavailable",
    }
}

async fn respond(sock: &mut TcpStream, code: u16, body: &Value) {
    let body = body.to_string();
    let msg = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        reason(code),
        body.len()
    );
    let _ = sock.write_all(msg.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// As [`respond`], but only half the body is sent before the connection
/// closes: the client sees a truncated response.
async fn respond_truncated(sock: &mut TcpStream, code: u16, body: &Value) {
    let body = body.to_string();
    let head = format!(
        "HTTP/1.1 {code} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        reason(code),
        body.len(),
    );
    let _ = sock.write_all(head.as_bytes()).await;
    let _ = sock.write_all(&body.as_bytes()[..body.len() / 2]).await;
    let _ = sock.shutdown().await;
}

/// Streams events as chunks. The channel closing means the test cut the
/// watch, unless `ends_cleanly` (a 410 answer, which ends its stream).
async fn stream(
    mut sock: TcpStream,
    mut rx: mpsc::UnboundedReceiver<String>,
    timeout: Duration,
    ends_cleanly: bool,
) {
    let head = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let (mut rd, mut wr) = sock.split();
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let mut scratch = [0u8; 256];
    loop {
        tokio::select! {
            line = rx.recv() => match line {
                Some(line) => {
                    let chunk = format!("{:x}\r\n{line}\n\r\n", line.len() + 1);
                    if wr.write_all(chunk.as_bytes()).await.is_err() {
                        return;
                    }
                }
                None if ends_cleanly => break,
                // Cut: no last chunk, the client sees the body end early.
                None => return,
            },
            () = &mut deadline => break,
            // The client hung up (or sent garbage we do not read): done.
            n = rd.read(&mut scratch) => if matches!(n, Ok(0) | Err(_)) { return },
        }
    }
    let _ = wr.write_all(b"0\r\n\r\n").await;
    let _ = wr.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_route_like_the_api_server() {
        assert!(matches!(
            route("/api/v1/services"),
            Route::Collection {
                resource: Resource::Services,
                namespace: None
            }
        ));
        assert!(matches!(
            route("/apis/discovery.k8s.io/v1/namespaces/shop/endpointslices"),
            Route::Collection { resource: Resource::EndpointSlices, namespace: Some(ref n) } if n == "shop"
        ));
        assert!(
            matches!(route("/api/v1/nodes/node-a"), Route::Item { resource: Resource::Nodes, ref name, .. } if name == "node-a")
        );
        assert!(
            matches!(route("/api/v1/namespaces/x/nodes"), Route::NotFound),
            "nodes are cluster-scoped"
        );
        assert!(
            matches!(route("/api/v1/endpointslices"), Route::NotFound),
            "wrong group"
        );
        assert!(matches!(route("/api/v1/secrets"), Route::NotFound));
        assert!(matches!(route("/version"), Route::NonResource(_)));
    }

    #[test]
    fn query_components_are_decoded() {
        let q = query("&fieldSelector=metadata.name%3Dnode-a&watch=true&x=%zz&y=%4");
        assert_eq!(q["fieldSelector"], "metadata.name=node-a");
        assert_eq!(q["watch"], "true");
        assert_eq!(q["x"], "%zz");
        assert_eq!(q["y"], "%4");
    }
}
