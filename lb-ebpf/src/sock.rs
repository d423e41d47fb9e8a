//! Socket-level balancing for the node's own processes: kube-proxy's
//! OUTPUT-chain job. A socket of the node's network namespace that connects
//! (TCP, connected UDP) or sends (unconnected UDP) to a service is pointed
//! at a backend before any packet exists: no NAT, no conntrack, replies come
//! from the backend. recvmsg() and getpeername() show the service address,
//! so DNS clients accept the answer and peers look as they were dialled.
//! Sockets of other namespaces (pods) are left to the tc programs.
//!
//! The node is one client: ClientIP affinity keys every node socket on
//! 0.0.0.0 (kube-proxy sees the node's address for all of them), and Maglev
//! hashes the socket cookie, which spreads sockets like source ports do.
use aya_ebpf::{
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
    EbpfContext as _,
};
use lb_common::{counter, SockRevKeyV4, SockRevV4, IPPROTO_TCP, IPPROTO_UDP};

use crate::{
    clock,
    family::V4,
    maps::{backends_v4, sock_netns, sock_revnat_v4},
    select::{self, Client},
    service,
    unserved,
    stats::{self, count},
};

/// cgroup sock_addr verdicts: 1 lets the call go on, 0 fails it with EPERM.
const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

/// Whether the socket belongs to the node's namespace (and balancing is on).
#[inline(always)]
fn ours(ctx: &SockAddrContext) -> bool {
    let Some(&node) = sock_netns.get(0) else { return false };
    // SAFETY: helper taking the program's own context.
    node != 0 && unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } == node
}

/// The destination the application gave, as wire-order bytes.
#[inline(always)]
fn destination(ctx: &SockAddrContext) -> ([u8; 4], [u8; 2]) {
    // SAFETY: the kernel's context; these fields are readable in every sock_addr hook.
    let (ip, port) = unsafe { ((*ctx.sock_addr).user_ip4, (*ctx.sock_addr).user_port) };
    // Both hold network order in memory: keep the bytes as they are.
    (ip.to_ne_bytes(), (port as u16).to_ne_bytes())
}

#[inline(always)]
fn set_destination(ctx: &SockAddrContext, addr: [u8; 4], port: [u8; 2]) {
    // SAFETY: writable in connect4/sendmsg4/recvmsg4/getpeername4 (4-byte stores).
    unsafe {
        (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(addr);
        (*ctx.sock_addr).user_port = u16::from_ne_bytes(port) as u32;
    }
}

/// connect4 and sendmsg4: a service destination becomes a backend.
#[inline(always)]
pub fn balance(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return ALLOW;
    }
    // SAFETY: readable in every sock_addr hook.
    let proto = unsafe { (*ctx.sock_addr).protocol } as u8;
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return ALLOW;
    }
    let (addr, port) = destination(ctx);
    let Some(svc) = service::lookup::<V4>(addr, port, proto, true) else {
        // A ClusterIP's unserved port, an unallocated service address:
        // refused at once rather than sent off to the node's routing.
        if unserved::check::<V4>(addr).is_some() {
            count(counter::SOCK_NO_BACKEND);
            return REFUSE;
        }
        return ALLOW;
    };
    // SAFETY: helper taking the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let client = Client { src: [0; 4], sport: (cookie as u16).to_be_bytes(), dport: port, proto };
    let picked = if svc.count == 0 { None } else { select::pick_for::<V4>(&svc, &client, clock::now()) };
    let Some(backend) = picked.and_then(|(_, id)| backends_v4.get(id).copied()).filter(|b| !b.is_empty()) else {
        count(counter::SOCK_NO_BACKEND);
        stats::service(svc.id, |s| s.drops_no_backend += 1);
        return REFUSE;
    };
    let rev_key = SockRevKeyV4 { cookie: cookie.to_ne_bytes(), backend_addr: backend.addr, backend_port: backend.port, _pad: [0; 2] };
    // A full LRU evicts the oldest socket's entry: that socket would then
    // see the backend's address in getpeername(), nothing worse.
    let _ = sock_revnat_v4.insert(rev_key, SockRevV4 { addr, port, _pad: [0; 2] }, 0);
    set_destination(ctx, backend.addr, backend.port);
    count(counter::SOCK_BALANCED);
    stats::service(svc.id, |s| s.new_flows += 1);
    ALLOW
}

/// recvmsg4 and getpeername4: a backend address of a balanced socket reads
/// as the service address it asked for.
#[inline(always)]
pub fn reverse(ctx: &SockAddrContext) -> i32 {
    if !ours(ctx) {
        return ALLOW;
    }
    let (backend_addr, backend_port) = destination(ctx);
    // SAFETY: helper taking the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let key = SockRevKeyV4 { cookie: cookie.to_ne_bytes(), backend_addr, backend_port, _pad: [0; 2] };
    // SAFETY: read-only copy of a program-written value.
    if let Some(&rev) = unsafe { sock_revnat_v4.get(key) } {
        set_destination(ctx, rev.addr, rev.port);
    }
    ALLOW
}
