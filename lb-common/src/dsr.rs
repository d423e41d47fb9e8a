//! Direct server return (DSR) across nodes: the wire format both nodes agree on.
//!
//! The balancing node rewrites an external client's packet to the backend
//! (destination only; the client address stays) and adds one IPv4 option
//! carrying the service address and port the client dialed. The backend's
//! node takes the option off, remembers it as the flow's reply rewrite, and
//! the backend's replies leave that node straight to the client, from the
//! service address. The option is Cilium's (type 0x9a: copied on
//! fragmentation, class 0, number 26; length 8), so a mixed capture reads
//! the same:
//!
//! ```text
//!  0      1      2      3      4      5      6      7
//! +------+------+------+------+------+------+------+------+
//! | 0x9a |  8   | service port | service address (IPv4)    |
//! +------+------+------+------+------+------+------+------+
//! ```

/// Option type: copied (0x80) | class 0 | number 26.
pub const OPT_TYPE: u8 = 0x9a;
/// Option length, and what it adds to every forwarded packet (the MTU cost).
pub const OPT_LEN: usize = 8;
