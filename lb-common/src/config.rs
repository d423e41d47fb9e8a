//! Node-wide settings the programs read from the `config` array (index 0).
use bytemuck::{Pod, Zeroable};

/// Value of `config[0]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// Layout version of every map; the agent refuses pinned maps of another.
    pub layout_version: u32,
    /// Idle timeout of established TCP and SCTP flows, seconds.
    pub tcp_timeout_s: u32,
    /// Idle timeout of UDP flows, seconds.
    pub udp_timeout_s: u32,
    /// Timeout of TCP flows after FIN/RST, seconds.
    pub closing_timeout_s: u32,
    /// Bit set of [`config_flags`].
    pub flags: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 24);

/// Node-wide switches (`Config::flags`).
pub mod config_flags {
    /// XDP forwards balanced packets itself (FIB lookup + redirect) when the
    /// egress interface is in `redirect_ifaces`, instead of passing them to
    /// the kernel's forwarding.
    pub const XDP_REDIRECT: u32 = 1 << 0;
    /// External TCP flows to backends on other nodes use DSR, not SNAT
    /// (`--lb-mode dsr` or `hybrid`).
    pub const DSR_TCP: u32 = 1 << 1;
    /// The same for UDP (`--lb-mode dsr`).
    pub const DSR_UDP: u32 = 1 << 2;
}

/// Bumped whenever a map's key, value or meaning changes.
pub const LAYOUT_VERSION: u32 = 2;

impl Default for Config {
    fn default() -> Self {
        Self {
            layout_version: LAYOUT_VERSION,
            tcp_timeout_s: 6 * 3600,
            udp_timeout_s: 60,
            closing_timeout_s: 10,
            flags: 0,
            _pad: 0,
        }
    }
}

impl Config {
    /// Idle timeout of a live (not closing) flow of protocol `proto`: UDP
    /// has its own; TCP and SCTP, both connection-oriented (SCTP keeps an
    /// idle association alive with heartbeats), share the TCP one. The
    /// dataplane, `explain` and the CLI all decide with this.
    #[inline(always)]
    pub fn idle_timeout_s(&self, proto: u8) -> u32 {
        if proto == crate::IPPROTO_UDP {
            self.udp_timeout_s
        } else {
            self.tcp_timeout_s
        }
    }
}

crate::user_pod!(Config);
