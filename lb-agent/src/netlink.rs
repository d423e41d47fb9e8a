//! Reading rtnetlink datagrams: the message and attribute framing shared
//! by the tc filter dump (`tcfilter`) and the routing events (`hopwatch`).

/// `struct nlmsghdr`.
pub const NLMSG_HDR: usize = 16;
/// Attribute type bits (the top two are flags: nested, byte order).
const NLA_TYPE_MASK: u16 = 0x3fff;

/// `n` rounded up to netlink's 4-byte alignment.
pub fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// A message whose length field does not fit the datagram (cut, or not
/// netlink): nothing after it can be read.
#[derive(Debug, PartialEq, Eq)]
pub struct Malformed;

/// The messages (type, body past the header) of datagram `b`, in order;
/// ends after the first [`Malformed`].
pub fn messages(mut b: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), Malformed>> {
    std::iter::from_fn(move || {
        if b.len() < NLMSG_HDR {
            return None;
        }
        let len = u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize;
        let kind = u16::from_ne_bytes([b[4], b[5]]);
        if len < NLMSG_HDR || len > b.len() {
            b = &[];
            return Some(Err(Malformed));
        }
        let body = &b[NLMSG_HDR..len];
        b = &b[align(len).min(b.len())..];
        Some(Ok((kind, body)))
    })
}

/// The attributes (type, payload) of a netlink attribute block; ends at
/// one that is cut.
pub fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let kind = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let data = &b[4..len];
        b = &b[align(len).min(b.len())..];
        Some((kind, data))
    })
}
