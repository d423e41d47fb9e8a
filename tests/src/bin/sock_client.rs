//! `xdplb-sock-client tcp|udp ADDR:PORT`: one request, as a node process
//! would make it, for the socket-balancing tests. Prints the answer and the
//! address the application sees it from (TCP: getpeername(); UDP: the
//! source recvfrom() reports, unconnected socket). An IPv6 ADDR (`[fd00::1]:80`,
//! or `[::ffff:10.0.0.1]:80` for a dual-stack socket to an IPv4 address)
//! takes an IPv6 socket. Exits 1 with the error.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream, UdpSocket},
    time::Duration,
};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match (args.first().map(String::as_str), args.get(1).and_then(|a| a.parse::<SocketAddr>().ok())) {
        (Some("tcp"), Some(to)) => tcp(to),
        (Some("udp"), Some(to)) => udp(to),
        _ => Err(std::io::Error::other("usage: xdplb-sock-client tcp|udp ADDR:PORT")),
    };
    match result {
        Ok((answer, from)) => println!("{answer} {from}"),
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    }
}

fn tcp(to: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    let mut s = TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    let peer = s.peer_addr()?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n")?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    let body = reply.split("\r\n\r\n").nth(1).unwrap_or_default().trim().to_string();
    Ok((body, peer))
}

fn udp(to: SocketAddr) -> std::io::Result<(String, SocketAddr)> {
    let s = UdpSocket::bind(if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" })?;
    s.set_read_timeout(Some(Duration::from_secs(3)))?;
    s.send_to(b"who", to)?;
    let mut buf = [0u8; 256];
    let (n, from) = s.recv_from(&mut buf)?;
    Ok((String::from_utf8_lossy(&buf[..n]).trim().to_string(), from))
}
