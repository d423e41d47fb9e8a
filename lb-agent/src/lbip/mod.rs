//! LoadBalancer addresses on bare metal (issue #13): pools of addresses
//! (`pool`), their allocation to Services (`alloc`, pure), the one agent
//! that allocates (`leader`, a coordination.k8s.io Lease), and the node that
//! answers ARP for each address (`announce`).
pub mod alloc;
pub mod pool;
