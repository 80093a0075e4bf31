//! Link layers of the captures an admin has: Ethernet (with 802.1Q/802.1ad tags), Linux
//! cooked captures (`tcpdump -i any`: SLL and SLL2, which say the packet's direction), raw IP
//! and BSD loopback. A pure function from the frame's bytes to the IP packet inside and what
//! the link says about its direction.

use std::net::IpAddr;

/// DLT_NULL: BSD loopback, a 4-byte address family in the capturing host's byte order.
pub const NULL: u16 = 0;
/// DLT_EN10MB.
pub const ETHERNET: u16 = 1;
/// DLT_RAW (as most tools write it).
pub const RAW: u16 = 101;
/// DLT_LOOP: OpenBSD loopback, the family in network byte order.
pub const LOOP: u16 = 108;
/// DLT_LINUX_SLL: `tcpdump -i any` before libpcap 1.10.
pub const SLL: u16 = 113;
/// LINKTYPE_IPV4.
pub const IPV4: u16 = 228;
/// LINKTYPE_IPV6.
pub const IPV6: u16 = 229;
/// DLT_LINUX_SLL2: `tcpdump -i any` with libpcap 1.10 and later.
pub const SLL2: u16 = 276;
/// DLT_RAW as some systems number it.
const RAW_ALT: u16 = 12;
/// DLT_RAW on OpenBSD.
const RAW_OPENBSD: u16 = 14;

const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
const ETHERTYPE_QINQ_OLD: u16 = 0x9100;
/// Tags looked through at most (QinQ is two).
const MAX_TAGS: usize = 4;

/// What the link layer says of a packet's direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// Addressed to the capturing host (`PACKET_HOST`).
    In,
    /// Sent by it (`PACKET_OUTGOING`).
    Out,
    /// Broadcast, multicast, or another host's (never a probe of this host).
    Other,
    /// The link does not say (Ethernet: the host's MAC address decides; raw IP: its
    /// addresses).
    Unknown,
}

/// A frame taken apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decoded<'a> {
    /// The IP packet.
    pub ip: &'a [u8],
    /// What the link says.
    pub direction: Direction,
    /// Ethernet source and destination MAC addresses.
    pub macs: Option<([u8; 6], [u8; 6])>,
}

/// Why a frame carries no IP packet for us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotIp {
    /// A link type this reader does not know.
    UnknownLink(u16),
    /// An ARP, LLDP, … frame, or too short for its link header.
    Other,
}

/// Takes the IP packet out of a frame of link type `link`.
pub fn decode(link: u16, frame: &[u8]) -> Result<Decoded<'_>, NotIp> {
    match link {
        ETHERNET => ethernet(frame),
        RAW | RAW_ALT | RAW_OPENBSD | IPV4 | IPV6 => ip_only(frame, Direction::Unknown),
        SLL => {
            let pkttype = be16(frame, 0).ok_or(NotIp::Other)?;
            let proto = be16(frame, 14).ok_or(NotIp::Other)?;
            cooked(frame, 16, proto, pkttype)
        }
        SLL2 => {
            let proto = be16(frame, 0).ok_or(NotIp::Other)?;
            let pkttype = u16::from(*frame.get(10).ok_or(NotIp::Other)?);
            cooked(frame, 20, proto, pkttype)
        }
        NULL | LOOP => {
            let family = frame.get(..4).ok_or(NotIp::Other)?;
            // Either byte order: AF_INET is 2, AF_INET6 24, 28 or 30 depending on the BSD.
            let f = if link == LOOP || family[0] == 0 {
                u32::from_be_bytes([family[0], family[1], family[2], family[3]])
            } else {
                u32::from_le_bytes([family[0], family[1], family[2], family[3]])
            };
            match f {
                2 | 10 | 24 | 28 | 30 => ip_only(&frame[4..], Direction::Unknown),
                _ => Err(NotIp::Other),
            }
        }
        other => Err(NotIp::UnknownLink(other)),
    }
}

/// Whether the frames of `link` can be read at all (said once, before the replay starts).
pub fn is_known(link: u16) -> bool {
    matches!(
        link,
        ETHERNET | RAW | RAW_ALT | RAW_OPENBSD | IPV4 | IPV6 | SLL | SLL2 | NULL | LOOP
    )
}

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn ip_only(ip: &[u8], direction: Direction) -> Result<Decoded<'_>, NotIp> {
    match ip.first().map(|b| b >> 4) {
        Some(4) | Some(6) => Ok(Decoded {
            ip,
            direction,
            macs: None,
        }),
        _ => Err(NotIp::Other),
    }
}

fn ethernet(frame: &[u8]) -> Result<Decoded<'_>, NotIp> {
    let mac = |at: usize| -> Option<[u8; 6]> { frame.get(at..at + 6)?.try_into().ok() };
    let (dst, src) = (mac(0).ok_or(NotIp::Other)?, mac(6).ok_or(NotIp::Other)?);
    let mut at = 12;
    let mut ethertype = be16(frame, at).ok_or(NotIp::Other)?;
    for _ in 0..MAX_TAGS {
        if !matches!(
            ethertype,
            ETHERTYPE_VLAN | ETHERTYPE_QINQ | ETHERTYPE_QINQ_OLD
        ) {
            break;
        }
        at += 4;
        ethertype = be16(frame, at).ok_or(NotIp::Other)?;
    }
    if !matches!(ethertype, ETHERTYPE_IPV4 | ETHERTYPE_IPV6) {
        return Err(NotIp::Other);
    }
    let direction = if dst[0] & 1 == 1 {
        // Broadcast or multicast: never a probe of this host.
        Direction::Other
    } else {
        Direction::Unknown
    };
    let mut d = ip_only(&frame[at + 2..], direction)?;
    d.macs = Some((src, dst));
    Ok(d)
}

fn cooked(frame: &[u8], header: usize, proto: u16, pkttype: u16) -> Result<Decoded<'_>, NotIp> {
    if !matches!(proto, ETHERTYPE_IPV4 | ETHERTYPE_IPV6) {
        return Err(NotIp::Other);
    }
    let direction = match pkttype {
        0 => Direction::In,
        4 => Direction::Out,
        _ => Direction::Other,
    };
    ip_only(frame.get(header..).ok_or(NotIp::Other)?, direction)
}

/// The addresses, protocol and transport header of an IP packet, as far as the replay's own
/// bookkeeping reads them (the sensor's classifier does the real parsing): IPv6 extension
/// headers are not walked, and a later IPv4 fragment has no transport header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpHeader<'a> {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IPv4 protocol or IPv6 next header.
    pub proto: u8,
    /// The transport header and what follows, when this packet carries it.
    pub l4: Option<&'a [u8]>,
}

/// Reads an IP packet's [`IpHeader`]; `None` when too short or not IP.
pub fn ip_header(ip: &[u8]) -> Option<IpHeader<'_>> {
    match ip.first()? >> 4 {
        4 => {
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            let frag = u16::from_be_bytes([*ip.get(6)?, *ip.get(7)?]) & 0x1fff;
            let a: [u8; 4] = ip.get(12..16)?.try_into().ok()?;
            let b: [u8; 4] = ip.get(16..20)?.try_into().ok()?;
            Some(IpHeader {
                src: a.into(),
                dst: b.into(),
                proto: *ip.get(9)?,
                l4: if frag == 0 && ihl >= 20 {
                    ip.get(ihl..)
                } else {
                    None
                },
            })
        }
        6 => {
            let a: [u8; 16] = ip.get(8..24)?.try_into().ok()?;
            let b: [u8; 16] = ip.get(24..40)?.try_into().ok()?;
            Some(IpHeader {
                src: a.into(),
                dst: b.into(),
                proto: *ip.get(6)?,
                l4: ip.get(40..),
            })
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of an IPv4 header (version 4, IHL 5).
    const V4: [u8; 4] = [0x45, 0, 0, 40];
    const V6: [u8; 4] = [0x60, 0, 0, 0];

    fn ether(tags: &[u16], ethertype: u16, dst0: u8) -> Vec<u8> {
        let mut f = vec![dst0, 2, 3, 4, 5, 6, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f];
        for t in tags {
            f.extend_from_slice(&t.to_be_bytes());
            f.extend_from_slice(&[0, 7]);
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        f.extend_from_slice(&V4);
        f
    }

    #[test]
    fn ethernet_with_and_without_vlan_tags_gives_the_ip_packet_and_macs() {
        for tags in [
            &[][..],
            &[ETHERTYPE_VLAN],
            &[ETHERTYPE_QINQ, ETHERTYPE_VLAN],
        ] {
            let f = ether(tags, ETHERTYPE_IPV4, 0x00);
            let d = decode(ETHERNET, &f).unwrap();
            assert_eq!(d.ip, &V4, "{tags:?}");
            assert_eq!(d.direction, Direction::Unknown);
            let (src, dst) = d.macs.unwrap();
            assert_eq!(src[0], 0x0a);
            assert_eq!(dst, [0, 2, 3, 4, 5, 6]);
        }
        // Broadcast and multicast frames are nobody's probe.
        let broadcast = ether(&[], ETHERTYPE_IPV4, 0xff);
        assert_eq!(
            decode(ETHERNET, &broadcast).unwrap().direction,
            Direction::Other
        );
        assert_eq!(
            decode(ETHERNET, &ether(&[], 0x0806, 0)),
            Err(NotIp::Other),
            "ARP"
        );
        assert_eq!(decode(ETHERNET, &[0; 10]), Err(NotIp::Other), "runt");
    }

    #[test]
    fn cooked_captures_say_the_direction() {
        let mut sll = vec![0u8; 16];
        sll[14..16].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        sll.extend_from_slice(&V6);
        assert_eq!(decode(SLL, &sll).unwrap().direction, Direction::In);
        sll[1] = 4;
        assert_eq!(decode(SLL, &sll).unwrap().direction, Direction::Out);
        sll[1] = 3;
        assert_eq!(decode(SLL, &sll).unwrap().direction, Direction::Other);

        let mut sll2 = vec![0u8; 20];
        sll2[0..2].copy_from_slice(&ETHERTYPE_IPV4.to_be_bytes());
        sll2[10] = 4;
        sll2.extend_from_slice(&V4);
        let d = decode(SLL2, &sll2).unwrap();
        assert_eq!((d.ip, d.direction), (&V4[..], Direction::Out));
    }

    #[test]
    fn raw_ip_and_loopback_links_and_unknown_links() {
        assert_eq!(decode(RAW, &V6).unwrap().ip, &V6);
        assert_eq!(decode(IPV4, &V4).unwrap().ip, &V4);
        assert_eq!(decode(RAW, &[0x20, 0]), Err(NotIp::Other));
        let mut null = 2u32.to_le_bytes().to_vec();
        null.extend_from_slice(&V4);
        assert_eq!(decode(NULL, &null).unwrap().ip, &V4);
        let mut lo = 24u32.to_be_bytes().to_vec();
        lo.extend_from_slice(&V6);
        assert_eq!(decode(LOOP, &lo).unwrap().ip, &V6);
        assert_eq!(decode(147, &V4), Err(NotIp::UnknownLink(147)));
        assert!(!is_known(147) && is_known(SLL2));
    }
}
