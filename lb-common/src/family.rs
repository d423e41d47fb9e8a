//! Address families: every map type that holds an address is generic over
//! [`Addr`], with one instance per family (`…V4` = `[u8; 4]`, `…V6` =
//! `[u8; 16]`), so IPv4 and IPv6 share one definition and one code path.
//!
//! `bytemuck` cannot derive `Pod` for generic structs (it cannot see the
//! padding of every instance), so [`pod_per_family!`] implements it for
//! every `A: Addr` (sealed: the two instances) beside size assertions that
//! prove neither instance has padding.

/// A wire-order address: `[u8; 4]` or `[u8; 16]`. Sealed: no other type is an address.
pub trait Addr:
    Copy + Default + PartialEq + Eq + core::hash::Hash + PartialOrd + Ord + core::fmt::Debug + bytemuck::Pod + sealed::Sealed
{
    /// Bytes in the address.
    const LEN: usize;
    /// The all-zero address, never a backend or service address.
    const ZERO: Self;
    /// For humans (and `Display` of the map types).
    fn to_ip(self) -> core::net::IpAddr;
    /// The address's bytes, network order (checksum arithmetic walks them).
    fn octets(&self) -> &[u8];
}

impl Addr for [u8; 4] {
    const LEN: usize = 4;
    const ZERO: Self = [0; 4];
    fn to_ip(self) -> core::net::IpAddr {
        core::net::IpAddr::V4(self.into())
    }
    fn octets(&self) -> &[u8] {
        self
    }
}

impl Addr for [u8; 16] {
    const LEN: usize = 16;
    const ZERO: Self = [0; 16];
    fn to_ip(self) -> core::net::IpAddr {
        core::net::IpAddr::V6(self.into())
    }
    fn octets(&self) -> &[u8] {
        self
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for [u8; 4] {}
    impl Sealed for [u8; 16] {}
}

/// An IPv4 address, network order.
pub type Addr4 = [u8; 4];
/// An IPv6 address, network order.
pub type Addr6 = [u8; 16];

/// `bytemuck::Pod` (and, for user space, `aya::Pod`) for both instances of
/// a generic map type, each after asserting its size (no hidden padding)
/// and the offset of every field in both instances: the layout is what
/// pinned maps of earlier agents, bpftool's BTF view and the programs'
/// word-wise key builders rely on, so a reordered field fails the build.
macro_rules! pod_per_family {
    ($($t:ident: $v4:literal, $v6:literal { $($f:ident: $o4:literal, $o6:literal),* $(,)? };)*) => {
        $(
            const _: () = assert!(core::mem::size_of::<$t<crate::Addr4>>() == $v4);
            const _: () = assert!(core::mem::size_of::<$t<crate::Addr6>>() == $v6);
            $(
                const _: () = assert!(core::mem::offset_of!($t<crate::Addr4>, $f) == $o4);
                const _: () = assert!(core::mem::offset_of!($t<crate::Addr6>, $f) == $o6);
            )*
            // SAFETY: `#[repr(C)]`, every field is `Pod`, and `Addr` is sealed to
            // the two instances whose sizes, asserted above, equal the sum of the
            // fields' sizes: no padding, no invalid bit patterns. Generic over
            // `A` so generic code over the family needs no bound per instance.
            unsafe impl<A: crate::Addr> bytemuck::Pod for $t<A> {}
            #[cfg(feature = "user")]
            // SAFETY: as above.
            unsafe impl<A: crate::Addr> aya::Pod for $t<A> {}
        )*
    };
}
pub(crate) use pod_per_family;
