//! Real servers inside backend namespaces. Each answers with its identity:
//! TCP — an HTTP GET gets `HTTP/1.0 200` with the identity as body; any other
//! line gets the identity back on the same connection (long-lived clients);
//! UDP — every datagram is answered with the identity.
//! A GET of [`PEER_PATH`] or the datagram [`PEER_PATH`] gets
//! `<identity> <client ip:port>` instead: the address the server saw, so a
//! test can check a client address was preserved (or SNATed). A GET of
//! `/bulk/<n>` ([`BULK_PATH`]) gets the identity line and `n` more bytes.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::netns::Netns;

/// Servers running in threads; stopped when dropped.
pub struct Server {
    stop: Arc<AtomicBool>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

const POLL: Duration = Duration::from_millis(50);

/// The request (HTTP path, or whole datagram) answered with the peer address too.
pub const PEER_PATH: &str = "/peer";
/// `GET /bulk/<n>`: the identity line, then `n` bytes of `i % 251`.
pub const BULK_PATH: &str = "/bulk/";

impl Server {
    /// TCP and UDP on `port` in `ns`, answering `identity`.
    pub fn start(ns: &Netns, port: u16, identity: &str) -> Self {
        Self::start_on(ns, "0.0.0.0", port, identity)
    }

    /// As [`Server::start`], on both families (`[::]`, which takes IPv4 too:
    /// an IPv4 peer then reads as `[::ffff:a.b.c.d]:port`).
    pub fn start_dual(ns: &Netns, port: u16, identity: &str) -> Self {
        Self::start_on(ns, "::", port, identity)
    }

    fn start_on(ns: &Netns, addr: &'static str, port: u16, identity: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (id, st) = (identity.to_string(), stop.clone());
        let (tcp, udp) = ns.run(move || {
            let tcp = TcpListener::bind((addr, port)).expect("bind tcp");
            tcp.set_nonblocking(true).unwrap();
            let udp = UdpSocket::bind((addr, port)).expect("bind udp");
            udp.set_read_timeout(Some(POLL)).unwrap();
            (tcp, udp)
        });
        let (id2, st2) = (id.clone(), st.clone());
        std::thread::spawn(move || serve_tcp(tcp, &id, st));
        std::thread::spawn(move || serve_udp(udp, &id2, &st2));
        Self { stop }
    }
}

fn serve_tcp(l: TcpListener, id: &str, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        // Wait for a connection (or the next stop check) in poll(2), so a
        // connection is accepted the moment it arrives: a sleep between
        // accept attempts added up to its length to every connection's latency.
        let mut fd = libc::pollfd { fd: std::os::fd::AsRawFd::as_raw_fd(&l), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd for the duration of the call.
        if unsafe { libc::poll(&mut fd, 1, POLL.as_millis() as i32) } <= 0 {
            continue;
        }
        while let Ok((s, _)) = l.accept() {
            let (id, stop) = (id.to_string(), stop.clone());
            std::thread::spawn(move || handle(s, &id, &stop));
        }
    }
}

/// Reads one line into `line`; false at the end of the stream, on an error,
/// or once the server is stopped. An idle connection is held for as long
/// as its client keeps it, however long an agent restart takes (minutes in
/// the emulated VM of the kernels tier on a loaded machine): the timeout
/// only lets the thread see `stop`.
fn next_line(r: &mut BufReader<TcpStream>, line: &mut String, stop: &AtomicBool) -> bool {
    loop {
        // A timed-out read keeps what it got in `line` (valid UTF-8 is kept).
        match r.read_line(line) {
            Ok(n) => return n > 0,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) {
                    return false;
                }
            }
            Err(_) => return false,
        }
    }
}

fn handle(s: TcpStream, id: &str, stop: &AtomicBool) {
    s.set_nonblocking(false).ok();
    s.set_read_timeout(Some(Duration::from_secs(1))).ok();
    let peer = s.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    while next_line(&mut r, &mut line, stop) {
        if line.starts_with("GET ") {
            // Drain the headers, answer, close.
            let mut h = String::new();
            while next_line(&mut r, &mut h, stop) && h != "\r\n" {
                h.clear();
            }
            let path = line.split_whitespace().nth(1).unwrap_or("");
            if let Some(n) = path.strip_prefix(BULK_PATH).and_then(|n| n.parse::<usize>().ok()) {
                // `n` bytes of a repeating pattern after the identity line:
                // full-size segments for path MTU tests.
                let pattern: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
                let head = format!("{id}\n");
                let _ = write!(w, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{head}", head.len() + n);
                let _ = w.write_all(&pattern);
                return;
            }
            let body = match path {
                PEER_PATH => format!("{id} {peer}"),
                _ => id.to_string(),
            };
            let _ = write!(w, "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            return;
        }
        if w.write_all(format!("{id}\n").as_bytes()).is_err() {
            return;
        }
        line.clear();
    }
}

fn serve_udp(u: UdpSocket, id: &str, stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((n, from)) = u.recv_from(&mut buf) {
            let _ = if &buf[..n] == PEER_PATH.as_bytes() {
                u.send_to(format!("{id} {from}").as_bytes(), from)
            } else {
                u.send_to(id.as_bytes(), from)
            };
        }
    }
}

/// One HTTP/1.0 GET of `path` with `Host: host` over a fresh connection from
/// inside the calling thread's namespace; returns (status code, body).
pub fn http_request(to: SocketAddr, host: &str, path: &str) -> std::io::Result<(u16, String)> {
    http_request_within(to, host, path, Duration::from_secs(3), Duration::from_secs(10))
}

/// [`http_request`] with its connect and read timeouts given.
pub fn http_request_within(
    to: SocketAddr,
    host: &str,
    path: &str,
    connect: Duration,
    read: Duration,
) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&to, connect)?;
    s.set_read_timeout(Some(read))?;
    // One write, one segment (write! would send each piece separately).
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let code = resp.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((code, body))
}

/// One HTTP GET over a fresh connection from inside the calling thread's
/// namespace; returns the body (the backend's identity) of a 200.
pub fn http_get(to: SocketAddr) -> std::io::Result<String> {
    match http_request(to, &to.to_string(), "/")? {
        (200, body) => Ok(body),
        (code, body) => Err(std::io::Error::other(format!("unexpected response {code} {body:?}"))),
    }
}

/// Sends `msg` on `sock` to `to` and waits up to `timeout` for an answer.
pub fn udp_ask(sock: &UdpSocket, to: SocketAddr, msg: &[u8], timeout: Duration) -> std::io::Result<(String, SocketAddr)> {
    sock.set_read_timeout(Some(timeout))?;
    sock.send_to(msg, to)?;
    let mut buf = [0u8; 2048];
    let (n, from) = sock.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).into_owned(), from))
}

/// A persistent connection to a server: each `ask` sends a line and returns
/// the identity that answered on the same connection.
pub struct Conn {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Conn {
    pub fn new(s: TcpStream) -> Self {
        s.set_read_timeout(Some(Duration::from_secs(3))).ok();
        Self { w: s.try_clone().unwrap(), r: BufReader::new(s) }
    }
    pub fn ask(&mut self) -> std::io::Result<String> {
        self.w.write_all(b"who\n")?;
        let mut line = String::new();
        if self.r.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other("connection closed"));
        }
        Ok(line.trim_end().to_string())
    }
    pub fn peer(&self) -> SocketAddr {
        self.w.peer_addr().unwrap()
    }
}

/// `n` HTTP GETs over fresh connections from `ns`; tally of answering backends.
pub fn tally(ns: &crate::netns::Netns, to: SocketAddr, n: usize) -> std::collections::BTreeMap<String, usize> {
    ns.run(move || {
        let mut t = std::collections::BTreeMap::new();
        for i in 0..n {
            let body = http_get(to).unwrap_or_else(|e| panic!("request {i} to {to}: {e}"));
            *t.entry(body).or_default() += 1;
        }
        t
    })
}

