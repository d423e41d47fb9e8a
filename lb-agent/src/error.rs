//! Why `lb-agent run` stopped: one variant per step of its start-up and run
//! loop, each naming the step and what to do next (the flag to change, the
//! command to run, the privilege or mount to grant). The layers below keep
//! their own typed errors as the `source`; `main` prints the chain.
use std::{net::SocketAddr, path::PathBuf};

use crate::{
    control::{model::LoadError, source::kube::KubeError},
    dataplane, lbip, links, loader, pinfs::Ephemeral,
    privs::PrivsError,
    snat, socklb,
};


#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("serving /metrics, /healthz and /readyz on {addr}: {source}; is the port in use? choose another with --metrics-addr")]
    MetricsAddr {
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A start-up check failed; `detail` says what is wrong and the fix
    /// (missing kernel feature, no privilege, bpffs, no such interface,
    /// no native XDP).
    #[error("start-up check \"{check}\" failed: {detail} (`lb-agent doctor` checks everything)")]
    Check { check: String, detail: String },
    #[error(transparent)]
    EphemeralPins(#[from] Ephemeral),
    #[error("--redirect-iface {iface}: no such interface in this network namespace; check it against `ip -br link`")]
    NoRedirectIface { iface: String },
    #[error("reading --source file:{}: fix the path or pass another --source", .path.display())]
    FileSource {
        path: PathBuf,
        #[source]
        source: LoadError,
    },
    #[error("starting --source kube (check --kubeconfig, and that the agent's ServiceAccount may list and watch Services, EndpointSlices and Nodes)")]
    KubeSource(#[source] KubeError),
    #[error("starting the LoadBalancer addresses (--lb-addresses, --lb-pool)")]
    LbAddresses(#[source] lbip::StartError),
    #[error("loading the programs and their maps under --pin-path {}", .pin_dir.display())]
    Load {
        pin_dir: PathBuf,
        /// Boxed, as aya's errors are large.
        #[source]
        source: Box<loader::Error>,
    },
    #[error("attaching to --iface {iface} (check it with `ip -br link`; a driver without native XDP needs --xdp-mode generic)")]
    Attach {
        iface: String,
        /// Boxed, as aya's program errors are large.
        #[source]
        source: Box<links::Error>,
    },
    /// A step on the pinned maps; a full map names its `--max-*` flag.
    #[error("{step}")]
    Maps {
        step: &'static str,
        /// Boxed: aya's map errors are large, and every `run` result carries this.
        #[source]
        source: Box<dataplane::Error>,
    },
    /// `detail` names the addresses and the rule.
    #[error("{detail}")]
    SnatAddress { detail: String },
    #[error("reserving the SNAT ports from the node's ephemeral ports (change --snat-ports, or pass --no-snat)")]
    SnatPorts(#[source] snat::Error),
    #[error("accepting SNATed replies on {iface} (pass --no-snat to run without SNAT)")]
    SnatIface {
        iface: String,
        #[source]
        source: snat::Error,
    },
    #[error("balancing the node's own sockets (pass --socket-lb off to run without, or a cgroup v2 path)")]
    SocketLb(#[source] Box<socklb::Error>),
    #[error("dropping the capabilities no longer needed after start-up")]
    DropPrivileges(#[source] PrivsError),
    #[error("installing the {signal} handler")]
    Signal {
        signal: &'static str,
        source: std::io::Error,
    },
    #[error("the source stopped sending changes (the file watcher or the API watchers ended): restart the agent")]
    SourceStopped,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::chain;

    /// Each message names the step and what to change.
    #[test]
    fn messages_name_the_remedy() {
        let e = RunError::MetricsAddr {
            addr: "127.0.0.1:9464".parse().unwrap(),
            source: std::io::Error::from(std::io::ErrorKind::AddrInUse),
        };
        let m = e.to_string();
        assert!(m.starts_with("serving /metrics, /healthz and /readyz on 127.0.0.1:9464: ") && m.contains("choose another with --metrics-addr"), "{m}");

        let m = RunError::NoRedirectIface { iface: "eth9".into() }.to_string();
        assert_eq!(m, "--redirect-iface eth9: no such interface in this network namespace; check it against `ip -br link`");

        let m = RunError::Check { check: "privileges".into(), detail: "missing CAP_BPF: run as root".into() }.to_string();
        assert_eq!(m, "start-up check \"privileges\" failed: missing CAP_BPF: run as root (`lb-agent doctor` checks everything)");

        let m = RunError::Attach { iface: "eth0".into(), source: Box::new(links::Error::NoIface { iface: "eth0".into() }) }.to_string();
        assert!(m.contains("--iface eth0") && m.contains("--xdp-mode generic"), "{m}");

        let busy = snat::Error::Read { path: "/proc/sys/net/ipv4/ip_local_reserved_ports".into(), source: std::io::Error::from_raw_os_error(libc::EBUSY) };
        let m = RunError::SnatPorts(busy).to_string();
        assert!(m.contains("--snat-ports") && m.contains("--no-snat"), "{m}");
        let m = RunError::SocketLb(Box::new(socklb::Error::NoCgroup2)).to_string();
        assert!(m.contains("--socket-lb off"), "{m}");
    }

    /// A full map reached through a run step: the step is the message, the
    /// flag to raise is in its source, and both print in the chain.
    #[test]
    fn a_full_map_names_its_flag_in_the_chain() {
        let e = RunError::Maps {
            step: "writing the redirect interfaces",
            source: Box::new(dataplane::Error::Full { map: lb_common::maps::SERVICES_V4, what: "service 1".into(), flag: "--max-services" }),
        };
        let want = "writing the redirect interfaces: services_v4 is full: service 1 does not fit; raise --max-services";
        assert_eq!(chain(&e), want);
        assert_eq!(format!("{:#}", anyhow::Error::new(e)), want, "as main prints it");
    }

    /// The source's own error stays the cause, printed once.
    #[test]
    fn a_source_error_keeps_its_cause() {
        let e = RunError::FileSource {
            path: "/nope.yaml".into(),
            source: LoadError::Read { path: "/nope.yaml".into(), source: std::io::Error::from(std::io::ErrorKind::NotFound) },
        };
        let chain = format!("{:#}", anyhow::Error::new(e));
        assert!(chain.starts_with("reading --source file:/nope.yaml: fix the path or pass another --source: reading /nope.yaml: "), "{chain}");
    }
}
