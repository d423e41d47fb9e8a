//! An AF_PACKET socket on the uplink for one EtherType: what the ARP and
//! NDP responders read questions from and write whole Ethernet frames to.
//!
//! Why a raw socket and not XDP: neighbour resolution is a handful of
//! packets per second, the socket sees a copy of each after XDP passes it,
//! and it needs no change to the dataplane. An XDP responder would save
//! nothing measurable and would tie the announcement to the program's
//! release cycle. Why raw and not the kernel's own answers: the
//! LoadBalancer addresses are assigned to no interface (that would make the
//! kernel answer on every node), so no kernel code answers for them.
use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// A classic BPF instruction (`struct sock_filter`).
pub type Insn = libc::sock_filter;

/// An AF_PACKET socket receiving the frames of one EtherType on one interface.
#[derive(Debug)]
pub struct LinkSocket {
    fd: OwnedFd,
    ethertype: u16,
    pub ifindex: i32,
    pub mac: [u8; 6],
}

impl LinkSocket {
    /// Opens it on `iface` for `ethertype`, with `filter` (classic BPF)
    /// deciding which frames are copied to it. Needs CAP_NET_RAW: done
    /// before the agent drops its capabilities; the socket keeps working.
    pub fn open(iface: &str, ethertype: u16, filter: Option<&[Insn]>) -> io::Result<Self> {
        let name = std::ffi::CString::new(iface).map_err(io::Error::other)?;
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // Protocol 0: nothing is queued until `bind` names the EtherType,
        // so no frame gets in before the filter.
        // SAFETY: plain socket(2); the fd is owned right below.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        if let Some(insns) = filter {
            let prog = libc::sock_fprog {
                len: insns.len() as u16,
                filter: insns.as_ptr() as *mut Insn,
            };
            setsockopt(&fd, libc::SOL_SOCKET, libc::SO_ATTACH_FILTER, &prog)?;
        }
        let sll = sockaddr(ethertype, ifindex, None);
        // SAFETY: a valid sockaddr_ll of the size given.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let mac = hw_addr(&fd, &name)?;
        Ok(Self {
            fd,
            ethertype,
            ifindex,
            mac,
        })
    }

    /// The next frame that arrived on the interface (blocking); frames this
    /// host sends are skipped (a question from here is not for the wire).
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: sockaddr_ll is plain data; zero is a valid start.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: `buf` is valid for writes of its length, `from` for `len` bytes.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    &mut from as *mut _ as *mut libc::sockaddr,
                    &mut len,
                )
            };
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            if from.sll_pkttype != libc::PACKET_OUTGOING {
                return Ok(n as usize);
            }
        }
    }

    /// Sends a whole Ethernet frame out of the interface.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        let dst: [u8; 6] = frame
            .get(..6)
            .and_then(|d| d.try_into().ok())
            .ok_or_else(|| io::Error::other("a frame shorter than an Ethernet header"))?;
        let sll = sockaddr(self.ethertype, self.ifindex, Some(dst));
        // SAFETY: `frame` is valid for reads of its length; `sll` as in `open`.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                &sll as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Has the interface accept frames to the multicast MAC `group` (its
    /// filter on a real NIC), for as long as this socket lives or until
    /// [`LinkSocket::leave`]; the kernel counts repeated joins.
    pub fn join(&self, group: [u8; 6]) -> io::Result<()> {
        self.membership(libc::PACKET_ADD_MEMBERSHIP, group)
    }

    pub fn leave(&self, group: [u8; 6]) -> io::Result<()> {
        self.membership(libc::PACKET_DROP_MEMBERSHIP, group)
    }

    fn membership(&self, op: libc::c_int, group: [u8; 6]) -> io::Result<()> {
        let mut mr = libc::packet_mreq {
            mr_ifindex: self.ifindex,
            mr_type: libc::PACKET_MR_MULTICAST as u16,
            mr_alen: 6,
            mr_address: [0; 8],
        };
        mr.mr_address[..6].copy_from_slice(&group);
        setsockopt(&self.fd, libc::SOL_PACKET, op, &mr)
    }

    /// Another handle on the same socket (one thread reads, others send).
    pub fn try_clone(&self) -> io::Result<Self> {
        Ok(Self {
            fd: self.fd.try_clone()?,
            ethertype: self.ethertype,
            ifindex: self.ifindex,
            mac: self.mac,
        })
    }
}

fn sockaddr(ethertype: u16, ifindex: i32, dst: Option<[u8; 6]>) -> libc::sockaddr_ll {
    // SAFETY: sockaddr_ll is plain data; zero is a valid start.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ethertype.to_be();
    sll.sll_ifindex = ifindex;
    if let Some(d) = dst {
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&d);
    }
    sll
}

fn setsockopt<T>(fd: &OwnedFd, level: libc::c_int, name: libc::c_int, value: &T) -> io::Result<()> {
    // SAFETY: `value` is valid for reads of size_of::<T>() bytes, the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            value as *const T as *const libc::c_void,
            std::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The interface's MAC address (SIOCGIFHWADDR, in the socket's namespace).
fn hw_addr(fd: &OwnedFd, name: &std::ffi::CStr) -> io::Result<[u8; 6]> {
    // SAFETY: ifreq is plain data; zero is a valid start.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    let bytes = name.to_bytes();
    if bytes.len() >= req.ifr_name.len() {
        return Err(io::Error::other("interface name too long"));
    }
    for (d, s) in req.ifr_name.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: SIOCGIFHWADDR fills `req`, valid for its size.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCGIFHWADDR, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after SIOCGIFHWADDR the union holds `ifru_hwaddr`.
    let sa = unsafe { req.ifr_ifru.ifru_hwaddr };
    let mut mac = [0u8; 6];
    for (d, s) in mac.iter_mut().zip(sa.sa_data.iter()) {
        *d = *s as u8;
    }
    Ok(mac)
}
