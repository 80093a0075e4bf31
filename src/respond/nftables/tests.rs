//! Encoding, decoding and error wording, without the kernel (the kernel tests are in
//! `tests/e2e/nftables_backend.rs`).

use super::wire::{self, Attrs, Writer, replies};
use super::*;

fn ne32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// A netlink message as the kernel would send it: header, then `body`.
fn message(kind: u16, seq: u32, body: &[u8]) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&((16 + body.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&0u16.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(body);
    while m.len() % 4 != 0 {
        m.push(0);
    }
    m
}

#[test]
fn a_message_has_its_length_request_flag_and_nfgenmsg() {
    let mut w = Writer::default();
    w.begin((10 << 8) | 12, wire::NLM_F_CREATE, 7, wire::NFPROTO_INET, 0);
    w.str(1, "portsentry"); // 11 bytes: padded to 12
    w.be32(2, 0x0102_0304);
    let b = w.finish().expect("finish");
    assert_eq!(ne32(&b) as usize, b.len());
    assert_eq!(b.len(), 16 + 4 + (4 + 12) + (4 + 4));
    assert_eq!(u16::from_ne_bytes([b[4], b[5]]), 0x0a0c);
    assert_eq!(u16::from_ne_bytes([b[6], b[7]]), wire::NLM_F_CREATE | 1);
    assert_eq!(ne32(&b[8..]), 7);
    assert_eq!(&b[16..20], &[wire::NFPROTO_INET, 0, 0, 0]);
    assert_eq!(&b[20..24], &[15, 0, 1, 0]); // nla_len 15 (with NUL), type 1
    assert_eq!(&b[24..36], b"portsentry\0\0");
    assert_eq!(&b[40..44], &[1, 2, 3, 4]); // big-endian
}

#[test]
fn nested_attributes_carry_the_nested_flag_and_their_whole_length() {
    let mut w = Writer::default();
    w.begin(0, 0, 1, 0, 0);
    w.nested(3, |w| {
        w.nested(1, |w| w.bytes(1, &[10, 77, 0, 1]));
        w.be64(4, 2000);
    });
    let b = w.finish().expect("finish");
    let outer = &b[20..];
    assert_eq!(
        u16::from_ne_bytes([outer[0], outer[1]]) as usize,
        outer.len()
    );
    assert_eq!(u16::from_ne_bytes([outer[2], outer[3]]), 3 | 0x8000);
    let (kind, inner) = Attrs(&b[20..]).next().expect("outer");
    assert_eq!(kind, 3, "the flag is masked off when reading");
    let inner = Attrs(inner);
    assert_eq!(
        inner.nested(1).and_then(|k| k.get(1)),
        Some(&[10, 77, 0, 1][..])
    );
    assert_eq!(inner.be64(4), Some(2000));
}

#[test]
fn an_attribute_past_64k_is_an_error_not_a_wrapped_length() {
    let mut w = Writer::default();
    w.begin(0, 0, 1, 0, 0);
    w.nested(3, |w| {
        for _ in 0..20_000 {
            w.bytes(1, &[0; 4]);
        }
    });
    assert!(w.finish().is_err());
}

#[test]
fn a_batch_is_framed_and_only_its_last_command_asks_for_an_ack() {
    let mut batch = wire::Batch::new(100);
    let elements = keys((0..ELEMENTS_PER_MESSAGE as u16).map(|i| {
        let a = std::net::Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, i);
        (IpAddr::V6(a), Some(MAX_TIMEOUT_MS))
    }));
    let a = element_command(
        &mut batch,
        Cmd::NewSetElem,
        "portsentry",
        &FAMILIES[1],
        &elements,
        true,
    );
    let b = element_command(
        &mut batch,
        Cmd::DelSetElem,
        "portsentry",
        &FAMILIES[1],
        &elements,
        false,
    );
    assert_eq!((a, b), (101, 102));
    let f = batch
        .finish()
        .expect("1,000 IPv6 elements fit a message")
        .expect("commands");
    assert_eq!((f.begin, f.last, f.end), (100, 102, 103));
    let msgs: Vec<_> = replies(&f.bytes).map(|r| r.expect("well formed")).collect();
    let kinds: Vec<u16> = msgs.iter().map(|m| m.kind).collect();
    assert_eq!(kinds, vec![0x10, 0x0a0c, 0x0a0e, 0x11]);
    let flags = |i: usize| {
        let at: usize = msgs[..i]
            .iter()
            .map(|m| (16 + m.body.len()).next_multiple_of(4))
            .sum();
        u16::from_ne_bytes([f.bytes[at + 6], f.bytes[at + 7]])
    };
    assert_eq!(flags(1) & wire::NLM_F_ACK, 0);
    assert_ne!(flags(2) & wire::NLM_F_ACK, 0);
    // The begin marker names the nf_tables subsystem (big-endian res_id).
    assert_eq!(&msgs[0].body[..4], &[0, 0, 0, 10]);
    let list = msgs[1]
        .attrs()
        .nested(wire::NFTA_SET_ELEM_LIST_ELEMENTS)
        .expect("elements");
    assert_eq!(list.count(), ELEMENTS_PER_MESSAGE);
    assert!(wire::Batch::new(1).finish().expect("empty").is_none());
}

#[test]
fn replies_are_split_and_garbage_is_an_error_not_a_panic() {
    let mut dgram = message(2, 5, &(-libc::ENOENT).to_ne_bytes());
    dgram.extend(message(2, 6, &0i32.to_ne_bytes()));
    let got: Vec<_> = replies(&dgram).map(|r| r.expect("valid")).collect();
    assert_eq!(got.len(), 2);
    assert_eq!((got[0].seq, got[0].error()), (5, Some(-libc::ENOENT)));
    assert_eq!((got[1].seq, got[1].error()), (6, Some(0)));

    for bad in [
        &[1u8, 2, 3][..],
        &[200, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    ] {
        assert!(replies(bad).any(|r| r.is_err()));
    }
    // A truncated attribute ends the walk.
    assert_eq!(Attrs(&[8, 0, 1, 0, 1]).count(), 0);
    assert_eq!(Attrs(&[2, 0, 1, 0]).count(), 0);
    // A short number is absent, not a panic.
    assert_eq!(Attrs(&[6, 0, 1, 0, 1, 2, 0, 0]).be32(1), None);
}

#[test]
fn our_drop_rule_is_recognised_and_others_are_not() {
    let rule = |write: &dyn Fn(&mut Writer)| {
        let mut w = Writer::default();
        w.begin(0, 0, 1, 0, 0);
        write(&mut w);
        let b = w.finish().expect("finish");
        b[20..].to_vec()
    };
    let ours = rule(&|w| write_drop_rule(w, "portsentry", "input", &FAMILIES[1]));
    assert!(rule_drops_set(Attrs(&ours), SET_V6));
    assert!(!rule_drops_set(Attrs(&ours), SET_V4));

    let accept = rule(&|w| {
        w.nested(wire::NFTA_RULE_EXPRESSIONS, |w| {
            expression(w, "lookup", |w| w.str(wire::NFTA_LOOKUP_SET, SET_V4));
            expression(w, "immediate", |w| {
                w.nested(wire::NFTA_IMMEDIATE_DATA, |w| {
                    w.nested(wire::NFTA_DATA_VERDICT, |w| {
                        w.be32(wire::NFTA_VERDICT_CODE, wire::NF_ACCEPT);
                    });
                });
            });
        });
    });
    assert!(!rule_drops_set(Attrs(&accept), SET_V4));
    assert!(!rule_drops_set(Attrs(&[]), SET_V4));
}

#[test]
fn set_elements_parse_with_their_time_left() {
    let element = |key: &[u8], expires: Option<u64>| {
        let mut w = Writer::default();
        w.begin(0, 0, 1, 0, 0);
        w.nested(wire::NFTA_SET_ELEM_KEY, |w| {
            w.bytes(wire::NFTA_DATA_VALUE, key)
        });
        if let Some(ms) = expires {
            w.be64(wire::NFTA_SET_ELEM_TIMEOUT, 600_000);
            w.be64(wire::NFTA_SET_ELEM_EXPIRATION, ms);
        }
        w.finish().expect("finish")[20..].to_vec()
    };
    assert_eq!(
        parse_element(Attrs(&element(&[10, 77, 0, 9], Some(1500)))),
        Some((
            "10.77.0.9".parse().unwrap(),
            Some(Duration::from_millis(1500))
        ))
    );
    let v6: IpAddr = "fd77::9".parse().unwrap();
    let IpAddr::V6(a) = v6 else { unreachable!() };
    assert_eq!(
        parse_element(Attrs(&element(&a.octets(), None))),
        Some((v6, None))
    );
    assert_eq!(parse_element(Attrs(&element(&[1, 2, 3], None))), None);
}

#[test]
fn timeouts_round_up_to_a_millisecond_and_never_become_zero() {
    assert_eq!(timeout_ms(Duration::ZERO), 1);
    assert_eq!(timeout_ms(Duration::from_micros(1)), 1);
    assert_eq!(timeout_ms(Duration::from_micros(1500)), 2);
    assert_eq!(timeout_ms(Duration::from_secs(2)), 2000);
    assert_eq!(timeout_ms(Duration::MAX), MAX_TIMEOUT_MS);
}

#[test]
fn hosts_split_by_family_mapped_ipv6_is_ipv4_and_the_last_timeout_wins() {
    let got = keys(
        [
            ("fd77::1", Some(5)),
            ("10.77.0.1", Some(1)),
            ("::ffff:10.77.0.1", Some(2)),
            ("10.77.0.2", None),
        ]
        .into_iter()
        .map(|(a, t)| (a.parse().unwrap(), t)),
    );
    let fams = by_family(&got);
    assert_eq!(fams.len(), 2);
    assert_eq!((fams[0].0.set, fams[0].1.len()), (SET_V4, 2));
    assert_eq!((fams[1].0.set, fams[1].1.len()), (SET_V6, 1));
    let one = Key::new("10.77.0.1".parse().unwrap());
    assert_eq!(one.data(), &[10, 77, 0, 1]);
    assert!(fams[0].1.contains(&(one, Some(2))));
    assert!(by_family(&keys(std::iter::empty())).is_empty());
}

#[test]
fn kernel_errnos_become_sentences_a_person_can_act_on() {
    assert_eq!(
        errno_error(Errno::EPERM, "x").to_string(),
        "nftables cannot be used: the kernel refused access (EPERM); changing the firewall \
         needs CAP_NET_ADMIN (run as root, or grant the capability)"
    );
    for e in [
        Errno::EAFNOSUPPORT,
        Errno::EPROTONOSUPPORT,
        Errno::EOPNOTSUPP,
    ] {
        let text = errno_error(e, "x").to_string();
        assert!(
            text.starts_with("nftables cannot be used: the kernel has no nf_tables support ("),
            "{text}"
        );
    }
    let text = errno_error(Errno::EBUSY, "deleting chain forward").to_string();
    assert!(
        text.starts_with("nftables: deleting chain forward: "),
        "{text}"
    );
}

#[test]
fn settings_must_name_a_table_nft_can_type_and_a_real_size() {
    assert!(NftSettings::default().check().is_ok());
    for bad in ["", "1abc", "a b", "tab\0le", &"x".repeat(256)] {
        let s = NftSettings {
            table: bad.to_string(),
            ..NftSettings::default()
        };
        assert!(s.check().is_err(), "{bad:?}");
    }
    let zero = NftSettings {
        set_size: 0,
        ..NftSettings::default()
    };
    assert!(zero.check().unwrap_err().to_string().contains("set size 0"));
}

#[test]
fn sets_and_chains_of_our_names_that_cannot_work_are_refused() {
    let good = SetInfo {
        flags: wire::NFT_SET_TIMEOUT,
        key_type: 7,
        key_len: 4,
        size: Some(65_536),
    };
    let settings = NftSettings::default();
    let check = |sets: [Option<SetInfo>; 2], input: Option<ChainInfo>| {
        Survey {
            table: true,
            sets: [sets[0], sets[1], None, None, None, None, None, None],
            input,
            forward: None,
        }
        .check(&settings)
        .map_err(|e| e.to_string())
    };
    assert!(check([Some(good), None], None).is_ok());
    // Another size is only a warning: the kernel cannot resize.
    let other_size = SetInfo {
        size: Some(10),
        ..good
    };
    assert!(check([Some(other_size), None], None).is_ok());
    let no_timeout = SetInfo { flags: 0, ..good };
    assert!(
        check([Some(no_timeout), None], None)
            .unwrap_err()
            .contains("no `flags timeout`")
    );
    let interval = SetInfo {
        flags: wire::NFT_SET_TIMEOUT | 0x4,
        ..good
    };
    assert!(
        check([Some(interval), None], None)
            .unwrap_err()
            .contains("not a plain set")
    );
    assert!(
        check([None, Some(good)], None)
            .unwrap_err()
            .contains("set ipv6_addr holds another")
    );
    // The fleet's host sets are plain sets; its network sets must be interval sets.
    let unsized_good = SetInfo { size: None, ..good };
    let fleet = |info: SetInfo| {
        Survey {
            table: true,
            sets: [
                None,
                None,
                None,
                None,
                Some(unsized_good),
                None,
                Some(info),
                None,
            ],
            input: None,
            forward: None,
        }
        .check(&settings)
        .map_err(|e| e.to_string())
    };
    assert!(
        fleet(SetInfo {
            size: None,
            ..interval
        })
        .is_ok()
    );
    assert!(
        fleet(good)
            .unwrap_err()
            .contains("set fleet_net4 has no `flags interval`")
    );
    let regular = ChainInfo {
        hooknum: None,
        drops: [true; 8],
    };
    assert!(
        check([None, None], Some(regular))
            .unwrap_err()
            .contains("chain input is not a base chain")
    );
}
