//! Continuous client load through a service, recorded with timestamps so a
//! test can tell failures inside a disturbance window from those outside:
//! long-lived TCP connections and UDP flows that ask in a loop (each must
//! always be answered by the same backend), plus a new TCP connection and a
//! new UDP flow every [`NEW_EVERY`]. [`Setup`] is the service, backends
//! and agent the load tests run it through.
use std::{
    net::{SocketAddr, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{
    agent::{objects_dir_with, programmed_at, slice_ports, Agent, WEB_CLUSTER_IP},
    netns::Netns,
    servers::{http_request_within, udp_ask, Conn, Server},
    topology::Topology,
    wait_for,
};

/// Pace of the new TCP connections and of the new UDP flows (each).
pub const NEW_EVERY: Duration = Duration::from_millis(10);
/// Pace of each long-lived connection's or flow's exchanges.
const ASK_EVERY: Duration = Duration::from_millis(20);

/// One failed exchange: when, and what happened.
#[derive(Clone, Debug)]
pub struct Failure {
    pub at: Instant,
    pub what: String,
}

/// What the load saw so far.
#[derive(Default)]
pub struct Seen {
    /// Per long-lived TCP connection, then per long-lived UDP flow: the
    /// backends that answered, in order.
    pub long_tcp: Vec<Vec<String>>,
    pub long_udp: Vec<Vec<String>>,
    /// Failures of the long-lived connections (a TCP one stops at its first).
    pub long_failures: Vec<Failure>,
    /// The long-lived TCP connections that failed (indexes into `long_tcp`).
    pub long_tcp_failed: Vec<usize>,
    /// New connections / flows answered, and those that failed.
    pub new_tcp_ok: usize,
    pub new_udp_ok: usize,
    pub new_failures: Vec<Failure>,
    /// Every answer: when its request was sent, and the backend that answered.
    pub answers: Vec<(Instant, String)>,
}

impl Seen {
    /// Exchanges answered so far, all kinds together.
    pub fn answered(&self) -> usize {
        self.long_tcp.iter().chain(&self.long_udp).map(Vec::len).sum::<usize>() + self.new_tcp_ok + self.new_udp_ok
    }

    /// Long-lived connections or flows answered by more than one backend.
    pub fn moved(&self) -> Vec<String> {
        let moved = |kind: &str, v: &Vec<Vec<String>>| -> Vec<String> {
            v.iter()
                .enumerate()
                .filter(|(_, a)| a.iter().any(|id| *id != a[0]))
                .map(|(i, _)| format!("{kind} {i}"))
                .collect()
        };
        let mut m = moved("tcp", &self.long_tcp);
        m.extend(moved("udp", &self.long_udp));
        m
    }
}

/// The running load; [`Load::stop`] ends it and returns what it saw.
pub struct Load {
    stop: Arc<AtomicBool>,
    pub seen: Arc<Mutex<Seen>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    /// `tcp_conns` long-lived TCP connections to `tcp` and `udp_flows`
    /// long-lived UDP flows to `udp` from `client`, plus new connections and
    /// flows to both every [`NEW_EVERY`]. Returns once every long-lived
    /// connection is established.
    pub fn start(client: &Netns, tcp: SocketAddr, udp: SocketAddr, tcp_conns: usize, udp_flows: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen {
            long_tcp: vec![Vec::new(); tcp_conns],
            long_udp: vec![Vec::new(); udp_flows],
            ..Default::default()
        }));
        let mut threads = Vec::new();
        for i in 0..tcp_conns {
            let mut conn = Conn::new(client.run(move || TcpStream::connect_timeout(&tcp, Duration::from_secs(3))).expect("connect"));
            let (seen, stop) = (seen.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    match conn.ask() {
                        Ok(id) => {
                            let mut s = seen.lock().unwrap();
                            s.answers.push((sent, id.clone()));
                            s.long_tcp[i].push(id);
                        }
                        Err(e) => {
                            let what = format!("tcp connection {i}: {e}");
                            let mut s = seen.lock().unwrap();
                            s.long_failures.push(Failure { at: Instant::now(), what });
                            s.long_tcp_failed.push(i);
                            return;
                        }
                    }
                    std::thread::sleep(ASK_EVERY);
                }
            }));
        }
        for i in 0..udp_flows {
            let sock = client.run(|| UdpSocket::bind("0.0.0.0:0")).expect("udp socket");
            let (seen, stop) = (seen.clone(), stop.clone());
            threads.push(std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let sent = Instant::now();
                    match udp_ask(&sock, udp, b"who", Duration::from_secs(3)) {
                        Ok((id, _)) => {
                            let mut s = seen.lock().unwrap();
                            s.answers.push((sent, id.clone()));
                            s.long_udp[i].push(id);
                        }
                        Err(e) => {
                            let what = format!("udp flow {i}: {e}");
                            seen.lock().unwrap().long_failures.push(Failure { at: Instant::now(), what });
                        }
                    }
                    std::thread::sleep(ASK_EVERY);
                }
            }));
        }
        let (s, st) = (seen.clone(), stop.clone());
        threads.push(client.spawn(move || {
            paced(&st, || {
                let sent = Instant::now();
                match http_request_within(tcp, "load", "/", Duration::from_secs(3), Duration::from_secs(5)) {
                    Ok((200, id)) => {
                        let mut s = s.lock().unwrap();
                        s.new_tcp_ok += 1;
                        s.answers.push((sent, id));
                    }
                    r => s.lock().unwrap().new_failures.push(Failure { at: Instant::now(), what: format!("new tcp: {r:?}") }),
                }
            })
        }));
        let (s, st) = (seen.clone(), stop.clone());
        threads.push(client.spawn(move || {
            paced(&st, || {
                // A fresh socket: a fresh source port, so a new flow each time.
                let sent = Instant::now();
                let r = UdpSocket::bind("0.0.0.0:0").and_then(|sock| udp_ask(&sock, udp, b"who", Duration::from_secs(3)));
                match r {
                    Ok((id, _)) => {
                        let mut s = s.lock().unwrap();
                        s.new_udp_ok += 1;
                        s.answers.push((sent, id));
                    }
                    Err(e) => s.lock().unwrap().new_failures.push(Failure { at: Instant::now(), what: format!("new udp: {e}") }),
                }
            })
        }));
        Self { stop, seen, threads }
    }

    /// Exchanges answered so far.
    pub fn answered(&self) -> usize {
        self.seen.lock().unwrap().answered()
    }

    /// Waits until `n` more exchanges have been answered (at most `timeout`).
    pub fn wait_more(&self, n: usize, timeout: Duration) -> bool {
        let from = self.answered();
        crate::wait_for(timeout, || self.answered() >= from + n)
    }

    /// Stops every thread and returns what the load saw.
    pub fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("a load thread panicked");
        }
        Arc::try_unwrap(self.seen).ok().expect("no other owner").into_inner().unwrap()
    }
}

/// Calls `f` every [`NEW_EVERY`] (start to start) until `stop`.
fn paced(stop: &AtomicBool, mut f: impl FnMut()) {
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        f();
        next += NEW_EVERY;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else {
            // Behind (a slow exchange): do not try to catch up in a burst.
            next = now;
        }
    }
}

/// Whether `at` falls inside one of `windows` (start, end).
pub fn inside(at: Instant, windows: &[(Instant, Instant)]) -> bool {
    windows.iter().any(|(a, b)| at >= *a && at <= *b)
}

/// `shop/web` with a TCP and a UDP port, both 80 → 8080.
pub const TCP_UDP_SERVICE: &str = "apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: shop
  annotations:
    xdplb.io/algorithm: round-robin
spec:
  type: ClusterIP
  clusterIP: 10.96.0.10
  clusterIPs: [10.96.0.10]
  ports:
  - name: http
    port: 80
    protocol: TCP
    targetPort: 8080
  - name: dns
    port: 80
    protocol: UDP
    targetPort: 8080
  selector:
    app: web
";

/// The EndpointSlice of [`TCP_UDP_SERVICE`]: `n` ready backends on node-0.
pub fn tcp_udp_slice(n: usize) -> String {
    slice_ports(&(0..n).collect::<Vec<_>>(), &[("http", "TCP"), ("dns", "UDP")])
}

/// What the tests under load start from: three backends serving on 8080,
/// and the agent (`run` with `args` more) once it has programmed both ports
/// of [`TCP_UDP_SERVICE`] with all three.
pub struct Setup {
    pub t: Topology,
    pub servers: Vec<Server>,
    pub agent: Agent,
}

impl Setup {
    pub fn start(args: &[&str]) -> Self {
        let t = Topology::new(3);
        let servers = (0..3).map(|i| Server::start(&t.backends[i], 8080, &format!("backend-{i}"))).collect();
        let mut agent = Agent::start_with(&t.node, &objects_dir_with(TCP_UDP_SERVICE, &tcp_udp_slice(3)), args);
        let dp = agent.maps();
        let both = || [6, 17].iter().all(|&proto| programmed_at(&dp, WEB_CLUSTER_IP, 80, proto).is_some_and(|(n, _)| n == 3));
        assert!(wait_for(Duration::from_secs(20), both), "the service never reached the maps\n{}", agent.log());
        Self { t, servers, agent }
    }
}
