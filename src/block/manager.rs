//! The block manager's shell: the one thread that owns block state. Everything that
//! changes a block arrives here as a message — a scan's block request, a worker's result, an
//! operator's `block` / `unblock` / `list`, a reload, the expiry timer — and is handed, with
//! the time, to the pure [`BlockCore`], which decides; this shell carries out what it
//! returned: jobs for the responder [`Pool`], the journal (fsynced once per batch, before
//! anything is reported, on the [`Syncer`]'s thread so that a slow disk never holds up the
//! next block), log and history lines, replies, `EVENT_LOG` events, notes for the
//! fleet, the [`BlockView`] the filters read, and `BLOCKED_FILE`. At start the journal is
//! replayed into the core: blocks that expired while the daemon was down are undone, every
//! other one is re-applied.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded, select_biased, unbounded};

use super::blocked_writer::BlockedFileWriter;
use super::core::{
    BlockCore, CoreSetup, Effect, Guard, Input, Now, Output, Reply, ViewChange, Work,
};
pub use super::core::{BlockCounters, BlockNote, BlockOutcome, BlockRequest};
use super::journal::{self, BlockedFile, Entry, Journal};
use super::syncer::{Sent, Syncer};
use super::view::BlockView;
use super::{BlockRecord, Target};
use crate::config::ignore::IgnoreList;
use crate::event_log::EventSink;
use crate::generation::Generation;
use crate::heartbeat::{self, Kind};
use crate::history::History;
use crate::local_addrs::LocalAddrs;
use crate::log_lines;
use crate::protected::ProtectView;
use crate::respond::lua::LuaPlugins;
use crate::respond::nftables::NftHandle;
use crate::respond::pool::{
    ApplyJob, BlockToApply, BlockToUndo, Job, JobResult, Pool, RefreshJob, UndoJob, WORKERS,
};

/// Block requests from scans waiting for the manager at most; beyond, a request is dropped
/// (counted and logged) and the host's next probe asks again. They wait boxed: the queue
/// sets aside a slot for each from the start, a pointer rather than a whole request.
pub const REQUEST_QUEUE: usize = 4096;
/// Blocks waiting for a free worker at most; beyond, new scan blocks are dropped the same way.
pub const MAX_WAITING: usize = 4096;
/// `BLOCKED_FILE` is rewritten at most this often while blocks change.
const BLOCKED_FILE_INTERVAL: Duration = Duration::from_secs(1);
/// Messages handled between two journal commits at most.
const BATCH: usize = 512;
/// Blocks per batch job at most (restored re-applies, undos): large enough that a
/// responder's fixed cost (a netlink socket, reading hosts.deny after someone else's edit)
/// is shared, small enough that one batch keeps a worker a bounded time.
const BATCH_JOB: usize = 256;

/// Notes the observer may leave waiting at most; beyond, a note is dropped and counted.
pub const NOTE_QUEUE: usize = 4096;

enum Msg {
    Reconfigure(Generation, LuaPlugins),
    List(Reply<Vec<BlockRecord>>),
    Observe(Option<Sender<BlockNote>>),
    /// Everything the core decides on by itself.
    Core(Input),
}

/// The sending side the announcing thread uses: never blocks.
#[derive(Clone)]
pub struct BlockRequester {
    tx: Sender<Box<BlockRequest>>,
    counters: Arc<BlockCounters>,
}

impl BlockRequester {
    /// Asks for a block; false when too many requests are waiting (counted; the caller
    /// logs it, and the host's next probe asks again).
    pub fn request(&self, request: BlockRequest) -> bool {
        match self.tx.try_send(Box::new(request)) {
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
    requests: Sender<Box<BlockRequest>>,
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
        mut history: History,
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
                // Kept in memory until written, should the file not take them now.
                journal.record(imported.iter().cloned().map(Entry::Block).collect());
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
        let mut blocked_file = BlockedFile::new(&config.blocked_file);
        journal.report_to(&counters.storage);
        let journal = Syncer::start(journal).context("cannot start the journal thread")?;
        history.report_to(&counters.storage);
        blocked_file.report_to(&counters.storage);
        let blocked_file = BlockedFileWriter::start(blocked_file)
            .context("cannot start the blocked-file thread")?;
        let (control, control_rx) = unbounded();
        let (requests, requests_rx) = bounded(REQUEST_QUEUE);
        let now = Now::read();
        // Restored re-applies beside the workers' jobs: half the workers' worth of batches.
        let restore_slots = BATCH_JOB * (pool.workers() / 2).max(1);
        let core = BlockCore::new(CoreSetup {
            guard: Box::new(LiveGuard { protect }),
            counters: Arc::clone(&counters),
            offences: replay.offences,
            workers: pool.workers(),
            max_waiting,
            events: events.enabled(),
            generation: generation.clone(),
            now,
        })
        .with_restore_slots(restore_slots);
        let mut manager = Manager {
            core,
            generation,
            lua,
            journal,
            history,
            view: view.clone(),
            counters: Arc::clone(&counters),
            pool,
            pending_entries: Vec::new(),
            pending_effects: Vec::new(),
            blocked_file,
            blocked_file_dirty: false,
            blocked_file_written: None,
            events,
            observer: None,
            restored: Vec::new(),
            undos: Vec::new(),
            release_memory: false,
        };
        manager.restore(active, now);
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
        let _ = self.control.send(Msg::Core(Input::Block {
            targets,
            duration,
            reason,
            reply: Box::new(reply),
        }));
    }

    /// Lifts a block now (every action undone); answers with what was undone, or why not.
    /// An address with no block of its own inside a blocked network is refused with the
    /// network's name, unless `covering`: then the network's block is lifted.
    pub fn unblock(
        &self,
        target: Target,
        reply: impl FnOnce(Result<Vec<String>, String>) + Send + 'static,
    ) {
        self.unblock_covering(target, false, reply);
    }

    /// [`BlockManager::unblock`], lifting the covering network block when `covering`.
    pub fn unblock_covering(
        &self,
        target: Target,
        covering: bool,
        reply: impl FnOnce(Result<Vec<String>, String>) + Send + 'static,
    ) {
        let _ = self.control.send(Msg::Core(Input::Unblock {
            target,
            covering,
            reply: Box::new(reply),
        }));
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
        let _ = self.control.send(Msg::Core(Input::Stop));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BlockManager {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.control.send(Msg::Core(Input::Stop));
            let _ = t.join();
        }
    }
}

/// Live answers for the core's [`Guard`]: this host's addresses, read when asked, and the
/// protected addresses (gateways, resolvers, sessions).
struct LiveGuard {
    protect: ProtectView,
}

impl Guard for LiveGuard {
    fn refusal(&self, target: &Target, ignore: &IgnoreList) -> Option<String> {
        super::refusal::refusal(target, &LocalAddrs::new(), &self.protect.snapshot(), ignore)
    }
}

/// The shell's state: the core, and what carries out its decisions.
struct Manager {
    core: BlockCore,
    /// The generation in force, handed to the workers with each job.
    generation: Generation,
    /// The running Lua plugins built from `generation`, handed to the workers with each job.
    lua: LuaPlugins,
    /// The journal, with the reports of the batch it is writing while it is away.
    journal: Syncer<Vec<Effect>>,
    history: History,
    view: BlockView,
    counters: Arc<BlockCounters>,
    pool: Pool,
    /// Journal entries of this batch, written by the next commit.
    pending_entries: Vec<Entry>,
    /// Reports of this batch, made once the journal holds what they report.
    pending_effects: Vec<Effect>,
    /// `BLOCKED_FILE`'s writer thread (and its health).
    blocked_file: BlockedFileWriter,
    blocked_file_dirty: bool,
    blocked_file_written: Option<Instant>,
    /// `EVENT_LOG`: block and unblock events, sent once journaled.
    events: EventSink,
    /// The fleet pusher, told of blocks made and lifted here (`None`: no fleet push).
    observer: Option<Sender<BlockNote>>,
    /// Restored blocks to re-apply, gathered over one turn and sent as batch jobs.
    restored: Vec<BlockToApply>,
    /// Blocks to lift, gathered over one turn and sent as batch jobs.
    undos: Vec<BlockToUndo>,
    /// The restore is over: free memory goes back to the system after this turn.
    release_memory: bool,
}

impl Manager {
    fn run(
        &mut self,
        control: &Receiver<Msg>,
        requests: &Receiver<Box<BlockRequest>>,
        results: &Receiver<JobResult>,
    ) {
        let synced = self.journal.done().clone();
        loop {
            heartbeat::beat();
            let timeout = self.next_wake();
            let mut handled = 0;
            select_biased! {
                // A batch on disk: its reports first, they are the oldest.
                recv(synced) -> s => if let Ok(s) = s {
                    let reports = self.journal.arrived(s);
                    self.report(reports);
                },
                recv(results) -> r => if let Ok(r) = r { self.feed(Input::Result(r)); handled += 1; },
                recv(control) -> m => match m {
                    Ok(m) => { self.on_message(m); handled += 1; }
                    Err(_) => self.feed(Input::Stop),
                },
                recv(requests) -> r => if let Ok(r) = r { self.feed(Input::Request(*r)); handled += 1; },
                default(timeout) => self.feed(Input::Tick),
            }
            // Drain what else is there, so one journal commit covers a burst.
            while handled > 0 && handled < BATCH {
                if let Ok(r) = results.try_recv() {
                    self.feed(Input::Result(r));
                } else if let Ok(m) = control.try_recv() {
                    self.on_message(m);
                } else if !self.core.stopped()
                    && let Ok(r) = requests.try_recv()
                {
                    self.feed(Input::Request(*r));
                } else {
                    break;
                }
                handled += 1;
            }
            self.submit_batches();
            self.commit();
            self.write_blocked_file(false);
            // Workers that ended for lack of work left their allocator caches behind.
            let workers_ended = self.pool.reap();
            if std::mem::take(&mut self.release_memory) || workers_ended {
                crate::memory::release_free();
            }
            if self.core.stopped() {
                break;
            }
        }
        // What is on its way and what waits behind it, before the last retries.
        while let Some(reports) = self.journal.wait() {
            self.report(reports);
            self.commit();
        }
        self.keep_journal(true);
        self.write_blocked_file(true);
        crate::logging::flush();
    }

    /// Until the core's next deadline or the next `BLOCKED_FILE` rewrite, at most a
    /// heartbeat interval (an idle manager still shows the watchdog it is alive).
    fn next_wake(&self) -> Duration {
        let mut wake = self.core.next_wake(Now::read(), heartbeat::INTERVAL);
        if self.blocked_file_dirty {
            let since = self.blocked_file_written.map(|t| t.elapsed());
            wake = wake
                .min(BLOCKED_FILE_INTERVAL.saturating_sub(since.unwrap_or(BLOCKED_FILE_INTERVAL)));
        }
        wake
    }

    fn on_message(&mut self, msg: Msg) {
        match msg {
            Msg::Reconfigure(generation, lua) => self.reconfigure(generation, lua),
            Msg::List(reply) => reply(self.core.active()),
            Msg::Observe(observer) => {
                let on = observer.is_some();
                self.observer = observer;
                self.feed(Input::Observing(on));
            }
            Msg::Core(input) => self.feed(input),
        }
    }

    /// One message into the core, its decisions carried out (reports wait for the commit).
    fn feed(&mut self, input: Input) {
        let out = self.core.handle(input, Now::read());
        self.carry_out(out);
    }

    fn restore(&mut self, active: HashMap<Target, BlockRecord>, now: Now) {
        let out = self.core.restore(active, now);
        // Before any re-apply job runs: the kernel has every block at once.
        self.pool.nft().preload(&out.preload);
        self.carry_out(out);
        self.submit_batches();
        // The 1.2 list says what is blocked now from the first moment; the next change is
        // written at once too.
        self.write_blocked_file(true);
        self.blocked_file_written = None;
    }

    /// The view first (the filters see a block as soon as it is decided), then the work;
    /// journal entries and reports are kept for [`Manager::commit`].
    fn carry_out(&mut self, out: Output) {
        for change in out.view {
            match change {
                ViewChange::Insert(t) => self.view.insert(t),
                ViewChange::Remove(t) => self.view.remove(&t),
            }
        }
        for work in out.work {
            match work {
                Work::Apply(b) if b.restored => self.restored.push(b),
                Work::Apply(b) => {
                    let job = self.apply_job(vec![b]);
                    self.pool.submit(job);
                }
                Work::Undo(b) => self.undos.push(b),
                Work::Refresh { id, record } => {
                    self.pool
                        .submit(Job::Refresh(Box::new(RefreshJob { id, record })));
                }
            }
        }
        self.blocked_file_dirty |= out.blocked_file_dirty;
        self.release_memory |= out.restored;
        self.pending_entries.extend(out.entries);
        self.pending_effects.extend(out.effects);
    }

    /// An apply job for the pool: blocks with the generation and plugins in force.
    fn apply_job(&self, blocks: Vec<BlockToApply>) -> Job {
        Job::Apply(Box::new(ApplyJob {
            blocks,
            generation: self.generation.clone(),
            lua: self.lua.clone(),
        }))
    }

    /// Hands the pool the re-applies and undos gathered this turn, [`BATCH_JOB`] blocks per
    /// job: each responder then does a batch at the cost of one block (one netlink
    /// exchange, one hosts.deny append or rewrite), and the core still gets one result per
    /// block.
    fn submit_batches(&mut self) {
        let restored = std::mem::take(&mut self.restored);
        let mut restored = restored.into_iter().peekable();
        while restored.peek().is_some() {
            let blocks: Vec<BlockToApply> = restored.by_ref().take(BATCH_JOB).collect();
            self.pool.submit(self.apply_job(blocks));
        }
        let undos = std::mem::take(&mut self.undos);
        let mut undos = undos.into_iter().peekable();
        while undos.peek().is_some() {
            let blocks: Vec<BlockToUndo> = undos.by_ref().take(BATCH_JOB).collect();
            self.pool.submit(Job::Undo(Box::new(UndoJob {
                blocks,
                generation: self.generation.clone(),
                lua: self.lua.clone(),
            })));
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
                Ok(mut history) => {
                    log::info!(
                        "{}",
                        log_lines::history_file_moved(&new.history_file, self.history.path())
                    );
                    history.report_to(&self.counters.storage);
                    history.take_waiting_from(&mut self.history);
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
        self.generation = generation.clone();
        self.lua = lua;
        self.feed(Input::Reconfigure(generation));
        if moved {
            self.blocked_file_dirty = true;
            self.write_blocked_file(true);
        }
    }

    // ---- persistence ----

    /// Hands what changed to the journal (one fsync, on its thread), whose reports (log
    /// lines, history lines, replies) are made when it comes back. While a batch is on its
    /// way, the next waits here, reports included, so that the order holds. Then the
    /// journal's retries and compaction, when it is home.
    fn commit(&mut self) {
        if self.pending_entries.is_empty() {
            // Nothing to write: reported now, unless a batch on its way comes first.
            if self.journal.journal().is_some() {
                let reports = std::mem::take(&mut self.pending_effects);
                self.report(reports);
                self.keep_journal(false);
            }
            return;
        }
        let entries = std::mem::take(&mut self.pending_entries);
        let reports = std::mem::take(&mut self.pending_effects);
        match self.journal.send(entries, reports) {
            Sent::Away => {}
            Sent::Busy(entries, reports) => {
                self.pending_entries = entries;
                self.pending_effects = reports;
            }
            Sent::Written(reports) => {
                self.report(reports);
                self.keep_journal(false);
            }
        }
    }

    /// Carries out the reports of a batch the journal holds.
    fn report(&mut self, reports: Vec<Effect>) {
        for effect in reports {
            match effect {
                Effect::Info(line) => log::info!("{line}"),
                Effect::Warn(line) => log::warn!("{line}"),
                Effect::Debug(line) => log::debug!("{line}"),
                // A line the file does not take now waits for it (the history logs that).
                Effect::History(line) => {
                    let _ = self.history.append(&line);
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
    }

    /// Writes what the journal and the history still hold back (on their retry timers) and
    /// compacts the journal when it has grown or fell too far behind. `last`: before
    /// stopping, whatever the timers say; what still cannot be written is logged as lost.
    fn keep_journal(&mut self, last: bool) {
        self.history.retry_pending(Instant::now());
        self.keep_journal_file(last);
        if last {
            self.history.close();
        }
    }

    /// The journal's part of [`Manager::keep_journal`], when it is home.
    fn keep_journal_file(&mut self, last: bool) {
        let Some(journal) = self.journal.journal() else {
            return;
        };
        if last {
            journal.expedite();
        }
        journal.retry_pending(Instant::now());
        // The targets bound the records from above: counting them (a walk of every block)
        // only when that bound says compaction may be due keeps a commit O(1) while
        // thousands of restored blocks come back one by one.
        if journal.needs_compaction(self.core.targets())
            && journal.needs_compaction(self.core.record_count())
        {
            // Records are made one at a time from the compact ones; a failure is the
            // journal's to log (once a minute at most).
            let _ = journal.compact(self.core.records(), self.core.offences());
        }
        if last {
            journal.close();
        }
    }

    /// Rewrites `BLOCKED_FILE` (the 1.2 list of hosts blocked now) when it changed, at most
    /// once per [`BLOCKED_FILE_INTERVAL`] unless `now`. Written on its own thread (which
    /// retries a failed write itself); `now` also waits until it was tried.
    fn write_blocked_file(&mut self, now: bool) {
        let recent = self
            .blocked_file_written
            .is_some_and(|t| t.elapsed() < BLOCKED_FILE_INTERVAL);
        if !self.blocked_file_dirty || (!now && recent) {
            return;
        }
        let path = self.generation.config.blocked_file.clone();
        let lines = self.core.blocked_lines().collect();
        self.blocked_file.write(path, lines, now);
        self.blocked_file_dirty = false;
        self.blocked_file_written = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BlockLevel;
    use crate::config::Template;
    use crate::event::{Candidate, Hit, Mode, ProbeKind};
    use crate::record::{Origin, target_text};

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
        // Escalation off: these tests are about single hosts of one /24.
        config.escalate_after_v4 = 0;
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
    fn a_journal_that_cannot_be_written_at_start_keeps_its_blocks_until_it_can_be() {
        let dir = tempfile::tempdir().unwrap();
        let (generation, history) = run_cmd_generation(dir.path(), "true");
        // A file where the journal's directory should be: nothing can be created there.
        let blocker = dir.path().join("lib");
        std::fs::write(&blocker, "").unwrap();
        let state = blocker.join("portsentry.state");
        let mut config = (*generation.config).clone();
        config.block_state_file = state.clone();
        let generation = Generation::from_parts(1, config, Default::default());
        let manager =
            BlockManager::start(generation, LuaPlugins::none(), history, ProtectView::new())
                .expect("the manager starts without its journal");
        let (view, counters) = (manager.view(), manager.counters());
        let journal = || {
            counters
                .storage
                .get(crate::storage::StoredFile::Journal)
                .unwrap()
        };
        assert!(journal().failing_since.is_some());
        assert!(manager.requester().request(request("10.77.6.1")));
        assert!(wait_for(|| view.is_blocked("10.77.6.1".parse().unwrap())));
        assert!(
            wait_for(|| journal().blocks_unwritten == 1),
            "{:?}",
            journal()
        );
        // Room again: the next retry writes the block.
        std::fs::remove_file(&blocker).unwrap();
        assert!(
            wait_for(|| journal().failing_since.is_none()),
            "{:?}",
            journal()
        );
        assert_eq!(journal().blocks_unwritten, 0);
        manager.stop();
        let (_, replay) = Journal::open(&state).unwrap();
        assert_eq!(
            replay.active.keys().map(target_text).collect::<Vec<_>>(),
            ["10.77.6.1"]
        );
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
