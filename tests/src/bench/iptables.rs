//! kube-proxy iptables rules (work in progress).
