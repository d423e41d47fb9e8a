//! The tc filters of an interface's clsact hook, read over rtnetlink
//! (an RTM_GETTFILTER dump). aya attaches and replaces netlink filters but
//! cannot list them, and the agent must find its own: to replace them in
//! place on restart, to switch them to new programs when maps are resized,
//! to report them (`doctor`) and to remove them (`uninstall`).
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use crate::netlink::{attrs, messages, NLMSG_HDR};

/// One filter as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Filter {
    pub priority: u16,
    pub handle: u32,
    /// The classifier ("bpf" for cls_bpf).
    pub kind: String,
    /// cls_bpf's name attribute: the program name the loader gave.
    pub name: Option<String>,
    /// The attached program's id (cls_bpf, kernel >= 4.13).
    pub prog_id: Option<u32>,
    /// Direct-action mode (the program's return value is the verdict).
    pub direct_action: bool,
}

const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_ID: u16 = 11;
const TCA_BPF_FLAG_ACT_DIRECT: u32 = 1;

/// nlmsghdr followed by tcmsg: the whole dump request.
#[repr(C)]
struct Request {
    len: u32,
    kind: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    family: u8,
    _pad1: u8,
    _pad2: u16,
    ifindex: i32,
    handle: u32,
    parent: u32,
    info: u32,
}

const TCMSG: usize = 20;

/// The filters at `parent` (e.g. clsact ingress) of interface `ifindex`.
/// An interface without that hook has none.
pub fn list(ifindex: u32, parent: u32) -> io::Result<Vec<Filter>> {
    // SAFETY: plain socket(2); the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd nobody else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let req = Request {
        len: (NLMSG_HDR + TCMSG) as u32,
        kind: RTM_GETTFILTER,
        flags: (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
        seq: 1,
        pid: 0,
        family: libc::AF_UNSPEC as u8,
        _pad1: 0,
        _pad2: 0,
        ifindex: ifindex as i32,
        handle: 0,
        parent,
        info: 0,
    };
    // SAFETY: sends the request struct's bytes (repr(C), no padding holes).
    let rc = unsafe { libc::send(sock.as_raw_fd(), &req as *const Request as *const libc::c_void, req.len as usize, 0) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(sock.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        for msg in messages(&buf[..n as usize]) {
            let (kind, body) = msg.map_err(|_| io::Error::other("malformed rtnetlink message"))?;
            match kind {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let errno = body.get(..4).map_or(0, |b| i32::from_ne_bytes(b.try_into().unwrap()));
                    // No such hook on this interface (no clsact qdisc): no filters.
                    if errno == -libc::EINVAL || errno == -libc::ENOENT {
                        return Ok(out);
                    }
                    if errno != 0 {
                        return Err(io::Error::from_raw_os_error(-errno));
                    }
                }
                RTM_NEWTFILTER => out.extend(parse(body)),
                _ => {}
            }
        }
    }
}

fn cstr(b: &[u8]) -> String {
    String::from_utf8_lossy(b.split(|c| *c == 0).next().unwrap_or_default()).into_owned()
}

/// A filter from an RTM_NEWTFILTER body; None for the classifier's own
/// entry (handle 0, sent once per priority before its filters).
fn parse(body: &[u8]) -> Option<Filter> {
    let tc = body.get(..TCMSG)?;
    let handle = u32::from_ne_bytes(tc[8..12].try_into().ok()?);
    let info = u32::from_ne_bytes(tc[16..20].try_into().ok()?);
    if handle == 0 {
        return None;
    }
    let mut f = Filter { priority: (info >> 16) as u16, handle, kind: String::new(), name: None, prog_id: None, direct_action: false };
    for (kind, data) in attrs(&body[TCMSG..]) {
        match kind {
            TCA_KIND => f.kind = cstr(data),
            TCA_OPTIONS => {
                for (k, d) in attrs(data) {
                    match k {
                        TCA_BPF_NAME => f.name = Some(cstr(d)),
                        TCA_BPF_ID if d.len() >= 4 => f.prog_id = Some(u32::from_ne_bytes(d[..4].try_into().ok()?)),
                        TCA_BPF_FLAGS if d.len() >= 4 => {
                            f.direct_action = u32::from_ne_bytes(d[..4].try_into().ok()?) & TCA_BPF_FLAG_ACT_DIRECT != 0
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(f)
}

/// The interfaces of this process's network namespace, (index, name).
/// Asked of the kernel rather than read from /sys/class/net, which lists
/// the namespace that mounted /sys.
pub fn interfaces() -> io::Result<Vec<(u32, String)>> {
    // SAFETY: if_nameindex returns an array terminated by a zeroed entry, or
    // null on failure; it is freed below and not used afterwards.
    let list = unsafe { libc::if_nameindex() };
    if list.is_null() {
        return Err(io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut p = list;
    // SAFETY: walks the array up to its terminating entry; each name is a
    // NUL-terminated string owned by the array.
    unsafe {
        while (*p).if_index != 0 && !(*p).if_name.is_null() {
            out.push(((*p).if_index, std::ffi::CStr::from_ptr((*p).if_name).to_string_lossy().into_owned()));
            p = p.add(1);
        }
        libc::if_freenameindex(list);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::align;

    #[test]
    fn a_filter_is_parsed_from_its_attributes() {
        let mut body = vec![0u8; TCMSG];
        body[8..12].copy_from_slice(&0x4c42u32.to_ne_bytes());
        body[16..20].copy_from_slice(&((1u32 << 16) | 0x0300).to_ne_bytes());
        let attr = |t: u16, d: &[u8]| {
            let mut a = ((4 + d.len()) as u16).to_ne_bytes().to_vec();
            a.extend(t.to_ne_bytes());
            a.extend(d);
            a.resize(align(a.len()), 0);
            a
        };
        body.extend(attr(TCA_KIND, b"bpf\0"));
        let mut opts = attr(TCA_BPF_NAME, b"tc_egress\0");
        opts.extend(attr(TCA_BPF_ID, &77u32.to_ne_bytes()));
        opts.extend(attr(TCA_BPF_FLAGS, &1u32.to_ne_bytes()));
        body.extend(attr(TCA_OPTIONS, &opts));
        let f = parse(&body).unwrap();
        assert_eq!(
            f,
            Filter { priority: 1, handle: 0x4c42, kind: "bpf".into(), name: Some("tc_egress".into()), prog_id: Some(77), direct_action: true }
        );
        body[8..12].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(parse(&body), None, "the classifier's own entry is not a filter");
    }

    #[test]
    fn loopback_has_no_filters_and_is_listed() {
        assert!(interfaces().unwrap().iter().any(|(_, n)| n == "lo"));
        assert_eq!(list(1, 0xffff_fff2).unwrap(), vec![]);
    }
}
