//! The command line: what a new user types, and what `--help` tells them.
use std::{
    net::SocketAddr,
    path::PathBuf,
};

use clap::{Args, Parser, Subcommand, ValueEnum};
use lb_agent::control::{model::parse_algorithm, source::SourceSpec};

/// xdplb's node agent: balances Kubernetes Services with eBPF (XDP on the
/// uplink, tc on pod interfaces), kube-proxy compatible.
///
/// Start with `lb-agent plan --source file:objects.yaml` to see what would be
/// programmed (objects.yaml as printed by
/// `kubectl get svc,endpointslices,nodes -A -o yaml`), then `lb-agent run`.
#[derive(Debug, Parser)]
#[command(name = "lb-agent", version, about, long_about)]
pub struct Cli {
    /// Options from a YAML file (`iface: [eth0]`, `max-flows: 2097152`, ...;
    /// keys are the long option names); the command line's flags win.
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<std::path::PathBuf>,
    /// Log format on stderr. Verbosity follows RUST_LOG (default: info),
    /// e.g. RUST_LOG=lb_agent=debug.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the desired dataplane state for the objects, without touching
    /// the kernel (no root needed).
    Plan(PlanArgs),
    /// Load and attach the programs, then keep the pinned maps in step with
    /// the objects until SIGINT/SIGTERM (needs root).
    // Boxed: by far the largest variant.
    Run(Box<RunArgs>),
    /// Services in the pinned maps: frontends, algorithm, affinity,
    /// backends with their state (works with the agent running or stopped).
    Services(MapsArgs),
    /// Backends in the pinned maps: address, state, weight, live flows.
    Backends(MapsArgs),
    /// Conntrack entries (both directions of each flow), filterable.
    Conntrack(ConntrackArgs),
    /// Dataplane counters by reason and per-service statistics.
    Stats(MapsArgs),
    /// The busiest services by packets, new flows and drops, refreshed
    /// every second (q quits); `--once --json` prints one sample.
    Top(TopArgs),
    /// What the dataplane does with one packet, from the live maps:
    /// frontend, service, policy, candidate backends, the pick, conntrack,
    /// source ranges and the verdict (DNAT, REJECT, DROP or PASS).
    Explain(ExplainArgs),
    /// LoadBalancer address pools (allocated/free), and the node answering
    /// for each address, as this node's agent last saw them.
    LbAddresses(MapsArgs),
    /// Check the kernel, privileges, bpffs and interfaces as `run` would,
    /// and print a report (exit status 1 if a check fails).
    Doctor(DoctorArgs),
    /// Install on a plain node: this binary, a systemd unit running `run`
    /// with the options given, and /etc/xdplb/objects as its file source.
    Install(InstallArgs),
    /// Remove what `install` wrote, and the pinned maps and links (which
    /// detaches the programs).
    Uninstall(UninstallArgs),
}

/// What every command needs to compute a plan.
#[derive(Debug, Args)]
pub struct PlanInputs {
    /// Where the Service, EndpointSlice and Node objects come from:
    /// `file:<path>` (a YAML file or a directory of *.yaml/*.yml, followed
    /// live) or `kube` (the API server: in a pod its service account,
    /// else --kubeconfig, KUBECONFIG or ~/.kube/config).
    #[arg(long, value_name = "SOURCE", value_parser = parse_source)]
    pub source: SourceSpec,
    /// The kubeconfig file for `--source kube`.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name: `Local` traffic policies keep endpoints whose
    /// nodeName is this; NodePort addresses come from the Node of this name
    /// unless --node-address is given.
    #[arg(long, env = "NODE_NAME", default_value_t = default_node_name())]
    pub node_name: String,
    /// An address NodePorts are served on (repeat for several). Default: the
    /// InternalIP/ExternalIP addresses of the Node named --node-name.
    /// Either family; an IPv4-mapped IPv6 address is its IPv4 address, a
    /// link-local one is refused.
    #[arg(long = "node-address", value_name = "IP", value_parser = parse_node_address)]
    pub node_addresses: Vec<std::net::IpAddr>,
    /// Backend selection for services without an `xdplb.io/algorithm`
    /// annotation: random, round-robin, maglev or least-conn.
    #[arg(long, value_name = "ALGORITHM", default_value = "random", value_parser = parse_algorithm_arg)]
    pub default_algorithm: u8,
    /// A range ClusterIPs are allocated from, as kube-apiserver's
    /// --service-cluster-ip-range (repeat for several; either family).
    /// Pods and the node get nothing from an address
    /// inside that no Service has: dropped, not routed. ServiceCIDR objects
    /// of the source add to these.
    #[arg(long = "service-cidr", value_name = "CIDR", value_parser = parse_service_cidr)]
    pub service_cidrs: Vec<lb_agent::control::model::cidr::Cidr>,
}

fn parse_service_cidr(s: &str) -> Result<lb_agent::control::model::cidr::Cidr, String> {
    lb_agent::control::model::cidr::parse(s)
}

fn parse_node_address(s: &str) -> Result<std::net::IpAddr, String> {
    lb_agent::control::model::ip::read(s).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub inputs: PlanInputs,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub inputs: PlanInputs,
    /// Uplink interface: XDP balances service traffic arriving on it, tc
    /// egress rewrites replies (repeat for several).
    #[arg(long = "iface", value_name = "IFACE", required = true)]
    pub ifaces: Vec<String>,
    /// Glob (`*`, `?`) of host-side pod interfaces, e.g. 'veth*' or 'cali*':
    /// tc balances what pods send. Checked every second for new interfaces.
    #[arg(long = "pod-iface", value_name = "GLOB", value_parser = lb_agent::podifaces::check_glob)]
    pub pod_ifaces: Vec<String>,
    /// Directory of the pinned maps; maps already there are reused, so a
    /// restart keeps every established flow.
    #[arg(long, default_value = lb_agent::pins::DEFAULT_PIN_DIR)]
    pub pin_path: PathBuf,
    /// XDP attach mode: native (in the driver; fastest) or generic (any
    /// interface, slower).
    #[arg(long, value_enum, default_value_t = XdpModeArg::Native)]
    pub xdp_mode: XdpModeArg,
    /// How tc programs attach: `auto` asks the kernel (TCX links where it
    /// has them, 6.6+; netlink cls_bpf filters on older kernels), `tcx` or
    /// `netlink` force one (netlink works on every supported kernel).
    #[arg(long, value_enum, default_value_t = TcAttachArg::Auto)]
    pub tc_attach: TcAttachArg,
    /// An egress interface XDP may forward balanced packets to itself (FIB
    /// lookup + redirect, skipping the kernel's IP forwarding) — only
    /// interfaces that accept XDP frames: a NIC with native XDP, or a veth
    /// whose peer runs an XDP program. Other egresses use the kernel's
    /// forwarding (repeat for several).
    #[arg(long = "redirect-iface", value_name = "IFACE")]
    pub redirect_ifaces: Vec<String>,
    /// Balance the node's own connections to services at connect()/sendmsg()
    /// (what kube-proxy's OUTPUT chain does): `auto` attaches socket
    /// programs to the host's cgroup2 root, a path to that cgroup only,
    /// `off` not at all. Only sockets of the agent's network namespace (the
    /// node's) are balanced; pods' traffic is balanced by tc.
    #[arg(long, value_name = "auto|off|CGROUP", default_value = "auto")]
    pub socket_lb: lb_agent::socklb::SocketLb,
    /// Address of the Prometheus metrics, /healthz and /readyz.
    #[arg(long, default_value = lb_agent::ops::http::DEFAULT_METRICS_ADDR)]
    pub metrics_addr: SocketAddr,
    /// Address the healthCheckNodePorts of `externalTrafficPolicy: Local`
    /// LoadBalancer services are served on (as kube-proxy: 200 when this
    /// node has a ready endpoint, else 503). Default: every address.
    #[arg(long, value_name = "IP", default_value_t = lb_agent::healthcheck::DEFAULT_ADDRESS)]
    pub health_check_address: std::net::IpAddr,
    /// Seconds between reads of the whole maps to repair entries changed
    /// outside the agent (by hand, by another writer); 0 = never. Changes
    /// from the source are applied at once either way, diffed against what
    /// the agent last wrote.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub reconcile_interval: u64,
    /// Start even when the pins cannot outlive the agent (a bpffs private to
    /// its mount namespace, as under `ip netns exec`): every restart then
    /// detaches the programs and loses every flow. For throwaway tests only.
    #[arg(long)]
    pub allow_ephemeral_pins: bool,
    /// With `--source kube`: /readyz answers 503 once a watch has gone this
    /// many seconds without a successful list or watch (the dataplane keeps
    /// forwarding with the last known state meanwhile).
    #[arg(long, value_name = "SECONDS", default_value_t = 120)]
    pub source_stale_after: u64,
    #[command(flatten)]
    pub snat: SnatArgs,
    #[command(flatten)]
    pub sizes: SizeArgs,
    #[command(flatten)]
    pub lb: LbArgs,
}

/// LoadBalancer addresses: pools, allocation, announcement (`lb_agent::lbip`).
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "LoadBalancer addresses (pools, allocation, ARP/NDP)")]
pub struct LbArgs {
    /// Hand out and announce LoadBalancer addresses: pools from
    /// `LoadBalancerPool` objects (and --lb-pool), one agent allocates
    /// (a Lease), the owner node of each address answers ARP (IPv4) or
    /// NDP (IPv6) for it.
    /// Implied by --lb-pool.
    #[arg(long)]
    pub lb_addresses: bool,
    /// An address pool: NAME=ADDRS, ADDRS a comma-separated list of CIDRs
    /// and ranges of either family (`lan=192.168.1.240/28,fd00::/120`);
    /// NAME:manual=ADDRS for a pool only used on request (repeat for several).
    #[arg(long = "lb-pool", value_name = "NAME=ADDRS", value_parser = parse_pool)]
    pub lb_pools: Vec<lb_agent::lbip::pool::Pool>,
    /// The `loadBalancerClass` served.
    #[arg(long, value_name = "CLASS", default_value = lb_agent::lbip::alloc::DEFAULT_CLASS)]
    pub lb_class: String,
    /// Leave Services without a `loadBalancerClass` alone (another load
    /// balancer is the cluster's default).
    #[arg(long)]
    pub lb_not_default: bool,
    /// Interface ARP and NDP for LoadBalancer addresses are answered on. Default:
    /// the first --iface.
    #[arg(long, value_name = "IFACE")]
    pub lb_announce_iface: Option<String>,
    /// Do not answer ARP or NDP (an upstream router or BGP speaker routes the
    /// addresses to the nodes).
    #[arg(long)]
    pub lb_no_announce: bool,
    /// UDP port of the heartbeats between agents (node addresses).
    #[arg(long, value_name = "PORT", default_value_t = lb_agent::lbip::members::DEFAULT_PORT)]
    pub lb_heartbeat_port: u16,
    /// Milliseconds between heartbeats; a node is dead after 5 missed.
    /// Failover takes up to 5 heartbeats plus 100 ms.
    #[arg(long, value_name = "MS", default_value_t = 200, value_parser = clap::value_parser!(u64).range(20..=10_000))]
    pub lb_heartbeat_ms: u64,
    /// Namespace of the allocator's Lease (default: the pod's, POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "xdplb-system")]
    pub lb_lease_namespace: String,
    /// Seconds a Lease not renewed stays its holder's: how long allocation
    /// pauses when the allocating agent dies (announcement does not pause).
    #[arg(long, value_name = "SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=600))]
    pub lb_lease_duration: u64,
}

fn parse_pool(s: &str) -> Result<lb_agent::lbip::pool::Pool, String> {
    lb_agent::lbip::pool::parse_flag(s).map_err(|e| e.to_string())
}

impl LbArgs {
    /// Whether anything is asked.
    pub fn enabled(&self) -> bool {
        self.lb_addresses || !self.lb_pools.is_empty()
    }

    /// The settings for node `node_name` with uplinks `ifaces`; `kube`:
    /// whether the API is the source (the only way to allocate).
    pub fn settings(&self, node_name: &str, ifaces: &[String], kube: bool) -> lb_agent::lbip::Settings {
        let every = std::time::Duration::from_millis(self.lb_heartbeat_ms);
        lb_agent::lbip::Settings {
            node_name: node_name.to_string(),
            pools: self.lb_pools.clone(),
            alloc: lb_agent::lbip::alloc::Config {
                class: self.lb_class.clone(),
                default_class: !self.lb_not_default,
            },
            election: kube.then(|| lb_agent::lbip::controller::Election {
                namespace: self.lb_lease_namespace.clone(),
                name: lb_agent::lbip::controller::LEASE_NAME.into(),
                identity: node_name.to_string(),
                timings: lb_agent::lbip::leader::Timings::for_duration(std::time::Duration::from_secs(self.lb_lease_duration)),
            }),
            announce_iface: if self.lb_no_announce {
                None
            } else {
                self.lb_announce_iface
                    .clone()
                    .or_else(|| ifaces.first().cloned())
            },
            heartbeat_port: self.lb_heartbeat_port,
            heartbeat: lb_agent::lbip::members::Timings {
                every,
                dead_after: every * 5,
            },
        }
    }
}

/// How external clients' flows to backends on other nodes return here.
#[derive(Debug, Args)]
#[command(next_help_heading = "Backends on other nodes")]
pub struct SnatArgs {
    /// Source address of flows SNATed to backends on other nodes (so their
    /// replies come back to this node); repeatable, one per family.
    /// Default per family: this node's first NodePort address of that
    /// family (--node-address, else the Node's addresses).
    #[arg(long, value_name = "IP")]
    pub snat_address: Vec<std::net::IpAddr>,
    /// Source ports of SNATed flows: MIN-MAX. The default lies above Linux's
    /// ephemeral ports (32768-60999) and the NodePort range; the agent also
    /// reserves the range from the node's ephemeral ports
    /// (net.ipv4.ip_local_reserved_ports). Each port serves one flow per
    /// backend address:port, so the range is per-backend capacity.
    #[arg(long, value_name = "MIN-MAX", default_value_t = lb_agent::snat::PortRange::default())]
    pub snat_ports: lb_agent::snat::PortRange,
    /// Do not SNAT: backends on other nodes see the client address and must
    /// route their replies through this node themselves.
    #[arg(long)]
    pub no_snat: bool,
    /// How external clients' flows reach backends on other nodes: snat
    /// (replies return through this node), dsr (the client address is kept
    /// and the backend's node answers directly; every node must run it),
    /// hybrid (DSR for TCP, SNAT for UDP). A Service may choose its own
    /// with the annotation xdplb.io/lb-mode.
    #[arg(long, value_name = "MODE", default_value_t = lb_agent::lbmode::LbMode::default())]
    pub lb_mode: lb_agent::lbmode::LbMode,
}

impl TryFrom<&SnatArgs> for lb_agent::snat::SnatSettings {
    type Error = String;

    fn try_from(a: &SnatArgs) -> Result<Self, String> {
        Self::new(a.snat_address.clone(), a.snat_ports, a.no_snat)
    }
}

/// Map sizes. Changing one on a running node is safe: the next agent
/// resizes the pinned map live and keeps its entries (established flows).
#[derive(Debug, Args)]
#[command(next_help_heading = "Map sizes")]
pub struct SizeArgs {
    /// Service frontends (ClusterIP, NodePort per node address, ... per port).
    #[arg(long, default_value_t = lb_common::maps::default_size::SERVICES)]
    pub max_services: u32,
    /// Backends (endpoint address:port pairs) across all services.
    #[arg(long, default_value_t = lb_common::maps::default_size::BACKENDS)]
    pub max_backends: u32,
    /// Slots across all services (one per ready endpoint; a Maglev service
    /// takes its table size).
    #[arg(long, default_value_t = lb_common::maps::default_size::SLOTS)]
    pub max_slots: u32,
    /// Conntrack entries (two per flow); least recently used flows are
    /// evicted when full.
    #[arg(long, default_value_t = lb_common::maps::default_size::CONNTRACK)]
    pub max_flows: u32,
    /// ClientIP affinity entries (one per service and client).
    #[arg(long, default_value_t = lb_common::maps::default_size::AFFINITY)]
    pub max_affinity: u32,
    /// IPv6 conntrack entries (two per flow), apart from IPv4's: LRU maps
    /// preallocate every entry (~190 bytes each for IPv6).
    #[arg(long, default_value_t = lb_common::maps::default_size::CONNTRACK_V6)]
    pub max_flows_v6: u32,
    /// IPv6 ClientIP affinity entries.
    #[arg(long, default_value_t = lb_common::maps::default_size::AFFINITY_V6)]
    pub max_affinity_v6: u32,
    /// Node sockets balanced at connect() (one entry per socket and
    /// backend, for getpeername/recvmsg); the least recently used are
    /// forgotten when full. Dual-stack sockets to IPv4-mapped addresses count here.
    #[arg(long, default_value_t = lb_common::maps::default_size::SOCK_REVNAT)]
    pub max_sockets: u32,
    /// IPv6 node sockets balanced at connect().
    #[arg(long, default_value_t = lb_common::maps::default_size::SOCK_REVNAT_V6)]
    pub max_sockets_v6: u32,
}

impl From<&SizeArgs> for lb_agent::pins::MapSizes {
    fn from(a: &SizeArgs) -> Self {
        Self {
            services: a.max_services,
            backends: a.max_backends,
            slots: a.max_slots,
            conntrack: a.max_flows,
            affinity: a.max_affinity,
            conntrack_v6: a.max_flows_v6,
            affinity_v6: a.max_affinity_v6,
            sockets: a.max_sockets,
            sockets_v6: a.max_sockets_v6,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum XdpModeArg {
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TcAttachArg {
    Auto,
    Tcx,
    Netlink,
}

impl TcAttachArg {
    /// The path forced, if any.
    pub fn forced(self) -> Option<lb_agent::links::TcPath> {
        match self {
            Self::Auto => None,
            Self::Tcx => Some(lb_agent::links::TcPath::Tcx),
            Self::Netlink => Some(lb_agent::links::TcPath::Netlink),
        }
    }
}

impl From<XdpModeArg> for aya::programs::XdpMode {
    fn from(m: XdpModeArg) -> Self {
        match m {
            XdpModeArg::Native => aya::programs::XdpMode::Driver,
            XdpModeArg::Generic => aya::programs::XdpMode::Skb,
        }
    }
}

// The operators' commands (ops_cli.rs, explain_cli.rs, install.rs).

/// Where the maps are, and how to print them.
#[derive(Debug, Args)]
pub struct MapsArgs {
    /// Directory of the pinned maps (as given to `lb-agent run`).
    #[arg(long, default_value = lb_agent::pins::DEFAULT_PIN_DIR)]
    pub pin_path: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ConntrackArgs {
    #[command(flatten)]
    pub maps: MapsArgs,
    /// Only flows of this service id (see `lb-agent services`).
    #[arg(long, value_name = "ID")]
    pub service: Option<u32>,
    /// Only flows of this client address (both directions; either family).
    #[arg(long, value_name = "IP")]
    pub client: Option<std::net::IpAddr>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Directory the maps are (to be) pinned in.
    #[arg(long, default_value = lb_agent::pins::DEFAULT_PIN_DIR)]
    pub pin_path: PathBuf,
    /// Uplink interface to check (repeat for several).
    #[arg(long = "iface", value_name = "IFACE")]
    pub ifaces: Vec<String>,
    /// The XDP mode `run` will use: with generic, native XDP is not probed.
    #[arg(long, value_enum, default_value_t = XdpModeArg::Native)]
    pub xdp_mode: XdpModeArg,
    /// The tc attach path `run` will be given (auto: what the kernel offers).
    #[arg(long, value_enum, default_value_t = TcAttachArg::Auto)]
    pub tc_attach: TcAttachArg,
    /// The `--socket-lb` `run` will be given.
    #[arg(long, value_name = "auto|off|CGROUP", default_value = "auto")]
    pub socket_lb: lb_agent::socklb::SocketLb,
    /// Print JSON instead of ✓/✗ lines.
    #[arg(long)]
    pub json: bool,
    /// The map sizes `run` will be given (pinned maps of other sizes are
    /// resized, which the report says).
    #[command(flatten)]
    pub sizes: SizeArgs,
}

/// `lb-agent top` (top.rs).
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Directory of the pinned maps (as given to `lb-agent run`).
    #[arg(long, default_value = lb_agent::pins::DEFAULT_PIN_DIR)]
    pub pin_path: PathBuf,
    /// Seconds between readings (rates are averaged over it).
    #[arg(long, value_name = "SECONDS", default_value_t = 1.0, value_parser = parse_interval)]
    pub interval: f64,
    /// Print one sample (two readings one interval apart) and exit.
    #[arg(long)]
    pub once: bool,
    /// With --once: print JSON instead of a table.
    #[arg(long, requires = "once")]
    pub json: bool,
    /// Rank services by packets, new flows or drops.
    #[arg(long, value_enum, default_value_t = SortArg::Packets)]
    pub sort: SortArg,
    /// Services shown (the terminal's height also limits the live view).
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum SortArg {
    Packets,
    NewFlows,
    Drops,
}

fn parse_interval(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if (0.1..=3600.0).contains(&v) => Ok(v),
        _ => Err(format!("{s:?}: give seconds between 0.1 and 3600")),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OriginArg {
    /// A pod on this node (tc on its interface).
    Pod,
    /// A client outside the node (XDP on the uplink).
    External,
    /// A process of the node (the socket balancer).
    Node,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Where the packet comes from.
    #[arg(long = "from", value_enum)]
    pub origin: OriginArg,
    /// Source: IP[:PORT] (the port is needed for conntrack and Maglev;
    /// IPv6 with a port in brackets: [fd00::1]:40000).
    #[arg(value_name = "SRC", value_parser = lb_agent::explain::parse_source)]
    pub src: (std::net::IpAddr, Option<u16>),
    /// Destination: IP:PORT[/tcp|udp] (TCP by default; IPv6 in brackets:
    /// [fd00::1]:80/udp).
    #[arg(value_name = "DST:PORT[/PROTO]", value_parser = lb_agent::explain::parse_destination)]
    pub dst: (std::net::IpAddr, u16, u8),
    /// Directory of the pinned maps (as given to `lb-agent run`).
    #[arg(long, default_value = lb_agent::pins::DEFAULT_PIN_DIR)]
    pub pin_path: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Root of the file system to install into (an image, a chroot).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// The options of `lb-agent run` for the unit (`--iface eth0
    /// --node-address 192.168.1.1 ...`), checked as `run` checks them.
    /// `--source` defaults to file:/etc/xdplb/objects. Put `--root` first.
    #[arg(
        value_name = "RUN OPTIONS",
        trailing_var_arg = true,
        allow_hyphen_values = true,
        required = true
    )]
    pub run: Vec<String>,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Root of the file system the install went into.
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// Directory of the pinned maps and links to remove (as given to `run`);
    /// on the live kernel, whatever --root says.
    #[arg(long, default_value = lb_agent::pins::DEFAULT_PIN_DIR)]
    pub pin_path: PathBuf,
    /// Keep /etc/xdplb (configuration and objects).
    #[arg(long)]
    pub keep_config: bool,
}

fn parse_source(s: &str) -> Result<SourceSpec, String> {
    s.parse()
}

fn parse_algorithm_arg(s: &str) -> Result<u8, String> {
    parse_algorithm(s).ok_or_else(|| format!("unknown algorithm {s:?}: use random, round-robin, maglev or least-conn"))
}

/// The host name, as kubelet names its Node by default.
fn default_node_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_arguments_parse() {
        let cli = Cli::parse_from([
            "lb-agent",
            "run",
            "--source",
            "file:/etc/xdplb",
            "--iface",
            "eth0",
            "--iface",
            "eth1",
            "--pod-iface",
            "veth*",
            "--node-name",
            "n1",
            "--node-address",
            "10.0.0.1",
            "--xdp-mode",
            "generic",
            "--default-algorithm",
            "round-robin",
            "--log-format",
            "json",
        ]);
        assert_eq!(cli.log_format, LogFormat::Json);
        let Command::Run(r) = cli.command else {
            panic!("not run")
        };
        assert_eq!(r.ifaces, ["eth0", "eth1"]);
        assert_eq!(r.inputs.node_addresses, [std::net::IpAddr::from(std::net::Ipv4Addr::new(10, 0, 0, 1))]);
        assert_eq!(
            r.inputs.default_algorithm,
            lb_common::algorithm::ROUND_ROBIN
        );
        assert_eq!(r.xdp_mode, XdpModeArg::Generic);
        assert_eq!(r.pin_path, PathBuf::from("/sys/fs/bpf/xdplb"));
        assert_eq!(r.reconcile_interval, 60);
        assert!(r.health_check_address.is_unspecified());
    }

    #[test]
    fn load_balancer_address_options_make_settings() {
        let cli = Cli::parse_from(["lb-agent", "run", "--source", "kube", "--iface", "eth0", "--node-name", "n1", "--lb-pool", "lan=192.168.1.240/28", "--lb-heartbeat-ms", "100"]);
        let Command::Run(r) = cli.command else { panic!("not run") };
        assert!(r.lb.enabled(), "--lb-pool implies --lb-addresses");
        let s = r.lb.settings("n1", &r.ifaces, true);
        assert_eq!(s.pools.len(), 1);
        assert_eq!(s.announce_iface.as_deref(), Some("eth0"));
        assert_eq!(s.heartbeat.dead_after, std::time::Duration::from_millis(500));
        assert_eq!(s.election.map(|e| (e.identity, e.name)), Some(("n1".to_string(), "xdplb-lb-allocator".to_string())));
        let bad = Cli::try_parse_from(["lb-agent", "run", "--source", "kube", "--iface", "eth0", "--lb-pool", "lan=10.0.0.5/24"]).unwrap_err();
        assert!(bad.to_string().contains("host bits set; the network is 10.0.0.0/24"), "{bad}");
    }

    #[test]
    fn bad_arguments_are_refused() {
        assert!(Cli::try_parse_from(["lb-agent", "plan", "--source", "http://x"]).is_err());
        assert!(Cli::try_parse_from([
            "lb-agent",
            "plan",
            "--source",
            "file:x",
            "--default-algorithm",
            "fastest"
        ])
        .is_err());
        assert!(
            Cli::try_parse_from(["lb-agent", "run", "--source", "file:x"]).is_err(),
            "--iface is required"
        );
    }
}
