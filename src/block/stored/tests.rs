use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::*;
use crate::block::parse_target;

/// A block as the shipped responders record it: nftables, the route, hosts.deny.
fn shipped(target: &str, left_secs: u64) -> BlockRecord {
    let target = parse_target(target).unwrap();
    let text = target_text(&target);
    let family = if target.addr().is_ipv4() { 4 } else { 6 };
    let since = SystemTime::UNIX_EPOCH + Duration::from_millis(1_765_000_000_123);
    BlockRecord {
        target,
        since,
        until: Some(since + Duration::from_secs(3600)),
        offences: 1,
        origin: Origin::Manual,
        trigger: None,
        reason: "benchmark".into(),
        actions: vec![
            Action {
                responder: "nftables".into(),
                detail: format!(
                    "set inet portsentry blocks{family} timeout {}",
                    humantime::format_duration(Duration::from_secs(left_secs))
                ),
                undo: Undo::Nftables {
                    table: "portsentry".into(),
                },
            },
            Action {
                responder: "route".into(),
                detail: format!("/sbin/ip route add unreachable {text}"),
                undo: Undo::Command {
                    command: format!("/sbin/ip route del unreachable {text}"),
                },
            },
            Action {
                responder: "hosts_deny".into(),
                detail: format!("/etc/hosts.deny: ALL: [{text}] : DENY"),
                undo: Undo::RemoveLine {
                    file: PathBuf::from("/etc/hosts.deny"),
                    line: format!("ALL: [{text}] : DENY"),
                },
            },
        ],
        members: Vec::new(),
    }
}

#[test]
fn a_stored_block_gives_back_the_record_it_was_made_from() {
    let mut interner = Interner::default();
    for (target, left) in [("10.78.0.1", 3599), ("fd78::2", 86_399), ("10.0.0.0/24", 1)] {
        let record = shipped(target, left);
        let stored = interner.store(record.clone());
        assert_eq!(stored.record(record.target), record);
    }
}

#[test]
fn blocks_alike_share_their_chain_and_numbers() {
    let mut interner = Interner::default();
    let a = interner.store(shipped("10.78.0.1", 3599));
    let b = interner.store(shipped("10.78.0.2", 3599));
    let c = interner.store(shipped("10.78.0.3", 3598));
    assert!(Arc::ptr_eq(&a.actions, &b.actions));
    assert!(!Arc::ptr_eq(&a.actions, &c.actions));
    assert!(
        Arc::ptr_eq(&a.actions.chain, &c.actions.chain),
        "only a number differs"
    );
    assert!(Arc::ptr_eq(&a.shared, &c.shared));
    assert_eq!(&*c.actions.numbers, &[4, 59, 58]);
}

#[test]
fn texts_with_odd_numbers_and_marker_characters_come_back_unchanged() {
    let mut interner = Interner::default();
    let mut record = shipped("10.78.0.1", 60);
    record.actions[0].detail = "007 0 4294967296 10.78.0.10 110.78.0.1x 12".into();
    record.trigger = Some(Trigger {
        port: 22,
        proto: Proto::Tcp,
        mode: Mode::Stcp,
        kind: "TCP SYN/Normal scan".into(),
    });
    record.members = vec!["10.78.0.9".parse().unwrap()];
    let stored = interner.store(record.clone());
    assert_eq!(stored.record(record.target), record);
    assert_eq!(stored.proto(), Some(Proto::Tcp));
    assert_eq!(stored.members().len(), 1);
    // A text that holds a stand-in character is kept as it is.
    record.actions[1].detail = "a\0b\u{1}c 10.78.0.1".into();
    let stored = interner.store(record.clone());
    assert!(stored.actions.chain.verbatim);
    assert_eq!(stored.record(record.target), record);
}

#[test]
fn times_are_kept_to_the_millisecond() {
    let mut interner = Interner::default();
    let mut record = shipped("10.78.0.1", 60);
    record.since += Duration::from_nanos(456_789);
    record.until = None;
    let mut stored = interner.store(record.clone());
    assert_eq!(
        stored.since(),
        SystemTime::UNIX_EPOCH + Duration::from_millis(1_765_000_000_123)
    );
    assert_eq!(stored.until(), None);
    let end = record.since + Duration::from_secs(10);
    stored.set_until(Some(end));
    assert!(stored.expired(end) && !stored.expired(record.since));
    assert_eq!(
        stored.until(),
        Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_765_000_010_123))
    );
}

#[test]
fn parts_no_block_uses_are_swept_as_blocks_come_and_go() {
    let mut interner = Interner::default();
    // Each block's own timeout: its own numbers, which go with it.
    for left in 0..1000 {
        drop(interner.store(shipped("10.78.0.1", 3600 + left)));
    }
    let parts = interner.parts();
    assert!(parts < 200, "{parts} parts kept for no block");
}

#[test]
fn a_block_is_a_few_dozen_bytes() {
    assert!(
        std::mem::size_of::<Stored>() <= 40,
        "{}",
        std::mem::size_of::<Stored>()
    );
}

/// A journal as the code before compact records wrote it (written by that code's
/// `Journal::append`; shipped responders, a scan block, an escalated prefix with members,
/// a fleet block with a Lua undo, an imported block blocked again, an offence).
const OLD_JOURNAL: &str = include_str!("../../../tests/data/journal-before-compact-records.state");

#[test]
fn a_journal_written_before_compact_records_loads_and_compacts_to_the_same_lines() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portsentry.state");
    std::fs::write(&path, OLD_JOURNAL).unwrap();
    let (_, replay) = crate::block::journal::Journal::open(&path).unwrap();
    assert!(replay.warnings.is_empty(), "{:?}", replay.warnings);
    assert_eq!(replay.active.len(), 5);
    assert_eq!(replay.offences.len(), 1);
    let mut interner = Interner::default();
    let mut records: Vec<BlockRecord> = replay
        .active
        .values()
        .map(|r| interner.store(r.clone()).record(r.target))
        .collect();
    for r in &records {
        assert_eq!(Some(r), replay.active.get(&r.target), "comes back whole");
    }
    // Compacted from the records the core gives back: the very lines the old code wrote.
    records.sort_by_key(|r| (r.since, r.target));
    let compacted = dir.path().join("compacted.state");
    let (mut journal, _) = crate::block::journal::Journal::open(&compacted).unwrap();
    journal
        .compact(records.iter(), replay.offences.iter())
        .unwrap();
    let written = std::fs::read_to_string(&compacted).unwrap();
    let old: Vec<&str> = OLD_JOURNAL.lines().collect();
    for line in written.lines() {
        assert!(old.contains(&line), "not in the old journal: {line}");
    }
    assert_eq!(written.lines().count(), 6);
    // `list --json` is these records serialized: the same text as before.
    for r in &records {
        let json = serde_json::to_string(r).unwrap();
        assert!(OLD_JOURNAL.contains(&json[1..json.len() - 1]), "{json}");
    }
}
