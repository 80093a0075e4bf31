//! The block manager's pure core: every decision about blocks, as a function of a message,
//! the state and the time. No thread, no file, no socket and no clock of its own: the shell
//! ([`super::manager`]) reads the clock, hands each message in with [`Now`], and carries out
//! the [`Output`] — work for the responder pool, journal entries, log lines, history lines,
//! replies, changes of the published view. So admission, deferral, both rate limits,
//! escalation to prefixes, expiry and restore run in unit tests on a fake clock, and a
//! replay can drive them on a capture's time.
//!
//! A block's life: *applying* (responders running; later probes say `block in progress`) →
//! *active* (journaled, then reported, in the view) → *releasing* (undo running) → gone,
//! remembered as an offence so the next block of the same target lasts longer. A block that
//! failed or was dropped leaves no trace but its log line, so the host's next probe tries
//! again.
//!
//! Prefixes: the hosts of one escalation prefix (`ESCALATE_PREFIX_V4` / `_V6`) share one
//! budget (`BLOCK_RATE_LIMIT_PER_PREFIX`) inside the global one, and once `ESCALATE_AFTER_V4`
//! / `_V6` of them were blocked on evidence that counts within `SCAN_TRIGGER_WINDOW`, the
//! prefix is blocked as one record and their host blocks are folded into it — unless the
//! prefix holds this host's address, a protected address or an ignore-list entry.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::num::NonZeroU64;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use super::journal::{BlockedLine, Entry, Offence, UnblockReason};
use super::policy::{DurationPolicy, Past};
use super::stored::{Interner, Stored};
use super::{BlockRecord, Origin, Target, Trigger, host_target, target_text};
use crate::config::ignore::IgnoreList;
use crate::config::{BlockLevel, Config};
use crate::event::{Candidate, Hit, Mode, ProbeKind, Proto};
use crate::event_log::Event;
use crate::generation::Generation;
use crate::log_lines;
use crate::respond::Action;
use crate::respond::pool::{BlockToApply, BlockToUndo};
use crate::respond::undo::UndoOutcome;
use crate::token_bucket::TokenBucket;

/// Hosts whose past blocks are remembered at most (the oldest are forgotten first).
const OFFENCE_MEMORY: usize = 100_000;
/// Longest block with an end (a `--for 1000y` is taken as this): its end must stay a time
/// the journal can write.
const LONGEST: Duration = Duration::from_secs(100 * 365 * 86400);
/// Scan blocks held back by the rate limit at most; beyond, the weakest evidence gives way.
const DEFERRED_CAP: usize = 10_000;
/// How often the summary of held-back blocks is logged.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// Distinct ports remembered per held-back source at most (enough to rank scanners, and
/// bounded so that ten thousand waiting sources stay small).
const DEFERRED_PORTS: usize = 64;
/// Prefixes whose escalation state or budget is remembered at most: a flood of forged
/// sources from every prefix cannot grow memory (the least recently touched go first).
const PREFIX_MEMORY: usize = 65_536;

/// Counters the core keeps for `status` and the metrics (atomics: read from other threads
/// without asking the manager).
#[derive(Debug, Default)]
pub struct BlockCounters {
    /// Blocks applied (scan, manual, import; not restores).
    pub made: AtomicU64,
    /// Blocks no responder managed to apply.
    pub failed: AtomicU64,
    /// Blocks lifted at their expiry.
    pub expired: AtomicU64,
    /// Blocks lifted by an operator.
    pub unblocked: AtomicU64,
    /// Block requests dropped because too many were waiting.
    pub dropped: AtomicU64,
    /// Responder runs that failed (apply or undo).
    pub responder_failures: AtomicU64,
    /// How long the responder pool's jobs and responders take.
    pub timings: Arc<crate::respond::pool::Timings>,
    /// Notes for the block observer (the fleet pusher) dropped because its queue was full.
    pub notes_dropped: AtomicU64,
    /// Whether the journal, the history file and the blocked file take writes, and what
    /// waits in memory for them.
    pub storage: crate::storage::StorageHealth,
}

/// The time of one message, read by the shell (or set by a test or a replay).
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Wall-clock time: block records, expiries, the journal.
    pub wall: SystemTime,
    /// Monotonic time: rate limits, deferral, escalation windows.
    pub mono: Instant,
}

impl Now {
    /// The clocks as they are.
    pub fn read() -> Now {
        Now {
            wall: SystemTime::now(),
            mono: Instant::now(),
        }
    }

    /// The same instant `d` later on both clocks.
    pub fn after(self, d: Duration) -> Now {
        Now {
            wall: self.wall + d,
            mono: self.mono + d,
        }
    }
}

/// What the core cannot know from data alone: which addresses are this host's own or
/// protected (gateways, resolvers, sessions). The shell answers from the live sources.
pub trait Guard: Send {
    /// Why `target` must never be blocked (by hand or as an escalated prefix), if so,
    /// worded for the operator (`refused: … is protected (gateway)`): loopback, this host's
    /// own addresses, protected addresses, and entries of `ignore`.
    fn refusal(&self, target: &Target, ignore: &IgnoreList) -> Option<String>;
}

/// Reply callbacks: the core never waits for whoever asked.
pub type Reply<T> = Box<dyn FnOnce(T) + Send>;

/// One scan's request to block its source.
#[derive(Debug, Clone)]
pub struct BlockRequest {
    /// The alert that crossed the filters.
    pub alert: Candidate,
    /// Reverse-DNS name or the address, as logged.
    pub resolved: String,
}

/// Result of one target of an operator's `block`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockOutcome {
    /// The target as text.
    pub target: String,
    /// Whether it is now blocked by this request.
    pub ok: bool,
    /// What happened (actions, or why not).
    pub detail: String,
}

/// What the block observer (the CrowdSec pusher, `src/fleet/`) hears: blocks this host made
/// from a scan or by hand, and blocks lifted (unblock, expiry). Blocks pulled from the fleet
/// and restores at start are not told, so nothing goes round in circles.
#[derive(Debug, Clone, PartialEq)]
pub enum BlockNote {
    /// A scan or manual block is in force (journaled).
    Made(BlockRecord),
    /// A scan or manual block ended.
    Lifted(BlockRecord),
}

/// A message for the core.
pub enum Input {
    /// A scan asks to block its source.
    Request(BlockRequest),
    /// A responder job finished.
    Result(crate::respond::pool::JobResult),
    /// An operator's `block`.
    Block {
        /// What to block.
        targets: Vec<Target>,
        /// How long; `None`: the `BLOCK_TIMEOUT` rules.
        duration: Option<Duration>,
        /// The operator's reason.
        reason: String,
        /// Answered once every target is done.
        reply: Reply<Vec<BlockOutcome>>,
    },
    /// An operator's `unblock`.
    Unblock {
        /// What to lift.
        target: Target,
        /// Lift the network block covering `target` when it has no block of its own.
        covering: bool,
        /// What was undone, or why not.
        reply: Reply<Result<Vec<String>, String>>,
    },
    /// A new config generation (plain data).
    Reconfigure(Generation),
    /// Whether a block observer listens (notes are made only then).
    Observing(bool),
    /// Finish what is in hand and stop.
    Stop,
    /// Time passes: expiries, held-back blocks, summaries.
    Tick,
}

/// Work for the responder pool; the shell adds the running parts (Lua plugins) and the
/// generation in force.
#[derive(Debug)]
pub enum Work {
    /// Run the responders for a block.
    Apply(BlockToApply),
    /// Renew the kernel timeouts of a block whose end moved later.
    Refresh {
        /// Job number, echoed in the result.
        id: u64,
        /// The block, with its new end.
        record: BlockRecord,
    },
    /// Undo every action of a block.
    Undo(BlockToUndo),
}

impl Work {
    /// The result of this job had every responder done its part: an apply with the action
    /// `action` makes for its target, an undo with `undone`. For a shell that applies
    /// nothing (a replay of a capture) and for tests that play the pool.
    pub fn succeeded(
        self,
        action: impl FnOnce(&Target) -> Action,
        undone: Vec<(String, UndoOutcome)>,
    ) -> crate::respond::pool::JobResult {
        use crate::respond::pool::JobResult;
        match self {
            Work::Apply(BlockToApply { id, target, .. }) => JobResult::Applied {
                id,
                target,
                actions: vec![action(&target)],
                failures: 0,
                vetoed: false,
            },
            Work::Refresh { id, record } => JobResult::Refreshed {
                id,
                target: record.target,
                error: None,
            },
            Work::Undo(BlockToUndo { id, record, .. }) => JobResult::Undone {
                id,
                target: record.target,
                outcomes: undone,
            },
        }
    }
}

/// Things reported only once the journal holds what they report.
pub enum Effect {
    /// An info log line.
    Info(String),
    /// A warning log line.
    Warn(String),
    /// A debug log line.
    Debug(String),
    /// A history-file line.
    History(String),
    /// An answer to whoever asked.
    Reply(Box<dyn FnOnce() + Send>),
    /// An `EVENT_LOG` event.
    Event(Box<Event>),
    /// A note for the block observer.
    Note(BlockNote),
}

/// A change of the view the filters read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewChange {
    /// The target is blocked.
    Insert(Target),
    /// The target is not blocked any more.
    Remove(Target),
}

/// What the shell carries out after a message, in this order: the view, the work, the
/// journal entries (one fsync), then the effects.
#[derive(Default)]
pub struct Output {
    /// Jobs for free workers (never more in flight than workers).
    pub work: Vec<Work>,
    /// Journal entries.
    pub entries: Vec<Entry>,
    /// Reports, once journaled.
    pub effects: Vec<Effect>,
    /// View changes, in order.
    pub view: Vec<ViewChange>,
    /// Hosts for `KILL_NFTABLES`'s one batch at start, with the time each has left.
    pub preload: Vec<(IpAddr, Option<Duration>)>,
    /// `BLOCKED_FILE` should be rewritten.
    pub blocked_file_dirty: bool,
    /// The last restored block is back: what restoring held (the journal's records, the
    /// jobs) is freed, and the shell may hand that memory back to the system.
    pub restored: bool,
}

/// How a block came to be applied, kept while its responders run.
struct Applying {
    job: u64,
    origin: Origin,
    offences: u32,
    duration: Option<Duration>,
    trigger: Option<Trigger>,
    reason: String,
    /// Scan blocks: the history line's name and the probe's time.
    history: Option<(String, SystemTime)>,
    batch: Option<u64>,
    /// The evidence counts towards escalation of its prefix.
    escalates: bool,
    /// An escalated prefix: the hosts it takes over.
    members: Vec<IpAddr>,
}

/// Everything the core knows about one target. Kept small: there is one per block in
/// force, 100,000 of them on a busy host; the rarer states are boxed.
enum Host {
    /// Responders running for a new block.
    Applying(Box<Applying>),
    /// Blocked (journaled), in its compact form; `reapplying` while a restore runs its
    /// responders again.
    Active {
        record: Stored,
        reapplying: Option<NonZeroU64>,
    },
    /// Undo running; a probe meanwhile asks for a new block once it is done.
    Releasing(Box<Releasing>),
}

/// A block whose undo is running.
struct Releasing {
    job: u64,
    record: BlockRecord,
    why: UnblockReason,
    reply: Option<Reply<Result<Vec<String>, String>>>,
    reblock: Option<BlockRequest>,
}

/// An operator's `block` of several targets.
struct Batch {
    left: usize,
    outcomes: Vec<BlockOutcome>,
    reply: Reply<Vec<BlockOutcome>>,
}

/// The shortest wait for a token the core sleeps for: a bucket a hair short of one token
/// must not make the manager spin.
const MIN_TOKEN_WAIT: Duration = Duration::from_millis(5);

/// Until `bucket`'s next token, never less than [`MIN_TOKEN_WAIT`]; `None` with no limit.
fn token_wait(bucket: &TokenBucket) -> Option<Duration> {
    bucket.next_token().map(|d| d.max(MIN_TOKEN_WAIT))
}

/// A scan block held back by the budget, ranked by its evidence.
struct Deferred {
    request: BlockRequest,
    proven: bool,
    /// Distinct ports the trigger had counted when it was held back.
    counted: u32,
    /// Distinct (protocol, port) probes seen since, the first one included.
    ports: HashSet<(Proto, u16)>,
    since: Instant,
}

impl Deferred {
    /// Proven first, then the most distinct ports, then the earliest.
    fn rank(&self) -> (bool, usize, Reverse<Instant>) {
        let ports = self.counted as usize + self.ports.len().saturating_sub(1);
        (self.proven, ports, Reverse(self.since))
    }

    /// Adds the evidence of one more request for the same source.
    fn add(&mut self, req: BlockRequest) {
        let hit = &req.alert.hit;
        self.proven |= hit.kind.is_proven();
        if self.ports.len() < DEFERRED_PORTS {
            self.ports.insert((hit.proto(), hit.port));
        }
        self.request = req;
    }
}

/// One escalation prefix's recent host blocks.
struct Escalation {
    /// Distinct hosts blocked on evidence that counts, with when; at most `ESCALATE_AFTER`.
    hosts: Vec<(IpAddr, Instant)>,
    /// The prefix holds an address that must never be blocked: said once.
    refused: bool,
    touched: Instant,
}

/// Re-applies still running since start, for the line that says when all are back.
#[derive(Debug, Default)]
struct RestoreProgress {
    left: usize,
    total: usize,
    failed: usize,
    started: Option<Instant>,
}

/// The state of every block, and the rules that change it.
pub struct BlockCore {
    guard: Box<dyn Guard>,
    generation: Generation,
    policy: DurationPolicy,
    /// Durations of blocks made on forgeable evidence (`FORGEABLE_BLOCK_TIMEOUT`).
    forgeable_policy: DurationPolicy,
    rate: TokenBucket,
    /// `BLOCK_RATE_LIMIT_PER_PREFIX`, by escalation prefix.
    prefix_rates: HashMap<Target, TokenBucket>,
    escalations: HashMap<Target, Escalation>,
    deferred: HashMap<Target, Deferred>,
    /// When the line of held-back sources is worth looking at again (`None`: at once).
    serve_after: Option<Instant>,
    /// Sources held back since the last summary, and why the last one was.
    deferred_recently: u64,
    deferred_why: String,
    summary_since: Instant,
    hosts: HashMap<Target, Host>,
    /// Makes the compact records of blocks in force, sharing what they have in common.
    interner: Interner,
    /// Network targets in `hosts` by (IPv4, prefix length): an address's covering block is
    /// a handful of lookups.
    net_lens: BTreeMap<(bool, u8), usize>,
    expiries: BinaryHeap<Reverse<(SystemTime, Target)>>,
    offences: HashMap<Target, Offence>,
    counters: Arc<BlockCounters>,
    waiting: VecDeque<Work>,
    workers: usize,
    max_waiting: usize,
    in_flight: usize,
    /// Restored re-applies handed out beside the workers' jobs at most (0: they wait for a
    /// worker like any job); see [`BlockCore::with_restore_slots`].
    restore_slots: usize,
    /// Jobs handed out on those slots and not answered yet.
    restoring: HashSet<u64>,
    next_id: u64,
    batches: HashMap<u64, Batch>,
    /// Unblocks asked for while the block was still being applied or re-applied: done as
    /// soon as it is in force.
    queued_unblocks: HashMap<Target, Reply<Result<Vec<String>, String>>>,
    stopping: bool,
    restore: RestoreProgress,
    events: bool,
    observing: bool,
    out: Output,
}

/// How the core is set up.
pub struct CoreSetup {
    /// The generation in force.
    pub generation: Generation,
    /// Protected and local addresses.
    pub guard: Box<dyn Guard>,
    /// Shared with `status` and the metrics.
    pub counters: Arc<BlockCounters>,
    /// Repeat-offence memory from the journal.
    pub offences: HashMap<Target, Offence>,
    /// Jobs in flight at most (the pool's workers).
    pub workers: usize,
    /// Jobs waiting for a worker at most; beyond, new scan blocks are dropped.
    pub max_waiting: usize,
    /// `EVENT_LOG` is on: make block and unblock events.
    pub events: bool,
    /// The start's time.
    pub now: Now,
}

impl BlockCore {
    /// A core with nothing blocked yet (see [`BlockCore::restore`]).
    pub fn new(setup: CoreSetup) -> BlockCore {
        let config = Arc::clone(&setup.generation.config);
        BlockCore {
            guard: setup.guard,
            policy: DurationPolicy::from_config(&config),
            forgeable_policy: forgeable_policy(&config),
            rate: TokenBucket::per_minute(config.block_rate_limit, setup.now.mono),
            prefix_rates: HashMap::new(),
            escalations: HashMap::new(),
            deferred: HashMap::new(),
            serve_after: None,
            deferred_recently: 0,
            deferred_why: String::new(),
            summary_since: setup.now.mono,
            generation: setup.generation,
            hosts: HashMap::new(),
            interner: Interner::default(),
            net_lens: BTreeMap::new(),
            expiries: BinaryHeap::new(),
            offences: setup.offences,
            counters: setup.counters,
            waiting: VecDeque::new(),
            workers: setup.workers.max(1),
            max_waiting: setup.max_waiting,
            in_flight: 0,
            restore_slots: 0,
            restoring: HashSet::new(),
            next_id: 0,
            batches: HashMap::new(),
            queued_unblocks: HashMap::new(),
            stopping: false,
            restore: RestoreProgress::default(),
            events: setup.events,
            observing: false,
            out: Output::default(),
        }
    }

    /// Handles one message at `now` and says what to do.
    pub fn handle(&mut self, input: Input, now: Now) -> Output {
        match input {
            Input::Request(req) => self.on_request(req, now),
            Input::Result(result) => self.on_result(result, now),
            Input::Block {
                targets,
                duration,
                reason,
                reply,
            } => self.block_by_hand(targets, duration, reason, Origin::Manual, reply, now),
            Input::Unblock {
                target,
                covering,
                reply,
            } => self.unblock_by_hand(target, covering, reply),
            Input::Reconfigure(generation) => self.reconfigure(generation, now),
            Input::Observing(on) => self.observing = on,
            Input::Stop => {
                self.stopping = true;
                // Restores and expiries not started yet are left to the next start.
                self.waiting.retain(|work| match work {
                    Work::Apply(b) => !b.restored,
                    Work::Refresh { .. } => true,
                    Work::Undo(_) => false,
                });
            }
            Input::Tick => {}
        }
        self.expire_due(now);
        self.serve_deferred(now);
        self.summarize(now);
        self.pump();
        std::mem::take(&mut self.out)
    }

    /// True once a stop was asked for and nothing is left in hand.
    pub fn stopped(&self) -> bool {
        self.stopping && self.in_flight == 0 && self.restoring.is_empty() && self.waiting.is_empty()
    }

    /// Lets up to `slots` restored re-applies be handed out beside the workers' jobs, so
    /// that a shell able to run them in batches (one netlink exchange, one file append for
    /// hundreds) gets hundreds at once, and new blocks do not wait behind a restore for a
    /// worker. Which blocks are restored and how is unchanged; only how many are in hand.
    pub fn with_restore_slots(mut self, slots: usize) -> BlockCore {
        self.restore_slots = slots;
        self
    }

    /// Until the next expiry, token or summary, at most `cap`.
    pub fn next_wake(&self, now: Now, cap: Duration) -> Duration {
        let mut wake = cap;
        if let Some(Reverse((at, _))) = self.expiries.peek() {
            wake = wake.min(at.duration_since(now.wall).unwrap_or_default());
        }
        if !self.deferred.is_empty() {
            let at = self.serve_after.unwrap_or(now.mono);
            wake = wake.min(at.saturating_duration_since(now.mono));
        }
        if self.deferred_recently > 0 {
            let since = now.mono.saturating_duration_since(self.summary_since);
            wake = wake.min(SUMMARY_INTERVAL.saturating_sub(since));
        }
        if self.stopping {
            wake = wake.min(Duration::from_millis(50));
        }
        wake
    }

    /// The blocks in force, oldest first.
    pub fn active(&self) -> Vec<BlockRecord> {
        let mut blocks: Vec<BlockRecord> = self
            .hosts
            .iter()
            .filter_map(|(t, h)| match h {
                Host::Active { record, .. } => Some(record.record(*t)),
                _ => None,
            })
            .collect();
        blocks.sort_by_key(|r| r.since);
        blocks
    }

    /// Every block in force, unsorted, as `BLOCKED_FILE` lists it (no full record is
    /// made for it).
    pub fn blocked_lines(&self) -> impl Iterator<Item = BlockedLine> {
        self.hosts.iter().filter_map(|(t, h)| match h {
            Host::Active { record, .. } => {
                let (port, proto) = record.port_proto();
                Some(BlockedLine {
                    since: record.since(),
                    target: *t,
                    port,
                    proto,
                })
            }
            _ => None,
        })
    }

    /// Every block with a record (active, being re-applied, or being lifted): what a
    /// compacted journal must hold, oldest first (then by target). Each full record is
    /// made as the iterator reaches it, so a compaction never holds them all at once.
    pub fn records(&self) -> impl Iterator<Item = BlockRecord> {
        let mut order: Vec<(SystemTime, Target)> = self
            .hosts
            .iter()
            .filter_map(|(t, h)| match h {
                Host::Active { record, .. } => Some((record.since(), *t)),
                Host::Releasing(r) => Some((r.record.since, *t)),
                Host::Applying(_) => None,
            })
            .collect();
        order.sort_unstable();
        order
            .into_iter()
            .filter_map(|(_, t)| match self.hosts.get(&t)? {
                Host::Active { record, .. } => Some(record.record(t)),
                Host::Releasing(r) => Some(r.record.clone()),
                Host::Applying(_) => None,
            })
    }

    /// How many blocks [`BlockCore::records`] gives, without making them.
    pub fn record_count(&self) -> usize {
        self.hosts
            .values()
            .filter(|h| !matches!(h, Host::Applying(_)))
            .count()
    }

    /// An upper bound of [`BlockCore::records`] in O(1).
    pub fn targets(&self) -> usize {
        self.hosts.len()
    }

    /// The repeat-offence memory, for a compacted journal.
    pub fn offences(&self) -> impl Iterator<Item = (&Target, &Offence)> {
        self.offences.iter()
    }

    /// The generation the core decides with.
    pub fn generation(&self) -> &Generation {
        &self.generation
    }

    fn config(&self) -> &Config {
        &self.generation.config
    }

    /// Answers whoever asked, once the journal holds what came before.
    fn answer<T: Send + 'static>(&mut self, reply: Reply<T>, value: T) {
        self.out
            .effects
            .push(Effect::Reply(Box::new(move || reply(value))));
    }

    // ---- the hosts map, with its index of network lengths ----

    fn put(&mut self, target: Target, host: Host) {
        if self.hosts.insert(target, host).is_none() && is_network(&target) {
            *self.net_lens.entry(len_key(&target)).or_default() += 1;
        }
    }

    fn take(&mut self, target: &Target) -> Option<Host> {
        let host = self.hosts.remove(target)?;
        if is_network(target) {
            let key = len_key(target);
            if let Some(n) = self.net_lens.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    self.net_lens.remove(&key);
                }
            }
        }
        Some(host)
    }

    /// The network block (any state) that covers `ip`, if any; the longest prefix first.
    fn covering(&self, ip: IpAddr) -> Option<Target> {
        let ip = ip.to_canonical();
        self.net_lens
            .keys()
            .rev()
            .filter(|(v4, _)| *v4 == ip.is_ipv4())
            .filter_map(|&(_, len)| Target::new(ip, len).ok().map(|n| n.trunc()))
            .find(|net| self.hosts.contains_key(net))
    }

    /// Whether the scan block of `host` in force is taken over by the escalated prefix
    /// block `net` in force: only when the prefix's responders did all the host's did.
    fn folds_into(&self, host: Target, net: Target) -> bool {
        let (
            Some(Host::Active {
                record: h,
                reapplying: None,
            }),
            Some(Host::Active { record: p, .. }),
        ) = (self.hosts.get(&host), self.hosts.get(&net))
        else {
            return false;
        };
        h.origin() == Origin::Scan
            && p.origin() == Origin::Scan
            && is_network(&net)
            && takes_over(&p.record(net), &h.record(host))
    }

    /// The network block in force that covers `ip`, if any.
    fn covering_active(&self, ip: IpAddr) -> Option<Target> {
        self.covering(ip)
            .filter(|net| matches!(self.hosts.get(net), Some(Host::Active { .. })))
    }

    // ---- starting blocks ----

    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// The remembered past of a target, if it is recent enough to count.
    fn past(&self, target: &Target, now: SystemTime) -> Option<Past> {
        let o = self.offences.get(target)?;
        let horizon = self.policy.max.max(self.policy.base.unwrap_or_default());
        let forgotten = o
            .ended
            .checked_add(horizon)
            .is_some_and(|until| until < now);
        (!forgotten).then_some(Past {
            offences: o.offences,
            last: o.last_duration,
        })
    }

    fn on_request(&mut self, req: BlockRequest, now: Now) {
        let target = host_target(req.alert.hit.src);
        if !self.hosts.contains_key(&target)
            && let Some(net) = self.covering(target.addr())
        {
            // Its prefix is blocked, or being blocked: nothing to add.
            let line = match self.hosts.get(&net) {
                Some(Host::Active { .. }) => log_lines::already_blocked(&req.alert, &req.resolved),
                _ => log_lines::block_in_progress(&req.alert, &req.resolved),
            };
            self.out.effects.push(Effect::Info(line));
            return;
        }
        match self.hosts.get_mut(&target) {
            Some(Host::Active { .. }) => {
                let line = log_lines::already_blocked(&req.alert, &req.resolved);
                self.out.effects.push(Effect::Info(line));
            }
            Some(Host::Applying(_)) => {
                let line = log_lines::block_in_progress(&req.alert, &req.resolved);
                self.out.effects.push(Effect::Info(line));
            }
            Some(Host::Releasing(r)) => {
                let line = log_lines::block_in_progress(&req.alert, &req.resolved);
                if r.reblock.is_none() {
                    r.reblock = Some(req);
                }
                self.out.effects.push(Effect::Info(line));
            }
            None => self.admit_scan_block(target, req, now),
        }
    }

    /// Starts a scan block if the budget allows (`BLOCK_RATE_LIMIT`, its prefix's
    /// `BLOCK_RATE_LIMIT_PER_PREFIX`, `MAX_ACTIVE_BLOCKS`), otherwise holds it back, ranked
    /// by evidence, to be served as the budget refills.
    fn admit_scan_block(&mut self, target: Target, req: BlockRequest, now: Now) {
        if let Some(d) = self.deferred.get_mut(&target) {
            // Held back already: its evidence grows, its place in the line with it.
            d.add(req);
            return;
        }
        if !self.deferred.is_empty() {
            // Others wait already: join the line, the best goes first. The line is looked
            // at again now only if this source's own prefix and the global budget have a
            // token (otherwise nothing could move).
            let why = self.deferred_why.clone();
            let prefix = self.prefix_of(&target);
            let own = self.config().block_rate_limit_per_prefix == 0
                || self.prefix_rate(prefix, now.mono).has_token(now.mono);
            if own && self.rate.has_token(now.mono) {
                self.serve_after = None;
            }
            self.defer(target, req, why, now.mono);
            return;
        }
        match self.budget_allows(&target, now.mono) {
            Ok(()) => self.start_scan_block(target, req, now),
            Err(why) => self.defer(target, req, why, now.mono),
        }
    }

    /// The escalation prefix of a target, the unit of the per-prefix budget.
    fn prefix_of(&self, target: &Target) -> Target {
        self.config().escalation_prefix(target.addr())
    }

    fn max_active_reached(&self) -> Option<String> {
        let max = self.config().max_active_blocks;
        (max > 0 && self.hosts.len() >= max).then(|| format!("MAX_ACTIVE_BLOCKS ({max}) reached"))
    }

    /// Whether one more scan block of `target` may start now; takes its tokens when it
    /// may. A target whose prefix has spent its own budget waits without touching the
    /// global one.
    fn budget_allows(&mut self, target: &Target, now: Instant) -> Result<(), String> {
        if let Some(why) = self.max_active_reached() {
            return Err(why);
        }
        let per_prefix = self.config().block_rate_limit_per_prefix;
        let prefix = self.prefix_of(target);
        if per_prefix > 0 && !self.prefix_rate(prefix, now).has_token(now) {
            return Err(format!(
                "BLOCK_RATE_LIMIT_PER_PREFIX ({per_prefix} a minute) reached for {}",
                target_text(&prefix)
            ));
        }
        if !self.rate.take(now) {
            return Err(format!(
                "BLOCK_RATE_LIMIT ({} a minute) reached",
                self.rate.per()
            ));
        }
        if per_prefix > 0 {
            self.prefix_rate(prefix, now).take(now);
        }
        Ok(())
    }

    /// The budget of one prefix, made full on first use; the memory of budgets is bounded
    /// (full buckets are forgotten first: they hold nothing worth keeping).
    fn prefix_rate(&mut self, prefix: Target, now: Instant) -> &mut TokenBucket {
        let per_minute = self.config().block_rate_limit_per_prefix;
        if !self.prefix_rates.contains_key(&prefix) && self.prefix_rates.len() >= PREFIX_MEMORY {
            self.prefix_rates.retain(|_, r| !r.is_full(now));
            if self.prefix_rates.len() >= PREFIX_MEMORY {
                // All busy (a flood from every prefix): forget the fullest tenth.
                let mut levels: Vec<f64> = self
                    .prefix_rates
                    .values()
                    .map(TokenBucket::tokens)
                    .collect();
                levels.sort_by(|a, b| b.total_cmp(a));
                let cut = levels[levels.len() / 10];
                self.prefix_rates.retain(|_, r| r.tokens() < cut);
            }
        }
        self.prefix_rates
            .entry(prefix)
            .or_insert_with(|| TokenBucket::per_minute(per_minute, now))
    }

    fn defer(&mut self, target: Target, req: BlockRequest, why: String, now: Instant) {
        let hit = &req.alert.hit;
        let d = Deferred {
            proven: hit.kind.is_proven(),
            counted: req.alert.count,
            ports: HashSet::from([(hit.proto(), hit.port)]),
            request: req,
            since: now,
        };
        self.deferred_recently += 1;
        self.deferred_why = why;
        if self.deferred.len() >= DEFERRED_CAP {
            // Full: the weakest tenth gives way at once (one sort per thousand sources
            // rather than a scan per source); a newcomer weaker still stays out.
            let mut ranks: Vec<_> = self.deferred.values().map(Deferred::rank).collect();
            ranks.sort_unstable();
            let cut = ranks[ranks.len() / 10];
            self.deferred.retain(|_, w| w.rank() > cut);
            if d.rank() <= cut {
                return;
            }
        }
        self.deferred.insert(target, d);
    }

    /// Starts the best held-back blocks the budgets allow (a prefix out of budget lets the
    /// next prefix's source go first); forgets those older than the trigger window (a
    /// scanner that kept going has sent newer probes meanwhile) and those a network block
    /// now covers. Runs only when a token may have come back or a slot freed
    /// (`serve_after`), so a long line costs nothing per message.
    fn serve_deferred(&mut self, now: Now) {
        if self.deferred.is_empty() || self.stopping {
            self.serve_after = None;
            return;
        }
        if self.serve_after.is_some_and(|t| now.mono < t) {
            return;
        }
        let window = self.config().scan_trigger_window;
        if !window.is_zero() {
            self.deferred
                .retain(|_, d| now.mono.saturating_duration_since(d.since) <= window);
        }
        if let Some(why) = self.max_active_reached() {
            // A release frees a slot and calls again; until then, look once a summary.
            self.deferred_why = why;
            self.serve_after = Some(now.mono + SUMMARY_INTERVAL);
            return;
        }
        if !self.rate.has_token(now.mono) {
            let wait = token_wait(&self.rate).unwrap_or(SUMMARY_INTERVAL);
            self.serve_after = Some(now.mono + wait);
            return;
        }
        let per_prefix = self.config().block_rate_limit_per_prefix;
        let mut order: Vec<_> = self.deferred.iter().map(|(t, d)| (d.rank(), *t)).collect();
        order.sort_by_key(|(rank, _)| Reverse(*rank));
        let mut prefix_wait: Option<Duration> = None;
        for (_, target) in order {
            if self.hosts.contains_key(&target) || self.covering(target.addr()).is_some() {
                self.deferred.remove(&target);
                continue;
            }
            if !self.rate.has_token(now.mono) || self.max_active_reached().is_some() {
                break;
            }
            let prefix = self.prefix_of(&target);
            if per_prefix > 0 {
                let bucket = self.prefix_rate(prefix, now.mono);
                if !bucket.has_token(now.mono) {
                    let wait = token_wait(bucket).unwrap_or(SUMMARY_INTERVAL);
                    prefix_wait = Some(prefix_wait.map_or(wait, |w| w.min(wait)));
                    continue;
                }
            }
            if let Err(why) = self.budget_allows(&target, now.mono) {
                self.deferred_why = why;
                break;
            }
            if let Some(d) = self.deferred.remove(&target) {
                self.start_scan_block(target, d.request, now);
            }
        }
        self.serve_after = if self.deferred.is_empty() {
            None
        } else {
            let global = (!self.rate.has_token(now.mono))
                .then(|| token_wait(&self.rate))
                .flatten();
            let wait = match (global, prefix_wait) {
                (Some(g), Some(p)) => g.min(p),
                (Some(w), None) | (None, Some(w)) => w,
                (None, None) => SUMMARY_INTERVAL,
            };
            Some(now.mono + wait)
        };
    }

    /// The summary line of held-back blocks, once per interval while there are any.
    fn summarize(&mut self, now: Now) {
        let since = now.mono.saturating_duration_since(self.summary_since);
        if since < SUMMARY_INTERVAL {
            return;
        }
        self.summary_since = now.mono;
        if self.deferred_recently > 0 {
            self.out
                .effects
                .push(Effect::Warn(log_lines::blocks_deferred(
                    self.deferred_recently,
                    since.as_secs(),
                    self.deferred.len(),
                    &self.deferred_why,
                )));
            self.deferred_recently = 0;
        }
    }

    fn start_scan_block(&mut self, target: Target, req: BlockRequest, now: Now) {
        let who = target_text(&target);
        if self.waiting.len() >= self.max_waiting {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            self.out.effects.push(Effect::Warn(log_lines::block_dropped(
                &who,
                "too many hosts waiting to be blocked",
            )));
            return;
        }
        let past = self.past(&target, now.wall);
        let hit = &req.alert.hit;
        let proven = hit.kind.is_proven();
        let level = self.config().block_level(hit.proto());
        let policy = if proven {
            &self.policy
        } else {
            &self.forgeable_policy
        };
        let applying = Applying {
            job: 0,
            origin: Origin::Scan,
            offences: past.map_or(0, |p| p.offences) + 1,
            duration: policy.next_with_jitter(past),
            trigger: Some(trigger_of(hit)),
            reason: String::new(),
            history: Some((req.resolved.clone(), hit.time)),
            batch: None,
            escalates: proven || self.config().escalate_forgeable,
            members: Vec::new(),
        };
        self.start_apply(target, applying, req.alert, req.resolved, level, now);
    }

    fn start_apply(
        &mut self,
        target: Target,
        mut applying: Applying,
        alert: Candidate,
        resolved: String,
        level: BlockLevel,
        now: Now,
    ) {
        let id = self.next_id();
        applying.job = id;
        applying.duration = applying.duration.map(|d| d.min(LONGEST));
        let until = applying.duration.and_then(|d| now.wall.checked_add(d));
        self.waiting.push_back(Work::Apply(BlockToApply {
            id,
            target,
            alert,
            resolved,
            level,
            until,
            restored: false,
            members: applying.members.clone(),
        }));
        self.put(target, Host::Applying(Box::new(applying)));
    }

    fn block_by_hand(
        &mut self,
        targets: Vec<Target>,
        duration: Option<Duration>,
        reason: String,
        origin: Origin,
        reply: Reply<Vec<BlockOutcome>>,
        now: Now,
    ) {
        let batch_id = self.next_id();
        let mut batch = Batch {
            left: 0,
            outcomes: Vec::new(),
            reply,
        };
        for target in targets {
            let who = target_text(&target);
            let refuse = |why: String| BlockOutcome {
                target: who.clone(),
                ok: false,
                detail: why,
            };
            if let Some(why) = self.refusal(&target) {
                batch.outcomes.push(refuse(why));
                continue;
            }
            if let Some(why) = self.max_active_reached() {
                batch.outcomes.push(refuse(format!("refused: {why}")));
                continue;
            }
            match self.hosts.get(&target) {
                Some(Host::Active {
                    record,
                    reapplying: None,
                }) => {
                    let wanted = duration
                        .or_else(|| self.policy.next(self.past(&target, now.wall)))
                        .map(|d| d.min(LONGEST));
                    let outcome = match (record.until(), wanted) {
                        (None, _) => refuse("already blocked (permanent)".into()),
                        (Some(u), Some(d)) if now.wall.checked_add(d).is_none_or(|e| e <= u) => {
                            refuse(format!(
                                "already blocked until {}, which is later than asked",
                                humantime::format_rfc3339_seconds(u)
                            ))
                        }
                        (Some(_), wanted) => {
                            let until = wanted.and_then(|d| now.wall.checked_add(d));
                            self.extend(target, until);
                            BlockOutcome {
                                target: who.clone(),
                                ok: true,
                                detail: match until {
                                    Some(u) => format!(
                                        "extended until {}",
                                        humantime::format_rfc3339_seconds(u)
                                    ),
                                    None => "extended: permanent".into(),
                                },
                            }
                        }
                    };
                    batch.outcomes.push(outcome);
                    continue;
                }
                Some(_) => {
                    batch
                        .outcomes
                        .push(refuse("a block or unblock of it is under way".into()));
                    continue;
                }
                None => {}
            }
            let past = self.past(&target, now.wall);
            let applying = Applying {
                job: 0,
                origin,
                offences: past.map_or(0, |p| p.offences) + 1,
                duration: duration.or_else(|| self.policy.next_with_jitter(past)),
                trigger: None,
                reason: reason.clone(),
                history: None,
                batch: Some(batch_id),
                escalates: false,
                members: Vec::new(),
            };
            let alert = stand_in_alert(&target, None, now.wall);
            batch.left += 1;
            self.start_apply(target, applying, alert, who, BlockLevel::All, now);
        }
        if batch.left == 0 {
            self.answer(batch.reply, batch.outcomes);
        } else {
            self.batches.insert(batch_id, batch);
        }
    }

    /// Gives a block in force a later end (`None`: permanent): journaled, with its expiry
    /// moved, and the kernel's timeouts renewed by a job.
    fn extend(&mut self, target: Target, until: Option<SystemTime>) {
        let Some(Host::Active { record, .. }) = self.hosts.get_mut(&target) else {
            return;
        };
        record.set_until(until);
        let record = record.record(target);
        // The end as kept (to the millisecond): what expiry compares with.
        if let Some(u) = record.until {
            self.expiries.push(Reverse((u, target)));
        }
        self.out.entries.push(Entry::Block(record.clone()));
        self.out.blocked_file_dirty = true;
        let id = self.next_id();
        self.waiting.push_back(Work::Refresh { id, record });
    }

    /// Why a target must never be blocked whole, if so (the guard's one check, with the
    /// ignore list of the generation in force).
    fn refusal(&self, target: &Target) -> Option<String> {
        self.guard.refusal(target, &self.generation.ignore)
    }

    fn unblock_by_hand(
        &mut self,
        target: Target,
        covering: bool,
        reply: Reply<Result<Vec<String>, String>>,
    ) {
        let who = target_text(&target);
        match self.hosts.get(&target) {
            Some(Host::Active {
                reapplying: None, ..
            }) => self.start_release(target, UnblockReason::Manual, Some(reply)),
            // Lifted as soon as its responders are done.
            Some(Host::Active { .. } | Host::Applying(_)) => {
                if let Some(earlier) = self.queued_unblocks.insert(target, reply) {
                    let said = format!("{who}: a later unblock request replaced this one");
                    self.answer(earlier, Err(said));
                }
            }
            Some(Host::Releasing(_)) => {
                self.answer(reply, Err(format!("{who}: already being unblocked")));
            }
            None => match self.covering(target.addr()) {
                Some(net) if covering => self.unblock_by_hand(net, false, reply),
                Some(net) => {
                    let said = log_lines::covered_not_unblocked(&who, &target_text(&net));
                    self.answer(reply, Err(said));
                }
                None => self.answer(reply, Err(format!("{who} is not blocked"))),
            },
        }
    }

    fn reconfigure(&mut self, generation: Generation, now: Now) {
        let new = &generation.config;
        self.policy = DurationPolicy::from_config(new);
        self.forgeable_policy = forgeable_policy(new);
        if new.block_rate_limit != self.rate.per() {
            self.rate = TokenBucket::per_minute(new.block_rate_limit, now.mono);
        }
        let old = &self.generation.config;
        if new.block_rate_limit_per_prefix != old.block_rate_limit_per_prefix
            || new.escalate_prefix_v4 != old.escalate_prefix_v4
            || new.escalate_prefix_v6 != old.escalate_prefix_v6
        {
            self.prefix_rates.clear();
            self.escalations.clear();
        }
        self.generation = generation;
        self.serve_after = None;
    }

    // ---- escalation ----

    /// A scan block of a host is in force: it counts towards its prefix, which is blocked
    /// whole once enough of its hosts were.
    fn count_for_escalation(&mut self, host: Target, now: Now) {
        let ip = host.addr();
        let after = self.config().escalate_after(ip) as usize;
        if after == 0 || is_network(&host) {
            return;
        }
        let prefix = self.prefix_of(&host);
        if prefix.prefix_len() == host.prefix_len() {
            return;
        }
        let window = self.config().scan_trigger_window;
        if !self.escalations.contains_key(&prefix) && self.escalations.len() >= PREFIX_MEMORY {
            // Forget the least recently touched tenth at once rather than one per insert.
            let mut touched: Vec<Instant> = self.escalations.values().map(|e| e.touched).collect();
            touched.sort();
            let cut = touched[touched.len() / 10];
            self.escalations.retain(|_, e| e.touched > cut);
        }
        let esc = self.escalations.entry(prefix).or_insert(Escalation {
            hosts: Vec::new(),
            refused: false,
            touched: now.mono,
        });
        esc.touched = now.mono;
        if !window.is_zero() {
            esc.hosts
                .retain(|(_, at)| now.mono.saturating_duration_since(*at) <= window);
        }
        if !esc.hosts.iter().any(|(h, _)| *h == ip) {
            if esc.hosts.len() >= after {
                esc.hosts.remove(0);
            }
            esc.hosts.push((ip, now.mono));
        }
        if esc.hosts.len() >= after {
            self.escalate(prefix, now);
        }
    }

    /// Blocks `prefix` whole (one record, one token, one slot), lasting as long as the
    /// longest of its members would have and at least what its own past asks for; its host
    /// blocks are folded once it is in force. Never over an address that must not be
    /// blocked: then its hosts stay host blocks, and that is said once.
    fn escalate(&mut self, prefix: Target, now: Now) {
        if self.hosts.contains_key(&prefix) || self.covering(prefix.addr()).is_some() {
            return;
        }
        let who = target_text(&prefix);
        if let Some(why) = self.refusal(&prefix) {
            let why = why.strip_prefix("refused: ").unwrap_or(&why).to_string();
            if let Some(esc) = self.escalations.get_mut(&prefix)
                && !esc.refused
            {
                esc.refused = true;
                let line = log_lines::prefix_not_escalated(&who, &why);
                self.out.effects.push(Effect::Warn(line));
            }
            return;
        }
        let members: Vec<(&Target, &Stored)> = self
            .hosts
            .iter()
            .filter(|(t, _)| !is_network(t) && prefix.contains(&t.addr()))
            .filter_map(|(t, h)| match h {
                Host::Active { record, .. } if record.origin() == Origin::Scan => Some((t, record)),
                _ => None,
            })
            .collect();
        let Some((_, last)) = members.iter().max_by_key(|(_, r)| r.since()) else {
            return;
        };
        let trigger = last.trigger();
        let permanent = members.iter().any(|(_, r)| r.until().is_none());
        let longest = members
            .iter()
            .filter_map(|(_, r)| r.until())
            .max()
            .map(|u| u.duration_since(now.wall).unwrap_or_default());
        let mut addrs: Vec<IpAddr> = members.iter().map(|(t, _)| t.addr()).collect();
        addrs.sort();
        let past = self.past(&prefix, now.wall);
        let own = self.policy.next_with_jitter(past);
        let duration = if permanent || own.is_none() {
            None
        } else {
            own.max(longest)
        };
        // Paid for when there is a token; it goes ahead anyway: it replaces blocks.
        let _ = self.rate.take(now.mono);
        let level = trigger
            .as_ref()
            .map_or(BlockLevel::All, |t| self.config().block_level(t.proto));
        let alert = stand_in_alert(&prefix, trigger.as_ref(), now.wall);
        let window = self.config().scan_trigger_window;
        self.out
            .effects
            .push(Effect::Warn(log_lines::prefix_escalated(
                &who,
                addrs.len(),
                window,
            )));
        let applying = Applying {
            job: 0,
            origin: Origin::Scan,
            offences: past.map_or(0, |p| p.offences) + 1,
            duration,
            trigger,
            reason: String::new(),
            history: None,
            batch: None,
            escalates: false,
            members: addrs,
        };
        self.escalations.remove(&prefix);
        self.start_apply(prefix, applying, alert, who, level, now);
    }

    /// A network block is in force: the scan blocks of hosts inside it are folded into it
    /// (undone: the network covers them), and sources waiting inside it wait no more.
    fn fold_into(&mut self, net: Target) {
        let inside: Vec<Target> = self
            .hosts
            .keys()
            .filter(|t| !is_network(t) && net.contains(&t.addr()) && self.folds_into(**t, net))
            .copied()
            .collect();
        for host in inside {
            self.start_release(host, UnblockReason::Escalated, None);
        }
        self.deferred.retain(|t, _| !net.contains(&t.addr()));
    }

    // ---- restore, expiry, release ----

    /// At start: every journaled block is in the view at once; those that expired while the
    /// daemon was down are undone, the others re-applied (idempotently).
    pub fn restore(&mut self, active: HashMap<Target, BlockRecord>, now: Now) -> Output {
        let (mut expired, mut restored) = (0, 0);
        let mut records: Vec<BlockRecord> = active.into_values().collect();
        records.sort_by_key(|r| r.since);
        for record in records {
            let target = record.target;
            let record = self.interner.store(record);
            if record.expired(now.wall) {
                expired += 1;
                self.put(
                    target,
                    Host::Active {
                        record,
                        reapplying: None,
                    },
                );
                self.start_release(target, UnblockReason::Expired, None);
                continue;
            }
            restored += 1;
            self.out.view.push(ViewChange::Insert(target));
            if let Some(until) = record.until() {
                self.expiries.push(Reverse((until, target)));
            }
            let id = self.next_id();
            let level = match record.proto() {
                Some(proto) if record.origin() == Origin::Scan => self.config().block_level(proto),
                _ => BlockLevel::All,
            };
            if level == BlockLevel::All && !is_network(&target) {
                let left = record
                    .until()
                    .map(|u| u.duration_since(now.wall).unwrap_or_default());
                self.out.preload.push((target.addr(), left));
            }
            let alert = stand_in_alert(&target, record.trigger().as_ref(), record.since());
            self.waiting.push_back(Work::Apply(BlockToApply {
                id,
                target,
                alert,
                resolved: target_text(&target),
                level,
                until: record.until(),
                restored: true,
                members: record.members().to_vec(),
            }));
            self.put(
                target,
                Host::Active {
                    record,
                    // Job numbers start at 1.
                    reapplying: NonZeroU64::new(id),
                },
            );
        }
        self.restore = RestoreProgress {
            left: restored,
            total: restored,
            failed: 0,
            started: Some(now.mono),
        };
        if restored + expired > 0 {
            let line = log_lines::restoring(restored, &self.config().block_state_file, expired);
            self.out.effects.push(Effect::Info(line));
        }
        self.out.blocked_file_dirty = true;
        self.pump();
        std::mem::take(&mut self.out)
    }

    fn expire_due(&mut self, now: Now) {
        while let Some(Reverse((at, target))) = self.expiries.peek().copied() {
            if at > now.wall {
                break;
            }
            self.expiries.pop();
            let due = matches!(
                self.hosts.get(&target),
                Some(Host::Active { record, reapplying: None }) if record.until() == Some(at)
            );
            if due {
                self.start_release(target, UnblockReason::Expired, None);
            }
            // A block still being re-applied expires once that is done.
        }
    }

    fn start_release(
        &mut self,
        target: Target,
        why: UnblockReason,
        reply: Option<Reply<Result<Vec<String>, String>>>,
    ) {
        let record = match self.take(&target) {
            Some(Host::Active { record, .. }) => record.record(target),
            Some(other) => {
                self.put(target, other);
                return;
            }
            None => return,
        };
        // From now on probes reach the core, which blocks again once the undo is done.
        self.out.view.push(ViewChange::Remove(target));
        let id = self.next_id();
        self.waiting.push_back(Work::Undo(BlockToUndo {
            id,
            record: record.clone(),
            reason: match why {
                UnblockReason::Expired => crate::respond::undo::UnblockReason::Expired,
                UnblockReason::Escalated => crate::respond::undo::UnblockReason::Escalated,
                _ => crate::respond::undo::UnblockReason::Unblock,
            },
        }));
        self.put(
            target,
            Host::Releasing(Box::new(Releasing {
                job: id,
                record,
                why,
                reply,
                reblock: None,
            })),
        );
    }

    /// Hands waiting jobs to free workers; never more in flight than workers, so a job
    /// never queues behind a hanging one.
    fn pump(&mut self) {
        while self.restoring.len() < self.restore_slots {
            match self.waiting.front() {
                Some(Work::Apply(b)) if b.restored => {
                    self.restoring.insert(b.id);
                }
                _ => break,
            }
            self.out.work.extend(self.waiting.pop_front());
        }
        while self.in_flight < self.workers {
            let Some(work) = self.waiting.pop_front() else {
                break;
            };
            self.in_flight += 1;
            self.out.work.push(work);
        }
    }

    // ---- results ----

    fn on_result(&mut self, result: crate::respond::pool::JobResult, now: Now) {
        use crate::respond::pool::JobResult;
        let id = match &result {
            JobResult::Applied { id, .. }
            | JobResult::Undone { id, .. }
            | JobResult::Refreshed { id, .. } => *id,
        };
        if !self.restoring.remove(&id) {
            self.in_flight = self.in_flight.saturating_sub(1);
        }
        match result {
            JobResult::Applied {
                id,
                target,
                actions,
                failures,
                vetoed,
            } => {
                self.counters
                    .responder_failures
                    .fetch_add(failures as u64, Ordering::Relaxed);
                self.on_applied(id, target, actions, vetoed, now);
            }
            JobResult::Undone {
                id,
                target,
                outcomes,
            } => self.on_undone(id, target, outcomes, now),
            JobResult::Refreshed { target, error, .. } => {
                if let Some(e) = error {
                    let who = target_text(&target);
                    self.out
                        .effects
                        .push(Effect::Warn(log_lines::responder_failed(
                            &who,
                            "nftables (renewing the timeout)",
                            &e,
                        )));
                }
            }
        }
    }

    fn on_applied(
        &mut self,
        id: u64,
        target: Target,
        actions: Vec<Action>,
        vetoed: bool,
        now: Now,
    ) {
        self.apply_result(id, target, actions, vetoed, now);
        if let Some(reply) = self.queued_unblocks.remove(&target) {
            let who = target_text(&target);
            match self.hosts.get(&target) {
                Some(Host::Active {
                    reapplying: None, ..
                }) => self.start_release(target, UnblockReason::Manual, Some(reply)),
                Some(Host::Releasing(_)) => {
                    self.answer(reply, Err(format!("{who}: already being unblocked")));
                }
                _ => {
                    self.answer(
                        reply,
                        Err(format!("{who} is not blocked (its block failed)")),
                    );
                }
            }
        }
    }

    fn apply_result(
        &mut self,
        id: u64,
        target: Target,
        actions: Vec<Action>,
        vetoed: bool,
        now: Now,
    ) {
        let who = target_text(&target);
        match self.take(&target) {
            Some(Host::Applying(a)) if a.job == id => {
                if actions.is_empty() {
                    if !vetoed {
                        self.counters.failed.fetch_add(1, Ordering::Relaxed);
                        self.out
                            .effects
                            .push(Effect::Warn(log_lines::could_not_block(&who)));
                    }
                    let detail = if vetoed {
                        "vetoed by a responder".to_string()
                    } else {
                        "no responder could block it".to_string()
                    };
                    self.finish_batch(a.batch, &who, false, detail);
                    return;
                }
                let a = *a;
                let record = BlockRecord {
                    target,
                    since: now.wall,
                    until: a.duration.and_then(|d| now.wall.checked_add(d)),
                    offences: a.offences,
                    origin: a.origin,
                    trigger: a.trigger,
                    reason: a.reason,
                    actions,
                    members: a.members,
                };
                self.counters.made.fetch_add(1, Ordering::Relaxed);
                self.out.entries.push(Entry::Block(record.clone()));
                if let Some((resolved, time)) = &a.history
                    && let Some(t) = &record.trigger
                {
                    self.out
                        .effects
                        .push(Effect::History(crate::history::history_line(
                            *time,
                            resolved,
                            target.addr(),
                            t.port,
                            t.proto,
                        )));
                }
                if let Some(d) = record.duration() {
                    self.out.effects.push(Effect::Info(log_lines::blocked_for(
                        &who,
                        d,
                        record.offences,
                    )));
                }
                let detail = record
                    .actions
                    .iter()
                    .map(|a| a.responder.clone())
                    .collect::<Vec<_>>()
                    .join(", ");
                self.finish_batch(a.batch, &who, true, format!("blocked via {detail}"));
                if self.events {
                    self.out
                        .effects
                        .push(Effect::Event(Box::new(Event::block(&record))));
                }
                if self.observing && record.origin != Origin::Fleet {
                    self.out
                        .effects
                        .push(Effect::Note(BlockNote::Made(record.clone())));
                }
                let escalated = is_network(&target) && record.origin == Origin::Scan;
                self.activate(record);
                if escalated {
                    // A network blocked by hand or by the fleet leaves the host blocks
                    // inside it alone: they outlive it when it is lifted first.
                    self.fold_into(target);
                } else if a.origin == Origin::Scan {
                    let folds = self
                        .covering_active(target.addr())
                        .is_some_and(|net| self.folds_into(target, net));
                    if folds {
                        // Its prefix was blocked while its own block was being applied.
                        self.start_release(target, UnblockReason::Escalated, None);
                    } else if a.escalates {
                        self.count_for_escalation(target, now);
                    }
                }
            }
            Some(Host::Active {
                record,
                reapplying: Some(job),
            }) if job.get() == id => {
                let mut record = record.record(target);
                self.restore_done(actions.is_empty(), now);
                if actions.is_empty() {
                    // Not in the kernel any more: say so and let the next probe block again.
                    self.out.view.push(ViewChange::Remove(target));
                    self.out.entries.push(Entry::Unblock {
                        target,
                        at: now.wall,
                        why: UnblockReason::Released,
                    });
                    self.remember(&record, now.wall);
                    self.out
                        .effects
                        .push(Effect::Warn(log_lines::restore_failed(&who)));
                    if self.events {
                        let event = Event::unblock(&record, UnblockReason::Released, now.wall, &[]);
                        self.out.effects.push(Effect::Event(Box::new(event)));
                    }
                    self.out.blocked_file_dirty = true;
                    return;
                }
                record.actions = actions;
                let expired = record.expired(now.wall);
                let stored = self.interner.store(record.clone());
                self.out.entries.push(Entry::Block(record));
                self.put(
                    target,
                    Host::Active {
                        record: stored,
                        reapplying: None,
                    },
                );
                if expired {
                    self.start_release(target, UnblockReason::Expired, None);
                }
            }
            Some(other) => {
                // Not this job's host state (cannot happen): keep what is there.
                self.put(target, other);
            }
            None => {}
        }
    }

    /// Counts a finished re-apply; the last one logs how long restoring took.
    fn restore_done(&mut self, failed: bool, now: Now) {
        let r = &mut self.restore;
        r.left = r.left.saturating_sub(1);
        r.failed += usize::from(failed);
        if r.left == 0
            && let Some(started) = r.started.take()
        {
            self.out.effects.push(Effect::Info(log_lines::restored(
                r.total - r.failed,
                r.failed,
                now.mono.saturating_duration_since(started),
            )));
            // The queue held every restored block's job at once: its room goes too.
            self.waiting.shrink_to_fit();
            self.restoring.shrink_to_fit();
            self.out.restored = true;
        }
    }

    fn activate(&mut self, record: BlockRecord) {
        let target = record.target;
        let record = self.interner.store(record);
        // The end as kept (to the millisecond): what expiry compares with.
        if let Some(until) = record.until() {
            self.expiries.push(Reverse((until, target)));
        }
        self.offences.remove(&target);
        self.out.view.push(ViewChange::Insert(target));
        self.out.blocked_file_dirty = true;
        self.put(
            target,
            Host::Active {
                record,
                reapplying: None,
            },
        );
    }

    fn finish_batch(&mut self, batch: Option<u64>, who: &str, ok: bool, detail: String) {
        let Some(id) = batch else { return };
        let Some(b) = self.batches.get_mut(&id) else {
            return;
        };
        b.outcomes.push(BlockOutcome {
            target: who.to_string(),
            ok,
            detail,
        });
        b.left = b.left.saturating_sub(1);
        if b.left == 0
            && let Some(b) = self.batches.remove(&id)
        {
            self.answer(b.reply, b.outcomes);
        }
    }

    fn remember(&mut self, record: &BlockRecord, ended: SystemTime) {
        if self.offences.len() >= OFFENCE_MEMORY {
            // Forget the oldest tenth at once rather than one per insert.
            let mut ends: Vec<SystemTime> = self.offences.values().map(|o| o.ended).collect();
            ends.sort();
            let cut = ends[ends.len() / 10];
            self.offences.retain(|_, o| o.ended > cut);
        }
        self.offences.insert(
            record.target,
            Offence {
                offences: record.offences,
                last_duration: record.duration(),
                ended,
            },
        );
    }

    fn on_undone(
        &mut self,
        id: u64,
        target: Target,
        outcomes: Vec<(String, UndoOutcome)>,
        now: Now,
    ) {
        let who = target_text(&target);
        let Releasing {
            record,
            why,
            reply,
            reblock,
            ..
        } = match self.take(&target) {
            Some(Host::Releasing(r)) if r.job == id => *r,
            Some(other) => {
                self.put(target, other);
                return;
            }
            None => return,
        };
        self.out.entries.push(Entry::Unblock {
            target,
            at: now.wall,
            why,
        });
        // A slot is free: the line may move.
        self.serve_after = None;
        self.remember(&record, now.wall);
        self.out.blocked_file_dirty = true;
        let mut details = Vec::new();
        for (responder, outcome) in &outcomes {
            match outcome {
                UndoOutcome::Done(d) => details.push(format!("{responder}: {d}")),
                UndoOutcome::Failed(e) => {
                    self.counters
                        .responder_failures
                        .fetch_add(1, Ordering::Relaxed);
                    details.push(format!("{responder}: FAILED: {e}"));
                    self.out
                        .effects
                        .push(Effect::Warn(log_lines::undo_failed(&who, responder, e)));
                }
                UndoOutcome::Impossible(e) => {
                    details.push(format!("{responder}: left in place: {e}"));
                    self.out
                        .effects
                        .push(Effect::Warn(log_lines::undo_impossible(&who, responder, e)));
                }
            }
        }
        let line = match why {
            UnblockReason::Expired => {
                self.counters.expired.fetch_add(1, Ordering::Relaxed);
                Effect::Info(log_lines::unblocked_expired(
                    &who,
                    record.duration().unwrap_or_default(),
                ))
            }
            UnblockReason::Escalated => {
                let net = self
                    .covering(target.addr())
                    .map_or_else(String::new, |n| target_text(&n));
                Effect::Debug(log_lines::folded_into_prefix(&who, &net))
            }
            _ => {
                self.counters.unblocked.fetch_add(1, Ordering::Relaxed);
                Effect::Info(log_lines::unblocked_by_operator(&who))
            }
        };
        self.out.effects.push(line);
        if self.events {
            let event = Event::unblock(&record, why, now.wall, &outcomes);
            self.out.effects.push(Effect::Event(Box::new(event)));
        }
        if self.observing && record.origin != Origin::Fleet {
            self.out
                .effects
                .push(Effect::Note(BlockNote::Lifted(record.clone())));
        }
        if let Some(reply) = reply {
            self.answer(reply, Ok(details));
        }
        if let Some(req) = reblock
            && !self.stopping
        {
            self.on_request(req, now);
        }
    }
}

/// Whether the block of a prefix does, for its whole network, all that a host block inside
/// it does (each responder of the host's actions acted for the prefix too): only then is
/// the host block folded into it. A prefix whose route could not be added (a route of
/// another kind for exactly that prefix is in the table) leaves its hosts' routes alone.
fn takes_over(prefix: &BlockRecord, host: &BlockRecord) -> bool {
    host.actions
        .iter()
        .all(|a| prefix.actions.iter().any(|p| p.responder == a.responder))
}

fn is_network(target: &Target) -> bool {
    target.prefix_len() < target.max_prefix_len()
}

fn len_key(target: &Target) -> (bool, u8) {
    (target.addr().is_ipv4(), target.prefix_len())
}

fn trigger_of(hit: &Hit) -> Trigger {
    Trigger {
        port: hit.port,
        proto: hit.proto(),
        mode: hit.mode,
        kind: hit.kind.describe(),
    }
}

/// Durations of blocks made on forgeable evidence: `FORGEABLE_BLOCK_TIMEOUT` as the first
/// block, or `BLOCK_TIMEOUT` when it is `0`; growing like any block.
fn forgeable_policy(config: &Config) -> DurationPolicy {
    DurationPolicy {
        base: config.forgeable_block_timeout.or(config.block_timeout),
        ..DurationPolicy::from_config(config)
    }
}

/// The alert responders see for a block without a live probe (by hand, restored,
/// escalated): the target's address, the trigger's port and mode when known, else port 0
/// over TCP.
fn stand_in_alert(target: &Target, trigger: Option<&Trigger>, time: SystemTime) -> Candidate {
    let (port, mode) = trigger.map_or((0, Mode::Tcp), |t| (t.port, t.mode));
    let kind = match mode.proto() {
        Proto::Tcp => ProbeKind::Connect,
        Proto::Udp => ProbeKind::Udp,
    };
    Candidate {
        hit: Hit {
            src: target.addr(),
            port,
            mode,
            kind,
            ip_options: false,
            time,
        },
        count: 0,
        already_blocked: false,
        actionable: true,
    }
}

#[cfg(test)]
mod tests;
