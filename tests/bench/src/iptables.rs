//! kube-proxy's iptables mode, as it writes the nat table: KUBE-SERVICES
//! matches each ClusterIP:port and jumps to KUBE-SVC-<hash>, which marks
//! off-cluster sources for masquerade and picks an endpoint with
//! `-m statistic --mode random --probability 1/(n-i)`, jumping to
//! KUBE-SEP-<hash>, which DNATs. Loaded with one `iptables-restore`
//! (legacy when installed: 10k services load in ~5 s, twice as fast as nft).
//! Only the nat table is written (no KUBE-FORWARD filter rules). Like
//! kube-proxy with `--cluster-cidr`, off-cluster clients are masqueraded;
//! xdplb keeps the client address, so the comparison includes that SNAT.
use std::{io::Write as _, process::Stdio};

use anyhow::{bail, Context as _, Result};

use super::dataplane::{backend, vip, BACKEND_PORT, SVC_PORT};
use xdplb_tests::netns::Netns;

/// The pod network kube-proxy is told about (`--cluster-cidr`).
const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// A 16-character chain suffix, like kube-proxy's base32 of a SHA-256 (any
/// stable, distinct string does here).
fn hash(kind: &str, id: u32) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in kind.bytes().chain(id.to_le_bytes()) {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("{h:016X}")
}

/// The `iptables-restore` input for `services` services of protocol
/// `proto` (TCP or UDP) with `per` endpoints each (the same VIPs and
/// backends as the xdplb side).
pub fn rules(services: u32, per: u32, proto: u8) -> String {
    let p = if proto == lb_common::IPPROTO_TCP { "tcp" } else { "udp" };
    let mut chains = String::new();
    let mut rules = String::new();
    for c in ["KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ"] {
        chains += &format!(":{c} - [0:0]\n");
    }
    rules += "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    rules += "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n";
    rules += "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n";
    rules += "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000\n";
    rules += "-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n";
    rules += "-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000\n";
    rules += "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n";
    for id in 1..=services {
        let svc = format!("KUBE-SVC-{}", hash("svc", id));
        let name = format!("bench/svc-{id}:{p}");
        let v = vip(id);
        chains += &format!(":{svc} - [0:0]\n");
        rules += &format!("-A KUBE-SERVICES -d {v}/32 -p {p} -m comment --comment \"{name} cluster IP\" -m {p} --dport {SVC_PORT} -j {svc}\n");
        rules += &format!("-A {svc} ! -s {CLUSTER_CIDR} -d {v}/32 -p {p} -m comment --comment \"{name} cluster IP\" -m {p} --dport {SVC_PORT} -j KUBE-MARK-MASQ\n");
        for i in 0..per {
            let bid = (id - 1) * per + i + 1;
            let sep = format!("KUBE-SEP-{}", hash("sep", bid));
            let b = backend(bid);
            chains += &format!(":{sep} - [0:0]\n");
            let left = per - i;
            let stat = if left > 1 { format!(" -m statistic --mode random --probability {:.11}", 1.0 / left as f64) } else { String::new() };
            rules += &format!("-A {svc} -m comment --comment \"{name} -> {b}:{BACKEND_PORT}\"{stat} -j {sep}\n");
            rules += &format!("-A {sep} -s {b}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n");
            rules += &format!("-A {sep} -p {p} -m comment --comment \"{name}\" -m {p} -j DNAT --to-destination {b}:{BACKEND_PORT}\n");
        }
    }
    rules += "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n";
    format!("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n{chains}{rules}COMMIT\n")
}

/// Loads `rules` into `ns` with `restore` (`iptables-restore`,
/// `iptables-legacy-restore`, ...); returns the seconds it took.
pub fn load(ns: &Netns, restore: &str, rules: &str) -> Result<f64> {
    let t = std::time::Instant::now();
    let mut child = ns.cmd(restore).stdin(Stdio::piped()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn()
        .with_context(|| format!("running {restore} (install iptables)"))?;
    child.stdin.take().unwrap().write_all(rules.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("{restore} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(t.elapsed().as_secs_f64())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rules_have_one_dnat_per_endpoint_and_probabilities_like_kube_proxy() {
        let r = super::rules(2, 3, lb_common::IPPROTO_UDP);
        assert_eq!(r.matches("-j DNAT").count(), 6);
        assert!(r.contains("--probability 0.33333333333"));
        assert!(r.contains("--probability 0.50000000000"));
        assert!(r.starts_with("*nat\n") && r.ends_with("COMMIT\n"));
    }
}
