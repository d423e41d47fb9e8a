//! Live forwarding (work in progress).
