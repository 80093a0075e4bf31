//! The capture socket: `AF_PACKET`, `SOCK_DGRAM` (cooked: the IP packet without link-layer
//! header), bound to every interface, with the prefilter attached before the first packet
//! can arrive. All the `unsafe` of the raw sensor is here, around three system calls.
//!
//! Why `AF_PACKET` rather than raw IP sockets: one socket gives IPv4 and IPv6 with both
//! addresses, and the kernel's packet type tells what was addressed to this host and what
//! this host sent (`PACKET_OUTGOING`, for the flow table). The price
//! is that capture happens before the firewall: a host already dropped by iptables still
//! shows up (the pipeline's already-blocked filter deals with it), and fragments are seen
//! before reassembly (see `classify`).

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use socket2::{Domain, Protocol, SockFilter, Socket, Type};

/// Receive buffer asked for, so a burst of probes is not lost while the thread is busy
/// (forced past `net.core.rmem_max` when running as root).
pub const RECV_BUFFER: usize = 4 << 20;

/// Largest packet read in full; bigger ones are reported truncated and dropped by the
/// classifier (no probe is that large; the checksum could not be verified anyway).
pub const MAX_PACKET: usize = 65_536;

/// One captured packet, borrowed from the capture's buffer.
#[derive(Debug)]
pub struct Packet<'a> {
    /// The IP packet.
    pub data: &'a [u8],
    /// Interface it arrived on (to tell duplicates over bridges/bonds apart).
    pub ifindex: i32,
    /// `PACKET_HOST` (0) for packets addressed to this host, `PACKET_OUTGOING` (4) for
    /// packets it sends.
    pub pkttype: u8,
    /// The kernel vouches for the transport checksum: verified by the NIC, or built on this
    /// machine and not summed yet (`TP_STATUS_CSUM_VALID` / `TP_STATUS_CSUMNOTREADY`).
    pub checksum_trusted: bool,
    /// The packet was longer than the buffer.
    pub truncated: bool,
}

/// An open capture socket.
pub struct Capture {
    sock: Socket,
    buf: Vec<u8>,
}

impl AsFd for Capture {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn setsockopt_int(sock: &Socket, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: passes a pointer to a live c_int and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (&value as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl Capture {
    /// Opens the socket, attaches `filter`, then binds to all interfaces. The socket is
    /// created with protocol 0, which receives nothing until the bind, so no packet ever
    /// reaches it unfiltered.
    pub fn open(filter: &[SockFilter]) -> io::Result<Capture> {
        let sock = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0)))?;
        setsockopt_int(&sock, libc::SOL_PACKET, libc::PACKET_AUXDATA, 1)?;
        // Outgoing packets are not ignored (PACKET_IGNORE_OUTGOING): the SYNs and datagrams
        // this host sends from watched ports open the flows whose answers are not probes.
        // The prefilter drops every other outgoing packet in the kernel after a few
        // instructions (the kernel clones each outgoing skb for a packet socket before
        // running its filter; no data is copied).
        // Root may exceed net.core.rmem_max (SO_RCVBUFFORCE); otherwise take what is allowed.
        if setsockopt_int(
            &sock,
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            RECV_BUFFER as i32,
        )
        .is_err()
        {
            let _ = sock.set_recv_buffer_size(RECV_BUFFER);
        }
        sock.attach_filter(filter)?;
        let addr = libc::sockaddr_ll {
            sll_family: libc::AF_PACKET as u16,
            sll_protocol: (libc::ETH_P_ALL as u16).to_be(),
            sll_ifindex: 0,
            sll_hatype: 0,
            sll_pkttype: 0,
            sll_halen: 0,
            sll_addr: [0; 8],
        };
        // SAFETY: a fully initialised sockaddr_ll and its exact size.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        sock.set_nonblocking(true)?;
        Ok(Capture {
            sock,
            buf: vec![0u8; MAX_PACKET],
        })
    }

    /// Replaces the prefilter (atomic in the kernel; packets already queued stay queued).
    pub fn set_filter(&self, filter: &[SockFilter]) -> io::Result<()> {
        self.sock.attach_filter(filter)
    }

    /// Packets the kernel dropped because the receive buffer was full since the last call
    /// (reading `PACKET_STATISTICS` resets it).
    pub fn kernel_drops(&self) -> io::Result<u32> {
        let mut stats = MaybeUninit::<libc::tpacket_stats>::zeroed();
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: the kernel writes at most `len` bytes into `stats`.
        let rc = unsafe {
            libc::getsockopt(
                self.sock.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                stats.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: zero-initialised plain integers, filled by the kernel.
        Ok(unsafe { stats.assume_init() }.tp_drops)
    }

    /// Reads one packet without blocking; `Ok(None)` when none is queued.
    pub fn recv(&mut self) -> io::Result<Option<Packet<'_>>> {
        let mut addr = MaybeUninit::<libc::sockaddr_ll>::zeroed();
        // u64 elements keep the control buffer aligned for cmsghdr.
        let mut control = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: self.buf.as_mut_ptr().cast(),
            iov_len: self.buf.len(),
        };
        // SAFETY: msghdr is plain data; every pointer set below outlives the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_name = addr.as_mut_ptr().cast();
        msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 16]>();
        // SAFETY: all buffers are valid for the lengths given in msg.
        let n = unsafe {
            libc::recvmsg(
                self.sock.as_raw_fd(),
                &mut msg,
                libc::MSG_DONTWAIT | libc::MSG_TRUNC,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock => Ok(None),
                io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let len = n as usize; // MSG_TRUNC: the real length, possibly > buffer
        // SAFETY: zero-initialised, and the kernel filled what it had.
        let addr = unsafe { addr.assume_init() };
        let mut status = 0u32;
        // SAFETY: walking the control messages the kernel wrote into `control`, using the
        // libc macros with the msghdr that describes that buffer.
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_PACKET
                    && (*cmsg).cmsg_type == libc::PACKET_AUXDATA
                    && (*cmsg).cmsg_len as usize
                        >= libc::CMSG_LEN(size_of::<libc::tpacket_auxdata>() as u32) as usize
                {
                    let aux: libc::tpacket_auxdata =
                        std::ptr::read_unaligned(libc::CMSG_DATA(cmsg).cast());
                    status = aux.tp_status;
                }
                cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
            }
        }
        let trusted = status & (libc::TP_STATUS_CSUMNOTREADY | libc::TP_STATUS_CSUM_VALID) != 0;
        Ok(Some(Packet {
            data: &self.buf[..len.min(self.buf.len())],
            ifindex: addr.sll_ifindex,
            pkttype: addr.sll_pkttype,
            checksum_trusted: trusted,
            truncated: len > self.buf.len(),
        }))
    }
}
