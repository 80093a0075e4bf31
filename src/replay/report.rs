//! What a replay found, per source: the verdict the daemon would have reached and the
//! evidence behind it, written as a table for people or as JSON lines for scripts.

use std::collections::{BTreeSet, HashMap};
use std::io::{self, Write};
use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::event::{Hit, ProbeKind, Proto};
use crate::record::{BlockRecord, Target, target_text};

/// Sources tracked one by one at most; past it, sources whose probes stay below the trigger
/// are only counted (a flood of forged sources must not grow a replay's memory without end),
/// while any source the daemon would have acted on is still listed.
pub const MAX_SOURCES: usize = 200_000;
/// Distinct (protocol, port) pairs listed per source at most (the count goes on).
const MAX_PORTS_LISTED: usize = 64;
/// Sources below the trigger the table shows without `--all`.
const BELOW_TRIGGER_SHOWN: usize = 20;

/// What the daemon would have done about a source, best first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Blocked (alone, or inside an escalated prefix).
    WouldBlock,
    /// Actionable, but the block budget (`BLOCK_RATE_LIMIT`, per prefix, or the line of
    /// waiting blocks) held it back until the capture ended.
    HeldBack,
    /// Logged as an attack but not acted on: forgeable evidence below
    /// `FORGEABLE_SCAN_TRIGGER`, or `BLOCK_TCP`/`BLOCK_UDP` set to log only.
    AlertOnly,
    /// Probes counted, but fewer distinct ports than `SCAN_TRIGGER`.
    BelowTrigger,
    /// A protected address (gateway, nameserver, established peer).
    Protected,
    /// In the ignore list, or one of the host's own addresses.
    Ignored,
    /// Every probe answered a flow the host started (a reply, not a scan).
    AnswerToOwnTraffic,
}

impl Verdict {
    /// The words of the table.
    pub fn words(self) -> &'static str {
        match self {
            Verdict::WouldBlock => "would block",
            Verdict::HeldBack => "held back by the block budget",
            Verdict::AlertOnly => "alert only",
            Verdict::BelowTrigger => "below trigger",
            Verdict::Protected => "protected",
            Verdict::Ignored => "ignored",
            Verdict::AnswerToOwnTraffic => "answer to own traffic",
        }
    }
}

/// The block a source would have got.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blocked {
    /// The host, or the escalated prefix holding it.
    pub target: Target,
    /// When (capture time).
    pub since: SystemTime,
    /// Until when; `None`: permanent.
    pub until: Option<SystemTime>,
    /// The offence number (repeat offences last longer).
    pub offences: u32,
}

/// Everything seen of one source.
#[derive(Debug, Clone)]
pub struct Source {
    /// The address.
    pub src: IpAddr,
    /// First and last probe (capture time).
    pub first: SystemTime,
    /// Last probe.
    pub last: SystemTime,
    /// Probes counted by a sensor (answers to own traffic included).
    pub probes: u64,
    ports: BTreeSet<(Proto, u16)>,
    ports_total: u32,
    kinds: BTreeSet<&'static str>,
    /// A completed handshake proved the address.
    pub proven: bool,
    answers: u64,
    /// The best outcome so far, before blocks (which the end decides).
    outcome: Option<Verdict>,
    /// Why an actionable alert was not acted on.
    pub not_acted: Option<&'static str>,
    /// Asked the block manager to block it.
    pub requested: bool,
    /// The block.
    pub block: Option<Blocked>,
}

impl Source {
    fn new(src: IpAddr, at: SystemTime) -> Source {
        Source {
            src,
            first: at,
            last: at,
            probes: 0,
            ports: BTreeSet::new(),
            ports_total: 0,
            kinds: BTreeSet::new(),
            proven: false,
            answers: 0,
            outcome: None,
            not_acted: None,
            requested: false,
            block: None,
        }
    }

    /// The verdict.
    pub fn verdict(&self) -> Verdict {
        if self.block.is_some() {
            Verdict::WouldBlock
        } else if self.requested {
            Verdict::HeldBack
        } else if let Some(v) = self.outcome {
            v
        } else {
            Verdict::AnswerToOwnTraffic
        }
    }

    /// The (protocol, port) pairs probed, as `tcp/22`.
    pub fn ports(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|(p, port)| format!("{}/{port}", p.lower()))
            .collect()
    }

    /// Evidence class: proven by a handshake, or forgeable.
    pub fn evidence(&self) -> &'static str {
        if self.proven { "proven" } else { "forgeable" }
    }
}

/// A short name of a probe kind.
fn kind_name(kind: &ProbeKind) -> &'static str {
    match kind {
        ProbeKind::Connect => "connect",
        ProbeKind::Udp => "udp",
        ProbeKind::Syn => "syn",
        ProbeKind::Fin => "fin",
        ProbeKind::Null => "null",
        ProbeKind::Xmas => "xmas",
        ProbeKind::Ack => "ack",
        ProbeKind::Maimon => "maimon",
        ProbeKind::UnknownTcp(_) => "other-tcp",
    }
}

/// The per-source accounts of a replay.
#[derive(Debug, Default)]
pub struct Sources {
    by_ip: HashMap<IpAddr, Source, foldhash::fast::RandomState>,
    /// Network blocks made (escalated prefixes), for the sources that arrive inside them.
    nets: Vec<Blocked>,
    /// Probes of sources not listed one by one (the table was full), counted.
    pub untracked: u64,
}

impl Sources {
    /// The account of `src`, made at `at` if new; `None` when the table is full and the
    /// source is not to be tracked (`must` tracks it anyway: it is being acted on).
    fn account(&mut self, src: IpAddr, at: SystemTime, must: bool) -> Option<&mut Source> {
        let src = src.to_canonical();
        let len = self.by_ip.len();
        if !self.by_ip.contains_key(&src) {
            if len >= MAX_SOURCES && !must {
                self.untracked += 1;
                return None;
            }
            self.by_ip.insert(src, Source::new(src, at));
        }
        let s = self.by_ip.get_mut(&src)?;
        s.last = s.last.max(at);
        s.first = s.first.min(at);
        Some(s)
    }

    /// A probe a sensor counted, and what the filters (or the flow table) made of it;
    /// `acted` when the daemon acts on it (a block asked for, or in force already): such a
    /// source is listed even past [`MAX_SOURCES`].
    pub fn probe(&mut self, hit: &Hit, outcome: Verdict, acted: bool) {
        let Some(s) = self.account(hit.src, hit.time, acted) else {
            return;
        };
        Self::count(s, hit, outcome);
    }

    /// Adds one probe to a source's account.
    fn count(s: &mut Source, hit: &Hit, outcome: Verdict) {
        s.probes += 1;
        s.proven |= hit.kind.is_proven();
        s.kinds.insert(kind_name(&hit.kind));
        let key = (hit.proto(), hit.port);
        if !s.ports.contains(&key) {
            s.ports_total += 1;
            if s.ports.len() < MAX_PORTS_LISTED {
                s.ports.insert(key);
            }
        }
        if outcome == Verdict::AnswerToOwnTraffic {
            s.answers += 1;
        } else {
            s.outcome = Some(s.outcome.map_or(outcome, |o| o.min(outcome)));
        }
    }

    /// An actionable alert of `src` that was not acted on, and why.
    pub fn not_acted(&mut self, src: IpAddr, at: SystemTime, why: &'static str) {
        if let Some(s) = self.account(src, at, false) {
            s.not_acted = Some(why);
        }
    }

    /// The block manager was asked to block `src`.
    pub fn requested(&mut self, src: IpAddr, at: SystemTime) {
        if let Some(s) = self.account(src, at, true) {
            s.requested = true;
        }
    }

    /// A block came in force: its host, or every member of an escalated prefix.
    pub fn blocked(&mut self, record: &BlockRecord) {
        let block = Blocked {
            target: record.target,
            since: record.since,
            until: record.until,
            offences: record.offences,
        };
        let hosts: Vec<IpAddr> = if record.members.is_empty() {
            vec![record.target.addr()]
        } else {
            record.members.clone()
        };
        for ip in hosts {
            if let Some(s) = self.account(ip, record.since, true) {
                // The first block tells when; an escalation keeps the host's own start.
                let since = s.block.as_ref().map_or(block.since, |b| b.since);
                s.block = Some(Blocked {
                    since,
                    ..block.clone()
                });
            }
        }
        // Sources of the prefix that were held back are covered now.
        if !record.members.is_empty() || record.target.prefix_len() < record.target.max_prefix_len()
        {
            self.nets.push(block.clone());
            for s in self.by_ip.values_mut() {
                if s.block.is_none() && s.requested && record.target.contains(&s.src) {
                    s.block = Some(block.clone());
                }
            }
        }
    }

    /// A probe of `src` found it blocked already: by its own block, or inside a network's.
    pub fn already_blocked(&mut self, src: IpAddr, at: SystemTime) {
        let covering = self
            .nets
            .iter()
            .rev()
            .find(|b| b.target.contains(&src.to_canonical()))
            .cloned();
        if let Some(s) = self.account(src, at, true)
            && s.block.is_none()
        {
            s.block = covering;
        }
    }

    /// Every source, best verdict first, then by first probe.
    pub fn sorted(&self) -> Vec<&Source> {
        let mut v: Vec<&Source> = self.by_ip.values().collect();
        v.sort_by_key(|s| (s.verdict(), s.first, s.src));
        v
    }

    /// Sources tracked.
    pub fn len(&self) -> usize {
        self.by_ip.len()
    }

    /// True when no source probed anything.
    pub fn is_empty(&self) -> bool {
        self.by_ip.is_empty()
    }
}

/// The figures of a replay as a whole.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    /// Files read.
    pub files: usize,
    /// Packets read.
    pub packets: u64,
    /// Bytes read.
    pub bytes: u64,
    /// Packets carrying IPv4 or IPv6.
    pub ip_packets: u64,
    /// Packets of a link type not understood.
    pub unknown_link: u64,
    /// Probes: packets to the host shaped as a probe (before watched ports).
    pub probes: u64,
    /// Probes a sensor counted (to a watched port, not an answer, not taken by a socket).
    pub counted: u64,
    /// Sources that probed.
    pub sources: u64,
    /// Sources the daemon would have blocked.
    pub would_block: u64,
    /// Sources held back by the block budget.
    pub held_back: u64,
    /// Blocks the daemon would have made (an escalated prefix is one).
    pub blocks: u64,
    /// Probes of sources only counted, past [`MAX_SOURCES`].
    pub unlisted_probes: u64,
    /// The capture's first packet (seconds since the epoch).
    pub capture_start: f64,
    /// Its span in seconds.
    pub capture_seconds: f64,
    /// Time the replay took, in seconds (both passes).
    pub seconds: f64,
    /// Packets per second of the replay.
    pub packets_per_second: f64,
    /// The host's addresses, as given or learned.
    pub local: Vec<String>,
    /// Whether they were learned from the capture.
    pub local_learned: bool,
    /// TCP ports with a listener.
    pub listening_tcp: Vec<u16>,
    /// UDP ports with a listener.
    pub listening_udp: Vec<u16>,
    /// Whether they were learned from the capture.
    pub listening_learned: bool,
}

fn secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// A capture time as the table and the plugin traces print it.
pub fn clock(t: SystemTime) -> String {
    chrono::DateTime::<chrono::Local>::from(t)
        .format("%H:%M:%S%.3f")
        .to_string()
}

fn duration_text(block: &Blocked) -> String {
    match block.until {
        None => "permanent".into(),
        Some(u) => humantime::format_duration(Duration::from_secs(
            u.duration_since(block.since).unwrap_or_default().as_secs(),
        ))
        .to_string(),
    }
}

/// One source in JSON.
#[derive(Serialize)]
struct SourceJson {
    #[serde(rename = "type")]
    kind: &'static str,
    source: String,
    verdict: Verdict,
    why: Option<&'static str>,
    probes: u64,
    ports: Vec<String>,
    distinct_ports: u32,
    kinds: Vec<&'static str>,
    evidence: &'static str,
    first: f64,
    last: f64,
    block: Option<BlockJson>,
}

#[derive(Serialize)]
struct BlockJson {
    target: String,
    escalated: bool,
    since: f64,
    until: Option<f64>,
    seconds: Option<u64>,
    offences: u32,
}

fn why(s: &Source) -> Option<&'static str> {
    match s.verdict() {
        Verdict::AlertOnly => s.not_acted,
        _ => None,
    }
}

/// Writes one JSON object per source, then `{"type":"summary",…}`.
pub fn write_json(out: &mut dyn Write, sources: &Sources, summary: &Summary) -> io::Result<()> {
    for s in sources.sorted() {
        let j = SourceJson {
            kind: "source",
            source: s.src.to_string(),
            verdict: s.verdict(),
            why: why(s),
            probes: s.probes,
            ports: s.ports(),
            distinct_ports: s.ports_total,
            kinds: s.kinds.iter().copied().collect(),
            evidence: s.evidence(),
            first: secs(s.first),
            last: secs(s.last),
            block: s.block.as_ref().map(|b| BlockJson {
                target: target_text(&b.target),
                escalated: b.target.prefix_len() < b.target.max_prefix_len(),
                since: secs(b.since),
                until: b.until.map(secs),
                seconds: b
                    .until
                    .map(|u| u.duration_since(b.since).unwrap_or_default().as_secs()),
                offences: b.offences,
            }),
        };
        serde_json::to_writer(&mut *out, &j)?;
        writeln!(out)?;
    }
    let mut value = serde_json::to_value(summary)?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("type".into(), "summary".into());
    }
    serde_json::to_writer(&mut *out, &value)?;
    writeln!(out)
}

/// Writes the table: every source with a verdict above "below trigger", the first
/// [`BELOW_TRIGGER_SHOWN`] of the rest (all with `all`), then the summary.
pub fn write_table(
    out: &mut dyn Write,
    sources: &Sources,
    summary: &Summary,
    all: bool,
) -> io::Result<()> {
    let mut rows: Vec<[String; 8]> = vec![[
        "source".into(),
        "verdict".into(),
        "probes".into(),
        "ports".into(),
        "evidence".into(),
        "first".into(),
        "last".into(),
        "block".into(),
    ]];
    let mut hidden = 0u64;
    let mut shown_below = 0usize;
    for s in sources.sorted() {
        if s.verdict() > Verdict::AlertOnly && !all {
            if shown_below >= BELOW_TRIGGER_SHOWN {
                hidden += 1;
                continue;
            }
            shown_below += 1;
        }
        let ports = s.ports();
        let mut port_text = ports.iter().take(3).cloned().collect::<Vec<_>>().join(",");
        if s.ports_total as usize > 3 {
            port_text.push_str(&format!(",… ({})", s.ports_total));
        }
        let block = match &s.block {
            None => why(s).map(|w| format!("({w})")).unwrap_or_default(),
            Some(b) if b.target.prefix_len() < b.target.max_prefix_len() => format!(
                "{} for {} (escalated to {})",
                clock(b.since),
                duration_text(b),
                target_text(&b.target)
            ),
            Some(b) => format!("{} for {}", clock(b.since), duration_text(b)),
        };
        rows.push([
            s.src.to_string(),
            s.verdict().words().to_string(),
            s.probes.to_string(),
            port_text,
            format!(
                "{} {}",
                s.evidence(),
                s.kinds.iter().copied().collect::<Vec<_>>().join("/")
            ),
            clock(s.first),
            clock(s.last),
            block,
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for row in &rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(widths).enumerate() {
            let pad = w.saturating_sub(cell.chars().count());
            if i == 2 {
                line.push_str(&" ".repeat(pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                if i < 7 {
                    line.push_str(&" ".repeat(pad));
                }
            }
            if i < 7 {
                line.push_str("  ");
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    if hidden > 0 {
        writeln!(
            out,
            "… and {hidden} more source(s) below the trigger or not acted on (--all lists them)"
        )?;
    }
    writeln!(out)?;
    writeln!(
        out,
        "{} packet(s) ({} IP) from {} file(s), {:.1} s of capture; {} probe(s), {} counted, from {} source(s)",
        summary.packets,
        summary.ip_packets,
        summary.files,
        summary.capture_seconds,
        summary.probes,
        summary.counted,
        summary.sources
    )?;
    writeln!(
        out,
        "would block: {} source(s) in {} block(s); held back by the block budget: {}",
        summary.would_block, summary.blocks, summary.held_back
    )?;
    writeln!(
        out,
        "host addresses ({}): {}",
        if summary.local_learned {
            "learned from the capture; --local to set"
        } else {
            "--local"
        },
        summary.local.join(", ")
    )?;
    let ports = |p: &[u16]| {
        if p.is_empty() {
            "none".to_string()
        } else {
            p.iter().map(u16::to_string).collect::<Vec<_>>().join(",")
        }
    };
    writeln!(
        out,
        "listening ({}): tcp {}; udp {}",
        if summary.listening_learned {
            "learned from the capture; --listening to set"
        } else {
            "--listening"
        },
        ports(&summary.listening_tcp),
        ports(&summary.listening_udp)
    )?;
    if summary.unlisted_probes > 0 {
        writeln!(
            out,
            "{} probe(s) of sources past the first {MAX_SOURCES} were counted but not listed",
            summary.unlisted_probes
        )?;
    }
    writeln!(
        out,
        "replayed in {:.2} s ({:.0} packets/s)",
        summary.seconds, summary.packets_per_second
    )
}
