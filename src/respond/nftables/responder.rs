//! `KILL_NFTABLES`: the built-in responder over [`NftBackend`], and the one backend the
//! responder pool's workers share ([`NftHandle`]).
//!
//! The block manager opens the backend at start and again when a reload changes its
//! settings, loads the journal's blocks into the sets in one batch before they are restored
//! one by one, and hands the handle to the pool; each worker then adds or deletes one host
//! at a time under a mutex, a few microseconds each. The mutex guards a netlink socket, not
//! block state: which hosts are blocked is still the manager's alone.

use std::net::IpAddr;

use ipnet::IpNet;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use nix::errno::Errno;

use super::{IntervalChanges, NftBackend, NftError, NftSettings, Room, host_of, probe, set_of};
use crate::config::{Config, ConfigWarning};
use crate::log_lines;
use crate::respond::{Action, Outcome, Responder, ResponseContext, Undo};

/// The daemon's nftables backend, shared by the responder workers; empty while
/// `KILL_NFTABLES` is off or could not be set up. Cloning shares it.
#[derive(Clone, Default)]
pub struct NftHandle {
    backend: Arc<Mutex<Option<NftBackend>>>,
}

impl NftHandle {
    /// A handle with no backend (`KILL_NFTABLES` off): the responder stays out of the chain.
    pub fn closed() -> NftHandle {
        NftHandle::default()
    }

    fn lock(&self) -> MutexGuard<'_, Option<NftBackend>> {
        // A worker that panicked mid-call leaves a socket that is still usable.
        crate::sync::lock(&self.backend)
    }

    /// Follows the config, at start and at every reload: opens the table `KILL_NFTABLES`
    /// asks for (a changed `NFTABLES_TABLE`, `NFTABLES_FORWARD` or set size opens it
    /// anew; hosts already blocked stay in whatever table they were put in, and are deleted
    /// from there when their block ends), closes it when `KILL_NFTABLES` is off, and tries
    /// again a backend that could not be opened before. Logs one line for what changed: an
    /// unusable nftables is one error line, and the other responders carry on.
    pub fn configure(&self, config: &Config) {
        let want = NftSettings::from_config(config);
        let mut slot = self.lock();
        let have = slot.as_ref().map(|b| b.settings().clone());
        match want {
            None => {
                if let Some(had) = have {
                    *slot = None;
                    log::info!("{}", log_lines::nftables_off(&had.table));
                }
            }
            Some(s) if have.as_ref() == Some(&s) => {}
            Some(s) => {
                drop(slot);
                match self.open(&s) {
                    Ok(()) => log::info!(
                        "{}",
                        log_lines::nftables_ready(&s.table, s.set_size, s.forward)
                    ),
                    Err(e) => log::error!("{}", log_lines::nftables_unusable(e)),
                }
            }
        }
    }

    /// Opens (or makes) the table of `settings` in place of whatever was open (closed on
    /// an error). For a second user of the same table too (the fleet's puller), with a
    /// socket of its own.
    pub fn open(&self, settings: &NftSettings) -> Result<(), NftError> {
        let mut slot = self.lock();
        *slot = None;
        *slot = Some(NftBackend::open(settings)?);
        Ok(())
    }

    /// Whether a backend is open (the responder joins the chain only then).
    pub fn is_open(&self) -> bool {
        self.lock().is_some()
    }

    /// Adds hosts with their kernel timeouts in one transaction; returns the table they went
    /// into. When our table or a set of it has vanished (`nft flush ruleset`, a firewall
    /// service reloading the whole ruleset), it is made again and the add is tried once more.
    pub fn add(&self, elements: &[(IpAddr, Option<Duration>)]) -> Result<String, NftError> {
        self.with_remake(|b| b.add(elements))
    }

    /// Applies changes to a room of interval sets (the fleet's) in one transaction; returns
    /// the table. A vanished table is made again and the changes tried once more, like
    /// [`NftHandle::add`].
    pub fn change_intervals(
        &self,
        room: Room,
        changes: &IntervalChanges,
    ) -> Result<String, NftError> {
        self.with_remake(|b| b.change_intervals(room, changes))
    }

    /// The table in use, `None` while closed.
    pub fn table(&self) -> Option<String> {
        self.lock().as_ref().map(|b| b.settings().table.clone())
    }

    /// Runs `change` on the open backend; when our table or a set of it has vanished (`nft
    /// flush ruleset`, a firewall service reloading the whole ruleset), makes it again and
    /// runs `change` once more.
    fn with_remake(
        &self,
        mut change: impl FnMut(&mut NftBackend) -> Result<(), NftError>,
    ) -> Result<String, NftError> {
        let mut slot = self.lock();
        let backend = slot.as_mut().ok_or(NftError::Closed)?;
        let table = backend.settings().table.clone();
        match change(backend) {
            Ok(()) => Ok(table),
            Err(e @ NftError::Kernel { .. }) if is_missing(&e) => {
                let mut fresh = NftBackend::open(backend.settings())?;
                change(&mut fresh)?;
                log::warn!("{}", log_lines::nftables_remade(&table, &e));
                *backend = fresh;
                Ok(table)
            }
            Err(e) => Err(e),
        }
    }

    /// At start, before the journal's blocks are restored one by one: all of them into the
    /// sets in one batch, each with the time it has left, so that the kernel holds every
    /// block within a fraction of a second of start. Logs what it did; a failure only means
    /// each block is added as it is restored.
    pub fn preload(&self, elements: &[(IpAddr, Option<Duration>)]) {
        if elements.is_empty() {
            return;
        }
        let started = Instant::now();
        match self.add(elements) {
            Ok(table) => log::info!(
                "{}",
                log_lines::nftables_loaded(elements.len(), &table, started.elapsed())
            ),
            Err(NftError::Closed) => {}
            Err(e) => log::error!("{}", log_lines::nftables_load_failed(e)),
        }
    }

    /// Deletes a host from the sets of `table`: through the open backend when it is that
    /// table, else through a socket of its own (the table of a block made before a reload
    /// changed `NFTABLES_TABLE` or turned `KILL_NFTABLES` off). A host, set or table already
    /// gone is success.
    pub fn delete(&self, table: &str, addr: IpAddr) -> Result<(), NftError> {
        self.on_table(table, |b| b.delete(&[addr]))
    }

    /// Deletes a block's target from the sets of `table`: a host from its host set
    /// ([`NftHandle::delete`]), a network from its interval set ([`Room::Blocks`]); one
    /// already gone is success. Returns the set it was in.
    pub fn delete_target(&self, table: &str, target: IpNet) -> Result<&'static str, NftError> {
        if let Ok(addr) = host_of(target) {
            self.delete(table, addr)?;
            return Ok(set_of(addr));
        }
        let changes = IntervalChanges {
            remove: vec![target],
            ..IntervalChanges::default()
        };
        match self.on_table(table, |b| b.change_intervals(Room::Blocks, &changes)) {
            Err(e) if !is_missing(&e) => Err(e),
            _ => Ok(Room::Blocks.set_of(target)),
        }
    }

    /// Runs `change` on the open backend when it is `table`'s, else on a socket of its own
    /// (the table of a block made before a reload changed `NFTABLES_TABLE` or turned
    /// `KILL_NFTABLES` off).
    fn on_table(
        &self,
        table: &str,
        change: impl FnOnce(&mut NftBackend) -> Result<(), NftError>,
    ) -> Result<(), NftError> {
        let mut slot = self.lock();
        if let Some(b) = slot.as_mut().filter(|b| b.settings().table == table) {
            return change(b);
        }
        drop(slot);
        change(&mut NftBackend::attach(table)?)
    }
}

/// Whether the kernel said that something of our layout does not exist (any more).
fn is_missing(e: &NftError) -> bool {
    matches!(e, NftError::Kernel { source, .. } if source.raw_os_error() == Some(Errno::ENOENT as i32))
}

/// `KILL_NFTABLES`: the host into the set of its family, with the block's remaining time as
/// the kernel timeout of the element (none for a permanent block). Networks (blocks made by
/// hand) are left to the other responders: the sets hold single hosts.
pub struct NftResponder {
    handle: NftHandle,
}

impl NftResponder {
    /// A responder adding through the shared backend.
    pub fn new(handle: NftHandle) -> NftResponder {
        NftResponder { handle }
    }
}

impl Responder for NftResponder {
    fn name(&self) -> String {
        "nftables".to_string()
    }

    fn respond(&mut self, ctx: &ResponseContext<'_>) -> Outcome {
        self.respond_batch(std::slice::from_ref(ctx))
            .pop()
            .unwrap_or_else(|| Outcome::Failed("nftables: no outcome".into()))
    }

    fn batched(&self) -> bool {
        true
    }

    /// The hosts of the batch in one transaction (should it fail, one element the kernel
    /// refuses failing them all, each host is tried alone so the others still go in); a
    /// network (a block of a prefix) into its interval set, one at a time.
    fn respond_batch(&mut self, ctxs: &[ResponseContext<'_>]) -> Vec<Outcome> {
        let now = SystemTime::now();
        let timeout = |ctx: &ResponseContext<'_>| {
            ctx.until.map(|u| u.duration_since(now).unwrap_or_default())
        };
        let hosts: Vec<(IpAddr, Option<Duration>)> = ctxs
            .iter()
            .filter_map(|ctx| host_of(ctx.target).ok().map(|a| (a, timeout(ctx))))
            .collect();
        let together = if hosts.len() > 1 {
            self.handle.add(&hosts).ok()
        } else {
            None
        };
        ctxs.iter()
            .map(|ctx| {
                let timeout = timeout(ctx);
                let added = match host_of(ctx.target) {
                    Ok(addr) => match &together {
                        Some(table) => Ok((table.clone(), set_of(addr))),
                        None => self
                            .handle
                            .add(&[(addr, timeout)])
                            .map(|table| (table, set_of(addr))),
                    },
                    Err(_) => {
                        let changes = IntervalChanges {
                            add: vec![(ctx.target, timeout)],
                            ..IntervalChanges::default()
                        };
                        self.handle
                            .change_intervals(Room::Blocks, &changes)
                            .map(|table| (table, Room::Blocks.set_of(ctx.target)))
                    }
                };
                match added {
                    Ok((table, set)) => {
                        log::info!(
                            "{}",
                            log_lines::blocked_via_nftables(ctx.target_text(), &table, set)
                        );
                        let until = timeout.map_or_else(String::new, |t| {
                            format!(
                                " timeout {}",
                                humantime::format_duration(Duration::from_secs(t.as_secs().max(1)))
                            )
                        });
                        Outcome::Done(Action {
                            responder: self.name(),
                            detail: format!("set inet {table} {set}{until}"),
                            undo: Undo::Nftables { table },
                        })
                    }
                    Err(e) => Outcome::Failed(e.to_string()),
                }
            })
            .collect()
    }
}

/// For `--check-config`: with `KILL_NFTABLES="1"`, whether nftables can be used here (the
/// kernel has nf_tables, the process has CAP_NET_ADMIN, our table holds nothing we cannot
/// use), checked without changing anything. A warning, not an error: the config is valid,
/// and the daemon starts with it and blocks through the other responders.
pub fn config_warnings(config: &Config) -> Vec<ConfigWarning> {
    let Some(settings) = NftSettings::from_config(config) else {
        return Vec::new();
    };
    match probe(&settings) {
        Ok(()) => Vec::new(),
        Err(e) => vec![ConfigWarning {
            file: config.path.clone(),
            line: 0,
            message: format!(
                "KILL_NFTABLES: {e}; the daemon would start and block with the other responders only"
            ),
        }],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Mode, ProbeKind};

    fn config() -> Config {
        crate::config::build::defaults(std::path::Path::new("p.conf"))
    }

    #[test]
    fn settings_follow_the_keys_and_max_active_blocks_sizes_the_sets() {
        let mut c = config();
        assert_eq!(NftSettings::from_config(&c), None, "off by default");
        c.kill_nftables = true;
        c.nftables_table = "ps".into();
        c.nftables_forward = true;
        assert_eq!(
            NftSettings::from_config(&c),
            Some(NftSettings {
                table: "ps".into(),
                set_size: 10_000,
                forward: true
            })
        );
        c.max_active_blocks = 0;
        assert_eq!(
            NftSettings::from_config(&c).map(|s| s.set_size),
            Some(super::super::UNLIMITED_SET_SIZE),
            "no limit: a large size"
        );
    }

    #[test]
    fn a_closed_backend_fails_for_hosts_and_networks_without_the_kernel() {
        let mut r = NftResponder::new(NftHandle::closed());
        let c = config();
        let alert = crate::event::Candidate {
            hit: crate::event::Hit::now(
                "10.77.1.0".parse().unwrap(),
                0,
                Mode::Tcp,
                ProbeKind::Connect,
            ),
            count: 0,
            already_blocked: false,
            actionable: true,
        };
        let ctx = ResponseContext {
            target: "10.77.1.0/24".parse().unwrap(),
            ..ResponseContext::for_alert(&alert, "10.77.1.0/24", &c)
        };
        let closed = Outcome::Failed(
            "nftables: not in use (KILL_NFTABLES is off or could not be set up)".into(),
        );
        assert_eq!(
            r.respond(&ctx),
            closed,
            "a network goes to the interval set"
        );
        let o =
            crate::respond::respond_once(&mut r, "10.77.1.2", 79, Mode::Tcp, ProbeKind::Connect);
        assert_eq!(o, closed);
        assert!(!NftHandle::closed().is_open());
    }

    #[test]
    fn check_config_is_silent_when_kill_nftables_is_off() {
        assert!(config_warnings(&config()).is_empty());
    }
}
