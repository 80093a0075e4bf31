//! The responders' worker pool: applies and undoes blocks for the block manager, several
//! hosts at once, so a slow or hanging responder delays only its own host (1.2, and our
//! earlier single block thread, made host N wait N × `KILL_CMD_TIMEOUT`).
//!
//! The pool owns no block state: it takes a [`Job`], runs the responders, and sends a
//! [`JobResult`] back; the manager decides what that means.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicIsize, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};

use super::hosts_deny::HostsDenyResponder;
use super::lua::LuaPlugins;
use super::nftables::{NftHandle, NftResponder};
use super::route::NetlinkRoute;
use super::shell::ShellResponder;
use super::undo::{UnblockReason, UndoOutcome, undo_action};
use super::{Action, Outcome, Responder, ResponseContext};
use crate::config::{BlockLevel, Config};
use crate::event::Candidate;
use crate::generation::Generation;
use crate::heartbeat::{self, Kind};
use crate::log_lines;
use crate::record::{BlockRecord, Target, target_text};

/// Workers running responders at once: enough that a few hanging commands leave the others
/// free, few enough that a burst of blocks cannot fork hundreds of processes.
pub const WORKERS: usize = 8;

/// Upper bounds, in seconds, of the buckets responder times are counted in: from a
/// hosts.deny line (a millisecond) to a command killed at the default `KILL_CMD_TIMEOUT`.
pub const DURATION_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 30.0,
];

/// Responder names timed separately at most; the rest share `other`, so that plugins named
/// anew at every reload cannot grow the table without end.
const MAX_TIMED_RESPONDERS: usize = 64;

/// A histogram of durations kept in atomics: the workers count, the metrics read at scrape
/// time, and neither waits for the other.
#[derive(Debug, Default)]
pub struct Durations {
    /// Counts per bucket of [`DURATION_BUCKETS`], plus one past the last bound.
    buckets: [AtomicU64; DURATION_BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

/// What a [`Durations`] held at one moment.
#[derive(Debug, Clone, PartialEq)]
pub struct DurationSnapshot {
    /// (upper bound in seconds, count in that bucket alone), the last bound infinite.
    pub buckets: Vec<(f64, u64)>,
    /// Sum of every duration, in seconds.
    pub sum: f64,
    /// How many durations were counted.
    pub count: u64,
}

impl Durations {
    /// Counts one duration.
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = DURATION_BUCKETS
            .iter()
            .position(|&bound| secs <= bound)
            .unwrap_or(DURATION_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// The counts now; the total is the sum of the buckets, so the two always agree.
    pub fn snapshot(&self) -> DurationSnapshot {
        let bounds = DURATION_BUCKETS.iter().copied().chain([f64::INFINITY]);
        let buckets: Vec<(f64, u64)> = bounds
            .zip(&self.buckets)
            .map(|(bound, n)| (bound, n.load(Ordering::Relaxed)))
            .collect();
        DurationSnapshot {
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
            sum: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Which way a responder ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Op {
    /// Applying a block.
    Apply,
    /// Undoing one.
    Undo,
}

impl Op {
    /// Lower-case name, the metrics' `op` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Apply => "apply",
            Op::Undo => "undo",
        }
    }
}

/// How long the pool's work takes: whole apply jobs, and each responder run, so that a slow
/// command or plugin shows up in the metrics before it shows up as a timeout.
#[derive(Debug, Default)]
pub struct Timings {
    /// Every apply job, all its responders together.
    pub apply_jobs: Durations,
    responders: Mutex<BTreeMap<(String, Op), Arc<Durations>>>,
}

impl Timings {
    /// Counts one run of one responder.
    pub fn record_responder(&self, responder: &str, op: Op, d: Duration) {
        let durations = {
            let mut map = crate::sync::lock(&self.responders);
            let key = (responder.to_string(), op);
            let key = if map.contains_key(&key) || map.len() < MAX_TIMED_RESPONDERS {
                key
            } else {
                ("other".to_string(), op)
            };
            Arc::clone(map.entry(key).or_default())
        };
        durations.record(d);
    }

    /// Every responder timed so far: name, way, and its durations.
    pub fn responders(&self) -> Vec<(String, Op, DurationSnapshot)> {
        let map = crate::sync::lock(&self.responders);
        map.iter()
            .map(|((name, op), d)| (name.clone(), *op, d.snapshot()))
            .collect()
    }
}

/// One block to apply: the core's decision, without the generation its job shares.
#[derive(Debug)]
pub struct BlockToApply {
    /// Manager's job number, echoed in the result.
    pub id: u64,
    /// Who is blocked.
    pub target: Target,
    /// The probe behind it (a stand-in for blocks made by hand or restored).
    pub alert: Candidate,
    /// Reverse-DNS name or the address.
    pub resolved: String,
    /// Which responders run.
    pub level: BlockLevel,
    /// When the block ends, for responders that tell the kernel.
    pub until: Option<SystemTime>,
    /// Re-applied after a restart (notifications stay quiet, `KILL_RUN_CMD` runs only when
    /// it can be undone).
    pub restored: bool,
    /// The hosts an escalated prefix block took over (empty otherwise).
    pub members: Vec<IpAddr>,
}

/// Apply blocks: one (a new block runs alone, so a hanging responder delays only its own
/// host), or a batch (the blocks restored at start), which each responder takes in one go
/// where it can ([`Responder::respond_batch`]: one netlink exchange, one hosts.deny append).
/// One [`JobResult::Applied`] comes back per block either way.
pub struct ApplyJob {
    /// The blocks, in order.
    pub blocks: Vec<BlockToApply>,
    /// The generation whose responders run.
    pub generation: Generation,
    /// The Lua plugins built from it (its `LUA_RESPONDERS`).
    pub lua: LuaPlugins,
}

/// One block to lift.
#[derive(Debug)]
pub struct BlockToUndo {
    /// Manager's job number, echoed in the result.
    pub id: u64,
    /// The block to lift.
    pub record: BlockRecord,
    /// Why, told to Lua `unblock` handlers.
    pub reason: UnblockReason,
}

/// Undo every action of one block or of a batch, newest first per block; the hosts.deny
/// lines of the batch go in one rewrite per file and its routes in one netlink exchange.
/// One [`JobResult::Undone`] comes back per block.
pub struct UndoJob {
    /// The blocks, in order.
    pub blocks: Vec<BlockToUndo>,
    /// The generation in force.
    pub generation: Generation,
    /// Its Lua plugins, which run `unblock` handlers.
    pub lua: LuaPlugins,
}

/// Give a block in force a later end in the kernel: its nftables element gets the new
/// time left (the other responders' actions have no end of their own).
pub struct RefreshJob {
    /// Manager's job number, echoed in the result.
    pub id: u64,
    /// The block, with its new end.
    pub record: BlockRecord,
}

/// Work for the pool.
pub enum Job {
    /// See [`ApplyJob`].
    Apply(Box<ApplyJob>),
    /// See [`UndoJob`].
    Undo(Box<UndoJob>),
    /// See [`RefreshJob`].
    Refresh(Box<RefreshJob>),
}

/// What a job did.
#[derive(Debug)]
pub enum JobResult {
    /// The responders ran for a block.
    Applied {
        /// The job.
        id: u64,
        /// Its target.
        target: Target,
        /// What was done, in order; empty when nothing blocked the host.
        actions: Vec<Action>,
        /// Responders that failed (already logged).
        failures: usize,
        /// A Lua responder vetoed the block (already logged).
        vetoed: bool,
    },
    /// A block's kernel timeout was renewed; `error` says why not.
    Refreshed {
        /// The job.
        id: u64,
        /// Its target.
        target: Target,
        /// What failed, if anything did.
        error: Option<String>,
    },
    /// A block's actions were undone (as far as possible).
    Undone {
        /// The job.
        id: u64,
        /// Its target.
        target: Target,
        /// Responder name and outcome per action, in the order they were undone.
        outcomes: Vec<(String, UndoOutcome)>,
    },
}

/// The responders for one block level, in 1.2's order: hosts.deny, route, command — the
/// command first with `KILL_RUN_CMD_FIRST` — and the Lua ones before or after the built-ins.
/// `KILL_NFTABLES` comes first among the blocking built-ins (after a `KILL_RUN_CMD_FIRST`
/// command): it is the cheapest and the quickest to take effect; it is left out while `nft`
/// has no open backend (nftables unusable: said once, at start or reload).
/// A restored block leaves out `KILL_RUN_CMD` unless `UNKILL_RUN_CMD` says it is a block
/// that can be undone (otherwise it is taken for a notification, not to be sent again).
pub fn responder_chain(
    config: &Config,
    level: BlockLevel,
    restored: bool,
    lua: Vec<Box<dyn Responder>>,
    nft: &NftHandle,
) -> Vec<Box<dyn Responder>> {
    let timeout = config.kill_cmd_timeout;
    let run_cmd = config
        .kill_run_cmd
        .as_ref()
        .filter(|_| !restored || config.unkill_run_cmd.is_some())
        .map(|t| Box::new(ShellResponder::run_cmd(&t.text, timeout)) as Box<dyn Responder>);
    let mut builtins: Vec<Box<dyn Responder>> = Vec::new();
    match level {
        BlockLevel::LogOnly => return Vec::new(),
        BlockLevel::RunCmdOnly => builtins.extend(run_cmd),
        BlockLevel::All => {
            let hosts_deny = config.kill_hosts_deny.as_ref().map(|t| {
                Box::new(HostsDenyResponder::new(
                    &t.text,
                    config.hosts_deny_file.clone(),
                )) as Box<dyn Responder>
            });
            let route =
                config
                    .kill_route
                    .as_ref()
                    .map(|t| match NetlinkRoute::new(&t.text, timeout) {
                        Some(r) => Box::new(r) as Box<dyn Responder>,
                        None => Box::new(ShellResponder::route(&t.text, timeout)),
                    });
            let nftables = (config.kill_nftables && nft.is_open())
                .then(|| Box::new(NftResponder::new(nft.clone())) as Box<dyn Responder>);
            if config.kill_run_cmd_first {
                builtins.extend(run_cmd);
                builtins.extend(nftables);
                builtins.extend(hosts_deny);
                builtins.extend(route);
            } else {
                builtins.extend(nftables);
                builtins.extend(hosts_deny);
                builtins.extend(route);
                builtins.extend(run_cmd);
            }
        }
    }
    if config.lua_responders_first {
        lua.into_iter().chain(builtins).collect()
    } else {
        builtins.into_iter().chain(lua).collect()
    }
}

/// How long a worker beyond the first waits for a job before it ends. A thread's allocator
/// cache and the pages it pins go with it (the manager then hands the free pages back): after
/// the restore of 20,000 blocks the eight workers kept about 2 MiB that way, a hundred bytes
/// a block. Starting a thread again costs a fraction of a millisecond; a scan's block whose
/// responders all work in-process never waits for one (it runs on the manager's thread).
pub const IDLE_EXIT: Duration = Duration::from_secs(5);

/// How a worker thread is started: [`spawn_named`] in the daemon; tests make it fail.
type Spawner =
    dyn FnMut(String, Box<dyn FnOnce() + Send>) -> std::io::Result<JoinHandle<()>> + Send;

/// Starts a named thread, returning the error (`EAGAIN` when the system is out of threads)
/// instead of panicking as `std::thread::spawn` does.
fn spawn_named(name: String, f: Box<dyn FnOnce() + Send>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new().name(name).spawn(f)
}

/// What every worker shares.
struct Shared {
    jobs: Receiver<Job>,
    results: Sender<JobResult>,
    timings: Arc<Timings>,
    nft: NftHandle,
    /// [`IDLE_EXIT`] (shorter in tests).
    idle_exit: Duration,
    /// Workers waiting (or about to) less jobs sent and not yet taken: every job sent counts
    /// one off, and starts a worker when none was spare; a worker counts itself back on
    /// when it is done with a job; one that ends for lack of work must take itself off while
    /// the count is above zero (below, a job is owed to whoever waits). So no job is left
    /// without a worker on its way, and a burst gets a worker per job.
    spare: AtomicIsize,
}

impl Shared {
    /// Takes one spare worker off for ending, if one is spare.
    fn leave(&self) -> bool {
        self.spare
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 0).then(|| n - 1)
            })
            .is_ok()
    }
}

/// The running workers, each in a slot (`respond-N` is slot N): the first one started stays
/// for good, the others end after [`IDLE_EXIT`] without work and are started again when
/// jobs come in faster than the workers alive take them.
pub struct Pool {
    jobs: Option<Sender<Job>>,
    shared: Arc<Shared>,
    slots: Mutex<Vec<Option<JoinHandle<()>>>>,
    spawn: Mutex<Box<Spawner>>,
}

impl Pool {
    /// Starts up to `workers` threads sending their results to `results`, sharing `nft` (the
    /// `KILL_NFTABLES` backend, which the manager configures). A thread that cannot be
    /// started (the system is out of threads) is logged; the pool runs with fewer, and fails
    /// only when it has none.
    pub fn start(
        workers: usize,
        results: Sender<JobResult>,
        nft: NftHandle,
    ) -> std::io::Result<Pool> {
        let pool = Pool::start_with(workers, results, nft, Box::new(spawn_named), IDLE_EXIT)?;
        heartbeat::registry().set_worker_slots(pool.workers());
        Ok(pool)
    }

    /// [`Pool::start`] with the way threads are started passed in, so that running out of
    /// threads can be tested.
    fn start_with(
        workers: usize,
        results: Sender<JobResult>,
        nft: NftHandle,
        spawn: Box<Spawner>,
        idle_exit: Duration,
    ) -> std::io::Result<Pool> {
        let (tx, rx) = unbounded::<Job>();
        let pool = Pool {
            jobs: Some(tx),
            shared: Arc::new(Shared {
                jobs: rx,
                results,
                timings: Arc::new(Timings::default()),
                nft,
                idle_exit,
                spare: AtomicIsize::new(0),
            }),
            slots: Mutex::new(Vec::new()),
            spawn: Mutex::new(spawn),
        };
        let mut last_error = None;
        {
            let mut slots = crate::sync::lock(&pool.slots);
            for n in 0..workers.max(1) {
                let permanent = slots.iter().all(Option::is_none);
                match pool.start_worker(n, permanent) {
                    Ok(h) => {
                        // Spare from now on, before its thread runs: a job sent in the
                        // meantime is then counted as meant for it.
                        pool.shared.spare.fetch_add(1, Ordering::SeqCst);
                        slots.push(Some(h));
                    }
                    Err(e) => {
                        log::error!("{}", log_lines::responder_thread_failed(n, &e));
                        last_error = Some(e);
                    }
                }
            }
            // The slots of the threads that would not start are not used again.
            slots.retain(Option::is_some);
        }
        match (pool.workers(), last_error) {
            (0, Some(e)) => Err(e),
            _ => Ok(pool),
        }
    }

    /// Starts the worker of slot `n`; the caller counts it as spare once it is started (at
    /// start, or for the job it was started for).
    fn start_worker(&self, n: usize, permanent: bool) -> std::io::Result<JoinHandle<()>> {
        let shared = Arc::clone(&self.shared);
        let name = format!("respond-{n}");
        let enrolled_as = name.clone();
        let mut spawn = crate::sync::lock(&self.spawn);
        (*spawn)(
            name,
            Box::new(move || {
                let _enrolled = heartbeat::enroll(&enrolled_as, Kind::Worker);
                work(&shared, permanent)
            }),
        )
    }

    /// How long the workers' jobs and responders take (read by the metrics).
    pub fn timings(&self) -> Arc<Timings> {
        Arc::clone(&self.shared.timings)
    }

    /// The nftables backend the workers share.
    pub fn nft(&self) -> &NftHandle {
        &self.shared.nft
    }

    /// How many jobs run at once: the slots, whether their worker is alive now or not.
    pub fn workers(&self) -> usize {
        crate::sync::lock(&self.slots).len()
    }

    /// Workers alive now (ended ones not yet [`Pool::reap`]ed included).
    #[cfg(test)]
    fn alive(&self) -> usize {
        crate::sync::lock(&self.slots).iter().flatten().count()
    }

    /// Hands a job to the next free worker, starting one in a free slot when none waits.
    /// The manager keeps at most [`Pool::workers`] jobs in flight, so this never queues
    /// behind a hanging one.
    ///
    /// A scan's block whose responders all work in-process (an `ip route` form done over
    /// rtnetlink) is run here instead, on the manager's thread, its results sent the way a
    /// worker's are: one netlink exchange costs less than waking a worker, and on a loaded
    /// 2-core machine that wake-up was a good part of the time from a scanner's first packet
    /// to its route (issue 19).
    pub fn submit(&self, job: Job) {
        if let Job::Apply(apply) = &job
            && runs_in_process(apply, &self.shared.nft)
        {
            for result in run(job, &self.shared.timings, &self.shared.nft) {
                let _ = self.shared.results.send(result);
            }
            heartbeat::idle();
            return;
        }
        if self.shared.spare.fetch_sub(1, Ordering::SeqCst) <= 0 {
            self.start_spare_slot();
        }
        if let Some(tx) = &self.jobs {
            let _ = tx.send(job);
        }
    }

    /// Starts a worker for a job in the first free slot. With none free (every worker busy,
    /// or one ending and not yet reaped), or when the thread cannot start, the job waits in
    /// the queue for the next worker done, the first of which never ends.
    fn start_spare_slot(&self) {
        self.reap();
        let mut slots = crate::sync::lock(&self.slots);
        let Some(n) = slots.iter().position(Option::is_none) else {
            return;
        };
        match self.start_worker(n, false) {
            Ok(h) => {
                // Waiting for the job just counted off.
                self.shared.spare.fetch_add(1, Ordering::SeqCst);
                slots[n] = Some(h);
            }
            Err(e) => log::warn!("{}", log_lines::responder_thread_failed(n, &e)),
        }
    }

    /// Joins the workers that ended for lack of work; true when there were some, whose
    /// memory the allocator now holds free (see [`crate::memory::release_free`]).
    pub fn reap(&self) -> bool {
        let mut ended = Vec::new();
        for slot in crate::sync::lock(&self.slots).iter_mut() {
            if slot.as_ref().is_some_and(JoinHandle::is_finished)
                && let Some(h) = slot.take()
            {
                ended.push(h);
            }
        }
        // Joined outside the lock: a thread's end (its allocator cache given back) is
        // complete only once join returns.
        let any = !ended.is_empty();
        for h in ended {
            let _ = h.join();
        }
        any
    }

    /// Lets the workers finish what they hold, then joins them.
    pub fn stop(mut self) {
        self.jobs = None;
        let handles: Vec<JoinHandle<()>> = crate::sync::lock(&self.slots)
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for h in handles {
            let _ = h.join();
        }
    }
}

/// A worker's life: take a job, run it, send its results, offer itself as spare, again
/// (it starts counted already, see [`Pool::start_worker`]). Only the `permanent` one waits
/// for ever; the others end after [`IDLE_EXIT`] without a job, if they can take their spare
/// place back (otherwise a job is on its way to them).
fn work(shared: &Shared, permanent: bool) {
    let mut offer = false;
    loop {
        if offer {
            shared.spare.fetch_add(1, Ordering::SeqCst);
        }
        offer = true;
        let job = loop {
            let got = if permanent {
                shared
                    .jobs
                    .recv()
                    .map_err(|_| RecvTimeoutError::Disconnected)
            } else {
                shared.jobs.recv_timeout(shared.idle_exit)
            };
            match got {
                Ok(job) => break job,
                Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    if shared.leave() {
                        heartbeat::retire();
                        return;
                    }
                }
            }
        };
        let done = run(job, &shared.timings, &shared.nft);
        heartbeat::idle();
        for result in done {
            if shared.results.send(result).is_err() {
                return;
            }
        }
    }
}

/// Runs one job: its results, one per block in order (the pending stderr lines written).
fn run(job: Job, timings: &Timings, nft: &NftHandle) -> Vec<JobResult> {
    let done = match job {
        Job::Apply(job) => {
            let started = Instant::now();
            let done = apply(&job, timings, nft);
            let each = per_block(started.elapsed(), done.len());
            for _ in &done {
                timings.apply_jobs.record(each);
            }
            done
        }
        Job::Undo(job) => undo(&job, timings, nft),
        Job::Refresh(job) => vec![refresh(&job.record, job.id, nft)],
    };
    crate::logging::flush();
    done
}

/// Whether a job is one scan's block whose every responder works in-process (see
/// [`Pool::submit`]); restored blocks come in large batches and stay with the workers.
fn runs_in_process(job: &ApplyJob, nft: &NftHandle) -> bool {
    let [block] = job.blocks.as_slice() else {
        return false;
    };
    if block.restored {
        return false;
    }
    let config = &job.generation.config;
    let chain = responder_chain(config, block.level, false, job.lua.responders(), nft);
    !chain.is_empty() && chain.iter().all(|r| r.in_process(&block.target))
}

/// Puts a block's nftables element back with the time its record now has left (delete and
/// add: the kernel keeps an element's first timeout otherwise). A block without an
/// nftables action has nothing to renew.
fn refresh(record: &BlockRecord, id: u64, nft: &NftHandle) -> JobResult {
    let tables = record.actions.iter().filter_map(|a| match &a.undo {
        crate::record::Undo::Nftables { table } => Some(table.clone()),
        _ => None,
    });
    let left = record
        .remaining(SystemTime::now())
        .map(|d| d.max(Duration::from_secs(1)));
    let mut error = None;
    let host = record.target.prefix_len() == record.target.max_prefix_len();
    for table in tables.filter(|_| host) {
        let addr = record.target.addr();
        let renewed = nft
            .delete(&table, addr)
            .and_then(|()| nft.add(&[(addr, left)]));
        if let Err(e) = renewed {
            error = Some(e.to_string());
        }
    }
    JobResult::Refreshed {
        id,
        target: record.target,
        error,
    }
}

/// A batch's time shared out over its blocks, so that the timings count blocks whether they
/// ran alone or in a batch.
fn per_block(total: Duration, blocks: usize) -> Duration {
    total / u32::try_from(blocks.max(1)).unwrap_or(u32::MAX)
}

/// What the responders did for one block so far.
#[derive(Default)]
struct Applied {
    actions: Vec<Action>,
    failures: usize,
    vetoed: bool,
}

/// Runs the responder chain for each block of the job: responder after responder over the
/// blocks still in the running (a veto takes a block out of the rest of its chain), each
/// responder given all of them at once. Blocks of different levels run different chains.
fn apply(job: &ApplyJob, timings: &Timings, nft: &NftHandle) -> Vec<JobResult> {
    let config = &job.generation.config;
    let ctxs: Vec<ResponseContext<'_>> = job
        .blocks
        .iter()
        .map(|b| ResponseContext {
            alert: &b.alert,
            target: b.target,
            resolved: &b.resolved,
            config,
            until: b.until,
            restored: b.restored,
            members: &b.members,
        })
        .collect();
    let whos: Vec<String> = job.blocks.iter().map(|b| target_text(&b.target)).collect();
    let mut applied: Vec<Applied> = job.blocks.iter().map(|_| Applied::default()).collect();
    let mut chains: Vec<((BlockLevel, bool), Vec<usize>)> = Vec::new();
    for (i, b) in job.blocks.iter().enumerate() {
        let key = (b.level, b.restored);
        match chains.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(i),
            None => chains.push((key, vec![i])),
        }
    }
    for ((level, restored), mut running) in chains {
        let chain = responder_chain(config, level, restored, job.lua.responders(), nft);
        for mut responder in chain {
            if running.is_empty() {
                break;
            }
            let name = responder.name();
            let limit = super::step_limit(config, &name);
            let batch: Vec<ResponseContext<'_>> = running.iter().map(|&i| ctxs[i]).collect();
            let started = Instant::now();
            let outcomes = if responder.batched() {
                heartbeat::busy(limit);
                responder.respond_batch(&batch)
            } else {
                batch
                    .iter()
                    .map(|ctx| {
                        heartbeat::busy(limit);
                        responder.respond(ctx)
                    })
                    .collect()
            };
            let each = per_block(started.elapsed(), batch.len());
            for (&i, outcome) in running.iter().zip(outcomes) {
                timings.record_responder(&name, Op::Apply, each);
                take_outcome(&whos[i], &name, outcome, &mut applied[i]);
            }
            running.retain(|&i| !applied[i].vetoed);
        }
    }
    job.blocks
        .iter()
        .zip(applied)
        .map(|(b, a)| JobResult::Applied {
            id: b.id,
            target: b.target,
            actions: a.actions,
            failures: a.failures,
            vetoed: a.vetoed,
        })
        .collect()
}

/// Adds one responder's outcome for one block, logging what the log says of it.
fn take_outcome(who: &str, responder: &str, outcome: Outcome, applied: &mut Applied) {
    match outcome {
        Outcome::Done(action) => {
            if action.responder.starts_with("lua:") {
                log::info!(
                    "{}",
                    log_lines::blocked_via_plugin(who, &action.responder, &action.detail)
                );
            }
            applied.actions.push(action);
        }
        Outcome::Skipped(why) => {
            log::debug!("{responder} skipped for {who}: {why}");
        }
        Outcome::Failed(why) => {
            applied.failures += 1;
            log::warn!("{}", log_lines::responder_failed(who, responder, &why));
        }
        Outcome::Veto(why) => {
            log::info!("{}", log_lines::vetoed(who, responder, &why));
            applied.vetoed = true;
        }
    }
}

/// The stand-in alert of a block being lifted: its source, and the port, protocol and mode
/// of the probe that made it when there was one.
fn stand_in(record: &BlockRecord) -> Candidate {
    let (port, proto) = record.port_proto();
    let mode = record
        .trigger
        .as_ref()
        .map_or(crate::event::Mode::Tcp, |t| t.mode);
    let kind = match proto {
        crate::event::Proto::Tcp => crate::event::ProbeKind::Connect,
        crate::event::Proto::Udp => crate::event::ProbeKind::Udp,
    };
    Candidate {
        hit: crate::event::Hit {
            src: record.target.addr(),
            port,
            mode,
            kind,
            ip_options: false,
            time: record.since,
        },
        count: 0,
        already_blocked: true,
        actionable: true,
    }
}

/// Undoes each block's actions, newest first; every action is tried even when one fails.
/// The hosts.deny lines of all the blocks are taken out first, in one rewrite per file, and
/// their routes of a form [`super::route`] knows deleted in one netlink exchange; the other
/// actions run one by one.
fn undo(job: &UndoJob, timings: &Timings, nft: &NftHandle) -> Vec<JobResult> {
    let config = &job.generation.config;
    let alerts: Vec<Candidate> = job.blocks.iter().map(|b| stand_in(&b.record)).collect();
    let whos: Vec<String> = job
        .blocks
        .iter()
        .map(|b| target_text(&b.record.target))
        .collect();
    let started = Instant::now();
    let mut done = super::undo::undo_batched(job.blocks.iter().map(|b| &b.record.actions));
    let batched = done.iter().flatten().filter(|d| d.is_some()).count();
    let each = per_block(started.elapsed(), batched);
    job.blocks
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let record = &b.record;
            let ctx = ResponseContext {
                alert: &alerts[i],
                target: record.target,
                resolved: &whos[i],
                config,
                until: record.until,
                restored: false,
                members: &record.members,
            };
            let outcomes = record
                .actions
                .iter()
                .enumerate()
                .rev()
                .map(|(a, action)| {
                    let slot = done
                        .get_mut(i)
                        .and_then(|d| d.get_mut(a))
                        .and_then(Option::take);
                    let outcome = match slot {
                        Some(outcome) => {
                            timings.record_responder(&action.responder, Op::Undo, each);
                            outcome
                        }
                        None => {
                            heartbeat::busy(super::step_limit(config, &action.responder));
                            let started = Instant::now();
                            let outcome = undo_action(
                                action,
                                &ctx,
                                b.reason,
                                &job.lua,
                                nft,
                                config.kill_cmd_timeout,
                            );
                            timings.record_responder(
                                &action.responder,
                                Op::Undo,
                                started.elapsed(),
                            );
                            outcome
                        }
                    };
                    (action.responder.clone(), outcome)
                })
                .collect();
            JobResult::Undone {
                id: b.id,
                target: record.target,
                outcomes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> Option<crate::config::Template> {
        Some(crate::config::Template {
            text: text.into(),
            line: 1,
        })
    }

    /// A generation blocking through hosts.deny and a command that logs its target and
    /// fails for 10.77.1.3 (undone by a command that logs too).
    fn batch_generation(dir: &std::path::Path) -> Generation {
        let mut config = crate::config::build::defaults(&dir.join("p.conf"));
        let log = dir.join("ran");
        config.kill_route = None;
        config.kill_nftables = false;
        config.kill_hosts_deny = template("ALL: $TARGET$ : DENY");
        config.hosts_deny_file = dir.join("hosts.deny");
        config.kill_run_cmd = template(&format!(
            "echo add $TARGET$ >> {0}; test $TARGET$ != 10.77.1.3",
            log.display()
        ));
        config.unkill_run_cmd = template(&format!("echo del $TARGET$ >> {}", log.display()));
        Generation::from_parts(1, config, Default::default())
    }

    /// A block of `t` (an address or a network) at level All, as the manager hands it over.
    fn block_to_apply(t: &str, id: u64, restored: bool) -> BlockToApply {
        let target = crate::record::parse_target(t).unwrap();
        BlockToApply {
            id,
            target,
            alert: Candidate {
                hit: crate::event::Hit::now(
                    target.addr(),
                    0,
                    crate::event::Mode::Tcp,
                    crate::event::ProbeKind::Connect,
                ),
                count: 0,
                already_blocked: false,
                actionable: true,
            },
            resolved: t.to_string(),
            level: BlockLevel::All,
            until: None,
            restored,
            members: Vec::new(),
        }
    }

    #[test]
    fn only_a_scan_block_whose_responders_all_work_in_process_runs_on_the_managers_thread() {
        let dir = tempfile::tempdir().unwrap();
        let job = |kill_route: &str, hosts_deny: bool, blocks: Vec<BlockToApply>| {
            let mut generation = batch_generation(dir.path());
            let config = std::sync::Arc::make_mut(&mut generation.config);
            config.kill_run_cmd = None;
            config.kill_route = template(kill_route);
            if !hosts_deny {
                config.kill_hosts_deny = None;
            }
            ApplyJob {
                blocks,
                generation,
                lua: LuaPlugins::none(),
            }
        };
        let nft = NftHandle::closed();
        let route = "/sbin/ip route add unreachable $TARGET$";
        let one = || vec![block_to_apply("10.77.1.2", 1, false)];
        assert!(runs_in_process(&job(route, false, one()), &nft));
        assert!(
            runs_in_process(
                &job(route, false, vec![block_to_apply("fd77::4", 1, false)]),
                &nft
            ),
            "the IPv6 form is done in-process too"
        );
        assert!(
            !runs_in_process(&job(route, true, one()), &nft),
            "hosts.deny is a file"
        );
        assert!(
            !runs_in_process(&job("/usr/local/bin/block $TARGET$", false, one()), &nft),
            "a command"
        );
        let restored = vec![block_to_apply("10.77.1.2", 1, true)];
        assert!(!runs_in_process(&job(route, false, restored), &nft));
        let two = vec![
            block_to_apply("10.77.1.2", 1, false),
            block_to_apply("10.77.1.3", 2, false),
        ];
        assert!(!runs_in_process(&job(route, false, two), &nft), "a batch");
    }

    #[test]
    fn a_batch_gives_one_result_per_block_in_order_and_undoes_as_a_batch() {
        let dir = tempfile::tempdir().unwrap();
        let generation = batch_generation(dir.path());
        let targets = ["10.77.1.2", "10.77.1.3", "fd77::4"];
        let blocks = targets
            .iter()
            .zip(10u64..)
            .map(|(t, id)| block_to_apply(t, id, true))
            .collect();
        let job = ApplyJob {
            blocks,
            generation: generation.clone(),
            lua: LuaPlugins::none(),
        };
        let timings = Timings::default();
        let results = apply(&job, &timings, &NftHandle::closed());
        let mut records = Vec::new();
        for ((result, id), t) in results.into_iter().zip(10u64..).zip(targets) {
            let JobResult::Applied {
                id: got,
                target,
                actions,
                failures,
                vetoed,
            } = result
            else {
                panic!("not an apply result");
            };
            assert_eq!(
                (got, target.addr().to_string(), vetoed),
                (id, t.into(), false)
            );
            let names: Vec<&str> = actions.iter().map(|a| a.responder.as_str()).collect();
            if t == "10.77.1.3" {
                assert_eq!((names, failures), (vec!["hosts_deny"], 1));
            } else {
                assert_eq!((names, failures), (vec!["hosts_deny", "run_cmd"], 0));
            }
            records.push(BlockRecord {
                target,
                since: SystemTime::now(),
                until: None,
                offences: 1,
                origin: crate::record::Origin::Manual,
                trigger: None,
                reason: String::new(),
                actions,
                members: Vec::new(),
            });
        }
        let deny = dir.path().join("hosts.deny");
        assert_eq!(
            std::fs::read_to_string(&deny).unwrap(),
            "ALL: 10.77.1.2 : DENY\nALL: 10.77.1.3 : DENY\nALL: [fd77::4] : DENY\n"
        );
        // Each responder counted once per block.
        let counted: Vec<(String, u64)> = timings
            .responders()
            .into_iter()
            .map(|(n, _, d)| (n, d.count))
            .collect();
        assert_eq!(
            counted,
            [("hosts_deny".to_string(), 3), ("run_cmd".to_string(), 3)]
        );
        let undo_job = UndoJob {
            blocks: records
                .into_iter()
                .zip(20u64..)
                .map(|(record, id)| BlockToUndo {
                    id,
                    record,
                    reason: UnblockReason::Unblock,
                })
                .collect(),
            generation,
            lua: LuaPlugins::none(),
        };
        let undone = undo(&undo_job, &timings, &NftHandle::closed());
        assert_eq!(undone.len(), 3);
        for (result, id) in undone.into_iter().zip(20u64..) {
            let JobResult::Undone {
                id: got, outcomes, ..
            } = result
            else {
                panic!("not an undo result");
            };
            assert_eq!(got, id);
            assert!(
                outcomes
                    .iter()
                    .all(|(_, o)| matches!(o, UndoOutcome::Done(_))),
                "{outcomes:?}"
            );
            // Newest first: the command's undo before the line's.
            assert_eq!(outcomes.last().map(|(n, _)| n.as_str()), Some("hosts_deny"));
        }
        assert_eq!(std::fs::read_to_string(&deny).unwrap(), "");
        assert_eq!(
            std::fs::read_to_string(dir.path().join("ran")).unwrap(),
            "add 10.77.1.2\nadd 10.77.1.3\nadd fd77::4\ndel 10.77.1.2\ndel fd77::4\n"
        );
    }

    #[test]
    fn durations_fall_in_the_first_bucket_that_holds_them() {
        let d = Durations::default();
        d.record(Duration::from_micros(500));
        d.record(Duration::from_millis(1));
        d.record(Duration::from_millis(200));
        d.record(Duration::from_secs(31));
        let s = d.snapshot();
        assert_eq!(s.count, 4);
        assert_eq!(s.buckets.len(), DURATION_BUCKETS.len() + 1);
        assert_eq!(s.buckets[0], (0.001, 2), "a bound is inclusive");
        assert_eq!(s.buckets[6], (0.25, 1));
        assert_eq!(s.buckets[DURATION_BUCKETS.len()], (f64::INFINITY, 1));
        assert!((s.sum - 31.2015).abs() < 1e-9, "{}", s.sum);
    }

    #[test]
    fn responder_names_beyond_the_cap_share_one_series() {
        let t = Timings::default();
        for i in 0..MAX_TIMED_RESPONDERS + 10 {
            t.record_responder(&format!("lua:p{i}"), Op::Apply, Duration::from_millis(1));
        }
        t.record_responder("lua:p0", Op::Apply, Duration::from_millis(1));
        let all = t.responders();
        assert_eq!(all.len(), MAX_TIMED_RESPONDERS + 1);
        let count = |name: &str| {
            all.iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, _, d)| d.count)
        };
        assert_eq!(count("other"), Some(10));
        assert_eq!(
            count("lua:p0"),
            Some(2),
            "a known name keeps its own series"
        );
    }

    #[test]
    fn a_pool_short_of_threads_runs_with_those_it_got_and_fails_only_with_none() {
        let (results, _rx) = unbounded::<JobResult>();
        let out_of_threads = || std::io::Error::from_raw_os_error(libc::EAGAIN);
        // Every other thread fails to start, as when a flood exhausted them.
        let started = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&started);
        let spawn = move |name: String, f: Box<dyn FnOnce() + Send>| {
            let mut started = crate::sync::lock(&seen);
            if started.len() % 2 == 1 {
                started.push(None);
                return Err(out_of_threads());
            }
            started.push(Some(name.clone()));
            spawn_named(name, f)
        };
        let pool = Pool::start_with(
            4,
            results.clone(),
            NftHandle::default(),
            Box::new(spawn),
            IDLE_EXIT,
        )
        .expect("a pool with two of its four workers");
        assert_eq!(pool.workers(), 2);
        let names: Vec<Option<String>> = crate::sync::lock(&pool.slots)
            .iter()
            .flatten()
            .map(|h| h.thread().name().map(str::to_string))
            .collect();
        assert_eq!(names, [Some("respond-0".into()), Some("respond-2".into())]);
        assert_eq!(crate::sync::lock(&started).iter().flatten().count(), 2);
        pool.stop();
        // None at all: the manager is told, and refuses to start rather than panic.
        let never = |_: String, _: Box<dyn FnOnce() + Send>| {
            Err(std::io::Error::from_raw_os_error(libc::EAGAIN))
        };
        let err = Pool::start_with(4, results, NftHandle::default(), Box::new(never), IDLE_EXIT)
            .err()
            .expect("no worker, no pool");
        assert_eq!(err.raw_os_error(), Some(libc::EAGAIN));
    }

    /// A block of `target` through a command that sleeps `secs` and logs that it ran.
    fn slow_block(dir: &std::path::Path, target: &str, id: u64, secs: f64) -> Job {
        let mut generation = batch_generation(dir);
        let config = Arc::make_mut(&mut generation.config);
        config.kill_hosts_deny = None;
        config.kill_run_cmd = template(&format!(
            "sleep {secs}; echo $TARGET$ >> {}",
            dir.join("ran-slow").display()
        ));
        Job::Apply(Box::new(ApplyJob {
            blocks: vec![block_to_apply(target, id, false)],
            generation,
            lua: LuaPlugins::none(),
        }))
    }

    /// Joins ended workers until only one is alive (10 s at most; the caller asserts).
    fn reap_until_one_is_left(pool: &Pool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while pool.alive() > 1 && Instant::now() < deadline {
            pool.reap();
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A pool of `n` workers whose idle ones end after `idle`, and where its results go.
    fn pool_ending_after(n: usize, idle: Duration) -> (Pool, Receiver<JobResult>) {
        let (results, done) = unbounded::<JobResult>();
        let pool = Pool::start_with(n, results, NftHandle::closed(), Box::new(spawn_named), idle)
            .expect("a pool");
        (pool, done)
    }

    #[test]
    fn idle_workers_end_and_are_started_again_for_a_burst_the_first_stays() {
        let dir = tempfile::tempdir().unwrap();
        let (pool, done) = pool_ending_after(3, Duration::from_millis(200));
        assert_eq!((pool.workers(), pool.alive()), (3, 3));
        // A burst of three slow jobs runs on three workers at once (positive control for
        // the count below, and for what the burst after the idle time must do again).
        let burst = |first_id: u64| {
            let t0 = Instant::now();
            for i in 0..3 {
                pool.submit(slow_block(
                    dir.path(),
                    &format!("10.77.2.{i}"),
                    first_id + i,
                    0.4,
                ));
            }
            for _ in 0..3 {
                done.recv_timeout(Duration::from_secs(10))
                    .expect("a result");
            }
            t0.elapsed()
        };
        let spare = || pool.shared.spare.load(Ordering::SeqCst);
        let took = burst(1);
        assert!(
            took < Duration::from_millis(1100),
            "three at once: {took:?}"
        );
        // Once every result is in, each worker is spare again (it offers itself right
        // after sending; give the last one a moment).
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(spare(), 3);
        // Past the idle time, the two that are not the first end, and are reaped.
        reap_until_one_is_left(&pool);
        assert_eq!(
            (pool.workers(), pool.alive()),
            (3, 1),
            "only the first stays"
        );
        assert!(!pool.reap(), "nothing more to join");
        assert_eq!(
            spare(),
            1,
            "the ones that ended took their spare places back"
        );
        // The next burst starts them again: still three at once.
        let took = burst(10);
        assert!(
            took < Duration::from_millis(1100),
            "three at once again: {took:?}"
        );
        assert_eq!(pool.alive(), 3);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(spare(), 3);
        let undone = std::fs::read_to_string(dir.path().join("ran-slow")).unwrap();
        assert_eq!(undone.lines().count(), 6, "{undone}");
        pool.stop();
    }

    #[test]
    fn a_job_is_never_left_behind_by_a_worker_ending_as_it_arrives() {
        // Jobs sent around the moment idle workers give up: each must still run.
        let dir = tempfile::tempdir().unwrap();
        let (pool, done) = pool_ending_after(4, Duration::from_millis(5));
        for i in 0..60u64 {
            pool.submit(slow_block(dir.path(), "10.77.3.1", i, 0.0));
            std::thread::sleep(Duration::from_micros(500 * (i % 16)));
            if i % 4 == 0 {
                pool.reap();
            }
        }
        for i in 0..60 {
            done.recv_timeout(Duration::from_secs(10))
                .unwrap_or_else(|_| panic!("job {i} of 60 never ran"));
        }
        // The count of spare workers did not drift through the races: once quiet, the
        // first worker alone is left, and it alone is spare (a count too high would let
        // a burst queue behind one worker, too low would start threads for nothing).
        reap_until_one_is_left(&pool);
        assert_eq!(pool.alive(), 1);
        assert_eq!(pool.shared.spare.load(Ordering::SeqCst), 1);
        pool.stop();
    }
}
