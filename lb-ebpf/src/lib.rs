//! Pure helpers of the xdplb dataplane, shared by the eBPF programs and host
//! tests: checksum arithmetic and wire-format constants. Nothing here touches
//! a map or a helper, so it is unit-tested on the host.
#![cfg_attr(not(test), no_std)]

pub mod abort;
pub mod csum;
pub mod hash;
pub mod icmp;
pub mod ip;
pub mod rst;
pub mod sctp;
pub mod too_big;
pub mod unreach;
