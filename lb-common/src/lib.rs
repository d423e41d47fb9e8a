//! Types that cross the kernel/user boundary, defined once.
//!
//! Rules for every type here:
//! - `#[repr(C)]`, every padding byte is an explicit `_pad` field that is zeroed,
//!   so `bytemuck::Pod` accepts it and `bpftool map dump` shows no garbage;
//! - addresses and ports are byte arrays in network (wire) order, so a forgotten
//!   byte swap cannot compile;
//! - no `bool`, `Option` or Rust enums in map values: plain integers with named
//!   constants.
#![no_std]
#![allow(
    clippy::multiple_bound_locations,
    reason = "derive(Zeroable) repeats the `A: Addr` bound of the generic map types in a where clause"
)]

pub mod backend;
pub mod config;
pub mod dsr;
pub mod family;
pub mod flow;
pub mod hop;
pub mod maps;
pub mod nat;
pub mod reply_ports;
pub mod service;
pub mod sock;
pub mod stats;

pub use backend::*;
pub use config::*;
pub use family::{Addr, Addr4, Addr6};
pub use flow::*;
pub use hop::*;
pub use nat::*;
pub use service::*;
pub use sock::*;
pub use stats::*;

/// Implements `aya::Pod` (user side) for map key/value types.
macro_rules! user_pod {
    ($($t:ty),* $(,)?) => {
        $(
            #[cfg(feature = "user")]
            // SAFETY: the type is `#[repr(C)]`, `bytemuck::Pod` (no padding, no invalid bit patterns).
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use user_pod;
