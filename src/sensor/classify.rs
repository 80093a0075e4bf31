//! Captured packet -> probe: the pure functions the raw sensor runs on every packet the
//! kernel prefilter lets through.
//!
//! Input is an IP packet as an `AF_PACKET`/`SOCK_DGRAM` socket delivers it (no link-layer
//! header, possibly followed by Ethernet padding). A packet addressed to this host goes to
//! [`inspect`]: a [`Probe`] or the reason it is not one ([`Reject`]). A packet this host
//! sends goes to [`outgoing`]: the [`FlowStart`] it opens (a UDP datagram, a TCP SYN), whose
//! answers the sensor will not take for probes. Nothing here reads the system: the functions
//! can be fed random bytes, and are (see the tests).
//!
//! What is checked, and why:
//! - IPv4: header length, total length, header checksum (the kernel drops a packet whose IP
//!   checksum is wrong, so it never reached a socket: it is not a probe). A non-first
//!   fragment has no transport header: dropped. A first fragment that holds the whole
//!   TCP/UDP header is classified, but its transport checksum covers bytes that are not
//!   there yet, so it cannot be verified and is accepted as is.
//! - IPv6: payload length; extension headers (hop-by-hop, routing, destination options,
//!   AH, fragment) are walked up to [`MAX_EXTENSION_HEADERS`] deep; a non-first fragment is
//!   dropped; ESP, ICMPv6 and "no next header" are not probes. Jumbograms are not supported.
//! - TCP: a segment with RST, or with ACK beside SYN or URG, or with ACK and data, is skipped
//!   before anything else: established traffic and replies are never probes. A bare ACK
//!   (PSH allowed) or FIN+ACK without data is named `ACK scan` / `Maimon scan`: only a
//!   candidate, since our own connections' peers send the same; the sensor drops the ones
//!   that answer a flow or belong to a live socket. Segments without ACK get 1.2's names in
//!   1.2's order (compat.md §5), by [`tcp_kind`].
//! - TCP/UDP checksum: a segment with a wrong checksum is dropped by the kernel, so it is not
//!   counted. A sensor that knows the kernel already validated the checksum, or that the
//!   packet was built on this machine and not summed yet (veth, loopback), passes
//!   [`ChecksumCheck::Trusted`]. A UDP checksum of zero means "none" in IPv4 and is
//!   invalid in IPv6 (the kernel drops it).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::event::{ProbeKind, Proto, TcpFlags};

/// How deep an IPv6 extension-header chain is followed before the packet is given up on;
/// real traffic uses one or two, a longer chain is an evasion attempt or garbage.
pub const MAX_EXTENSION_HEADERS: usize = 8;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_PSH: u8 = 0x08;
const TCP_ACK: u8 = 0x10;
const TCP_URG: u8 = 0x20;

const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// Whether the transport checksum still has to be verified, as the capture socket tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChecksumCheck {
    /// Compute it: the packet came off the wire and nobody checked it yet.
    Verify,
    /// Take it as good: the NIC/kernel validated it, or it was built on this machine and
    /// carries only a partial sum (`TP_STATUS_CSUMNOTREADY`).
    Trusted,
}

/// A packet that looks like a probe: what the sensor needs to decide whether it counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    /// Claimed source address.
    pub src: IpAddr,
    /// Destination address: must be one of this host's for the probe to count.
    pub dst: IpAddr,
    /// TCP or UDP.
    pub proto: Proto,
    /// Source port: with the source address, tells an answer to a flow this host started.
    pub src_port: u16,
    /// Destination port: the port being probed.
    pub dst_port: u16,
    /// Shape of the probe, named as 1.2 names it.
    pub kind: ProbeKind,
    /// IPv4 header longer than 20 bytes (1.2's "IP options set" line).
    pub ip_options: bool,
}

/// Why a captured packet is not a probe. Only counted for statistics and tests: none of
/// these is worth a log line per packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// Shorter than its headers claim.
    Truncated,
    /// A header field is impossible (IHL < 5, data offset < 5, UDP length < 8, …).
    Malformed,
    /// Neither IPv4 nor IPv6.
    NotIp,
    /// Not TCP or UDP (ICMP, ESP, …).
    NotTcpOrUdp,
    /// A fragment other than the first: it carries no transport header.
    NonFirstFragment,
    /// TCP with RST, or ACK with SYN/URG or with data: established traffic or a reply,
    /// never a probe.
    AckOrRst,
    /// An outgoing TCP segment other than a SYN: it opens no flow.
    NotFlowStart,
    /// The IP header or transport checksum is wrong: the kernel would drop it.
    BadChecksum,
    /// An IPv6 extension-header chain longer than [`MAX_EXTENSION_HEADERS`].
    TooManyExtensionHeaders,
}

/// A packet this host sends that may be answered: a UDP datagram, or a TCP SYN (retries
/// included). The sensor remembers it so that the answers are not taken for probes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowStart {
    /// UDP or TCP.
    pub proto: Proto,
    /// Source address: one of this host's (the sensor checks; forwarded traffic is not ours).
    pub local: IpAddr,
    /// Source port: where the answers will come to.
    pub local_port: u16,
    /// Destination address: where the answers will come from.
    pub remote: IpAddr,
    /// Destination port: the answers' source port.
    pub remote_port: u16,
}

/// The sensor's entry point for packets off the wire: a probe, or nothing.
pub fn classify(packet: &[u8]) -> Option<Probe> {
    inspect(packet, ChecksumCheck::Verify).ok()
}

/// Like [`classify`], but says why a packet is not a probe and lets the caller trust the
/// kernel's checksum verdict.
pub fn inspect(packet: &[u8], check: ChecksumCheck) -> Result<Probe, Reject> {
    transport(&ip_layer(packet)?, check)
}

/// A packet this host sends, as the flow it opens: any UDP datagram, a TCP segment with SYN
/// and neither ACK nor RST. The checksums are not looked at: this host built the packet and
/// may have left the transport sum to the NIC.
pub fn outgoing(packet: &[u8]) -> Result<FlowStart, Reject> {
    let ip = ip_layer(packet)?;
    let seg = ip.payload;
    let proto = match ip.proto {
        IPPROTO_TCP => {
            tcp_header_len(seg)?;
            if seg[13] & (TCP_SYN | TCP_ACK | TCP_RST) != TCP_SYN {
                return Err(Reject::NotFlowStart);
            }
            Proto::Tcp
        }
        IPPROTO_UDP if seg.len() >= 8 => Proto::Udp,
        IPPROTO_UDP => return Err(Reject::Truncated),
        _ => return Err(Reject::NotTcpOrUdp),
    };
    Ok(FlowStart {
        proto,
        local: ip.src,
        local_port: u16::from_be_bytes([seg[0], seg[1]]),
        remote: ip.dst,
        remote_port: u16::from_be_bytes([seg[2], seg[3]]),
    })
}

fn ip_layer(packet: &[u8]) -> Result<Ip<'_>, Reject> {
    match packet.first().map(|b| b >> 4) {
        None => Err(Reject::Truncated),
        Some(4) => parse_v4(packet),
        Some(6) => parse_v6(packet),
        Some(_) => Err(Reject::NotIp),
    }
}

/// The scan name for a TCP flag combination, or `None` for segments that are never probes
/// (RST; ACK with SYN or URG; ACK+FIN with PSH). Without ACK, order and conditions are
/// 1.2's `ReportPacketType` (compat.md §5): XMAS only needs FIN+URG+PSH (a SYN may ride
/// along), FIN and SYN must be alone. With ACK (1.2 skipped them all): ACK, optionally PSH,
/// is an ACK scan; FIN+ACK a Maimon scan. Whether such a segment carries data, or answers
/// one of this host's flows, is for the caller to check.
pub fn tcp_kind(flags: TcpFlags) -> Option<ProbeKind> {
    let TcpFlags {
        syn,
        fin,
        ack,
        psh,
        urg,
        rst,
    } = flags;
    if rst {
        return None;
    }
    if ack {
        return match (syn, urg, fin, psh) {
            (false, false, false, _) => Some(ProbeKind::Ack),
            (false, false, true, false) => Some(ProbeKind::Maimon),
            _ => None,
        };
    }
    Some(if !syn && !fin && !psh && !urg {
        ProbeKind::Null
    } else if fin && urg && psh {
        ProbeKind::Xmas
    } else if fin && !syn && !psh && !urg {
        ProbeKind::Fin
    } else if syn && !fin && !psh && !urg {
        ProbeKind::Syn
    } else {
        ProbeKind::UnknownTcp(flags)
    })
}

/// The six flags 1.2 looks at, out of the TCP flag byte (ECE/CWR are ignored, as in 1.2).
pub fn tcp_flags(byte: u8) -> TcpFlags {
    TcpFlags {
        syn: byte & TCP_SYN != 0,
        fin: byte & TCP_FIN != 0,
        ack: byte & TCP_ACK != 0,
        psh: byte & TCP_PSH != 0,
        urg: byte & TCP_URG != 0,
        rst: byte & TCP_RST != 0,
    }
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// One's-complement sum of `data` (odd length padded with a zero byte), not yet folded.
fn sum16(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits; a correct Internet checksum over data that includes its own
/// checksum field folds to 0xffff.
fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// Sum of the pseudo-header the TCP/UDP checksum covers.
fn pseudo_sum(src: &IpAddr, dst: &IpAddr, proto: u8, len: usize) -> u64 {
    let mut acc = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => sum16(&d.octets(), sum16(&s.octets(), 0)),
        (IpAddr::V6(s), IpAddr::V6(d)) => sum16(&d.octets(), sum16(&s.octets(), 0)),
        // Mixed families cannot come out of one header; sum what there is anyway.
        _ => 0,
    };
    acc += u64::from(proto);
    acc += len as u64; // up to 32 bits for IPv6; the fold takes care of carries
    acc
}

struct Ip<'a> {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    payload: &'a [u8],
    /// The payload is only the start of a fragmented datagram.
    first_fragment: bool,
    ip_options: bool,
}

fn parse_v4(b: &[u8]) -> Result<Ip<'_>, Reject> {
    if b.len() < 20 {
        return Err(Reject::Truncated);
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    if ihl < 20 {
        return Err(Reject::Malformed);
    }
    let total = usize::from(be16(b, 2).ok_or(Reject::Truncated)?);
    if total < ihl {
        return Err(Reject::Malformed);
    }
    // Ethernet pads short frames: bytes past the total length are not part of the packet.
    let b = b.get(..total).ok_or(Reject::Truncated)?;
    let header = b.get(..ihl).ok_or(Reject::Truncated)?;
    if fold(sum16(header, 0)) != 0xffff {
        return Err(Reject::BadChecksum);
    }
    let frag = be16(b, 6).ok_or(Reject::Truncated)?;
    if frag & 0x1fff != 0 {
        return Err(Reject::NonFirstFragment);
    }
    Ok(Ip {
        src: IpAddr::V4(Ipv4Addr::new(b[12], b[13], b[14], b[15])),
        dst: IpAddr::V4(Ipv4Addr::new(b[16], b[17], b[18], b[19])),
        proto: b[9],
        payload: &b[ihl..],
        first_fragment: frag & 0x2000 != 0,
        ip_options: ihl > 20,
    })
}

fn parse_v6(b: &[u8]) -> Result<Ip<'_>, Reject> {
    if b.len() < 40 {
        return Err(Reject::Truncated);
    }
    let plen = usize::from(be16(b, 4).ok_or(Reject::Truncated)?);
    if plen == 0 {
        // Jumbogram (hop-by-hop jumbo option) or garbage: no probe is that large.
        return Err(Reject::Malformed);
    }
    let b = b.get(..40 + plen).ok_or(Reject::Truncated)?;
    let mut src = [0u8; 16];
    let mut dst = [0u8; 16];
    src.copy_from_slice(&b[8..24]);
    dst.copy_from_slice(&b[24..40]);
    let mut next = b[6];
    let mut off = 40usize;
    let mut first_fragment = false;
    let mut walked = 0usize;
    loop {
        match next {
            IPPROTO_TCP | IPPROTO_UDP => break,
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH => {
                let nh = *b.get(off).ok_or(Reject::Truncated)?;
                let len_field = usize::from(*b.get(off + 1).ok_or(Reject::Truncated)?);
                let len = if next == IPPROTO_AH {
                    (len_field + 2) * 4
                } else {
                    (len_field + 1) * 8
                };
                next = nh;
                off += len;
            }
            IPPROTO_FRAGMENT => {
                let nh = *b.get(off).ok_or(Reject::Truncated)?;
                let fo = be16(b, off + 2).ok_or(Reject::Truncated)?;
                if fo >> 3 != 0 {
                    return Err(Reject::NonFirstFragment);
                }
                // M flag clear with offset 0 is an "atomic" fragment: the whole datagram.
                first_fragment |= fo & 1 != 0;
                next = nh;
                off += 8;
            }
            _ => return Err(Reject::NotTcpOrUdp),
        }
        walked += 1;
        if walked > MAX_EXTENSION_HEADERS {
            return Err(Reject::TooManyExtensionHeaders);
        }
    }
    let payload = b.get(off..).ok_or(Reject::Truncated)?;
    Ok(Ip {
        src: IpAddr::V6(Ipv6Addr::from(src)),
        dst: IpAddr::V6(Ipv6Addr::from(dst)),
        proto: next,
        payload,
        first_fragment,
        ip_options: false,
    })
}

/// The TCP header's length (data offset), checked against the segment.
fn tcp_header_len(seg: &[u8]) -> Result<usize, Reject> {
    if seg.len() < 20 {
        return Err(Reject::Truncated);
    }
    let doff = usize::from(seg[12] >> 4) * 4;
    if doff < 20 {
        return Err(Reject::Malformed);
    }
    if doff > seg.len() {
        return Err(Reject::Truncated);
    }
    Ok(doff)
}

fn transport(ip: &Ip<'_>, check: ChecksumCheck) -> Result<Probe, Reject> {
    // A first fragment's checksum covers bytes still to come: it cannot be verified.
    let verify = check == ChecksumCheck::Verify && !ip.first_fragment;
    let seg = ip.payload;
    match ip.proto {
        IPPROTO_TCP => {
            let doff = tcp_header_len(seg)?;
            let kind = tcp_kind(tcp_flags(seg[13])).ok_or(Reject::AckOrRst)?;
            // An ACK scan carries no data; an ACK with data is a live connection's traffic.
            if matches!(kind, ProbeKind::Ack | ProbeKind::Maimon) && seg.len() > doff {
                return Err(Reject::AckOrRst);
            }
            if verify
                && fold(sum16(
                    seg,
                    pseudo_sum(&ip.src, &ip.dst, IPPROTO_TCP, seg.len()),
                )) != 0xffff
            {
                return Err(Reject::BadChecksum);
            }
            Ok(Probe {
                src: ip.src,
                dst: ip.dst,
                proto: Proto::Tcp,
                src_port: u16::from_be_bytes([seg[0], seg[1]]),
                dst_port: u16::from_be_bytes([seg[2], seg[3]]),
                kind,
                ip_options: ip.ip_options,
            })
        }
        IPPROTO_UDP => {
            if seg.len() < 8 {
                return Err(Reject::Truncated);
            }
            let ulen = usize::from(u16::from_be_bytes([seg[4], seg[5]]));
            let csum = u16::from_be_bytes([seg[6], seg[7]]);
            if !ip.first_fragment {
                if ulen < 8 {
                    return Err(Reject::Malformed);
                }
                let dgram = seg.get(..ulen).ok_or(Reject::Truncated)?;
                if csum == 0 {
                    if ip.dst.is_ipv6() {
                        return Err(Reject::BadChecksum);
                    }
                } else if verify
                    && fold(sum16(
                        dgram,
                        pseudo_sum(&ip.src, &ip.dst, IPPROTO_UDP, ulen),
                    )) != 0xffff
                {
                    return Err(Reject::BadChecksum);
                }
            }
            Ok(Probe {
                src: ip.src,
                dst: ip.dst,
                proto: Proto::Udp,
                src_port: u16::from_be_bytes([seg[0], seg[1]]),
                dst_port: u16::from_be_bytes([seg[2], seg[3]]),
                kind: ProbeKind::Udp,
                ip_options: ip.ip_options,
            })
        }
        _ => Err(Reject::NotTcpOrUdp),
    }
}

#[cfg(test)]
pub(crate) mod samples {
    //! Real packets, captured with an `AF_PACKET`/`SOCK_DGRAM` socket in a test network
    //! namespace (defender 10.77.9.1 / fd77:9::1, attacker 10.77.9.2 / fd77:9::2) while
    //! nmap 7.93 scanned port 7 from the attacker, and, further down, while the defender
    //! talked to services of the attacker from its own privileged ports (both directions,
    //! as the capture socket sees them). The BPF tests run the same bytes.
    #![allow(missing_docs)]

    /// nmap -sS: IPv4, TTL 59, TCP 0xe176 -> 7, flags 0x02 (SYN), MSS option.
    pub const SYN_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x2c, 0x5e, 0x61, 0x00, 0x00, 0x3b, 0x06, 0xfa, 0xce, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xe1, 0x76, 0x00, 0x07, 0xc6, 0x41, 0xc1, 0xc6, 0x00, 0x00,
        0x00, 0x00, 0x60, 0x02, 0x04, 0x00, 0x04, 0x04, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];
    /// nmap -sF: flags 0x01 (FIN).
    pub const FIN_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x28, 0x46, 0x45, 0x00, 0x00, 0x33, 0x06, 0x1a, 0xef, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xd7, 0xb9, 0x00, 0x07, 0x2d, 0x86, 0xf8, 0xff, 0x00, 0x00,
        0x00, 0x00, 0x50, 0x01, 0x04, 0x00, 0x87, 0x00, 0x00, 0x00,
    ];
    /// nmap -sN: flags 0x00.
    pub const NULL_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x28, 0x25, 0x71, 0x00, 0x00, 0x2c, 0x06, 0x42, 0xc3, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xb9, 0xf6, 0x00, 0x07, 0x2f, 0x2a, 0x56, 0x10, 0x00, 0x00,
        0x00, 0x00, 0x50, 0x00, 0x04, 0x00, 0x46, 0x10, 0x00, 0x00,
    ];
    /// nmap -sX: flags 0x29 (FIN+PSH+URG).
    pub const XMAS_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x28, 0xe8, 0xb6, 0x00, 0x00, 0x2d, 0x06, 0x7e, 0x7d, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xb1, 0x4a, 0x00, 0x07, 0x33, 0x17, 0xea, 0xc4, 0x00, 0x00,
        0x00, 0x00, 0x50, 0x29, 0x04, 0x00, 0xb5, 0xf1, 0x00, 0x00,
    ];
    /// nmap -sU: UDP 0xb9e5 -> 7, length 12, payload \r\n\r\n.
    pub const UDP_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x20, 0x65, 0x13, 0x00, 0x00, 0x29, 0x11, 0x06, 0x1e, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xb9, 0xe5, 0x00, 0x07, 0x00, 0x0c, 0x05, 0x39, 0x0d, 0x0a,
        0x0d, 0x0a,
    ];
    /// nmap -sS --ip-options R: IHL 15 (40 bytes of record-route option), then the SYN.
    pub const SYN_V4_IP_OPTIONS: &[u8] = &[
        0x4f, 0x00, 0x00, 0x54, 0x4a, 0x13, 0x00, 0x00, 0x26, 0x06, 0xf1, 0xe9, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0x01, 0x07, 0x27, 0x04, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
        0xe8, 0xa4, 0x00, 0x07, 0x76, 0x15, 0x28, 0xc1, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02, 0x04,
        0x00, 0xe6, 0x07, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];
    /// nmap -sS -f, fragment 1: MF set, offset 0, only 8 bytes of TCP header (ports, seq).
    pub const FRAG1_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x1c, 0xa2, 0x60, 0x20, 0x00, 0x29, 0x06, 0xa8, 0xdf, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0x8a, 0x6b, 0x00, 0x07, 0xd7, 0x50, 0x9a, 0xfe,
    ];
    /// nmap -sS -f, fragment 2: MF set, offset 1 (8 bytes): ack number, offset/flags, window.
    pub const FRAG2_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x1c, 0xa2, 0x60, 0x20, 0x01, 0x29, 0x06, 0xa8, 0xde, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02, 0x04, 0x00,
    ];
    /// nmap -sS -f, fragment 3: MF clear, offset 2 (16 bytes): checksum, urgent, MSS option.
    pub const FRAG3_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x1c, 0xa2, 0x60, 0x00, 0x02, 0x29, 0x06, 0xc8, 0xdd, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0x70, 0xc8, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];
    /// nmap -sS --badsum: a SYN whose TCP checksum is wrong.
    pub const SYN_V4_BAD_SUM: &[u8] = &[
        0x45, 0x00, 0x00, 0x2c, 0xe6, 0x6a, 0x00, 0x00, 0x37, 0x06, 0x76, 0xc5, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xb3, 0x68, 0x00, 0x07, 0x7f, 0xc7, 0x61, 0xec, 0x00, 0x00,
        0x00, 0x00, 0x60, 0x02, 0x04, 0x00, 0xd7, 0x66, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];
    /// nmap --scanflags SYNFIN: flags 0x03.
    pub const SYNFIN_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x2c, 0x5a, 0x2a, 0x00, 0x00, 0x3b, 0x06, 0xff, 0x05, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xce, 0x95, 0x00, 0x07, 0xc5, 0xaf, 0xcd, 0x92, 0x00, 0x00,
        0x00, 0x00, 0x60, 0x03, 0x04, 0x00, 0x0b, 0xaa, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4,
    ];
    /// nmap -6 -sS: IPv6, next header TCP, fd77:9::2 -> fd77:9::1 port 7.
    pub const SYN_V6: &[u8] = &[
        0x60, 0x00, 0x00, 0x00, 0x00, 0x18, 0x06, 0xff, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xec, 0x52, 0x00, 0x07, 0x7d,
        0x31, 0x3f, 0x22, 0x00, 0x00, 0x00, 0x00, 0x60, 0x02, 0x04, 0x00, 0xf0, 0x74, 0x00, 0x00,
        0x02, 0x04, 0x05, 0xb4,
    ];
    /// nmap -6 -sU: IPv6, next header UDP, port 7.
    pub const UDP_V6: &[u8] = &[
        0x60, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x11, 0xff, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xb8, 0xac, 0x00, 0x07, 0x00,
        0x0c, 0x32, 0x0a, 0x0d, 0x0a, 0x0d, 0x0a,
    ];
    /// nmap -sU --badsum: UDP with a wrong, non-zero checksum.
    pub const UDP_V4_BAD_SUM: &[u8] = &[
        0x45, 0x00, 0x00, 0x20, 0xc4, 0x1b, 0x00, 0x00, 0x31, 0x11, 0x9f, 0x15, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xfe, 0xea, 0x00, 0x07, 0x00, 0x0c, 0xbf, 0x33, 0x0d, 0x0a,
        0x0d, 0x0a,
    ];
    /// A kernel-built SYN (bash /dev/tcp from the attacker namespace to a listener on
    /// 8080) as seen across the veth: checksum offload left only the pseudo-header sum
    /// in the checksum field (TP_STATUS_CSUMNOTREADY).
    pub const KERNEL_SYN_V4_PARTIAL_SUM: &[u8] = &[
        0x45, 0x00, 0x00, 0x3c, 0x76, 0x19, 0x40, 0x00, 0x40, 0x06, 0x9e, 0x06, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xab, 0x14, 0x1f, 0x90, 0x2b, 0x09, 0x88, 0x86, 0x00, 0x00,
        0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x26, 0xcb, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04,
        0x02, 0x08, 0x0a, 0xa4, 0x52, 0x77, 0xd8, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
    ];
    /// The same connection: the handshake's final ACK (flags 0x10).
    pub const KERNEL_ACK_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x34, 0x76, 0x1a, 0x40, 0x00, 0x40, 0x06, 0x9e, 0x0d, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xab, 0x14, 0x1f, 0x90, 0x2b, 0x09, 0x88, 0x87, 0x06, 0x99,
        0x28, 0xbe, 0x80, 0x10, 0x00, 0x3f, 0x26, 0xc3, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0xa4,
        0x52, 0x77, 0xd9, 0x3d, 0x30, 0xc2, 0x9d,
    ];
    /// The same connection: data "hi\n" with PSH+ACK (0x18).
    pub const KERNEL_PSH_ACK_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x37, 0x76, 0x1b, 0x40, 0x00, 0x40, 0x06, 0x9e, 0x09, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xab, 0x14, 0x1f, 0x90, 0x2b, 0x09, 0x88, 0x87, 0x06, 0x99,
        0x28, 0xbe, 0x80, 0x18, 0x00, 0x3f, 0x26, 0xc6, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0xa4,
        0x52, 0x77, 0xd9, 0x3d, 0x30, 0xc2, 0x9d, 0x68, 0x69, 0x0a,
    ];
    /// The same connection: a later pure ACK.
    pub const KERNEL_ACK2_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x34, 0x76, 0x1c, 0x40, 0x00, 0x40, 0x06, 0x9e, 0x0b, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xab, 0x14, 0x1f, 0x90, 0x2b, 0x09, 0x88, 0x8a, 0x06, 0x99,
        0x28, 0xbf, 0x80, 0x10, 0x00, 0x3f, 0x26, 0xc3, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0xa4,
        0x52, 0x77, 0xdb, 0x3d, 0x30, 0xc2, 0x9d,
    ];
    /// The same connection: the close, FIN+ACK (0x11).
    pub const KERNEL_FIN_ACK_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x34, 0x76, 0x1d, 0x40, 0x00, 0x40, 0x06, 0x9e, 0x0a, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xab, 0x14, 0x1f, 0x90, 0x2b, 0x09, 0x88, 0x8a, 0x06, 0x99,
        0x28, 0xbf, 0x80, 0x11, 0x00, 0x3f, 0x26, 0xc3, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0xa4,
        0x52, 0x79, 0x06, 0x3d, 0x30, 0xc2, 0x9d,
    ];
    /// nmap -sA: flags 0x10 (ACK alone), sequence number 0, no data, 0xbdd0 -> 7.
    pub const ACK_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x28, 0x81, 0xed, 0x00, 0x00, 0x2d, 0x06, 0xe5, 0x46, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xbd, 0xd0, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0xec, 0xb2,
        0x74, 0x97, 0x50, 0x10, 0x04, 0x00, 0x66, 0x16, 0x00, 0x00,
    ];
    /// nmap -sM: flags 0x11 (FIN+ACK), no data, 0xd1c5 -> 7.
    pub const MAIMON_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x28, 0xe6, 0xbd, 0x00, 0x00, 0x31, 0x06, 0x7c, 0x76, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0xd1, 0xc5, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x1d, 0x07,
        0x1c, 0x6d, 0x50, 0x11, 0x04, 0x00, 0x79, 0xf6, 0x00, 0x00,
    ];
    /// nmap -6 -sA: IPv6, flags 0x10, 0x8659 -> 7.
    pub const ACK_V6: &[u8] = &[
        0x60, 0x00, 0x00, 0x00, 0x00, 0x14, 0x06, 0xff, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x86, 0x59, 0x00, 0x07, 0x00,
        0x00, 0x00, 0x00, 0xec, 0xcf, 0x55, 0xd3, 0x50, 0x10, 0x04, 0x00, 0xe7, 0xcc, 0x00, 0x00,
    ];
    /// nmap -6 -sM: IPv6, flags 0x11, 0xb1d0 -> 7.
    pub const MAIMON_V6: &[u8] = &[
        0x60, 0x00, 0x00, 0x00, 0x00, 0x14, 0x06, 0xff, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xb1, 0xd0, 0x00, 0x07, 0x00,
        0x00, 0x00, 0x00, 0x3b, 0x53, 0x02, 0x68, 0x50, 0x11, 0x04, 0x00, 0xc1, 0x3c, 0x00, 0x00,
    ];
    /// nmap -sU -g 53: a UDP probe sent from source port 53 to port 7.
    pub const UDP_FROM_53_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x20, 0xa3, 0x8a, 0x00, 0x00, 0x35, 0x11, 0xbb, 0xa6, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0x00, 0x35, 0x00, 0x07, 0x00, 0x0c, 0xbe, 0xe9, 0x0d, 0x0a,
        0x0d, 0x0a,
    ];
    /// The defender's own connection, captured as PACKET_OUTGOING: its SYN from local port 700
    /// to the attacker's service on 600 (checksum left to the NIC: only the pseudo-header sum).
    pub const OUT_SYN_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x3c, 0xea, 0x3d, 0x40, 0x00, 0x40, 0x06, 0x29, 0xe2, 0x0a, 0x4d, 0x09,
        0x01, 0x0a, 0x4d, 0x09, 0x02, 0x02, 0xbc, 0x02, 0x58, 0xf0, 0x57, 0xd6, 0x5d, 0x00, 0x00,
        0x00, 0x00, 0xa0, 0x02, 0xfa, 0xf0, 0x26, 0xcb, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04,
        0x02, 0x08, 0x0a, 0xf0, 0x7e, 0x54, 0xc3, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
    ];
    /// The same connection: the defender's ACK of the SYN+ACK (outgoing; opens no flow).
    pub const OUT_ACK_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x34, 0xea, 0x3e, 0x40, 0x00, 0x40, 0x06, 0x29, 0xe9, 0x0a, 0x4d, 0x09,
        0x01, 0x0a, 0x4d, 0x09, 0x02, 0x02, 0xbc, 0x02, 0x58, 0xf0, 0x57, 0xd6, 0x5e, 0xd5, 0xa8,
        0x80, 0xc0, 0x80, 0x10, 0x00, 0x3f, 0x26, 0xc3, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0xf0,
        0x7e, 0x54, 0xc3, 0xf4, 0xf5, 0xe6, 0xb7,
    ];
    /// The same connection: the peer's bare ACK of the defender's data, 600 -> 700 (a bare ACK
    /// with timestamps, as an ACK scan looks).
    pub const PEER_ACK_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x34, 0x30, 0xea, 0x40, 0x00, 0x40, 0x06, 0xe3, 0x3d, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0x02, 0x58, 0x02, 0xbc, 0xd5, 0xa8, 0x80, 0xc0, 0xf0, 0x57,
        0xd6, 0x62, 0x80, 0x10, 0x00, 0x40, 0x26, 0xc3, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0xf4,
        0xf5, 0xe6, 0xb7, 0xf0, 0x7e, 0x54, 0xc3,
    ];
    /// The same connection: the peer echoes "ping" with PSH+ACK, 600 -> 700.
    pub const PEER_PSH_ACK_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x38, 0x30, 0xeb, 0x40, 0x00, 0x40, 0x06, 0xe3, 0x38, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0x02, 0x58, 0x02, 0xbc, 0xd5, 0xa8, 0x80, 0xc0, 0xf0, 0x57,
        0xd6, 0x62, 0x80, 0x18, 0x00, 0x40, 0x26, 0xc7, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0xf4,
        0xf5, 0xe6, 0xb8, 0xf0, 0x7e, 0x54, 0xc3, 0x70, 0x69, 0x6e, 0x67,
    ];
    /// The same connection: the peer closes with FIN+ACK, 600 -> 700 (a Maimon scan's flags).
    pub const PEER_FIN_ACK_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x34, 0x30, 0xec, 0x40, 0x00, 0x40, 0x06, 0xe3, 0x3b, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0x02, 0x58, 0x02, 0xbc, 0xd5, 0xa8, 0x80, 0xc4, 0xf0, 0x57,
        0xd6, 0x62, 0x80, 0x11, 0x00, 0x40, 0x26, 0xc3, 0x00, 0x00, 0x01, 0x01, 0x08, 0x0a, 0xf4,
        0xf5, 0xe6, 0xb8, 0xf0, 0x7e, 0x54, 0xc4,
    ];
    /// The defender's DNS-like query "query" from local UDP port 701 to the attacker's port 53
    /// (PACKET_OUTGOING).
    pub const OUT_UDP_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x21, 0xbe, 0x01, 0x40, 0x00, 0x40, 0x11, 0x56, 0x2e, 0x0a, 0x4d, 0x09,
        0x01, 0x0a, 0x4d, 0x09, 0x02, 0x02, 0xbd, 0x00, 0x35, 0x00, 0x0d, 0x26, 0xbb, 0x71, 0x75,
        0x65, 0x72, 0x79,
    ];
    /// Its answer, 53 -> 701: without the flow it would be a UDP probe to a watched port.
    pub const ANSWER_UDP_V4: &[u8] = &[
        0x45, 0x00, 0x00, 0x21, 0x3c, 0x20, 0x40, 0x00, 0x40, 0x11, 0xd8, 0x0f, 0x0a, 0x4d, 0x09,
        0x02, 0x0a, 0x4d, 0x09, 0x01, 0x00, 0x35, 0x02, 0xbd, 0x00, 0x0d, 0x26, 0xbb, 0x71, 0x75,
        0x65, 0x72, 0x79,
    ];
    /// The same query over IPv6, from local port 702 (PACKET_OUTGOING).
    pub const OUT_UDP_V6: &[u8] = &[
        0x60, 0x05, 0x07, 0x20, 0x00, 0x0d, 0x11, 0x40, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0xbe, 0x00, 0x35, 0x00,
        0x0d, 0xfb, 0x22, 0x71, 0x75, 0x65, 0x72, 0x79,
    ];
    /// The defender's IPv6 connection: its SYN from local port 703 to the attacker's 600.
    pub const OUT_SYN_V6: &[u8] = &[
        0x60, 0x04, 0xec, 0xa4, 0x00, 0x28, 0x06, 0x40, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x02, 0xbf, 0x02, 0x58, 0x56,
        0x28, 0xc8, 0x51, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfd, 0x20, 0xfb, 0x32, 0x00, 0x00,
        0x02, 0x04, 0x05, 0xa0, 0x04, 0x02, 0x08, 0x0a, 0x8f, 0xbe, 0xc2, 0x94, 0x00, 0x00, 0x00,
        0x00, 0x01, 0x03, 0x03, 0x0a,
    ];
    /// The same connection: the peer's bare ACK, 600 -> 703.
    pub const PEER_ACK_V6: &[u8] = &[
        0x60, 0x09, 0xa9, 0x19, 0x00, 0x20, 0x06, 0x40, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0xfd, 0x77, 0x00, 0x09, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x58, 0x02, 0xbf, 0x47,
        0x9e, 0xd5, 0x83, 0x56, 0x28, 0xc8, 0x56, 0x80, 0x10, 0x00, 0x3f, 0xfb, 0x2a, 0x00, 0x00,
        0x01, 0x01, 0x08, 0x0a, 0xd4, 0xb6, 0xa8, 0x48, 0x8f, 0xbe, 0xc2, 0x9a,
    ];
}

#[cfg(test)]
mod tests {
    use super::samples::*;
    use super::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    fn probe(bytes: &[u8]) -> Probe {
        match inspect(bytes, ChecksumCheck::Verify) {
            Ok(p) => p,
            Err(r) => panic!("expected a probe, got {r:?}"),
        }
    }

    /// A probe from a packet built by a kernel across a veth (partial transport checksum).
    fn kernel_probe(bytes: &[u8]) -> Probe {
        match inspect(bytes, ChecksumCheck::Trusted) {
            Ok(p) => p,
            Err(r) => panic!("expected a probe, got {r:?}"),
        }
    }

    /// Recomputes the IPv4 header checksum after a test edited the header.
    fn fix_v4_header_sum(p: &mut [u8]) {
        let ihl = usize::from(p[0] & 0x0f) * 4;
        p[10] = 0;
        p[11] = 0;
        let sum = !fold(sum16(&p[..ihl], 0));
        p[10..12].copy_from_slice(&sum.to_be_bytes());
    }

    #[test]
    fn nmap_syn_scan_is_a_syn_normal_scan_to_port_7() {
        let p = probe(SYN_V4);
        assert_eq!(p.kind, ProbeKind::Syn);
        assert_eq!(p.kind.describe(), "TCP SYN/Normal scan");
        assert_eq!(p.src, v4(10, 77, 9, 2));
        assert_eq!(p.dst, v4(10, 77, 9, 1));
        assert_eq!(p.proto, Proto::Tcp);
        assert_eq!(p.dst_port, 7);
        assert_eq!(p.src_port, 0xe176);
        assert!(!p.ip_options);
    }

    #[test]
    fn nmap_fin_null_xmas_scans_get_their_1_2_names() {
        assert_eq!(probe(FIN_V4).kind.describe(), "TCP FIN scan");
        assert_eq!(probe(NULL_V4).kind.describe(), "TCP NULL scan");
        assert_eq!(probe(XMAS_V4).kind.describe(), "TCP XMAS scan");
    }

    #[test]
    fn syn_fin_is_unknown_type_with_flags_printed() {
        let p = probe(SYNFIN_V4);
        assert_eq!(
            p.kind.describe(),
            "Unknown Type: TCP Packet Flags: SYN: 1 FIN: 1 ACK: 0 PSH: 0 URG: 0 RST: 0"
        );
    }

    #[test]
    fn udp_probe_is_a_udp_scan_with_ports() {
        let p = probe(UDP_V4);
        assert_eq!(p.kind, ProbeKind::Udp);
        assert_eq!(p.proto, Proto::Udp);
        assert_eq!(p.dst_port, 7);
        assert_eq!(p.src_port, 0xb9e5);
    }

    #[test]
    fn ipv4_options_are_reported() {
        let p = probe(SYN_V4_IP_OPTIONS);
        assert!(p.ip_options);
        assert_eq!(p.kind, ProbeKind::Syn);
        assert_eq!(p.dst_port, 7);
    }

    #[test]
    fn ipv6_syn_and_udp_probes_are_classified() {
        let p = probe(SYN_V6);
        assert_eq!(p.kind, ProbeKind::Syn);
        assert_eq!(p.dst_port, 7);
        assert_eq!(p.dst, "fd77:9::1".parse::<IpAddr>().unwrap());
        assert_eq!(p.src, "fd77:9::2".parse::<IpAddr>().unwrap());
        let u = probe(UDP_V6);
        assert_eq!(u.kind, ProbeKind::Udp);
        assert_eq!(u.dst_port, 7);
    }

    #[test]
    fn non_first_fragments_are_dropped() {
        assert_eq!(
            inspect(FRAG2_V4, ChecksumCheck::Verify),
            Err(Reject::NonFirstFragment)
        );
        assert_eq!(
            inspect(FRAG3_V4, ChecksumCheck::Verify),
            Err(Reject::NonFirstFragment)
        );
    }

    #[test]
    fn first_fragment_without_the_tcp_flags_is_truncated() {
        // nmap -f cuts the TCP header after 8 bytes: the flags are in the next fragment.
        assert_eq!(
            inspect(FRAG1_V4, ChecksumCheck::Verify),
            Err(Reject::Truncated)
        );
    }

    #[test]
    fn bad_tcp_and_udp_checksums_are_not_counted() {
        assert_eq!(
            inspect(SYN_V4_BAD_SUM, ChecksumCheck::Verify),
            Err(Reject::BadChecksum)
        );
        assert_eq!(
            inspect(UDP_V4_BAD_SUM, ChecksumCheck::Verify),
            Err(Reject::BadChecksum)
        );
        assert_eq!(classify(SYN_V4_BAD_SUM), None);
    }

    #[test]
    fn bad_ip_header_checksum_is_not_counted_even_when_trusted() {
        let mut p = SYN_V4.to_vec();
        p[10] ^= 0x55;
        assert_eq!(
            inspect(&p, ChecksumCheck::Trusted),
            Err(Reject::BadChecksum)
        );
    }

    #[test]
    fn locally_built_syn_with_partial_sum_needs_the_kernel_verdict() {
        // A SYN from the kernel of the peer namespace carries only the pseudo-header sum.
        assert_eq!(
            inspect(KERNEL_SYN_V4_PARTIAL_SUM, ChecksumCheck::Verify),
            Err(Reject::BadChecksum)
        );
        let p = inspect(KERNEL_SYN_V4_PARTIAL_SUM, ChecksumCheck::Trusted).unwrap();
        assert_eq!(p.kind, ProbeKind::Syn);
        assert_eq!(p.dst_port, 8080);
    }

    #[test]
    fn data_carrying_segments_of_a_connection_are_never_probes() {
        for pkt in [KERNEL_PSH_ACK_V4, PEER_PSH_ACK_V4] {
            assert_eq!(inspect(pkt, ChecksumCheck::Trusted), Err(Reject::AckOrRst));
        }
    }

    #[test]
    fn a_connections_bare_acks_look_like_ack_and_maimon_scans_to_the_classifier() {
        // Only the flow table and the live socket check tell these from nmap -sA / -sM:
        // the classifier names the candidates, the sensor decides.
        for pkt in [KERNEL_ACK_V4, KERNEL_ACK2_V4, PEER_ACK_V4, PEER_ACK_V6] {
            assert_eq!(kernel_probe(pkt).kind, ProbeKind::Ack);
        }
        for pkt in [KERNEL_FIN_ACK_V4, PEER_FIN_ACK_V4] {
            assert_eq!(kernel_probe(pkt).kind, ProbeKind::Maimon);
        }
    }

    #[test]
    fn nmap_ack_and_maimon_scans_are_named_over_ipv4_and_ipv6() {
        for (pkt, kind, name) in [
            (ACK_V4, ProbeKind::Ack, "TCP ACK scan"),
            (ACK_V6, ProbeKind::Ack, "TCP ACK scan"),
            (MAIMON_V4, ProbeKind::Maimon, "TCP Maimon scan"),
            (MAIMON_V6, ProbeKind::Maimon, "TCP Maimon scan"),
        ] {
            let p = probe(pkt);
            assert_eq!(p.kind, kind);
            assert_eq!(p.kind.describe(), name);
            assert_eq!(p.dst_port, 7);
            assert_eq!(p.proto, Proto::Tcp);
        }
        assert_eq!(probe(ACK_V6).src, "fd77:9::2".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn rst_syn_ack_and_urgent_or_pushed_fin_acks_are_skipped() {
        for flags in [
            TCP_RST,
            TCP_RST | TCP_ACK,
            TCP_SYN | TCP_ACK,
            TCP_SYN | TCP_RST,
            TCP_ACK | TCP_URG,
            TCP_ACK | TCP_FIN | TCP_PSH,
            TCP_ACK | TCP_FIN | TCP_URG | TCP_PSH,
        ] {
            assert_eq!(tcp_kind(tcp_flags(flags)), None, "flags {flags:#x}");
        }
        assert_eq!(tcp_kind(tcp_flags(TCP_ACK)), Some(ProbeKind::Ack));
        assert_eq!(tcp_kind(tcp_flags(TCP_ACK | TCP_PSH)), Some(ProbeKind::Ack));
        assert_eq!(
            tcp_kind(tcp_flags(TCP_ACK | TCP_FIN)),
            Some(ProbeKind::Maimon)
        );
    }

    #[test]
    fn ack_scan_with_data_is_skipped() {
        // nmap --data-length: an ACK that carries data is a connection's traffic.
        let mut p = ACK_V4.to_vec();
        p.extend_from_slice(b"data");
        p[3] += 4;
        fix_v4_header_sum(&mut p);
        assert_eq!(inspect(&p, ChecksumCheck::Trusted), Err(Reject::AckOrRst));
    }

    #[test]
    fn udp_probe_from_source_port_53_is_a_udp_scan() {
        let p = probe(UDP_FROM_53_V4);
        assert_eq!(p.kind, ProbeKind::Udp);
        assert_eq!((p.src_port, p.dst_port), (53, 7));
    }

    #[test]
    fn outgoing_udp_and_syns_open_flows_with_their_answers_mirrored() {
        let syn = outgoing(OUT_SYN_V4).unwrap();
        assert_eq!(
            syn,
            FlowStart {
                proto: Proto::Tcp,
                local: v4(10, 77, 9, 1),
                local_port: 700,
                remote: v4(10, 77, 9, 2),
                remote_port: 600,
            }
        );
        // The answer comes back with the addresses and ports swapped.
        let answer = kernel_probe(PEER_ACK_V4);
        assert_eq!(
            (answer.dst, answer.dst_port, answer.src, answer.src_port),
            (syn.local, syn.local_port, syn.remote, syn.remote_port)
        );
        let udp = outgoing(OUT_UDP_V4).unwrap();
        assert_eq!(
            (udp.proto, udp.local_port, udp.remote_port),
            (Proto::Udp, 701, 53)
        );
        let dns = kernel_probe(ANSWER_UDP_V4);
        assert_eq!((dns.src_port, dns.dst_port), (53, 701));
        let udp6 = outgoing(OUT_UDP_V6).unwrap();
        assert_eq!((udp6.proto, udp6.local_port), (Proto::Udp, 702));
        assert_eq!(udp6.remote, "fd77:9::2".parse::<IpAddr>().unwrap());
        let syn6 = outgoing(OUT_SYN_V6).unwrap();
        assert_eq!(
            (syn6.proto, syn6.local_port, syn6.remote_port),
            (Proto::Tcp, 703, 600)
        );
    }

    #[test]
    fn outgoing_acks_and_resets_open_no_flow() {
        assert_eq!(outgoing(OUT_ACK_V4), Err(Reject::NotFlowStart));
        let mut rst = OUT_SYN_V4.to_vec();
        rst[33] = TCP_RST | TCP_ACK;
        assert_eq!(outgoing(&rst), Err(Reject::NotFlowStart));
        let mut syn_ack = OUT_SYN_V4.to_vec();
        syn_ack[33] = TCP_SYN | TCP_ACK;
        assert_eq!(outgoing(&syn_ack), Err(Reject::NotFlowStart));
        for n in 0..OUT_SYN_V4.len() {
            assert!(outgoing(&OUT_SYN_V4[..n]).is_err(), "{n} bytes accepted");
        }
    }

    #[test]
    fn xmas_wins_over_unknown_even_with_syn() {
        let all = TCP_FIN | TCP_URG | TCP_PSH | TCP_SYN;
        assert_eq!(tcp_kind(tcp_flags(all)), Some(ProbeKind::Xmas));
        assert!(matches!(
            tcp_kind(tcp_flags(TCP_FIN | TCP_PSH)),
            Some(ProbeKind::UnknownTcp(_))
        ));
        assert!(matches!(
            tcp_kind(tcp_flags(TCP_SYN | TCP_URG)),
            Some(ProbeKind::UnknownTcp(_))
        ));
        // ECE/CWR are not among the six flags 1.2 looks at.
        assert_eq!(tcp_kind(tcp_flags(TCP_SYN | 0xc0)), Some(ProbeKind::Syn));
    }

    #[test]
    fn ethernet_padding_after_the_packet_is_ignored() {
        let mut p = FIN_V4.to_vec();
        p.extend_from_slice(&[0u8; 6]);
        assert_eq!(probe(&p).kind, ProbeKind::Fin);
    }

    #[test]
    fn every_truncation_of_a_real_probe_is_rejected() {
        for pkt in [SYN_V4, UDP_V4, SYN_V6, UDP_V6, SYN_V4_IP_OPTIONS] {
            for n in 0..pkt.len() {
                assert!(
                    inspect(&pkt[..n], ChecksumCheck::Trusted).is_err(),
                    "{n} bytes accepted"
                );
            }
        }
    }

    #[test]
    fn not_ip_and_not_tcp_udp_are_rejected() {
        assert_eq!(inspect(&[], ChecksumCheck::Verify), Err(Reject::Truncated));
        assert_eq!(
            inspect(&[0x50; 40], ChecksumCheck::Verify),
            Err(Reject::NotIp)
        );
        let mut icmp = SYN_V6.to_vec();
        icmp[6] = 58;
        assert_eq!(
            inspect(&icmp, ChecksumCheck::Trusted),
            Err(Reject::NotTcpOrUdp)
        );
    }

    /// Inserts an IPv6 extension header of `len` bytes (multiple of 8) after the fixed header.
    fn with_v6_ext(pkt: &[u8], ext_type: u8, body: &[u8]) -> Vec<u8> {
        let mut out = pkt[..40].to_vec();
        let inner = out[6];
        out[6] = ext_type;
        let mut ext = vec![inner];
        ext.extend_from_slice(body);
        let plen = u16::from_be_bytes([out[4], out[5]]) + ext.len() as u16;
        out[4..6].copy_from_slice(&plen.to_be_bytes());
        out.extend_from_slice(&ext);
        out.extend_from_slice(&pkt[40..]);
        out
    }

    #[test]
    fn ipv6_destination_options_header_is_walked() {
        // Next header, hdr ext len 0 (8 bytes), PadN option filling the rest.
        let p = with_v6_ext(SYN_V6, IPPROTO_DSTOPTS, &[0, 1, 4, 0, 0, 0, 0]);
        let probe = probe(&p);
        assert_eq!(probe.kind, ProbeKind::Syn);
        assert_eq!(probe.dst_port, 7);
    }

    #[test]
    fn ipv6_fragments_first_is_classified_later_ones_dropped() {
        // Atomic fragment (offset 0, M clear): a whole datagram, checksum verified.
        let atomic = with_v6_ext(SYN_V6, IPPROTO_FRAGMENT, &[0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(probe(&atomic).kind, ProbeKind::Syn);
        // First fragment (offset 0, M set): classified, checksum unverifiable.
        let mut first = with_v6_ext(SYN_V6, IPPROTO_FRAGMENT, &[0, 0, 1, 0, 0, 0, 1]);
        first[40 + 8 + 16] ^= 0xff; // corrupt the TCP checksum: it cannot be checked
        assert_eq!(
            inspect(&first, ChecksumCheck::Verify).map(|p| p.kind),
            Ok(ProbeKind::Syn)
        );
        // Offset 8 bytes: no transport header.
        let later = with_v6_ext(SYN_V6, IPPROTO_FRAGMENT, &[0, 0, 8, 0, 0, 0, 1]);
        assert_eq!(
            inspect(&later, ChecksumCheck::Verify),
            Err(Reject::NonFirstFragment)
        );
    }

    #[test]
    fn ipv6_udp_without_checksum_is_dropped() {
        let mut p = UDP_V6.to_vec();
        p[46] = 0;
        p[47] = 0;
        assert_eq!(
            inspect(&p, ChecksumCheck::Trusted),
            Err(Reject::BadChecksum)
        );
    }

    #[test]
    fn ipv4_udp_without_checksum_is_accepted() {
        let mut p = UDP_V4.to_vec();
        p[26] = 0;
        p[27] = 0;
        assert_eq!(probe(&p).kind, ProbeKind::Udp);
    }

    #[test]
    fn long_extension_chain_is_given_up() {
        let mut p = SYN_V6.to_vec();
        for _ in 0..=MAX_EXTENSION_HEADERS {
            p = with_v6_ext(&p, IPPROTO_DSTOPTS, &[0, 1, 4, 0, 0, 0, 0]);
        }
        assert_eq!(
            inspect(&p, ChecksumCheck::Trusted),
            Err(Reject::TooManyExtensionHeaders)
        );
    }

    /// xorshift64*: deterministic, no crate needed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
    }

    #[test]
    fn random_bytes_and_mutated_probes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let seeds: [&[u8]; 9] = [
            SYN_V4,
            UDP_V4,
            SYN_V6,
            UDP_V6,
            SYN_V4_IP_OPTIONS,
            FRAG1_V4,
            ACK_V4,
            MAIMON_V6,
            OUT_SYN_V4,
        ];
        let mut accepted = 0usize;
        for i in 0..200_000u32 {
            let buf: Vec<u8> = if i.is_multiple_of(2) {
                let len = (rng.next() % 120) as usize;
                let mut v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                // Steer half of them into the IP parsers.
                if let Some(b) = v.first_mut() {
                    *b = (*b & 0x0f)
                        | if rng.next().is_multiple_of(2) {
                            0x40
                        } else {
                            0x60
                        };
                }
                v
            } else {
                let mut v = seeds[(rng.next() % seeds.len() as u64) as usize].to_vec();
                for _ in 0..(1 + rng.next() % 4) {
                    let at = (rng.next() as usize) % v.len();
                    v[at] = rng.next() as u8;
                }
                v.truncate((rng.next() as usize) % (v.len() + 8));
                v
            };
            for check in [ChecksumCheck::Verify, ChecksumCheck::Trusted] {
                if inspect(&buf, check).is_ok() {
                    accepted += 1;
                }
            }
            let _ = outgoing(&buf);
        }
        // Some mutants stay valid probes (flipped payload bytes with Trusted checksums).
        assert!(accepted > 0);
    }
}
