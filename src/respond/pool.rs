//! The responders' worker pool: applies and undoes blocks for the block manager, several
//! hosts at once, so a slow or hanging responder delays only its own host (1.2, and our
//! earlier single block thread, made host N wait N × `KILL_CMD_TIMEOUT`).
//!
//! The pool owns no block state: it takes a [`Job`], runs the responders, and sends a
//! [`JobResult`] back; the manager decides what that means.

use std::thread::JoinHandle;
use std::time::SystemTime;

use crossbeam_channel::{Receiver, Sender, unbounded};

use super::hosts_deny::HostsDenyResponder;
use super::nftables::{NftHandle, NftResponder};
use super::shell::ShellResponder;
use super::undo::{UnblockReason, UndoOutcome, undo_action};
use super::{Action, Outcome, Responder, ResponseContext};
use crate::block::{BlockRecord, Target, target_text};
use crate::config::{BlockLevel, Config};
use crate::event::Alert;
use crate::generation::Generation;
use crate::report;

/// Workers running responders at once: enough that a few hanging commands leave the others
/// free, few enough that a burst of blocks cannot fork hundreds of processes.
pub const WORKERS: usize = 8;

/// Apply a block.
pub struct ApplyJob {
    /// Manager's job number, echoed in the result.
    pub id: u64,
    /// Who is blocked.
    pub target: Target,
    /// The probe behind it (a stand-in for blocks made by hand or restored).
    pub alert: Alert,
    /// Reverse-DNS name or the address.
    pub resolved: String,
    /// Which responders run.
    pub level: BlockLevel,
    /// When the block ends, for responders that tell the kernel.
    pub until: Option<SystemTime>,
    /// Re-applied after a restart (notifications stay quiet, `KILL_RUN_CMD` runs only when
    /// it can be undone).
    pub restored: bool,
    /// The generation whose responders run.
    pub generation: Generation,
}

/// Undo every action of a block, newest first.
pub struct UndoJob {
    /// Manager's job number, echoed in the result.
    pub id: u64,
    /// The block to lift.
    pub record: BlockRecord,
    /// Why, told to Lua `unblock` handlers.
    pub reason: UnblockReason,
    /// The generation in force (its Lua plugins run `unblock` handlers).
    pub generation: Generation,
}

/// Work for the pool.
pub enum Job {
    /// See [`ApplyJob`].
    Apply(Box<ApplyJob>),
    /// See [`UndoJob`].
    Undo(Box<UndoJob>),
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
            let route = config
                .kill_route
                .as_ref()
                .map(|t| Box::new(ShellResponder::route(&t.text, timeout)) as Box<dyn Responder>);
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

/// The running workers.
pub struct Pool {
    jobs: Option<Sender<Job>>,
    threads: Vec<JoinHandle<()>>,
    nft: NftHandle,
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
        let (tx, rx) = unbounded::<Job>();
        let mut threads = Vec::new();
        let mut last_error = None;
        for n in 0..workers.max(1) {
            let rx = rx.clone();
            let results = results.clone();
            let nft = nft.clone();
            match std::thread::Builder::new()
                .name(format!("respond-{n}"))
                .spawn(move || work(&rx, &results, &nft))
            {
                Ok(h) => threads.push(h),
                Err(e) => {
                    log::error!("adminalert: ERROR: cannot start responder thread {n}: {e}");
                    last_error = Some(e);
                }
            }
        }
        match (threads.is_empty(), last_error) {
            (true, Some(e)) => Err(e),
            _ => Ok(Pool {
                jobs: Some(tx),
                threads,
                nft,
            }),
        }
    }

    /// The nftables backend the workers share.
    pub fn nft(&self) -> &NftHandle {
        &self.nft
    }

    /// How many jobs run at once.
    pub fn workers(&self) -> usize {
        self.threads.len()
    }

    /// Hands a job to the next free worker. The manager keeps at most [`Pool::workers`]
    /// jobs in flight, so this never queues behind a hanging one.
    pub fn submit(&self, job: Job) {
        if let Some(tx) = &self.jobs {
            let _ = tx.send(job);
        }
    }

    /// Lets the workers finish what they hold, then joins them.
    pub fn stop(mut self) {
        self.jobs = None;
        for h in self.threads.drain(..) {
            let _ = h.join();
        }
    }
}

fn work(jobs: &Receiver<Job>, results: &Sender<JobResult>, nft: &NftHandle) {
    for job in jobs {
        let result = match job {
            Job::Apply(job) => apply(&job, nft),
            Job::Undo(job) => undo(&job, nft),
        };
        crate::logging::flush();
        if results.send(result).is_err() {
            return;
        }
    }
}

/// Runs the responder chain for one block.
fn apply(job: &ApplyJob, nft: &NftHandle) -> JobResult {
    let config = &job.generation.config;
    let ctx = ResponseContext {
        alert: &job.alert,
        target: job.target,
        resolved: &job.resolved,
        config,
        until: job.until,
        restored: job.restored,
    };
    let who = target_text(&job.target);
    let chain = responder_chain(
        config,
        job.level,
        job.restored,
        job.generation.lua_responders(),
        nft,
    );
    let mut actions = Vec::new();
    let mut failures = 0;
    let mut vetoed = false;
    for mut responder in chain {
        match responder.respond(&ctx) {
            Outcome::Done(action) => {
                if action.responder.starts_with("lua:") {
                    log::info!(
                        "{}",
                        report::blocked_via_plugin(&who, &action.responder, &action.detail)
                    );
                }
                actions.push(action);
            }
            Outcome::Skipped(why) => {
                log::debug!("{} skipped for {who}: {why}", responder.name());
            }
            Outcome::Failed(why) => {
                failures += 1;
                log::warn!(
                    "{}",
                    report::responder_failed(&who, &responder.name(), &why)
                );
            }
            Outcome::Veto(why) => {
                log::info!("{}", report::vetoed(&who, &responder.name(), &why));
                vetoed = true;
                break;
            }
        }
    }
    JobResult::Applied {
        id: job.id,
        target: job.target,
        actions,
        failures,
        vetoed,
    }
}

/// Undoes a block's actions, newest first; every action is tried even when one fails.
fn undo(job: &UndoJob, nft: &NftHandle) -> JobResult {
    let record = &job.record;
    let (port, proto) = record.port_proto();
    let mode = record
        .trigger
        .as_ref()
        .map_or(crate::event::Mode::Tcp, |t| t.mode);
    let kind = match proto {
        crate::event::Proto::Tcp => crate::event::ProbeKind::Connect,
        crate::event::Proto::Udp => crate::event::ProbeKind::Udp,
    };
    let alert = Alert {
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
    };
    let who = target_text(&record.target);
    let config = &job.generation.config;
    let ctx = ResponseContext {
        alert: &alert,
        target: record.target,
        resolved: &who,
        config,
        until: record.until,
        restored: false,
    };
    let outcomes = record
        .actions
        .iter()
        .rev()
        .map(|action| {
            let outcome = undo_action(
                action,
                &ctx,
                job.reason,
                &job.generation.lua,
                nft,
                config.kill_cmd_timeout,
            );
            (action.responder.clone(), outcome)
        })
        .collect();
    JobResult::Undone {
        id: job.id,
        target: record.target,
        outcomes,
    }
}
