use super::*;
use crate::replay::link::{self, decode};

const HOST: [u8; 6] = [0x02, 0, 0, 0, 0, 1];
const PEER: [u8; 6] = [0x02, 0, 0, 0, 0, 2];

/// An Ethernet frame carrying a minimal IPv4 TCP segment with `flags`.
fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    sport: u16,
    dport: u16,
    flags: u8,
) -> Vec<u8> {
    let mut f = dst_mac.to_vec();
    f.extend_from_slice(&src_mac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut tcp = sport.to_be_bytes().to_vec();
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&[0; 8]);
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend(ip);
    f.extend(tcp);
    f
}

const H: [u8; 4] = [10, 77, 1, 1];
const P: [u8; 4] = [10, 77, 1, 2];

/// A scan between two ends of a point-to-point link: both MAC addresses are in every frame;
/// the one that answers (SYN-ACK, RST) is the host.
fn point_to_point_scan() -> Learner {
    let mut l = Learner::default();
    for port in 1..50u16 {
        let syn = frame(PEER, HOST, P, H, 40000, port, 0x02);
        l.see(0, &decode(link::ETHERNET, &syn).unwrap());
        let flags = if port == 22 { 0x12 } else { 0x14 };
        let answer = frame(HOST, PEER, H, P, port, 40000, flags);
        l.see(0, &decode(link::ETHERNET, &answer).unwrap());
    }
    l
}

#[test]
fn the_answering_end_of_a_point_to_point_link_is_the_host() {
    let view = point_to_point_scan().finish(None, None);
    assert_eq!(view.host_macs.get(&0), Some(&HOST));
    assert_eq!(
        view.local.iter().copied().collect::<Vec<_>>(),
        vec![IpAddr::from(H)]
    );
    assert_eq!(
        view.listeners.tcp.iter().copied().collect::<Vec<_>>(),
        vec![22],
        "the SYN-ACK"
    );
    assert!(view.guessed_local && view.guessed_listeners);
    let syn = frame(PEER, HOST, P, H, 40000, 7, 0x02);
    let ways = view.ways(0, &decode(link::ETHERNET, &syn).unwrap());
    assert_eq!((ways.incoming, ways.outgoing), (true, false));
}

#[test]
fn a_gateway_with_many_addresses_behind_it_is_not_the_host() {
    let mut l = Learner::default();
    // The host talks to 30 remote addresses through its gateway; nobody answers anybody.
    for i in 0..30u8 {
        let out = frame(HOST, PEER, H, [192, 0, 2, i], 50000, 443, 0x02);
        l.see(0, &decode(link::ETHERNET, &out).unwrap());
        let back = frame(PEER, HOST, [192, 0, 2, i], H, 443, 50000, 0x10);
        l.see(0, &decode(link::ETHERNET, &back).unwrap());
    }
    let view = l.finish(None, None);
    assert_eq!(view.host_macs.get(&0), Some(&HOST));
    assert!(view.local.contains(&IpAddr::from(H)));
    assert!(!view.local.contains(&IpAddr::from([192, 0, 2, 3])));
}

#[test]
fn command_line_addresses_and_listeners_win() {
    let given: IpAddr = "10.77.1.9".parse().unwrap();
    let mut listening = Listeners::default();
    listening.udp.insert(53);
    let view = point_to_point_scan().finish(Some(vec![given]), Some(listening.clone()));
    assert_eq!(view.local.iter().copied().collect::<Vec<_>>(), vec![given]);
    assert_eq!(view.listeners, listening);
    assert!(!view.guessed_local && !view.guessed_listeners);
}

#[test]
fn raw_ip_captures_take_the_address_in_the_most_packets_that_answers() {
    let mut l = Learner::default();
    let eth = point_to_point_scan_raw();
    for f in &eth {
        l.see(0, &decode(link::RAW, f).unwrap());
    }
    let view = l.finish(None, None);
    assert_eq!(
        view.local.iter().copied().collect::<Vec<_>>(),
        vec![IpAddr::from(H)]
    );
    // Without a link layer, the addresses say the way.
    let ways = view.ways(0, &decode(link::RAW, &eth[0]).unwrap());
    assert_eq!((ways.incoming, ways.outgoing), (true, false));
}

fn point_to_point_scan_raw() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for port in 1..20u16 {
        v.push(frame(PEER, HOST, P, H, 40000, port, 0x02)[14..].to_vec());
        v.push(frame(HOST, PEER, H, P, port, 40000, 0x14)[14..].to_vec());
    }
    v
}

#[test]
fn peek_reads_addresses_and_listener_ports() {
    let synack = frame(HOST, PEER, H, P, 22, 40000, 0x12);
    let p = peek(&synack[14..]).unwrap();
    assert_eq!((p.src, p.dst), (IpAddr::from(H), IpAddr::from(P)));
    assert_eq!(p.listener, Some((true, 22)));
    assert!(p.answer);
    let syn = frame(PEER, HOST, P, H, 40000, 22, 0x02);
    let p = peek(&syn[14..]).unwrap();
    assert_eq!((p.listener, p.answer), (None, false));
    assert_eq!(peek(&[0x45, 0, 0]), None);
}
