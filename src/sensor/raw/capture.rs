//! The capture socket: `AF_PACKET`, `SOCK_DGRAM` (cooked: the IP packet without link-layer
//! header), bound to every interface, with the prefilter attached before the first packet
//! can arrive, read through a `TPACKET_V3` ring.
//!
//! Why `AF_PACKET` rather than raw IP sockets: one socket gives IPv4 and IPv6 with both
//! addresses, and the kernel's packet type tells what was addressed to this host and what
//! this host sent (`PACKET_OUTGOING`, for the flow table). The price
//! is that capture happens before the firewall: a host already dropped by iptables still
//! shows up (the pipeline's already-blocked filter deals with it), and fragments are seen
//! before reassembly (see `classify`).
//!
//! Why a ring: with one `recvmsg` per packet, every probe cost a system call and a wake-up
//! of the sensor thread. The kernel now writes the packets the prefilter lets through into
//! blocks of memory shared with the daemon ([`BLOCK_SIZE`] × [`BLOCK_COUNT`]) and hands a
//! block over when it is full or [`RETIRE_TIMEOUT_MS`] after its first packet, whichever
//! comes first: under a flood the sensor wakes once per block of hundreds of packets, and a
//! lone probe waits at most that timeout. A full ring drops packets and counts them
//! (`PACKET_STATISTICS`: `tp_drops`, and `tp_freeze_q_cnt` for the times it was full).
//!
//! The walk over a block ([`Frames`]) reads only a byte slice and checks every offset the
//! kernel wrote against the block's bounds, so it is tested and fuzzed on synthetic blocks;
//! the `unsafe` of this module is the mapping, the block status word shared with the
//! kernel, and the socket options.

use std::io;
use std::mem::{MaybeUninit, size_of};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use socket2::{Domain, Protocol, SockFilter, Socket, Type};

/// Bytes per ring block: a few hundred probes (a SYN takes about 140 bytes with its headers).
pub const BLOCK_SIZE: usize = 1 << 15;

/// Blocks in the ring (2 MiB in all): with blocks handed over after at most
/// [`RETIRE_TIMEOUT_MS`], a sensor thread kept off the CPU for 60 ms still loses nothing.
pub const BLOCK_COUNT: usize = 64;

/// Nominal frame size the kernel asks for (`TPACKET_V3` packs frames of any size; this only
/// bounds the largest packet copied in full).
const FRAME_SIZE: usize = 1 << 11;

/// Longest a packet waits in a block that is not full before the block is handed over.
pub const RETIRE_TIMEOUT_MS: u32 = 1;

/// Offsets inside a block: `struct tpacket_block_desc` then `tpacket_hdr_v1`.
const BLOCK_STATUS: usize = 8;
const BLOCK_NUM_PKTS: usize = 12;
const BLOCK_FIRST_PKT: usize = 16;
/// Offsets inside a frame: `struct tpacket3_hdr`, then a `sockaddr_ll` at its aligned end.
const FRAME_NEXT: usize = 0;
const FRAME_SEC: usize = 4;
const FRAME_NSEC: usize = 8;
const FRAME_SNAPLEN: usize = 12;
const FRAME_LEN: usize = 16;
const FRAME_STATUS: usize = 20;
const FRAME_MAC: usize = 24;
const FRAME_SLL: usize = 48;
const SLL_IFINDEX: usize = 4;
const SLL_PKTTYPE: usize = 10;

// The layout above is the kernel's (as the libc crate declares it).
const _: () = {
    assert!(std::mem::offset_of!(libc::tpacket3_hdr, tp_next_offset) == FRAME_NEXT);
    assert!(std::mem::offset_of!(libc::tpacket3_hdr, tp_sec) == FRAME_SEC);
    assert!(std::mem::offset_of!(libc::tpacket3_hdr, tp_nsec) == FRAME_NSEC);
    assert!(std::mem::offset_of!(libc::tpacket3_hdr, tp_snaplen) == FRAME_SNAPLEN);
    assert!(std::mem::offset_of!(libc::tpacket3_hdr, tp_len) == FRAME_LEN);
    assert!(std::mem::offset_of!(libc::tpacket3_hdr, tp_status) == FRAME_STATUS);
    assert!(std::mem::offset_of!(libc::tpacket3_hdr, tp_mac) == FRAME_MAC);
    assert!(size_of::<libc::tpacket3_hdr>() == FRAME_SLL);
    assert!(std::mem::offset_of!(libc::sockaddr_ll, sll_ifindex) == SLL_IFINDEX);
    assert!(std::mem::offset_of!(libc::sockaddr_ll, sll_pkttype) == SLL_PKTTYPE);
    assert!(std::mem::offset_of!(libc::tpacket_block_desc, hdr) == BLOCK_STATUS);
    assert!(std::mem::offset_of!(libc::tpacket_hdr_v1, num_pkts) == BLOCK_NUM_PKTS - 8);
    assert!(std::mem::offset_of!(libc::tpacket_hdr_v1, offset_to_first_pkt) == BLOCK_FIRST_PKT - 8);
};

/// One captured packet, borrowed from a ring block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    /// The IP packet (as much of it as was captured).
    pub data: &'a [u8],
    /// When the kernel captured it (wall clock).
    pub time: SystemTime,
    /// Interface it arrived on (to tell duplicates over bridges/bonds apart).
    pub ifindex: i32,
    /// `PACKET_HOST` (0) for packets addressed to this host, `PACKET_OUTGOING` (4) for
    /// packets it sends.
    pub pkttype: u8,
    /// The kernel vouches for the transport checksum: verified by the NIC, or built on this
    /// machine and not summed yet (`TP_STATUS_CSUM_VALID` / `TP_STATUS_CSUMNOTREADY`).
    pub checksum_trusted: bool,
    /// Only part of the packet was captured.
    pub truncated: bool,
}

/// A block whose frames do not fit in it: the walk stops there (the kernel never writes
/// one; a bug or a corrupted ring must not make the sensor read outside the block).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed capture block: {0}")]
pub struct BlockError(pub &'static str);

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let b = bytes.get(at..at.checked_add(4)?)?;
    Some(u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
}

fn u16_at(bytes: &[u8], at: usize) -> Option<u16> {
    let b = bytes.get(at..at.checked_add(2)?)?;
    Some(u16::from_ne_bytes([b[0], b[1]]))
}

/// The packets of one block the kernel handed over, in order (pure: bytes in, packets out).
pub struct Frames<'a> {
    block: &'a [u8],
    left: u32,
    at: usize,
}

impl<'a> Frames<'a> {
    /// Reads the block header; a header that does not fit is an error.
    pub fn new(block: &'a [u8]) -> Result<Frames<'a>, BlockError> {
        let left = u32_at(block, BLOCK_NUM_PKTS).ok_or(BlockError("header cut short"))?;
        let first = u32_at(block, BLOCK_FIRST_PKT).ok_or(BlockError("header cut short"))?;
        Ok(Frames {
            block,
            left,
            at: first as usize,
        })
    }

    fn frame(&self) -> Option<(Packet<'a>, u32)> {
        let frame = self.block.get(self.at..)?;
        let next = u32_at(frame, FRAME_NEXT)?;
        let sec = u32_at(frame, FRAME_SEC)?;
        let nsec = u32_at(frame, FRAME_NSEC)?;
        let snaplen = u32_at(frame, FRAME_SNAPLEN)? as usize;
        let len = u32_at(frame, FRAME_LEN)? as usize;
        let status = u32_at(frame, FRAME_STATUS)?;
        let mac = usize::from(u16_at(frame, FRAME_MAC)?);
        let ifindex = u32_at(frame, FRAME_SLL + SLL_IFINDEX)? as i32;
        let pkttype = *frame.get(FRAME_SLL + SLL_PKTTYPE)?;
        let data = frame.get(mac..mac.checked_add(snaplen)?)?;
        let trusted = status & (libc::TP_STATUS_CSUMNOTREADY | libc::TP_STATUS_CSUM_VALID) != 0;
        let packet = Packet {
            data,
            time: UNIX_EPOCH + Duration::new(u64::from(sec), nsec.min(999_999_999)),
            ifindex,
            pkttype,
            checksum_trusted: trusted,
            truncated: snaplen < len,
        };
        Some((packet, next))
    }
}

impl<'a> Iterator for Frames<'a> {
    type Item = Result<Packet<'a>, BlockError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        let Some((packet, next)) = self.frame() else {
            self.left = 0;
            return Some(Err(BlockError("a frame runs past the block")));
        };
        self.left -= 1;
        if self.left > 0 {
            if next == 0 {
                self.left = 0;
            }
            self.at = self.at.saturating_add(next as usize);
        }
        Some(Ok(packet))
    }
}

/// The ring mapped into this process; unmapped on drop.
struct Ring {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value alone and only reached through `&mut Capture`;
// moving it to another thread (the sensor's) is sound.
unsafe impl Send for Ring {}

impl Ring {
    /// The status word of block `i`, shared with the kernel.
    fn status(&self, i: usize) -> &AtomicU32 {
        debug_assert!(i < BLOCK_COUNT);
        // SAFETY: the block lies inside the mapping (i < BLOCK_COUNT, the ring is
        // BLOCK_COUNT blocks), the word is 4-aligned (page-aligned block + 8) and lives as
        // long as `self`; the kernel accesses it atomically too.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(i * BLOCK_SIZE + BLOCK_STATUS)
                .cast::<AtomicU32>()
        }
    }

    /// Block `i`'s bytes, while the kernel has handed it to us.
    fn block(&self, i: usize) -> &[u8] {
        // SAFETY: inside the mapping (see `status`); the caller saw TP_STATUS_USER with
        // acquire ordering, and the kernel does not write a block it handed over until we
        // give it back (TP_STATUS_KERNEL, release), which happens after this borrow ends.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr().add(i * BLOCK_SIZE), BLOCK_SIZE) }
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `Capture::open`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// An open capture socket and its ring.
pub struct Capture {
    // Field order: the ring is unmapped before the socket is closed.
    ring: Ring,
    sock: Socket,
    next: usize,
}

impl AsFd for Capture {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

fn setsockopt<T>(sock: &Socket, level: i32, name: i32, value: &T) -> io::Result<()> {
    // SAFETY: passes a pointer to a live `T` and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            level,
            name,
            (value as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What the ring lost since the last read of [`Capture::ring_stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RingStats {
    /// Packets the kernel could not put in the ring (`tp_drops`).
    pub drops: u32,
    /// Times the ring was full and the kernel held off (`tp_freeze_q_cnt`).
    pub freezes: u32,
}

impl Capture {
    /// Opens the socket, sets up and maps the ring, attaches `filter`, then binds to all
    /// interfaces. The socket is created with protocol 0, which receives nothing until the
    /// bind, so no packet ever reaches it unfiltered.
    pub fn open(filter: &[SockFilter]) -> io::Result<Capture> {
        let sock = Socket::new(Domain::PACKET, Type::DGRAM, Some(Protocol::from(0)))?;
        // Outgoing packets are not ignored (PACKET_IGNORE_OUTGOING): the SYNs and datagrams
        // this host sends from watched ports open the flows whose answers are not probes.
        // The prefilter drops every other outgoing packet in the kernel after a few
        // instructions.
        let version = libc::tpacket_versions::TPACKET_V3 as libc::c_int;
        setsockopt(&sock, libc::SOL_PACKET, libc::PACKET_VERSION, &version)?;
        let req = libc::tpacket_req3 {
            tp_block_size: BLOCK_SIZE as u32,
            tp_block_nr: BLOCK_COUNT as u32,
            tp_frame_size: FRAME_SIZE as u32,
            tp_frame_nr: (BLOCK_SIZE / FRAME_SIZE * BLOCK_COUNT) as u32,
            tp_retire_blk_tov: RETIRE_TIMEOUT_MS,
            tp_sizeof_priv: 0,
            tp_feature_req_word: 0,
        };
        setsockopt(&sock, libc::SOL_PACKET, libc::PACKET_RX_RING, &req)?;
        let len = BLOCK_SIZE * BLOCK_COUNT;
        // SAFETY: maps the ring the kernel just made for this socket, at a place of the
        // kernel's choosing; the result is checked before use.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                sock.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast::<u8>()).ok_or_else(|| io::Error::other("mmap"))?;
        let ring = Ring { base, len };
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
        Ok(Capture {
            ring,
            sock,
            next: 0,
        })
    }

    /// Replaces the prefilter (atomic in the kernel; packets already in the ring stay).
    pub fn set_filter(&self, filter: &[SockFilter]) -> io::Result<()> {
        self.sock.attach_filter(filter)
    }

    /// What the ring lost since the last call (reading `PACKET_STATISTICS` resets it).
    pub fn ring_stats(&self) -> io::Result<RingStats> {
        let mut stats = MaybeUninit::<libc::tpacket_stats_v3>::zeroed();
        let mut len = size_of::<libc::tpacket_stats_v3>() as libc::socklen_t;
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
        let stats = unsafe { stats.assume_init() };
        Ok(RingStats {
            drops: stats.tp_drops,
            freezes: stats.tp_freeze_q_cnt,
        })
    }

    /// Hands each packet of the next block the kernel has filled to `each`, then gives the
    /// block back. `Ok(false)` when no block is ready; an error for a block whose frames do
    /// not fit in it (given back all the same, after the packets before the fault).
    pub fn next_block(&mut self, mut each: impl FnMut(&Packet<'_>)) -> Result<bool, BlockError> {
        let i = self.next;
        if self.ring.status(i).load(Ordering::Acquire) & libc::TP_STATUS_USER == 0 {
            return Ok(false);
        }
        let mut result = Ok(true);
        match Frames::new(self.ring.block(i)) {
            Ok(frames) => {
                for frame in frames {
                    match frame {
                        Ok(packet) => each(&packet),
                        Err(e) => result = Err(e),
                    }
                }
            }
            Err(e) => result = Err(e),
        }
        self.ring
            .status(i)
            .store(libc::TP_STATUS_KERNEL, Ordering::Release);
        self.next = (i + 1) % BLOCK_COUNT;
        result
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A synthetic frame: the IP bytes, its interface and packet type, the length it had on
    /// the wire.
    pub(crate) struct Frame<'a> {
        pub data: &'a [u8],
        pub ifindex: i32,
        pub pkttype: u8,
        pub wire_len: usize,
        pub status: u32,
    }

    /// A block as the kernel lays it out (TPACKET_V3, SOCK_DGRAM): descriptor, then each
    /// frame 16-aligned: tpacket3_hdr, sockaddr_ll, the packet at tp_mac.
    pub(crate) fn block(frames: &[Frame<'_>]) -> Vec<u8> {
        let mut b = vec![0u8; BLOCK_SIZE];
        let put32 = |b: &mut Vec<u8>, at: usize, v: u32| {
            b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        };
        let first = 48usize;
        put32(&mut b, BLOCK_STATUS, libc::TP_STATUS_USER);
        put32(&mut b, BLOCK_NUM_PKTS, frames.len() as u32);
        put32(&mut b, BLOCK_FIRST_PKT, first as u32);
        let mut at = first;
        for (n, f) in frames.iter().enumerate() {
            let mac = 80usize; // 48 + sockaddr_ll (20), 16-aligned
            let size = (mac + f.data.len() + 15) & !15;
            let next = if n + 1 == frames.len() { 0 } else { size };
            put32(&mut b, at + FRAME_NEXT, next as u32);
            put32(&mut b, at + FRAME_SEC, 1_700_000_000 + n as u32);
            put32(&mut b, at + FRAME_NSEC, 5);
            put32(&mut b, at + FRAME_SNAPLEN, f.data.len() as u32);
            put32(&mut b, at + FRAME_LEN, f.wire_len as u32);
            put32(&mut b, at + FRAME_STATUS, f.status);
            b[at + FRAME_MAC..at + FRAME_MAC + 2].copy_from_slice(&(mac as u16).to_ne_bytes());
            b[at + FRAME_SLL + SLL_IFINDEX..at + FRAME_SLL + SLL_IFINDEX + 4]
                .copy_from_slice(&f.ifindex.to_ne_bytes());
            b[at + FRAME_SLL + SLL_PKTTYPE] = f.pkttype;
            b[at + mac..at + mac + f.data.len()].copy_from_slice(f.data);
            at += size;
        }
        b
    }

    #[test]
    fn frames_of_a_block_come_out_in_order_with_their_metadata() {
        let b = block(&[
            Frame {
                data: b"first packet",
                ifindex: 2,
                pkttype: 0,
                wire_len: 12,
                status: libc::TP_STATUS_USER | libc::TP_STATUS_CSUM_VALID,
            },
            Frame {
                data: b"second, cut",
                ifindex: 3,
                pkttype: 4,
                wire_len: 1500,
                status: libc::TP_STATUS_USER,
            },
        ]);
        let got: Vec<Packet<'_>> = Frames::new(&b).unwrap().map(Result::unwrap).collect();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].data, b"first packet");
        assert_eq!((got[0].ifindex, got[0].pkttype), (2, 0));
        assert!(got[0].checksum_trusted && !got[0].truncated);
        assert_eq!(
            got[0].time,
            UNIX_EPOCH + Duration::new(1_700_000_000, 5),
            "the kernel's capture time"
        );
        assert_eq!(got[1].data, b"second, cut");
        assert_eq!((got[1].ifindex, got[1].pkttype), (3, 4));
        assert!(!got[1].checksum_trusted && got[1].truncated);
    }

    #[test]
    fn an_empty_block_has_no_frames_and_a_frame_past_the_end_is_an_error() {
        assert_eq!(Frames::new(&block(&[])).unwrap().count(), 0);
        assert!(Frames::new(&[0u8; 10]).is_err(), "a cut header");
        let mut b = block(&[Frame {
            data: b"x",
            ifindex: 1,
            pkttype: 0,
            wire_len: 1,
            status: 0,
        }]);
        // The kernel says two packets, but the second's offset is past the block.
        b[BLOCK_NUM_PKTS..BLOCK_NUM_PKTS + 4].copy_from_slice(&2u32.to_ne_bytes());
        b[48..52].copy_from_slice(&(BLOCK_SIZE as u32).to_ne_bytes());
        let got: Vec<_> = Frames::new(&b).unwrap().collect();
        assert!(got[0].is_ok());
        assert_eq!(got[1], Err(BlockError("a frame runs past the block")));
        assert_eq!(got.len(), 2, "the walk stops at the fault");
        // A snap length running past the block.
        let mut b = block(&[Frame {
            data: b"y",
            ifindex: 1,
            pkttype: 0,
            wire_len: 1,
            status: 0,
        }]);
        b[48 + FRAME_SNAPLEN..48 + FRAME_SNAPLEN + 4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(Frames::new(&b).unwrap().next().unwrap().is_err());
    }

    proptest! {
        /// Whatever the bytes, the walk ends, never panics, yields at most as many packets
        /// as the header says, and every packet lies inside the block.
        #[test]
        fn walking_arbitrary_bytes_stays_inside_the_block(
            bytes in proptest::collection::vec(any::<u8>(), 0..4096),
        ) {
            let base = bytes.as_ptr() as usize;
            let Ok(frames) = Frames::new(&bytes) else { return Ok(()) };
            let claimed = u32_at(&bytes, BLOCK_NUM_PKTS).unwrap_or(0) as usize;
            let mut n = 0;
            for f in frames {
                n += 1;
                prop_assert!(n <= claimed);
                if let Ok(p) = f {
                    let at = p.data.as_ptr() as usize;
                    prop_assert!(at >= base && at + p.data.len() <= base + bytes.len());
                }
            }
        }

        /// Well-formed blocks of random packets come back exactly.
        #[test]
        fn synthetic_blocks_round_trip(
            packets in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 0..200), any::<i32>(), 0u8..8),
                0..60,
            ),
        ) {
            let frames: Vec<Frame<'_>> = packets
                .iter()
                .map(|(d, ifindex, pkttype)| Frame {
                    data: d,
                    ifindex: *ifindex,
                    pkttype: *pkttype,
                    wire_len: d.len(),
                    status: 0,
                })
                .collect();
            let b = block(&frames);
            let got: Vec<Packet<'_>> = Frames::new(&b).unwrap().map(Result::unwrap).collect();
            prop_assert_eq!(got.len(), packets.len());
            for (p, (d, ifindex, pkttype)) in got.iter().zip(&packets) {
                prop_assert_eq!(p.data, &d[..]);
                prop_assert_eq!((p.ifindex, p.pkttype), (*ifindex, *pkttype));
            }
        }
    }
}
