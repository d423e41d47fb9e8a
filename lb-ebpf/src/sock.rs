//! Socket-level balancing for the node's own processes: kube-proxy's
//! OUTPUT-chain job. A socket of the node's network namespace that connects
//! (TCP, connected UDP) or sends (unconnected UDP) to a service is pointed
//! at a backend before any packet exists: no NAT, no conntrack, replies come
//! from the backend. recvmsg() and getpeername() show the service address,
//! so DNS clients accept the answer and peers look as they were dialled.
//! Sockets of other namespaces (pods) are left to the tc programs.
//!
//! One code path for both families: the hooks of IPv4 sockets run it over
//! IPv4, those of IPv6 sockets over IPv6 — except for an IPv4-mapped
//! destination (`::ffff:a.b.c.d`) of a dual-stack socket, which the kernel
//! sends as IPv4: it is balanced over the IPv4 services and backends and
//! the backend written back mapped, as Cilium's `sock6_xlate_v4_in_v6`
//! does. (An unconnected dual-stack UDP send to a mapped address runs the
//! sendmsg4 hook, with the IPv4 address; its replies run recvmsg6.)
//!
//! The node is one client: ClientIP affinity keys every node socket on the
//! zero address (kube-proxy sees the node's address for all of them), and
//! Maglev hashes the socket cookie, which spreads sockets like source ports do.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    programs::SockAddrContext,
    EbpfContext as _,
};
use lb_common::{counter, SockRev, SockRevKey, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    clock,
    family::{Family, V4, V6},
    maps::{sock_netns, sock_revnat_v4, sock_revnat_v6, SockRevNat},
    select::{self, Client},
    service,
    stats::{self, count},
    unserved,
};

/// cgroup sock_addr verdicts: 1 lets the call go on, 0 fails it (EPERM,
/// or the error set by `bpf_set_retval`).
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;
const ECONNREFUSED: i32 = 111;

/// 1 when the kernel has `bpf_set_retval` (5.18, commit b44123b4a3dc), so a
/// refused connect() fails with ECONNREFUSED, as kube-proxy's reject does,
/// instead of EPERM. Set by the agent at load; read-only data, so the
/// verifier knows it and never sees the helper call on older kernels.
#[no_mangle]
static SOCK_SET_RETVAL: u8 = 0;

/// What the socket hooks of one family read and write, and where they keep
/// the service address of a balanced socket.
pub trait SockFamily: Family {
    /// The destination (connect/sendmsg) or peer (recvmsg/getpeername) the
    /// application sees, address and port as wire-order bytes.
    fn read(ctx: &SockAddrContext) -> (Self::Addr, [u8; 2]);
    fn write(ctx: &SockAddrContext, addr: &Self::Addr, port: [u8; 2]);
    /// The IPv4 address an address of this family stands for: an
    /// IPv4-mapped IPv6 address (IPv4's own addresses are never mapped).
    fn mapped_v4(a: &Self::Addr) -> Option<[u8; 4]>;
    /// The address of this family that stands for an IPv4 address.
    fn from_v4(a: [u8; 4]) -> Self::Addr;
    fn sock_revnat() -> &'static SockRevNat<Self::Addr>;
}

impl SockFamily for V4 {
    #[inline(always)]
    fn read(ctx: &SockAddrContext) -> ([u8; 4], [u8; 2]) {
        // SAFETY: the kernel's context; readable in every sock_addr hook.
        let ip = unsafe { (*ctx.sock_addr).user_ip4 };
        // Network order in memory: keep the bytes as they are.
        (ip.to_ne_bytes(), port(ctx))
    }
    #[inline(always)]
    fn write(ctx: &SockAddrContext, addr: &[u8; 4], port: [u8; 2]) {
        // SAFETY: writable in connect4/sendmsg4/recvmsg4/getpeername4 (4-byte stores).
        unsafe { (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(*addr) };
        set_port(ctx, port);
    }
    #[inline(always)]
    fn mapped_v4(_: &[u8; 4]) -> Option<[u8; 4]> {
        None
    }
    #[inline(always)]
    fn from_v4(a: [u8; 4]) -> [u8; 4] {
        a
    }
    #[inline(always)]
    fn sock_revnat() -> &'static SockRevNat<[u8; 4]> {
        &sock_revnat_v4
    }
}

impl SockFamily for V6 {
    #[inline(always)]
    fn read(ctx: &SockAddrContext) -> ([u8; 16], [u8; 2]) {
        let mut a = [0u8; 16];
        for (i, w) in a.chunks_exact_mut(4).enumerate() {
            // SAFETY: the kernel's context; user_ip6 is readable in every
            // sock_addr hook, one aligned 4-byte load per word (the
            // verifier refuses wider ones on older kernels).
            let v = unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*ctx.sock_addr).user_ip6[i])) };
            w.copy_from_slice(&v.to_ne_bytes());
        }
        (a, port(ctx))
    }
    #[inline(always)]
    fn write(ctx: &SockAddrContext, addr: &[u8; 16], port: [u8; 2]) {
        for (i, w) in addr.chunks_exact(4).enumerate() {
            let v = u32::from_ne_bytes([w[0], w[1], w[2], w[3]]);
            // SAFETY: writable in connect6/sendmsg6/recvmsg6/getpeername6, 4-byte stores.
            unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!((*ctx.sock_addr).user_ip6[i]), v) };
        }
        set_port(ctx, port);
    }
    #[inline(always)]
    fn mapped_v4(a: &[u8; 16]) -> Option<[u8; 4]> {
        // Compared as words: a 128-bit compare crashes LLVM's BPF backend
        // (see `family::same`).
        let w = |i: usize| u32::from_ne_bytes([a[i], a[i + 1], a[i + 2], a[i + 3]]);
        (w(0) == 0 && w(4) == 0 && w(8) == u32::from_ne_bytes([0, 0, 0xff, 0xff])).then_some([a[12], a[13], a[14], a[15]])
    }
    #[inline(always)]
    fn from_v4(a: [u8; 4]) -> [u8; 16] {
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12..].copy_from_slice(&a);
        m
    }
    #[inline(always)]
    fn sock_revnat() -> &'static SockRevNat<[u8; 16]> {
        &sock_revnat_v6
    }
}

#[inline(always)]
fn port(ctx: &SockAddrContext) -> [u8; 2] {
    // SAFETY: readable in every sock_addr hook; network order in its low bytes.
    (unsafe { (*ctx.sock_addr).user_port } as u16).to_ne_bytes()
}

#[inline(always)]
fn set_port(ctx: &SockAddrContext, port: [u8; 2]) {
    // SAFETY: writable wherever the address is (4-byte store).
    unsafe { (*ctx.sock_addr).user_port = u16::from_ne_bytes(port) as u32 };
}

/// Whether the socket belongs to the node's namespace (and balancing is on).
#[inline(always)]
fn ours(ctx: &SockAddrContext) -> bool {
    let Some(&node) = sock_netns.get(0) else { return false };
    // SAFETY: helper taking the program's own context.
    node != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == node
}

#[inline(always)]
fn cookie(ctx: &SockAddrContext) -> u64 {
    // SAFETY: helper taking the program's own context.
    unsafe { bpf_get_socket_cookie(ctx.as_ptr()) }
}

/// What a connect() or sendmsg() to an address of family `F` becomes.
enum Balanced<A> {
    /// Not a service address: left alone.
    Pass,
    /// A service address nothing serves.
    Refuse,
    /// This backend.
    To(A, [u8; 2]),
}

/// connect and sendmsg of either family: a service destination becomes a backend.
#[inline(always)]
pub fn balance<F: SockFamily>(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return ALLOW;
    }
    // SAFETY: readable in every sock_addr hook.
    let proto = unsafe { (*ctx.sock_addr).protocol } as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return ALLOW;
    }
    let (addr, port) = F::read(ctx);
    let cookie = cookie(ctx);
    let out = match F::mapped_v4(&addr) {
        Some(v4) => {
            count(counter::SOCK_MAPPED);
            match pick::<V4>(cookie, v4, port, proto) {
                Balanced::To(b, p) => Balanced::To(F::from_v4(b), p),
                Balanced::Refuse => Balanced::Refuse,
                Balanced::Pass => Balanced::Pass,
            }
        }
        None => pick::<F>(cookie, addr, port, proto),
    };
    match out {
        Balanced::Pass => ALLOW,
        Balanced::Refuse => refuse(),
        Balanced::To(b, p) => {
            F::write(ctx, &b, p);
            ALLOW
        }
    }
}

/// The backend for a socket of `cookie` to `addr:port` over family `F`;
/// records the service address for the reverse hooks.
#[inline(always)]
fn pick<F: SockFamily>(cookie: u64, addr: F::Addr, port: [u8; 2], proto: u8) -> Balanced<F::Addr> {
    let Some(svc) = service::lookup::<F>(addr, port, proto, true) else {
        // A ClusterIP's unserved port, an unallocated service address:
        // refused at once rather than sent off to the node's routing.
        if unserved::check::<F>(addr).is_some() {
            count(counter::SOCK_NO_BACKEND);
            return Balanced::Refuse;
        }
        return Balanced::Pass;
    };
    let client = Client { src: F::Addr::default(), sport: (cookie as u16).to_be_bytes(), dport: port, proto };
    let picked = if svc.count == 0 { None } else { select::pick_for::<F>(&svc, &client, clock::now()) };
    let Some(backend) = picked.and_then(|(_, id)| F::backends().get(id).copied()).filter(|b| !b.is_empty()) else {
        count(counter::SOCK_NO_BACKEND);
        stats::service(svc.id, |s| s.drops_no_backend += 1);
        return Balanced::Refuse;
    };
    let key = SockRevKey { cookie: cookie.to_ne_bytes(), backend_addr: backend.addr, backend_port: backend.port, _pad: [0; 2] };
    // A full LRU evicts the oldest socket's entry: that socket would then
    // see the backend's address in getpeername(), nothing worse.
    let _ = F::sock_revnat().insert(&key, &SockRev { addr, port, _pad: [0; 2] }, 0);
    count(counter::SOCK_BALANCED);
    stats::service(svc.id, |s| s.new_flows += 1);
    Balanced::To(backend.addr, backend.port)
}

/// Fails the call: ECONNREFUSED where the kernel lets us say so.
#[inline(always)]
fn refuse() -> i32 {
    // SAFETY: a read of our own read-only global.
    if unsafe { core::ptr::read_volatile(&SOCK_SET_RETVAL) } != 0 {
        // SAFETY: helper without preconditions; only reached where the
        // agent found it (see SOCK_SET_RETVAL).
        unsafe { bpf_set_retval(-ECONNREFUSED) };
    }
    REFUSE
}

/// recvmsg and getpeername of either family: a backend address of a
/// balanced socket reads as the service address it asked for.
#[inline(always)]
pub fn reverse<F: SockFamily>(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return ALLOW;
    }
    let (addr, port) = F::read(ctx);
    let cookie = cookie(ctx);
    let service = match F::mapped_v4(&addr) {
        Some(v4) => unpick::<V4>(cookie, v4, port).map(|r| SockRev { addr: F::from_v4(r.addr), port: r.port, _pad: [0; 2] }),
        None => unpick::<F>(cookie, addr, port),
    };
    if let Some(s) = service {
        F::write(ctx, &s.addr, s.port);
    }
    ALLOW
}

/// The service address a socket of `cookie` asked for when it was pointed
/// at `backend:port`, if it was.
#[inline(always)]
fn unpick<F: SockFamily>(cookie: u64, backend: F::Addr, port: [u8; 2]) -> Option<SockRev<F::Addr>> {
    let key = SockRevKey { cookie: cookie.to_ne_bytes(), backend_addr: backend, backend_port: port, _pad: [0; 2] };
    // SAFETY: read-only copy of a program-written value.
    unsafe { F::sock_revnat().get(&key) }.copied()
}
