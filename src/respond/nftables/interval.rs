//! Hosts and networks in a room of sets: hosts as elements of a hash set (`flags timeout`),
//! networks as interval elements of an interval set (`flags interval, timeout`); the
//! general API for blocks of networks, used by the fleet's sets today. Hosts stay out of
//! the interval set because the kernel walks its whole tree at each commit: 100 hosts added
//! next to 100,000 cost some 30 ms there, under a millisecond in a hash set.
//!
//! An interval `[start, end)` is two kernel elements: `start` (carrying the timeout) and
//! `end` flagged `NFT_SET_ELEM_INTERVAL_END` (the first address after it; left out when the
//! interval runs to the last address of the family), as `nft` itself sends them. A host is
//! the interval of one address. The kernel refuses overlapping intervals (`EEXIST`), so
//! the caller hands in disjoint ones: CIDR networks either nest or are disjoint, so keeping
//! the widest of nested ones is always enough. Adjacent ones (`10.0.0.1` and `10.0.0.2`)
//! are fine: an end and a start may share a key.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnet::{IpNet, Ipv4Net, Ipv4Subnets, Ipv6Subnets};

use super::wire::{self, Attrs, Batch, Cmd};
use super::{
    ELEMENTS_PER_MESSAGE, Element, FAMILIES, FLEET_FAMILIES, FLEET_NET_FAMILIES, Family, Key,
    Label, NET_FAMILIES, NftBackend, NftError, element_command, element_list_command,
    parse_element, timeout_ms,
};

/// Which sets of ours (hosts and networks, one of each per address family) a change goes
/// to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Room {
    /// `ipv4_addr` / `ipv6_addr` (hosts), `ipv4_net` / `ipv6_net` (networks): the blocks
    /// made here.
    Blocks,
    /// `fleet_ipv4` / `fleet_ipv6` (hosts), `fleet_net4` / `fleet_net6` (networks):
    /// decisions pulled from CrowdSec.
    Fleet,
}

impl Room {
    /// The host sets and the network sets, IPv4 first.
    fn sets(self) -> (&'static [Family; 2], &'static [Family; 2]) {
        match self {
            Room::Blocks => (&FAMILIES, &NET_FAMILIES),
            Room::Fleet => (&FLEET_FAMILIES, &FLEET_NET_FAMILIES),
        }
    }

    /// The set that holds `net` in this room.
    pub fn set_of(self, net: IpNet) -> &'static str {
        let (hosts, nets) = self.sets();
        match host_key(net) {
            Some(key) => hosts[key.fam].set,
            None => nets[span(net).fam].set,
        }
    }
}

/// A host's key for the hash set; `None` for a network.
fn host_key(net: IpNet) -> Option<Key> {
    let net = canonical(net);
    (net.prefix_len() == net.max_prefix_len()).then(|| Key::new(net.addr()))
}

/// One transaction of changes to a room, applied all or nothing: the sets emptied first
/// (`flush`), then `remove`, then `add`. To give an element present already a new timeout,
/// name it in both `remove` and `add`. The caller keeps the elements disjoint (see the
/// module doc); `remove` must name elements that are there (an absent one fails the whole
/// transaction with `ENOENT`: the caller then rewrites the room with `flush`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IntervalChanges {
    /// Empty both sets of the room first.
    pub flush: bool,
    /// Elements to delete.
    pub remove: Vec<IpNet>,
    /// Elements to add, each with its kernel timeout (`None`: until deleted).
    pub add: Vec<(IpNet, Option<Duration>)>,
}

impl IntervalChanges {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        !self.flush && self.remove.is_empty() && self.add.is_empty()
    }
}

/// An interval as kernel keys: the family's index, the first address, and the first
/// address after it (`None`: it runs to the family's last address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Span {
    fam: usize,
    start: [u8; 16],
    end: Option<[u8; 16]>,
}

/// An IPv4-mapped IPv6 network (`::ffff:10.0.0.0/120`) counts as IPv4, like hosts do.
fn canonical(net: IpNet) -> IpNet {
    match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => Ipv4Net::new(v4, n.prefix_len() - 96).map_or(net, IpNet::V4),
            None => net,
        },
        other => other,
    }
    .trunc()
}

fn span(net: IpNet) -> Span {
    match canonical(net) {
        IpNet::V4(n) => {
            let mut start = [0; 16];
            start[..4].copy_from_slice(&n.network().octets());
            let end = u32::from(n.broadcast()).checked_add(1).map(|e| {
                let mut b = [0; 16];
                b[..4].copy_from_slice(&e.to_be_bytes());
                b
            });
            Span { fam: 0, start, end }
        }
        IpNet::V6(n) => Span {
            fam: 1,
            start: n.network().octets(),
            end: u128::from(n.broadcast())
                .checked_add(1)
                .map(u128::to_be_bytes),
        },
    }
}

/// Writes one element list command for intervals of one family: each as its start (with
/// the timeout when `timeouts`) and its end.
fn interval_command(
    batch: &mut Batch,
    cmd: Cmd,
    table: &str,
    fam: &Family,
    spans: &[(Span, Option<u64>)],
    timeouts: bool,
) -> u32 {
    let len = fam.key_len as usize;
    element_list_command(batch, cmd, table, fam, |w| {
        for (span, timeout) in spans {
            w.nested(wire::NFTA_LIST_ELEM, |w| {
                w.nested(wire::NFTA_SET_ELEM_KEY, |w| {
                    w.bytes(wire::NFTA_DATA_VALUE, &span.start[..len]);
                });
                if let (true, Some(ms)) = (timeouts, timeout) {
                    w.be64(wire::NFTA_SET_ELEM_TIMEOUT, *ms);
                }
            });
            if let Some(end) = &span.end {
                w.nested(wire::NFTA_LIST_ELEM, |w| {
                    w.be32(wire::NFTA_SET_ELEM_FLAGS, wire::NFT_SET_ELEM_INTERVAL_END);
                    w.nested(wire::NFTA_SET_ELEM_KEY, |w| {
                        w.bytes(wire::NFTA_DATA_VALUE, &end[..len]);
                    });
                });
            }
        }
    })
}

/// The networks of one family as spans, with their timeouts in milliseconds.
fn spans_of<'a>(
    fam: usize,
    nets: impl Iterator<Item = (&'a IpNet, Option<Duration>)>,
) -> Vec<(Span, Option<u64>)> {
    nets.filter(|(n, _)| host_key(**n).is_none())
        .map(|(n, t)| (span(*n), t.map(timeout_ms)))
        .filter(|(s, _)| s.fam == fam)
        .collect()
}

/// The hosts of one family as hash-set elements, with their timeouts in milliseconds.
fn hosts_of<'a>(
    fam: usize,
    nets: impl Iterator<Item = (&'a IpNet, Option<Duration>)>,
) -> Vec<Element> {
    nets.filter_map(|(n, t)| Some((host_key(*n)?, t.map(timeout_ms))))
        .filter(|(k, _)| k.fam == fam)
        .collect()
}

impl NftBackend {
    /// Applies `changes` to the sets of `room` in one netlink transaction (all or nothing):
    /// hosts to the host sets (1,000 a message), networks to the interval sets (500 a
    /// message). An overlapping network makes the kernel refuse the whole transaction
    /// (`EEXIST`), an absent element to delete too (`ENOENT`).
    pub fn change_intervals(
        &mut self,
        room: Room,
        changes: &IntervalChanges,
    ) -> Result<(), NftError> {
        if changes.is_empty() {
            return Ok(());
        }
        let table = self.settings.table.clone();
        let mut batch = self.sock.batch();
        let mut labels = Vec::new();
        let (host_sets, net_sets) = room.sets();
        let removed = || changes.remove.iter().map(|n| (n, None));
        let added = || changes.add.iter().map(|(n, t)| (n, *t));
        for i in 0..2 {
            let (hosts, nets) = (&host_sets[i], &net_sets[i]);
            if changes.flush {
                for fam in [hosts, nets] {
                    let seq = batch.command(Cmd::DelSetElem, 0, |w| {
                        w.str(wire::NFTA_SET_ELEM_LIST_TABLE, &table);
                        w.str(wire::NFTA_SET_ELEM_LIST_SET, fam.set);
                    });
                    labels.push(Label::new(
                        seq,
                        format!("emptying set inet {table} {}", fam.set),
                    ));
                }
            } else {
                let gone = hosts_of(i, removed());
                let what = format!(
                    "deleting {} hosts from set inet {table} {}",
                    gone.len(),
                    hosts.set
                );
                for chunk in gone.chunks(ELEMENTS_PER_MESSAGE) {
                    let seq =
                        element_command(&mut batch, Cmd::DelSetElem, &table, hosts, chunk, false);
                    labels.push(Label::new(seq, what.clone()));
                }
                let gone = spans_of(i, removed());
                let what = format!(
                    "deleting {} networks from set inet {table} {}",
                    gone.len(),
                    nets.set
                );
                for chunk in gone.chunks(ELEMENTS_PER_MESSAGE / 2) {
                    let seq =
                        interval_command(&mut batch, Cmd::DelSetElem, &table, nets, chunk, false);
                    labels.push(Label::new(seq, what.clone()));
                }
            }
            let new = hosts_of(i, added());
            let what = format!(
                "adding {} hosts to set inet {table} {}",
                new.len(),
                hosts.set
            );
            for chunk in new.chunks(ELEMENTS_PER_MESSAGE) {
                let seq = element_command(&mut batch, Cmd::NewSetElem, &table, hosts, chunk, true);
                labels.push(Label::new(seq, what.clone()));
            }
            let new = spans_of(i, added());
            let what = format!(
                "adding {} networks to set inet {table} {} (refused if one overlaps another)",
                new.len(),
                nets.set
            );
            for chunk in new.chunks(ELEMENTS_PER_MESSAGE / 2) {
                let seq = interval_command(&mut batch, Cmd::NewSetElem, &table, nets, chunk, true);
                labels.push(Label::new(seq, what.clone()));
            }
        }
        self.sock
            .commit(batch)
            .map_err(|r| self.rejected(r, &labels, "changing the fleet's sets"))
    }

    /// The elements of `room`'s sets now, as networks (a host is a /32 or /128), with the
    /// time each has left when it has a timeout. An interval that is no CIDR network (made
    /// by hand) is listed as the networks that cover it.
    pub fn list_intervals(&self, room: Room) -> Result<Vec<(IpNet, Option<Duration>)>, NftError> {
        let mut out = Vec::new();
        let (hosts, nets) = room.sets();
        for fam in hosts {
            self.dump_set(fam, |e| {
                out.extend(parse_element(e).map(|(a, left)| (IpNet::from(a), left)));
            })?;
        }
        for fam in nets {
            // (key, is an end, time left)
            let mut keys: Vec<(Vec<u8>, bool, Option<Duration>)> = Vec::new();
            self.dump_set(fam, |e| keys.extend(interval_key(e)))?;
            out.extend(intervals_of(keys));
        }
        Ok(out)
    }
}

/// One element of an interval set dump: its key, whether it ends an interval, time left.
fn interval_key(e: Attrs<'_>) -> Option<(Vec<u8>, bool, Option<Duration>)> {
    let key = e
        .nested(wire::NFTA_SET_ELEM_KEY)?
        .get(wire::NFTA_DATA_VALUE)?;
    let end = e.be32(wire::NFTA_SET_ELEM_FLAGS).unwrap_or(0) & wire::NFT_SET_ELEM_INTERVAL_END != 0;
    let left = e
        .be64(wire::NFTA_SET_ELEM_EXPIRATION)
        .or_else(|| e.be64(wire::NFTA_SET_ELEM_TIMEOUT))
        .map(Duration::from_millis);
    Some((key.to_vec(), end, left))
}

/// Pairs each start with the end after it (ends first at the same key: the end of one
/// interval and the start of the next one).
fn intervals_of(
    mut keys: Vec<(Vec<u8>, bool, Option<Duration>)>,
) -> Vec<(IpNet, Option<Duration>)> {
    keys.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
    let mut out = Vec::new();
    let mut open: Option<(Vec<u8>, Option<Duration>)> = None;
    let close = |start: &[u8], end: Option<&[u8]>, left, out: &mut Vec<_>| {
        for net in cover(start, end) {
            out.push((net, left));
        }
    };
    for (key, is_end, left) in keys {
        match (is_end, open.take()) {
            (true, Some((start, l))) => close(&start, Some(&key), l, &mut out),
            (true, None) => {}
            (false, Some((start, l))) => {
                // A start without its end: it ran to the next start.
                close(&start, Some(&key), l, &mut out);
                open = Some((key, left));
            }
            (false, None) => open = Some((key, left)),
        }
    }
    if let Some((start, l)) = open {
        close(&start, None, l, &mut out);
    }
    out
}

/// The CIDR networks that make up `[start, end)` (`end` `None`: to the last address).
fn cover(start: &[u8], end: Option<&[u8]>) -> Vec<IpNet> {
    // Addresses as numbers: IPv4 in the low 32 bits.
    let number = |b: &[u8]| match b.len() {
        4 => <[u8; 4]>::try_from(b)
            .ok()
            .map(|a| u128::from(u32::from_be_bytes(a))),
        16 => <[u8; 16]>::try_from(b).ok().map(u128::from_be_bytes),
        _ => None,
    };
    let max = if start.len() == 4 {
        u128::from(u32::MAX)
    } else {
        u128::MAX
    };
    let Some(first) = number(start) else {
        return Vec::new();
    };
    let last = match end.map(number) {
        None => max,
        Some(Some(e)) if e > first => e - 1,
        Some(_) => return Vec::new(),
    };
    if start.len() == 4 {
        let v4 = |n: u128| Ipv4Addr::from(u32::try_from(n).unwrap_or(u32::MAX));
        Ipv4Subnets::new(v4(first), v4(last), 0)
            .map(IpNet::V4)
            .collect()
    } else {
        Ipv6Subnets::new(Ipv6Addr::from(first), Ipv6Addr::from(last), 0)
            .map(IpNet::V6)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn a_network_spans_from_its_first_address_to_the_one_after_its_last() {
        let s = span(net("10.77.1.9/24"));
        assert_eq!((s.fam, &s.start[..4]), (0, &[10, 77, 1, 0][..]));
        assert_eq!(s.end.map(|e| e[..4].to_vec()), Some(vec![10, 77, 2, 0]));
        let host = span(net("fd77::5/128"));
        assert_eq!(host.fam, 1);
        assert_eq!(host.end.unwrap()[15], 6);
        assert_eq!(
            span(net("255.255.255.0/24")).end,
            None,
            "runs to the last address"
        );
        let mapped = span(net("::ffff:10.77.0.0/112"));
        assert_eq!((mapped.fam, &mapped.start[..4]), (0, &[10, 77, 0, 0][..]));
    }

    #[test]
    fn a_dump_pairs_starts_with_ends_even_when_intervals_touch() {
        let k = |b: [u8; 4], end: bool| (b.to_vec(), end, Some(Duration::from_secs(5)));
        // 10.0.0.1, 10.0.0.2 (touching) and 10.1.0.0/16, in the kernel's descending order.
        let keys = vec![
            k([10, 2, 0, 0], true),
            k([10, 1, 0, 0], false),
            k([10, 0, 0, 3], true),
            k([10, 0, 0, 2], false),
            k([10, 0, 0, 2], true),
            k([10, 0, 0, 1], false),
        ];
        let nets: Vec<String> = intervals_of(keys)
            .into_iter()
            .map(|(n, _)| n.to_string())
            .collect();
        assert_eq!(nets, ["10.0.0.1/32", "10.0.0.2/32", "10.1.0.0/16"]);
        let open = intervals_of(vec![k([255, 255, 255, 0], false)]);
        assert_eq!(open[0].0, net("255.255.255.0/24"));
    }

    #[test]
    fn a_range_that_is_no_cidr_network_is_listed_as_the_networks_covering_it() {
        let nets = cover(&[10, 0, 0, 1], Some(&[10, 0, 0, 4]));
        assert_eq!(nets, [net("10.0.0.1/32"), net("10.0.0.2/31")]);
    }

    #[test]
    fn changes_write_two_elements_per_interval_and_flush_with_an_empty_list() {
        let mut batch = Batch::new(1);
        let spans = vec![
            (span(net("10.0.0.0/24")), Some(1000)),
            (span(net("10.0.1.5/32")), None),
        ];
        interval_command(
            &mut batch,
            Cmd::NewSetElem,
            "t",
            &FLEET_FAMILIES[0],
            &spans,
            true,
        );
        let f = batch.finish().unwrap().unwrap();
        let msgs: Vec<_> = wire::replies(&f.bytes).map(|r| r.unwrap()).collect();
        let list = msgs[1]
            .attrs()
            .nested(wire::NFTA_SET_ELEM_LIST_ELEMENTS)
            .unwrap();
        let elements: Vec<_> = list.map(|(_, e)| interval_key(Attrs(e)).unwrap()).collect();
        assert_eq!(elements.len(), 4);
        assert_eq!(
            elements[0],
            (vec![10, 0, 0, 0], false, Some(Duration::from_secs(1)))
        );
        assert_eq!(elements[1], (vec![10, 0, 1, 0], true, None));
        assert_eq!(elements[2], (vec![10, 0, 1, 5], false, None));
        assert_eq!(elements[3], (vec![10, 0, 1, 6], true, None));
    }
}
