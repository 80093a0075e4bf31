//! The block manager: the one thread that owns block state. Everything that changes a
//! block arrives here as a message — a scan's block request, a worker's result, an
//! operator's `block` / `unblock` / `list`, a reload, the expiry timer — and is answered from
//! here; nothing else mutates it. Filters read the [`BlockView`] it publishes.
//!
//! A block's life: *applying* (responders running on the [`Pool`]; later probes say `block
//! in progress`) → *active* (journaled and fsynced, then logged, history line written, in the
//! view) → *releasing* (undo running) → gone, remembered as an offence so the next block of
//! the same host lasts longer. A block that failed or was dropped leaves no trace but its
//! log line, so the host's next probe tries again. At start the journal is replayed: blocks
//! that expired while the daemon was down are undone, every other one is re-applied.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select_biased, unbounded};

use super::journal::{self, Entry, Journal, Offence, UnblockReason};
use super::policy::{DurationPolicy, Past};
use super::view::BlockView;
use super::{BlockRecord, Origin, Target, Trigger, host_target, target_text};
use crate::config::BlockLevel;
use crate::event::{Candidate, Hit, Mode, ProbeKind, Proto};
use crate::event_log::{Event, EventSink};
use crate::generation::Generation;
use crate::heartbeat::{self, Kind};
use crate::history::{History, history_line};
use crate::local_addrs::LocalAddrs;
use crate::log_lines;
use crate::protected::ProtectView;
use crate::respond::lua::LuaPlugins;
use crate::respond::nftables::{NftHandle, host_of};
use crate::respond::pool::{ApplyJob, Job, JobResult, Pool, UndoJob, WORKERS};
use crate::respond::undo::UndoOutcome;

/// Block requests from scans waiting for the manager at most; beyond, a request is dropped
/// (counted and logged) and the host's next probe asks again.
pub const REQUEST_QUEUE: usize = 4096;
/// Blocks waiting for a free worker at most; beyond, new scan blocks are dropped the same way.
pub const MAX_WAITING: usize = 4096;
/// Hosts whose past blocks are remembered at most (the oldest are forgotten first).
const OFFENCE_MEMORY: usize = 100_000;
/// `BLOCKED_FILE` is rewritten at most this often while blocks change.
const BLOCKED_FILE_INTERVAL: Duration = Duration::from_secs(1);
/// Longest block with an end (a `--for 1000y` is taken as this): its end must stay a time
/// the journal can write.
const LONGEST: Duration = Duration::from_secs(100 * 365 * 86400);
/// Scan blocks held back by the rate limit at most; beyond, the weakest evidence gives way.
const DEFERRED_CAP: usize = 10_000;
/// How often the summary of held-back blocks is logged.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(10);
/// Messages handled between two journal commits at most.
const BATCH: usize = 512;

/// Counters the manager keeps for `status` and the metrics.
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

/// Notes the observer may leave waiting at most; beyond, a note is dropped and counted.
pub const NOTE_QUEUE: usize = 4096;

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

/// Reply callbacks: the manager never waits for whoever asked.
type Reply<T> = Box<dyn FnOnce(T) + Send>;

enum Msg {
    Reconfigure(Generation, LuaPlugins),
    List(Reply<Vec<BlockRecord>>),
    Block {
        targets: Vec<Target>,
        duration: Option<Duration>,
        reason: String,
        reply: Reply<Vec<BlockOutcome>>,
    },
    Unblock {
        target: Target,
        reply: Reply<Result<Vec<String>, String>>,
    },
    Observe(Option<Sender<BlockNote>>),
    Stop,
}

/// The sending side the announcing thread uses: never blocks.
#[derive(Clone)]
pub struct BlockRequester {
    tx: Sender<BlockRequest>,
    counters: Arc<BlockCounters>,
}

impl BlockRequester {
    /// Asks for a block; false when too many requests are waiting (counted; the caller
    /// logs it, and the host's next probe asks again).
    pub fn request(&self, request: BlockRequest) -> bool {
        match self.tx.try_send(request) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.counters.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// Handle on the running manager.
pub struct BlockManager {
    control: Sender<Msg>,
    requests: Sender<BlockRequest>,
    view: BlockView,
    counters: Arc<BlockCounters>,
    thread: Option<JoinHandle<()>>,
}

impl BlockManager {
    /// Opens the journal (importing 1.2's `BLOCKED_FILE` when there is no journal yet),
    /// starts the workers and the manager thread, and begins restoring: blocks that expired
    /// while the daemon was down are undone, the others re-applied. The view holds every
    /// active block before this returns.
    /// `protect`: the protected addresses (gateways, resolvers, sessions) that blocks made by
    /// hand must not cover either.
    pub fn start(
        generation: Generation,
        lua: LuaPlugins,
        history: History,
        protect: ProtectView,
    ) -> anyhow::Result<BlockManager> {
        BlockManager::start_with(
            generation,
            lua,
            history,
            protect,
            MAX_WAITING,
            EventSink::off(),
        )
    }

    /// [`BlockManager::start`], also writing a `block` / `unblock` event (`EVENT_LOG`) once
    /// each is journaled.
    pub fn start_with_events(
        generation: Generation,
        lua: LuaPlugins,
        history: History,
        protect: ProtectView,
        events: EventSink,
    ) -> anyhow::Result<BlockManager> {
        BlockManager::start_with(generation, lua, history, protect, MAX_WAITING, events)
    }

    /// [`BlockManager::start`] with another limit of blocks waiting for a worker (tests).
    fn start_with(
        generation: Generation,
        lua: LuaPlugins,
        history: History,
        protect: ProtectView,
        max_waiting: usize,
        events: EventSink,
    ) -> anyhow::Result<BlockManager> {
        use anyhow::Context;
        let config = Arc::clone(&generation.config);
        let state_file = &config.block_state_file;
        let existed = state_file.exists();
        let (mut journal, replay) = Journal::open(state_file)
            .with_context(|| format!("cannot open block state file {}", state_file.display()))?;
        for w in &replay.warnings {
            log::warn!("{}", log_lines::warning(w));
        }
        let mut active = replay.active;
        if !existed {
            let (imported, warnings) = journal::import_legacy(&config.blocked_file);
            for w in &warnings {
                log::warn!("{}", log_lines::warning(w));
            }
            if !imported.is_empty() {
                let entries: Vec<Entry> = imported.iter().cloned().map(Entry::Block).collect();
                journal.append(&entries).with_context(|| {
                    format!("cannot write block state file {}", state_file.display())
                })?;
                log::info!(
                    "{}",
                    log_lines::legacy_blocks_imported(imported.len(), &config.blocked_file)
                );
                for r in imported {
                    active.insert(r.target, r);
                }
            }
        }
        let (results_tx, results_rx) = unbounded();
        // KILL_NFTABLES: opened here, before the restore loads the journal's blocks into it.
        let nft = NftHandle::closed();
        nft.configure(&config);
        let pool =
            Pool::start(WORKERS, results_tx, nft).context("cannot start responder threads")?;
        let view = BlockView::new();
        let counters = Arc::new(BlockCounters {
            timings: pool.timings(),
            ..BlockCounters::default()
        });
        let (control, control_rx) = unbounded();
        let (requests, requests_rx) = bounded(REQUEST_QUEUE);
        let mut manager = Manager {
            protect,
            policy: DurationPolicy::from_config(&config),
            forgeable_policy: forgeable_policy(&config),
            rate: RateLimit::new(config.block_rate_limit),
            deferred: HashMap::new(),
            deferred_recently: 0,
            deferred_why: String::new(),
            summary_since: Instant::now(),
            generation,
            lua,
            hosts: HashMap::new(),
            expiries: BinaryHeap::new(),
            offences: replay.offences,
            journal,
            history,
            view: view.clone(),
            counters: Arc::clone(&counters),
            pool,
            waiting: VecDeque::new(),
            max_waiting,
            in_flight: 0,
            next_id: 0,
            batches: HashMap::new(),
            queued_unblocks: HashMap::new(),
            entries: Vec::new(),
            effects: Vec::new(),
            blocked_file_dirty: false,
            blocked_file_written: None,
            stopping: false,
            restore: RestoreProgress::default(),
            events,
            observer: None,
        };
        manager.restore(active, SystemTime::now());
        let thread = std::thread::Builder::new()
            .name("block".into())
            .spawn(move || {
                let _enrolled = heartbeat::enroll("block", Kind::Loop);
                manager.run(&control_rx, &requests_rx, &results_rx)
            })
            .context("cannot start the block manager thread")?;
        Ok(BlockManager {
            control,
            requests,
            view,
            counters,
            thread: Some(thread),
        })
    }

    /// What the filters read.
    pub fn view(&self) -> BlockView {
        self.view.clone()
    }

    /// What the announcing thread sends block requests through.
    pub fn requester(&self) -> BlockRequester {
        BlockRequester {
            tx: self.requests.clone(),
            counters: Arc::clone(&self.counters),
        }
    }

    /// Counters for `status` and metrics.
    pub fn counters(&self) -> Arc<BlockCounters> {
        Arc::clone(&self.counters)
    }

    /// Follows a reload: new blocks use its responders and durations, the history follows a
    /// changed `HISTORY_FILE`; blocks in force keep what they did.
    /// `lua`: the plugins built from the generation (undoing a block made by a plugin that
    /// is no longer configured reports that its `unblock` handler cannot run).
    pub fn reconfigure(&self, generation: Generation, lua: LuaPlugins) {
        let _ = self.control.send(Msg::Reconfigure(generation, lua));
    }

    /// The blocks in force, answered by the manager thread.
    pub fn list(&self, reply: impl FnOnce(Vec<BlockRecord>) + Send + 'static) {
        let _ = self.control.send(Msg::List(Box::new(reply)));
    }

    /// Blocks by hand through the same responders; answers once every target is done.
    /// `duration` `None`: the configured `BLOCK_TIMEOUT` rules.
    pub fn block(
        &self,
        targets: Vec<Target>,
        duration: Option<Duration>,
        reason: String,
        reply: impl FnOnce(Vec<BlockOutcome>) + Send + 'static,
    ) {
        let _ = self.control.send(Msg::Block {
            targets,
            duration,
            reason,
            reply: Box::new(reply),
        });
    }

    /// Lifts a block now (every action undone); answers with what was undone, or why not.
    pub fn unblock(
        &self,
        target: Target,
        reply: impl FnOnce(Result<Vec<String>, String>) + Send + 'static,
    ) {
        let _ = self.control.send(Msg::Unblock {
            target,
            reply: Box::new(reply),
        });
    }

    /// Sets (or, with `None`, removes) the block observer: the fleet pusher hears every
    /// block made here and every block lifted, without ever slowing the manager (a full
    /// queue drops the note and counts it).
    pub fn observe(&self, observer: Option<Sender<BlockNote>>) {
        let _ = self.control.send(Msg::Observe(observer));
    }

    /// Stops after the blocks in hand: scan and manual blocks already started or waiting
    /// finish and are journaled; restores and expiries not yet started wait for the next
    /// start (the journal still holds them).
    pub fn stop(mut self) {
        let _ = self.control.send(Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BlockManager {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.control.send(Msg::Stop);
            let _ = t.join();
        }
    }
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
}

/// Everything the manager knows about one target.
enum Host {
    /// Responders running for a new block.
    Applying(Applying),
    /// Blocked (journaled); `reapplying` while a restore runs its responders again.
    Active {
        record: BlockRecord,
        reapplying: Option<u64>,
    },
    /// Undo running; a probe meanwhile asks for a new block once it is done.
    Releasing {
        job: u64,
        record: BlockRecord,
        why: UnblockReason,
        reply: Option<Reply<Result<Vec<String>, String>>>,
        reblock: Option<BlockRequest>,
    },
}

/// An operator's `block` of several targets.
struct Batch {
    left: usize,
    outcomes: Vec<BlockOutcome>,
    reply: Reply<Vec<BlockOutcome>>,
}

/// Things reported only once the journal holds what they report.
enum Effect {
    Info(String),
    Warn(String),
    History(String),
    Reply(Box<dyn FnOnce() + Send>),
    Event(Box<Event>),
    Note(BlockNote),
}

/// `BLOCK_RATE_LIMIT`: new scan blocks a minute, as a token bucket that starts full.
#[derive(Debug)]
struct RateLimit {
    per_minute: u32,
    tokens: f64,
    refilled: Instant,
}

impl RateLimit {
    fn new(per_minute: u32) -> RateLimit {
        RateLimit {
            per_minute,
            tokens: f64::from(per_minute),
            refilled: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let per_sec = f64::from(self.per_minute) / 60.0;
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_sec).min(f64::from(self.per_minute));
        self.refilled = now;
    }

    /// Whether a block may start now (taking a token); always with no limit.
    fn take(&mut self, now: Instant) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Until the next token, when there is a limit.
    fn next_token(&self) -> Option<Duration> {
        if self.per_minute == 0 {
            return None;
        }
        let missing = (1.0 - self.tokens).max(0.0);
        let per_sec = f64::from(self.per_minute) / 60.0;
        Some(Duration::from_secs_f64(missing / per_sec).max(Duration::from_millis(5)))
    }
}

/// Distinct ports remembered per held-back source at most (enough to rank scanners).
const DEFERRED_PORTS: usize = 1024;

/// A scan block held back by the budget, ranked by its evidence.
struct Deferred {
    request: BlockRequest,
    proven: bool,
    /// Distinct ports the trigger had counted when it was held back.
    counted: u32,
    /// Distinct (protocol, port) probes seen since, the first one included.
    ports: std::collections::HashSet<(Proto, u16)>,
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

struct Manager {
    /// Addresses never blocked by hand or by a fleet either.
    protect: ProtectView,
    generation: Generation,
    /// The running Lua plugins built from `generation`, handed to the workers with each job.
    lua: LuaPlugins,
    policy: DurationPolicy,
    /// Durations of blocks made on forgeable evidence (`FORGEABLE_BLOCK_TIMEOUT`).
    forgeable_policy: DurationPolicy,
    rate: RateLimit,
    deferred: HashMap<Target, Deferred>,
    /// Sources held back since the last summary, and why the last one was.
    deferred_recently: u64,
    deferred_why: String,
    summary_since: Instant,
    hosts: HashMap<Target, Host>,
    expiries: BinaryHeap<Reverse<(SystemTime, Target)>>,
    offences: HashMap<Target, Offence>,
    journal: Journal,
    history: History,
    view: BlockView,
    counters: Arc<BlockCounters>,
    pool: Pool,
    waiting: VecDeque<Job>,
    max_waiting: usize,
    in_flight: usize,
    next_id: u64,
    batches: HashMap<u64, Batch>,
    /// Unblocks asked for while the block was still being applied or re-applied: done as
    /// soon as it is in force.
    queued_unblocks: HashMap<Target, Reply<Result<Vec<String>, String>>>,
    entries: Vec<Entry>,
    effects: Vec<Effect>,
    blocked_file_dirty: bool,
    blocked_file_written: Option<Instant>,
    stopping: bool,
    restore: RestoreProgress,
    /// `EVENT_LOG`: block and unblock events, sent once journaled.
    events: EventSink,
    /// The fleet pusher, told of blocks made and lifted here (`None`: no fleet push).
    observer: Option<Sender<BlockNote>>,
}

/// Re-applies still running since start, for the line that says when all are back.
#[derive(Debug, Default)]
struct RestoreProgress {
    left: usize,
    total: usize,
    failed: usize,
    started: Option<Instant>,
}

impl Manager {
    fn run(
        &mut self,
        control: &Receiver<Msg>,
        requests: &Receiver<BlockRequest>,
        results: &Receiver<JobResult>,
    ) {
        loop {
            heartbeat::beat();
            // Work restored or queued before the first message starts at once.
            self.pump();
            let timeout = self.next_wake(SystemTime::now());
            let mut handled = 0;
            select_biased! {
                recv(results) -> r => if let Ok(r) = r { self.on_result(r); handled += 1; },
                recv(control) -> m => match m {
                    Ok(m) => { self.on_message(m); handled += 1; }
                    Err(_) => self.stopping = true,
                },
                recv(requests) -> r => if let Ok(r) = r { self.on_request(r); handled += 1; },
                default(timeout) => {}
            }
            // Drain what else is there, so one journal commit covers a burst.
            while handled > 0 && handled < BATCH {
                if let Ok(r) = results.try_recv() {
                    self.on_result(r);
                } else if let Ok(m) = control.try_recv() {
                    self.on_message(m);
                } else if !self.stopping
                    && let Ok(r) = requests.try_recv()
                {
                    self.on_request(r);
                } else {
                    break;
                }
                handled += 1;
            }
            self.expire_due(SystemTime::now());
            self.serve_deferred(Instant::now());
            self.summarize(Instant::now());
            self.pump();
            self.commit();
            self.write_blocked_file(false);
            if self.stopping && self.in_flight == 0 && self.waiting.is_empty() {
                break;
            }
        }
        self.write_blocked_file(true);
        crate::logging::flush();
    }

    /// Until the next expiry or `BLOCKED_FILE` rewrite, at most a heartbeat interval (an
    /// idle manager still shows the watchdog it is alive).
    fn next_wake(&self, now: SystemTime) -> Duration {
        let mut wake = heartbeat::INTERVAL;
        if let Some(Reverse((at, _))) = self.expiries.peek() {
            wake = wake.min(at.duration_since(now).unwrap_or_default());
        }
        if self.blocked_file_dirty {
            let since = self.blocked_file_written.map(|t| t.elapsed());
            wake = wake
                .min(BLOCKED_FILE_INTERVAL.saturating_sub(since.unwrap_or(BLOCKED_FILE_INTERVAL)));
        }
        if !self.deferred.is_empty()
            && let Some(next) = self.rate.next_token()
        {
            wake = wake.min(next);
        }
        if self.deferred_recently > 0 {
            wake = wake.min(SUMMARY_INTERVAL.saturating_sub(self.summary_since.elapsed()));
        }
        if self.stopping {
            wake = wake.min(Duration::from_millis(50));
        }
        wake
    }

    fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Reconfigure(generation, lua) => self.reconfigure(generation, lua),
            Msg::List(reply) => {
                let mut blocks: Vec<BlockRecord> = self
                    .hosts
                    .values()
                    .filter_map(|h| match h {
                        Host::Active { record, .. } => Some(record.clone()),
                        _ => None,
                    })
                    .collect();
                blocks.sort_by_key(|r| r.since);
                // Nothing to journal: answer at once.
                reply(blocks);
            }
            Msg::Block {
                targets,
                duration,
                reason,
                reply,
            } => self.block_by_hand(targets, duration, reason, Origin::Manual, reply),
            Msg::Unblock { target, reply } => self.unblock_by_hand(target, reply),
            Msg::Observe(observer) => self.observer = observer,
            Msg::Stop => {
                self.stopping = true;
                // Restores and expiries not started yet are left to the next start.
                self.waiting.retain(|job| match job {
                    Job::Apply(a) => !a.restored,
                    Job::Undo(_) => false,
                });
            }
        }
    }

    fn reconfigure(&mut self, generation: Generation, lua: LuaPlugins) {
        let (old, new) = (&self.generation.config, &generation.config);
        if new.block_state_file != old.block_state_file {
            log::warn!(
                "{}",
                log_lines::state_file_needs_restart(self.journal.path())
            );
        }
        if new.history_file != *self.history.path() {
            match History::open(&new.history_file) {
                Ok(history) => {
                    log::info!(
                        "{}",
                        log_lines::history_file_moved(&new.history_file, self.history.path())
                    );
                    self.history = history;
                }
                Err(e) => log::error!("{}", log_lines::history_open_failed(e, self.history.path())),
            }
        }
        let moved = new.blocked_file != old.blocked_file;
        if moved {
            log::info!(
                "{}",
                log_lines::blocked_file_moved(&new.blocked_file, &old.blocked_file)
            );
        }
        // New blocks go to the table the new config names; blocks in force stay where
        // they were put (their undo names that table).
        self.pool.nft().configure(new);
        self.policy = DurationPolicy::from_config(new);
        self.forgeable_policy = forgeable_policy(new);
        if new.block_rate_limit != self.rate.per_minute {
            self.rate = RateLimit::new(new.block_rate_limit);
        }
        self.generation = generation;
        self.lua = lua;
        if moved {
            self.blocked_file_dirty = true;
            self.write_blocked_file(true);
        }
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

    fn on_request(&mut self, req: BlockRequest) {
        let target = host_target(req.alert.hit.src);
        match self.hosts.get_mut(&target) {
            Some(Host::Active { .. }) => {
                log::info!("{}", log_lines::already_blocked(&req.alert, &req.resolved));
            }
            Some(Host::Applying(_)) => {
                log::info!(
                    "{}",
                    log_lines::block_in_progress(&req.alert, &req.resolved)
                );
            }
            Some(Host::Releasing { reblock, .. }) => {
                log::info!(
                    "{}",
                    log_lines::block_in_progress(&req.alert, &req.resolved)
                );
                if reblock.is_none() {
                    *reblock = Some(req);
                }
            }
            None => self.admit_scan_block(target, req),
        }
    }

    /// Starts a scan block if the budget allows (`BLOCK_RATE_LIMIT`, `MAX_ACTIVE_BLOCKS`),
    /// otherwise holds it back, ranked by evidence, to be served as the budget refills.
    fn admit_scan_block(&mut self, target: Target, req: BlockRequest) {
        if let Some(d) = self.deferred.get_mut(&target) {
            // Held back already: its evidence grows, its place in the line with it.
            d.add(req);
            return;
        }
        let now = Instant::now();
        if self.deferred.is_empty() {
            if let Err(why) = self.budget_allows(now) {
                self.defer(target, req, why);
                return;
            }
            self.start_scan_block(target, req);
        } else {
            // Others wait already: join the line, the best goes first.
            let why = self.deferred_why.clone();
            self.defer(target, req, why);
            self.serve_deferred(now);
        }
    }

    /// Whether one more scan block may start now (takes a rate token when it may).
    fn budget_allows(&mut self, now: Instant) -> Result<(), String> {
        let max = self.generation.config.max_active_blocks;
        if max > 0 && self.hosts.len() >= max {
            return Err(format!("MAX_ACTIVE_BLOCKS ({max}) reached"));
        }
        if !self.rate.take(now) {
            return Err(format!(
                "BLOCK_RATE_LIMIT ({} a minute) reached",
                self.rate.per_minute
            ));
        }
        Ok(())
    }

    fn defer(&mut self, target: Target, req: BlockRequest, why: String) {
        let hit = &req.alert.hit;
        let d = Deferred {
            proven: hit.kind.is_proven(),
            counted: req.alert.count,
            ports: std::collections::HashSet::from([(hit.proto(), hit.port)]),
            request: req,
            since: Instant::now(),
        };
        self.deferred_recently += 1;
        self.deferred_why = why;
        if self.deferred.len() >= DEFERRED_CAP {
            let worst = self
                .deferred
                .iter()
                .min_by_key(|(_, d)| d.rank())
                .map(|(t, w)| (*t, w.rank()));
            match worst {
                Some((t, rank)) if rank < d.rank() => {
                    self.deferred.remove(&t);
                }
                _ => return,
            }
        }
        self.deferred.insert(target, d);
    }

    /// Starts the best held-back blocks the budget allows; forgets those older than the
    /// trigger window (a scanner that kept going has sent newer probes meanwhile).
    fn serve_deferred(&mut self, now: Instant) {
        if self.deferred.is_empty() || self.stopping {
            return;
        }
        let window = self.generation.config.scan_trigger_window;
        if !window.is_zero() {
            self.deferred
                .retain(|_, d| now.saturating_duration_since(d.since) <= window);
        }
        while !self.deferred.is_empty() {
            if let Err(why) = self.budget_allows(now) {
                self.deferred_why = why;
                break;
            }
            let Some(best) = self
                .deferred
                .iter()
                .max_by_key(|(_, d)| d.rank())
                .map(|(t, _)| *t)
            else {
                break;
            };
            if let Some(d) = self.deferred.remove(&best) {
                if self.hosts.contains_key(&best) {
                    continue;
                }
                self.start_scan_block(best, d.request);
            }
        }
    }

    /// The summary line of held-back blocks, once per interval while there are any.
    fn summarize(&mut self, now: Instant) {
        if now.saturating_duration_since(self.summary_since) < SUMMARY_INTERVAL {
            return;
        }
        let secs = now.saturating_duration_since(self.summary_since).as_secs();
        self.summary_since = now;
        if self.deferred_recently > 0 {
            log::warn!(
                "{}",
                log_lines::blocks_deferred(
                    self.deferred_recently,
                    secs,
                    self.deferred.len(),
                    &self.deferred_why
                )
            );
            self.deferred_recently = 0;
        }
    }

    fn start_scan_block(&mut self, target: Target, req: BlockRequest) {
        let who = target_text(&target);
        if self.waiting.len() >= self.max_waiting {
            self.counters.dropped.fetch_add(1, Ordering::Relaxed);
            log::warn!(
                "{}",
                log_lines::block_dropped(&who, "too many hosts waiting to be blocked")
            );
            return;
        }
        let now = SystemTime::now();
        let past = self.past(&target, now);
        let hit = &req.alert.hit;
        let level = self.generation.config.block_level(hit.proto());
        let policy = if hit.kind.is_proven() {
            &self.policy
        } else {
            &self.forgeable_policy
        };
        let applying = Applying {
            job: 0,
            origin: Origin::Scan,
            offences: past.map_or(0, |p| p.offences) + 1,
            duration: policy.next_with_jitter(past),
            trigger: Some(Trigger {
                port: hit.port,
                proto: hit.proto(),
                mode: hit.mode,
                kind: hit.kind.describe(),
            }),
            reason: String::new(),
            history: Some((req.resolved.clone(), hit.time)),
            batch: None,
        };
        self.start_apply(target, applying, req.alert, req.resolved, level);
    }

    fn start_apply(
        &mut self,
        target: Target,
        mut applying: Applying,
        alert: Candidate,
        resolved: String,
        level: BlockLevel,
    ) {
        let id = self.next_id();
        applying.job = id;
        applying.duration = applying.duration.map(|d| d.min(LONGEST));
        let until = applying
            .duration
            .and_then(|d| SystemTime::now().checked_add(d));
        self.waiting.push_back(Job::Apply(Box::new(ApplyJob {
            id,
            target,
            alert,
            resolved,
            level,
            until,
            restored: false,
            generation: self.generation.clone(),
            lua: self.lua.clone(),
        })));
        self.hosts.insert(target, Host::Applying(applying));
        self.pump();
    }

    fn block_by_hand(
        &mut self,
        targets: Vec<Target>,
        duration: Option<Duration>,
        reason: String,
        origin: Origin,
        reply: Reply<Vec<BlockOutcome>>,
    ) {
        let batch_id = self.next_id();
        let mut batch = Batch {
            left: 0,
            outcomes: Vec::new(),
            reply,
        };
        let local = LocalAddrs::new();
        let now = SystemTime::now();
        for target in targets {
            let who = target_text(&target);
            let refuse = |why: String| BlockOutcome {
                target: who.clone(),
                ok: false,
                detail: why,
            };
            if let Some(why) = self.protected(&target, &local) {
                batch.outcomes.push(refuse(why));
                continue;
            }
            let max = self.generation.config.max_active_blocks;
            if max > 0 && self.hosts.len() >= max {
                batch.outcomes.push(refuse(format!(
                    "refused: MAX_ACTIVE_BLOCKS ({max}) reached"
                )));
                continue;
            }
            match self.hosts.get(&target) {
                Some(Host::Active { record, .. }) => {
                    batch.outcomes.push(refuse(match record.until {
                        Some(u) => format!(
                            "already blocked until {}",
                            humantime::format_rfc3339_seconds(u)
                        ),
                        None => "already blocked (permanent)".into(),
                    }));
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
            let past = self.past(&target, now);
            let applying = Applying {
                job: 0,
                origin,
                offences: past.map_or(0, |p| p.offences) + 1,
                duration: duration.or_else(|| self.policy.next_with_jitter(past)),
                trigger: None,
                reason: reason.clone(),
                history: None,
                batch: Some(batch_id),
            };
            let alert = stand_in_alert(&target, None, now);
            batch.left += 1;
            self.start_apply(target, applying, alert, who, BlockLevel::All);
        }
        if batch.left == 0 {
            (batch.reply)(batch.outcomes);
        } else {
            self.batches.insert(batch_id, batch);
        }
    }

    /// Why a target must never be blocked by hand, if so: this host's own addresses,
    /// loopback, the unspecified address, and the ignore list.
    fn protected(&self, target: &Target, local: &LocalAddrs) -> Option<String> {
        let protect = self.protect.snapshot();
        crate::protected::refusal(target, local, &protect, &self.generation.ignore)
    }

    fn unblock_by_hand(&mut self, target: Target, reply: Reply<Result<Vec<String>, String>>) {
        let who = target_text(&target);
        match self.hosts.get(&target) {
            Some(Host::Active {
                reapplying: None, ..
            }) => self.start_release(target, UnblockReason::Manual, Some(reply)),
            // Lifted as soon as its responders are done.
            Some(Host::Active { .. } | Host::Applying(_)) => {
                if let Some(earlier) = self.queued_unblocks.insert(target, reply) {
                    earlier(Err(format!(
                        "{who}: a later unblock request replaced this one"
                    )));
                }
            }
            Some(Host::Releasing { .. }) => reply(Err(format!("{who}: already being unblocked"))),
            None => reply(Err(format!("{who} is not blocked"))),
        }
    }

    // ---- restore, expiry, release ----

    /// At start: every journaled block is in the view at once; those that expired while the
    /// daemon was down are undone, the others re-applied (idempotently).
    fn restore(&mut self, active: HashMap<Target, BlockRecord>, now: SystemTime) {
        let (mut expired, mut restored) = (0, 0);
        // Hosts for KILL_NFTABLES's one batch, with the time each has left.
        let mut preload = Vec::new();
        let mut records: Vec<BlockRecord> = active.into_values().collect();
        records.sort_by_key(|r| r.since);
        for record in records {
            let target = record.target;
            if record.expired(now) {
                expired += 1;
                self.hosts.insert(
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
            self.view.insert(target);
            if let Some(until) = record.until {
                self.expiries.push(Reverse((until, target)));
            }
            let id = self.next_id();
            let level = match &record.trigger {
                Some(t) if record.origin == Origin::Scan => {
                    self.generation.config.block_level(t.proto)
                }
                _ => BlockLevel::All,
            };
            if level == BlockLevel::All
                && let Ok(addr) = host_of(target)
            {
                let left = record
                    .until
                    .map(|u| u.duration_since(now).unwrap_or_default());
                preload.push((addr, left));
            }
            let alert = stand_in_alert(&target, record.trigger.as_ref(), record.since);
            self.waiting.push_back(Job::Apply(Box::new(ApplyJob {
                id,
                target,
                alert,
                resolved: target_text(&target),
                level,
                until: record.until,
                restored: true,
                generation: self.generation.clone(),
                lua: self.lua.clone(),
            })));
            self.hosts.insert(
                target,
                Host::Active {
                    record,
                    reapplying: Some(id),
                },
            );
        }
        // Before any of the jobs above runs: the kernel has every block at once.
        self.pool.nft().preload(&preload);
        self.restore = RestoreProgress {
            left: restored,
            total: restored,
            failed: 0,
            started: Some(Instant::now()),
        };
        if restored + expired > 0 {
            log::info!(
                "{}",
                log_lines::restoring(restored, self.journal.path(), expired)
            );
        }
        // The 1.2 list says what is blocked now from the first moment; the next change is
        // written at once too.
        self.blocked_file_dirty = true;
        self.write_blocked_file(true);
        self.blocked_file_written = None;
    }

    fn expire_due(&mut self, now: SystemTime) {
        while let Some(Reverse((at, target))) = self.expiries.peek().copied() {
            if at > now {
                break;
            }
            self.expiries.pop();
            let due = matches!(
                self.hosts.get(&target),
                Some(Host::Active { record, reapplying: None }) if record.until == Some(at)
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
        let Some(Host::Active { record, .. }) = self.hosts.remove(&target) else {
            return;
        };
        // From now on probes reach the manager, which blocks again once the undo is done.
        self.view.remove(&target);
        let id = self.next_id();
        self.waiting.push_back(Job::Undo(Box::new(UndoJob {
            id,
            record: record.clone(),
            reason: match why {
                UnblockReason::Expired => crate::respond::undo::UnblockReason::Expired,
                _ => crate::respond::undo::UnblockReason::Unblock,
            },
            generation: self.generation.clone(),
            lua: self.lua.clone(),
        })));
        self.hosts.insert(
            target,
            Host::Releasing {
                job: id,
                record,
                why,
                reply,
                reblock: None,
            },
        );
    }

    /// Hands waiting jobs to free workers; never more in flight than workers, so a job
    /// never queues behind a hanging one.
    fn pump(&mut self) {
        while self.in_flight < self.pool.workers() {
            let Some(job) = self.waiting.pop_front() else {
                break;
            };
            self.in_flight += 1;
            self.pool.submit(job);
        }
    }

    // ---- results ----

    fn on_result(&mut self, result: JobResult) {
        self.in_flight = self.in_flight.saturating_sub(1);
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
                self.on_applied(id, target, actions, vetoed);
            }
            JobResult::Undone {
                id,
                target,
                outcomes,
            } => self.on_undone(id, target, outcomes),
        }
    }

    fn on_applied(
        &mut self,
        id: u64,
        target: Target,
        actions: Vec<crate::respond::Action>,
        vetoed: bool,
    ) {
        self.apply_result(id, target, actions, vetoed);
        if let Some(reply) = self.queued_unblocks.remove(&target) {
            match self.hosts.get(&target) {
                Some(Host::Active {
                    reapplying: None, ..
                }) => self.start_release(target, UnblockReason::Manual, Some(reply)),
                Some(Host::Releasing { .. }) => {
                    let who = target_text(&target);
                    self.effects.push(Effect::Reply(Box::new(move || {
                        reply(Err(format!("{who}: already being unblocked")))
                    })));
                }
                _ => {
                    let who = target_text(&target);
                    self.effects.push(Effect::Reply(Box::new(move || {
                        reply(Err(format!("{who} is not blocked (its block failed)")))
                    })));
                }
            }
        }
    }

    fn apply_result(
        &mut self,
        id: u64,
        target: Target,
        actions: Vec<crate::respond::Action>,
        vetoed: bool,
    ) {
        let now = SystemTime::now();
        let who = target_text(&target);
        match self.hosts.remove(&target) {
            Some(Host::Applying(a)) if a.job == id => {
                if actions.is_empty() {
                    if !vetoed {
                        self.counters.failed.fetch_add(1, Ordering::Relaxed);
                        self.effects
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
                let record = BlockRecord {
                    target,
                    since: now,
                    until: a.duration.and_then(|d| now.checked_add(d)),
                    offences: a.offences,
                    origin: a.origin,
                    trigger: a.trigger,
                    reason: a.reason,
                    actions,
                };
                self.counters.made.fetch_add(1, Ordering::Relaxed);
                self.entries.push(Entry::Block(record.clone()));
                if let Some((resolved, time)) = &a.history
                    && let Some(t) = &record.trigger
                {
                    self.effects.push(Effect::History(history_line(
                        *time,
                        resolved,
                        target.addr(),
                        t.port,
                        t.proto,
                    )));
                }
                if let Some(d) = record.duration() {
                    self.effects.push(Effect::Info(log_lines::blocked_for(
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
                if self.events.enabled() {
                    self.effects
                        .push(Effect::Event(Box::new(Event::block(&record))));
                }
                if self.observer.is_some() && record.origin != Origin::Fleet {
                    self.effects
                        .push(Effect::Note(BlockNote::Made(record.clone())));
                }
                self.activate(record);
            }
            Some(Host::Active {
                mut record,
                reapplying: Some(job),
            }) if job == id => {
                self.restore_done(actions.is_empty());
                if actions.is_empty() {
                    // Not in the kernel any more: say so and let the next probe block again.
                    self.view.remove(&target);
                    self.entries.push(Entry::Unblock {
                        target,
                        at: now,
                        why: UnblockReason::Released,
                    });
                    self.remember(&record, now);
                    self.effects
                        .push(Effect::Warn(log_lines::restore_failed(&who)));
                    if self.events.enabled() {
                        let event = Event::unblock(&record, UnblockReason::Released, now, &[]);
                        self.effects.push(Effect::Event(Box::new(event)));
                    }
                    self.blocked_file_dirty = true;
                    return;
                }
                record.actions = actions;
                self.entries.push(Entry::Block(record.clone()));
                let expired = record.expired(now);
                self.hosts.insert(
                    target,
                    Host::Active {
                        record,
                        reapplying: None,
                    },
                );
                if expired {
                    self.start_release(target, UnblockReason::Expired, None);
                }
            }
            Some(other) => {
                // Not this job's host state (cannot happen): keep what is there.
                self.hosts.insert(target, other);
            }
            None => {}
        }
    }

    /// Counts a finished re-apply; the last one logs how long restoring took.
    fn restore_done(&mut self, failed: bool) {
        let r = &mut self.restore;
        r.left = r.left.saturating_sub(1);
        r.failed += usize::from(failed);
        if r.left == 0
            && let Some(started) = r.started.take()
        {
            self.effects.push(Effect::Info(log_lines::restored(
                r.total - r.failed,
                r.failed,
                started.elapsed(),
            )));
        }
    }

    fn activate(&mut self, record: BlockRecord) {
        let target = record.target;
        if let Some(until) = record.until {
            self.expiries.push(Reverse((until, target)));
        }
        self.offences.remove(&target);
        self.view.insert(target);
        self.blocked_file_dirty = true;
        self.hosts.insert(
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
            let (reply, outcomes) = (b.reply, b.outcomes);
            self.effects
                .push(Effect::Reply(Box::new(move || reply(outcomes))));
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

    fn on_undone(&mut self, id: u64, target: Target, outcomes: Vec<(String, UndoOutcome)>) {
        let now = SystemTime::now();
        let who = target_text(&target);
        let Some(Host::Releasing {
            job,
            record,
            why,
            reply,
            reblock,
        }) = self.hosts.remove(&target)
        else {
            return;
        };
        if job != id {
            return;
        }
        self.entries.push(Entry::Unblock {
            target,
            at: now,
            why,
        });
        self.remember(&record, now);
        self.blocked_file_dirty = true;
        let mut details = Vec::new();
        for (responder, outcome) in &outcomes {
            match outcome {
                UndoOutcome::Done(d) => details.push(format!("{responder}: {d}")),
                UndoOutcome::Failed(e) => {
                    self.counters
                        .responder_failures
                        .fetch_add(1, Ordering::Relaxed);
                    details.push(format!("{responder}: FAILED: {e}"));
                    self.effects
                        .push(Effect::Warn(log_lines::undo_failed(&who, responder, e)));
                }
                UndoOutcome::Impossible(e) => {
                    details.push(format!("{responder}: left in place: {e}"));
                    self.effects
                        .push(Effect::Warn(log_lines::undo_impossible(&who, responder, e)));
                }
            }
        }
        let line = match why {
            UnblockReason::Expired => {
                self.counters.expired.fetch_add(1, Ordering::Relaxed);
                log_lines::unblocked_expired(&who, record.duration().unwrap_or_default())
            }
            _ => {
                self.counters.unblocked.fetch_add(1, Ordering::Relaxed);
                log_lines::unblocked_by_operator(&who)
            }
        };
        self.effects.push(Effect::Info(line));
        if self.events.enabled() {
            let event = Event::unblock(&record, why, now, &outcomes);
            self.effects.push(Effect::Event(Box::new(event)));
        }
        if self.observer.is_some() && record.origin != Origin::Fleet {
            self.effects
                .push(Effect::Note(BlockNote::Lifted(record.clone())));
        }
        if let Some(reply) = reply {
            self.effects
                .push(Effect::Reply(Box::new(move || reply(Ok(details)))));
        }
        if let Some(req) = reblock
            && !self.stopping
        {
            self.on_request(req);
        }
    }

    // ---- persistence ----

    /// Appends what changed to the journal (one fsync), then reports it: log lines,
    /// history lines, replies. Compacts the journal when it has grown.
    fn commit(&mut self) {
        if !self.entries.is_empty() {
            let entries = std::mem::take(&mut self.entries);
            if let Err(e) = self.journal.append(&entries) {
                log::error!(
                    "{}",
                    log_lines::state_file_write_failed(self.journal.path(), e)
                );
            }
        }
        for effect in std::mem::take(&mut self.effects) {
            match effect {
                Effect::Info(line) => log::info!("{line}"),
                Effect::Warn(line) => log::warn!("{line}"),
                Effect::History(line) => {
                    if let Err(e) = self.history.append(&line) {
                        log::error!(
                            "{}",
                            log_lines::history_write_failed(self.history.path(), e)
                        );
                    }
                }
                Effect::Reply(reply) => reply(),
                Effect::Event(event) => self.events.send(*event),
                Effect::Note(note) => {
                    let sent = self.observer.as_ref().map(|tx| tx.try_send(note).is_ok());
                    if sent == Some(false) {
                        self.counters.notes_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        // `hosts` bounds the records from above: counting them (a walk of every host) only
        // when that bound says compaction may be due keeps a commit O(1) while thousands of
        // restored blocks come back one by one.
        if self.journal.needs_compaction(self.hosts.len())
            && self.journal.needs_compaction(self.records().count())
        {
            let records: Vec<BlockRecord> = self.records().cloned().collect();
            if let Err(e) = self.journal.compact(records.iter(), self.offences.iter()) {
                log::error!(
                    "{}",
                    log_lines::state_file_compact_failed(self.journal.path(), e)
                );
            }
        }
    }

    /// Every block with a record: active, being re-applied, or being lifted.
    fn records(&self) -> impl Iterator<Item = &BlockRecord> {
        self.hosts.values().filter_map(|h| match h {
            Host::Active { record, .. } | Host::Releasing { record, .. } => Some(record),
            Host::Applying(_) => None,
        })
    }

    /// Rewrites `BLOCKED_FILE` (the 1.2 list of hosts blocked now) when it changed, at most
    /// once per [`BLOCKED_FILE_INTERVAL`] unless `now`.
    fn write_blocked_file(&mut self, now: bool) {
        let recent = self
            .blocked_file_written
            .is_some_and(|t| t.elapsed() < BLOCKED_FILE_INTERVAL);
        if !self.blocked_file_dirty || (!now && recent) {
            return;
        }
        let path = self.generation.config.blocked_file.clone();
        let active = self.hosts.values().filter_map(|h| match h {
            Host::Active { record, .. } => Some(record),
            _ => None,
        });
        if let Err(e) = journal::write_blocked_file(&path, active) {
            log::error!("{}", log_lines::blocked_file_write_failed(&path, e));
        }
        self.blocked_file_dirty = false;
        self.blocked_file_written = Some(Instant::now());
    }
}

/// Durations of blocks made on forgeable evidence: `FORGEABLE_BLOCK_TIMEOUT` as the first
/// block, or `BLOCK_TIMEOUT` when it is `0`; growing like any block.
fn forgeable_policy(config: &crate::config::Config) -> DurationPolicy {
    DurationPolicy {
        base: config.forgeable_block_timeout.or(config.block_timeout),
        ..DurationPolicy::from_config(config)
    }
}

/// A 127.0.0.1 / ::1 of the target's family, to tell whether a network covers loopback.
/// The alert responders see for a block without a live probe (by hand, restored): the
/// target's address, the trigger's port and mode when known, else port 0 over TCP.
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
mod tests {
    use super::*;
    use crate::config::Template;

    fn request(ip: &str) -> BlockRequest {
        BlockRequest {
            alert: Candidate {
                hit: Hit::now(ip.parse().unwrap(), 79, Mode::Tcp, ProbeKind::Connect),
                count: 1,
                already_blocked: false,
                actionable: true,
            },
            resolved: ip.to_string(),
        }
    }

    fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A generation that blocks TCP with `KILL_RUN_CMD` only, its files in `dir`.
    fn run_cmd_generation(dir: &std::path::Path, command: &str) -> (Generation, History) {
        let mut config = crate::config::build::defaults(&dir.join("p.conf"));
        config.block_tcp = BlockLevel::RunCmdOnly;
        config.kill_run_cmd = Some(Template {
            text: command.into(),
            line: 1,
        });
        config.history_file = dir.join("history");
        config.blocked_file = dir.join("blocked");
        config.block_state_file = dir.join("state");
        let history = History::open(&config.history_file).unwrap();
        (
            Generation::from_parts(1, config, Default::default()),
            history,
        )
    }

    #[test]
    fn a_dropped_block_leaves_nothing_behind_and_the_next_probe_blocks() {
        let dir = tempfile::tempdir().unwrap();
        let (generation, history) = run_cmd_generation(dir.path(), "sleep 1");
        let manager = BlockManager::start_with(
            generation,
            LuaPlugins::none(),
            history,
            ProtectView::new(),
            1,
            EventSink::off(),
        )
        .unwrap();
        let requester = manager.requester();
        let counters = manager.counters();
        let view = manager.view();
        // 8 workers busy for a second, one block waiting, the tenth dropped.
        let hosts: Vec<String> = (1..=10).map(|h| format!("10.77.9.{h}")).collect();
        for h in &hosts {
            assert!(requester.request(request(h)));
        }
        assert!(wait_for(|| counters.dropped.load(Ordering::Relaxed) == 1));
        let dropped = &hosts[9];
        assert!(wait_for(|| view.len() == 9), "the others are blocked");
        assert!(!view.is_blocked(dropped.parse().unwrap()));
        // Nothing was reserved for it: its next probe starts a block of its own.
        assert!(requester.request(request(dropped)));
        assert!(wait_for(|| view.is_blocked(dropped.parse().unwrap())));
        assert_eq!(counters.made.load(Ordering::Relaxed), 10);
        assert_eq!(counters.dropped.load(Ordering::Relaxed), 1);
        let listed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let l2 = std::sync::Arc::clone(&listed);
        manager.list(move |blocks| *crate::sync::lock(&l2) = blocks);
        assert!(wait_for(|| crate::sync::lock(&listed).len() == 10));
        manager.stop();
        let history = std::fs::read_to_string(dir.path().join("history")).unwrap();
        assert_eq!(history.lines().count(), 10, "{history}");
    }

    #[test]
    fn the_observer_hears_blocks_made_and_lifted_here() {
        let dir = tempfile::tempdir().unwrap();
        let (generation, history) = run_cmd_generation(dir.path(), "true");
        let manager =
            BlockManager::start(generation, LuaPlugins::none(), history, ProtectView::new())
                .unwrap();
        let (notes_tx, notes) = bounded(16);
        manager.observe(Some(notes_tx));
        assert!(manager.requester().request(request("10.77.7.1")));
        let target = |t: &str| crate::record::parse_target(t).unwrap();
        let made = notes.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(&made, BlockNote::Made(r) if r.origin == Origin::Scan));
        manager.unblock(target("10.77.7.1"), |_| {});
        let lifted = notes.recv_timeout(Duration::from_secs(5)).unwrap();
        assert!(matches!(lifted, BlockNote::Lifted(r) if r.target == target("10.77.7.1")));
        manager.stop();
    }

    #[test]
    fn a_stop_waits_for_the_blocks_in_hand_and_journals_them() {
        let dir = tempfile::tempdir().unwrap();
        let (generation, history) = run_cmd_generation(dir.path(), "sleep 0.5");
        let manager =
            BlockManager::start(generation, LuaPlugins::none(), history, ProtectView::new())
                .unwrap();
        let requester = manager.requester();
        for h in ["10.77.8.1", "fd77:8::1"] {
            assert!(requester.request(request(h)));
        }
        std::thread::sleep(Duration::from_millis(100));
        manager.stop();
        let (_, replay) = Journal::open(&dir.path().join("state")).unwrap();
        assert_eq!(
            replay.active.len(),
            2,
            "both blocks journaled before the stop ended"
        );
        let history = std::fs::read_to_string(dir.path().join("history")).unwrap();
        assert_eq!(history.lines().count(), 2);
        let blocked = std::fs::read_to_string(dir.path().join("blocked")).unwrap();
        assert!(
            blocked.contains("/fd77:8::1 Port: 79 TCP Blocked"),
            "{blocked}"
        );
    }
}
