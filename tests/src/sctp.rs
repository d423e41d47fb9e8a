//! Real SCTP endpoints, for kernels that have SCTP (the `--kernels` VM runs
//! Debian's kernel with sctp.ko; this host's kernel has no SCTP at all).
//! One-to-one style sockets (`socket(AF_INET or AF_INET6, SOCK_STREAM,
//! IPPROTO_SCTP)`)
//! read and write like TCP streams, so once made they are carried by std's
//! `TcpListener` / `TcpStream`. Each read returns at most one message, so
//! an echo answers message by message.
use std::{
    io::{self, Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

use crate::netns::Netns;

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn socket() -> io::Result<OwnedFd> {
    socket_of(libc::AF_INET, libc::SOCK_STREAM)
}

/// An SCTP socket of `family` (`AF_INET`, `AF_INET6`) and `kind`:
/// `SOCK_STREAM` (one-to-one style) or `SOCK_SEQPACKET` (one-to-many).
fn socket_of(family: libc::c_int, kind: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; no pointers.
    let fd = unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, libc::IPPROTO_SCTP) };
    check(fd)?;
    // SAFETY: `fd` is a socket just made, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `a` as the kernel takes it (`sockaddr_in` or `sockaddr_in6` in a
/// storage), its length, and its family.
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t, libc::c_int) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage.
    let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let (len, family) = match a {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(a.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: the storage is larger than and aligned for any sockaddr.
            unsafe { *(&mut st as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>() = sin };
            (std::mem::size_of::<libc::sockaddr_in>(), libc::AF_INET)
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr { s6_addr: a.ip().octets() },
                sin6_scope_id: 0,
            };
            // SAFETY: as above.
            unsafe { *(&mut st as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>() = sin6 };
            (std::mem::size_of::<libc::sockaddr_in6>(), libc::AF_INET6)
        }
    };
    (st, len as libc::socklen_t, family)
}

/// Whether this kernel (in the calling thread's namespace) has SCTP.
pub fn available() -> bool {
    socket().is_ok()
}

/// An SCTP listener on `bind` (of its family).
pub fn listen(bind: SocketAddr) -> io::Result<TcpListener> {
    let (addr, len, family) = sockaddr(bind);
    let fd = socket_of(family, libc::SOCK_STREAM)?;
    let one: libc::c_int = 1;
    // SAFETY: valid fd, pointers to locals of the sizes passed.
    unsafe {
        check(libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        ))?;
        check(libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_storage).cast(), len))?;
        check(libc::listen(fd.as_raw_fd(), 128))?;
    }
    Ok(TcpListener::from(fd))
}

/// An SCTP association to `to`, bound to `from` (one local address: the
/// INIT then lists no other, see the README's SCTP limits), set up within
/// `timeout` (SCTP's connect waits for the whole four-way handshake, bounded
/// by the send timeout).
pub fn connect(from: IpAddr, to: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let ((local, len, family), (remote, _, _)) = (sockaddr(SocketAddr::new(from, 0)), sockaddr(to));
    let fd = socket_of(family, libc::SOCK_STREAM)?;
    let tv = libc::timeval {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    let tv_len = std::mem::size_of::<libc::timeval>() as libc::socklen_t;
    // SAFETY: valid fd, pointers to locals of the sizes passed.
    unsafe {
        check(libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&tv as *const libc::timeval).cast(),
            tv_len,
        ))?;
        check(libc::bind(fd.as_raw_fd(), (&local as *const libc::sockaddr_storage).cast(), len))?;
        check(libc::connect(fd.as_raw_fd(), (&remote as *const libc::sockaddr_storage).cast(), len))?;
    }
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(timeout))?;
    Ok(s)
}

/// An SCTP server in a namespace answering every message with
/// `<identity>:<message>`, until dropped.
pub struct Echo {
    stop: Arc<AtomicBool>,
}

impl Echo {
    /// An echo on `0.0.0.0:port`.
    pub fn start(ns: &Netns, port: u16, identity: &str) -> Self {
        Self::start_on(ns, SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), port), identity)
    }

    /// An echo on `bind` (`[::]:port` for IPv6).
    pub fn start_on(ns: &Netns, bind: SocketAddr, identity: &str) -> Self {
        let l = ns
            .run(move || listen(bind))
            .expect("SCTP listener (is sctp.ko loaded?)");
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let (st, id) = (stop.clone(), identity.to_string());
        std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((c, _)) => {
                        let (id, st) = (id.clone(), st.clone());
                        std::thread::spawn(move || echo(c, &id, &st));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Self { stop }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo(mut c: TcpStream, id: &str, stop: &AtomicBool) {
    let _ = c.set_nonblocking(false);
    let _ = c.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 1 << 16];
    while !stop.load(Ordering::Relaxed) {
        match c.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                let mut out = format!("{id}:").into_bytes();
                out.extend_from_slice(&buf[..n]);
                if c.write_all(&out).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(_) => return,
        }
    }
}

/// Sends `msg` on `s` and returns who answered (the echo's identity),
/// checking the answer carries `msg` back byte for byte.
pub fn ask(s: &mut TcpStream, msg: &[u8]) -> io::Result<String> {
    s.write_all(msg)?;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    // An answer larger than the socket's read may come in parts.
    while !(got.len() > msg.len() && got.ends_with(msg)) {
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "association closed",
            ));
        }
        got.extend_from_slice(&buf[..n]);
    }
    let id = &got[..got.len() - msg.len()];
    id.strip_suffix(b":")
        .map(|i| String::from_utf8_lossy(i).into_owned())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("unexpected answer {:?}", String::from_utf8_lossy(&got)),
            )
        })
}

/// The Service `shop/diameter` (`diameter6` over IPv6): SCTP, ClusterIP
/// `ip:port` (of either family) and NodePort `node_port`, target port
/// `target`, round-robin; and its EndpointSlice with `backends` on node-0.
pub fn service_yaml(
    ip: IpAddr,
    port: u16,
    node_port: u16,
    target: u16,
    backends: &[IpAddr],
) -> String {
    let (name, family) = if ip.is_ipv6() { ("diameter6", "IPv6") } else { ("diameter", "IPv4") };
    let mut s = format!(
        "apiVersion: v1
kind: Service
metadata:
  name: {name}
  namespace: shop
  annotations:
    xdplb.io/algorithm: round-robin
spec:
  type: NodePort
  ipFamilies: [{family}]
  clusterIP: '{ip}'
  clusterIPs: ['{ip}']
  ports:
  - name: diameter
    port: {port}
    nodePort: {node_port}
    protocol: SCTP
    targetPort: {target}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: {name}-x1
  namespace: shop
  labels:
    kubernetes.io/service-name: {name}
addressType: {family}
ports:
- name: diameter
  port: {target}
  protocol: SCTP
endpoints:
"
    );
    for b in backends {
        s += &format!("- addresses: ['{b}']\n  conditions: {{ready: true, serving: true, terminating: false}}\n  nodeName: node-0\n");
    }
    s
}

/// The socket calls that open an SCTP association to a given address.
#[derive(Clone, Copy, Debug)]
pub enum Dial {
    /// connect() on a one-to-one (`SOCK_STREAM`) socket.
    Connect,
    /// connect() on a one-to-many (`SOCK_SEQPACKET`) socket.
    SeqpacketConnect,
    /// sendto() on a one-to-many socket: the association is implied.
    SeqpacketSendto,
    /// `sctp_connectx()` (the `SCTP_SOCKOPT_CONNECTX` socket option) on a
    /// one-to-one socket.
    Connectx,
}

pub const DIALS: [Dial; 4] = [Dial::Connect, Dial::SeqpacketConnect, Dial::SeqpacketSendto, Dial::Connectx];

/// linux/sctp.h (not in libc).
const SOL_SCTP: libc::c_int = 132;
const SCTP_SOCKOPT_CONNECTX: libc::c_int = 110;

/// Opens an association to `to` the way `how` says and sends one message
/// on it; returns who answered it (the echo's identity), or the error of
/// the first call that failed (a one-to-many send that nobody answers
/// within `timeout` is a `TimedOut`/`WouldBlock` read).
pub fn dial(how: Dial, to: SocketAddr, timeout: Duration) -> io::Result<String> {
    let kind = match how {
        Dial::Connect | Dial::Connectx => libc::SOCK_STREAM,
        Dial::SeqpacketConnect | Dial::SeqpacketSendto => libc::SOCK_SEQPACKET,
    };
    let (remote, len, family) = sockaddr(to);
    let fd = socket_of(family, kind)?;
    let tv = libc::timeval { tv_sec: timeout.as_secs() as libc::time_t, tv_usec: 0 };
    let msg = b"hello";
    // SAFETY: valid fd, pointers to locals of the sizes passed.
    unsafe {
        for opt in [libc::SO_SNDTIMEO, libc::SO_RCVTIMEO] {
            check(libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (&tv as *const libc::timeval).cast(), std::mem::size_of::<libc::timeval>() as libc::socklen_t))?;
        }
        let sa = (&remote as *const libc::sockaddr_storage).cast();
        match how {
            Dial::Connect | Dial::SeqpacketConnect => check(libc::connect(fd.as_raw_fd(), sa, len))?,
            Dial::Connectx => check(libc::setsockopt(fd.as_raw_fd(), SOL_SCTP, SCTP_SOCKOPT_CONNECTX, sa.cast(), len))?,
            Dial::SeqpacketSendto => {}
        }
        let sent = match how {
            Dial::SeqpacketSendto => libc::sendto(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0, sa, len),
            _ => libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0),
        };
        check(sent as libc::c_int)?;
        let mut buf = [0u8; 256];
        let n = libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
        check(n as libc::c_int)?;
        let got = &buf[..n as usize];
        got.strip_suffix(b":hello")
            .map(|i| String::from_utf8_lossy(i).into_owned())
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("unexpected answer {:?}", String::from_utf8_lossy(got))))
    }
}
