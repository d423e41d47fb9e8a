//! How external clients' flows reach backends on other nodes (`--lb-mode`):
//! SNAT, DSR, or hybrid (DSR for TCP, SNAT for UDP, as Cilium's hybrid).
//! The dataplane reads the choice from `config_flags` (see lb-ebpf `mode.rs`).
use std::str::FromStr;

use lb_common::{config_flags, service_flags};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LbMode {
    /// The source becomes this node's address; replies come back here.
    #[default]
    Snat,
    /// The client address is kept, the service address travels in an IPv4
    /// option, the backend's node answers the client directly.
    Dsr,
    /// DSR for TCP, SNAT for UDP.
    Hybrid,
}

impl LbMode {
    /// (TCP uses DSR, UDP uses DSR).
    fn dsr(self) -> (bool, bool) {
        match self {
            LbMode::Snat => (false, false),
            LbMode::Dsr => (true, true),
            LbMode::Hybrid => (true, false),
        }
    }

    /// The node-wide `Config::flags` bits of this mode.
    pub fn config_flags(self) -> u32 {
        let (tcp, udp) = self.dsr();
        (if tcp { config_flags::DSR_TCP } else { 0 }) | (if udp { config_flags::DSR_UDP } else { 0 })
    }

    /// The `ServiceV4::flags` bits of a service that sets this mode itself.
    pub fn service_flags(self) -> u8 {
        let (tcp, udp) = self.dsr();
        service_flags::LB_MODE
            | (if tcp { service_flags::DSR_TCP } else { 0 })
            | (if udp { service_flags::DSR_UDP } else { 0 })
    }
}

impl std::fmt::Display for LbMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LbMode::Snat => "snat",
            LbMode::Dsr => "dsr",
            LbMode::Hybrid => "hybrid",
        })
    }
}

impl FromStr for LbMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "snat" => Ok(LbMode::Snat),
            "dsr" => Ok(LbMode::Dsr),
            "hybrid" => Ok(LbMode::Hybrid),
            _ => Err(format!("{s:?}: expected snat, dsr or hybrid")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_map_to_flags() {
        assert_eq!("hybrid".parse::<LbMode>(), Ok(LbMode::Hybrid));
        assert!("DSR".parse::<LbMode>().unwrap_err().contains("expected snat, dsr or hybrid"));
        assert_eq!(LbMode::Snat.config_flags(), 0);
        assert_eq!(LbMode::Dsr.config_flags(), config_flags::DSR_TCP | config_flags::DSR_UDP);
        assert_eq!(LbMode::Hybrid.config_flags(), config_flags::DSR_TCP);
        assert_eq!(LbMode::Snat.service_flags(), service_flags::LB_MODE);
        assert_eq!(LbMode::Hybrid.service_flags(), service_flags::LB_MODE | service_flags::DSR_TCP);
    }
}
