//! Helpers of the operations tests: the agent binary as a command, HTTP
//! scrapes inside a namespace, and Prometheus text lookups.
use std::{
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::{Command, Output},
    time::Duration,
};

use crate::netns::Netns;

/// `lb-agent <args>`, run to completion.
pub fn agent_cmd(args: &[&str]) -> Output {
    Command::new(crate::agent::agent_binary())
        .args(args)
        .output()
        .expect("running lb-agent")
}

/// stdout and stderr of an output, for messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// One HTTP GET inside `ns`: (status code, body).
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let path = path.to_string();
    ns.run(move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n")?;
        let mut resp = String::new();
        s.read_to_string(&mut resp)?;
        let code = resp
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        Ok((code, body))
    })
}

/// The value of the first sample of `name` whose labels contain every one
/// of `labels` (`key="value"` strings).
pub fn sample(text: &str, name: &str, labels: &[&str]) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (series, value) = l.rsplit_once(' ')?;
        let (n, rest) = series.split_once('{').unwrap_or((series, ""));
        (n == name && labels.iter().all(|want| rest.contains(want))).then(|| value.parse().ok())?
    })
}
