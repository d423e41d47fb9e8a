//! Helpers of the operations tests: the agent binary as a command, HTTP
//! scrapes inside a namespace, and Prometheus text lookups.
use std::{
    net::SocketAddr,
    process::{Command, Output},
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
    ns.run(move || crate::servers::http_request(addr, &addr.to_string(), &path))
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
