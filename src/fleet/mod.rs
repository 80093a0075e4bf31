//! The fleet: blocks shared across hosts through a CrowdSec Local API (LAPI), both ways.
//!
//! - **Push** ([`push`]): the block manager tells an observer of every block this host makes
//!   (scan or by hand) and every block lifted; the pusher thread turns them into alerts with
//!   one `ban` decision (origin `portsentry`) and exact deletes (by the ids of this host's
//!   own decisions, so another portsentry host's decision for the same address stays),
//!   through a persistent [`outbox`], so a LAPI that is down delays nothing here and loses
//!   nothing.
//! - **Pull** ([`pull`]): a puller thread follows `/v1/decisions/stream`, keeps the `ban`
//!   decisions in a bounded table of its own ([`table`]) and applies each pull's changes to
//!   the kernel in bulk ([`room`]: nftables sets of their own, or routes), apart from the
//!   block manager: pulled decisions never take the room of local blocks.
//!
//! Either direction can run alone. Config is plain data ([`FleetSettings`]); the running
//! threads are built from it here, restarted when a reload changes it (or the secrets in
//! its files). Secrets are read from their files at start and at reload, never logged; a
//! file other users can read is refused (that direction stays off, with an error line).

pub mod client;
pub mod duration;
pub mod outbox;
pub mod pull;
pub mod push;
pub mod responders;
pub mod room;
pub mod table;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::SystemTime;

use crossbeam_channel::{Sender, bounded};

use crate::block::manager::{BlockManager, NOTE_QUEUE};
use crate::config::Config;
pub use crate::config::fleet::{DEFAULT_POLL_INTERVAL, FleetSettings, check_lapi_url};
use crate::generation::Generation;
use crate::log_lines;
use crate::protected::ProtectView;
use client::LapiError;

/// The origin of the decisions this host posts (and deletes, exactly).
pub const ORIGIN: &str = "portsentry";
/// Longest secret file read (a FIFO or a device in its place is refused unread).
const SECRET_CAP: u64 = 64 * 1024;

/// Reads a secret file: trimmed, not empty, and not readable by other users. The error
/// names the file and the problem, never the content.
pub fn read_secret(key: &str, path: &Path) -> Result<String, String> {
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{key}: cannot read {}: {e}", path.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(format!(
            "{key}: {} is readable by every user (mode {:04o}): refused, make it 0600 or 0640",
            path.display(),
            mode & 0o7777
        ));
    }
    let text = crate::config::read::read_regular_text(path, SECRET_CAP, "secret file")
        .map_err(|e| format!("{key}: cannot read {}: {}", path.display(), e.reason()))?;
    let secret = text.trim();
    if secret.is_empty() || secret.len() > 4096 {
        return Err(format!(
            "{key}: {} is empty or longer than 4096 bytes",
            path.display()
        ));
    }
    Ok(secret.to_string())
}

/// A secret that never shows in `Debug` output or a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// The text, for a request body or header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// What `status` shows of one direction's link to the LAPI. Its thread's [`Health`] is the
/// one writer; the main thread reads it when an operator asks (a published view, like the
/// block manager's), so answering `status` never waits on a LAPI request.
#[derive(Debug, Default)]
pub struct LinkView {
    /// [`LINK_UNTRIED`], [`LINK_UP`] or [`LINK_DOWN`].
    state: AtomicU8,
    /// When it last changed, in seconds since the Unix epoch (0: never).
    since: AtomicU64,
}

/// One direction of the fleet as `portsentry status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FleetLink {
    /// `push` or `pull`.
    pub direction: String,
    /// The LAPI's base URL.
    pub url: String,
    /// `connected`, `failing, retrying` or `not yet contacted`.
    pub state: String,
    /// When the state last changed.
    #[serde(with = "crate::record::opt_time_text", default)]
    pub since: Option<SystemTime>,
    /// Pull only: the decisions in force and their counts per origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decisions: Option<PullSnapshot>,
}

/// What the puller holds, as `status`, `list` and the metrics show it: published after
/// each pull, read without waiting on the puller or the LAPI.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PullSnapshot {
    /// Decisions in force per origin (`CAPI`, `crowdsec`, `cscli-import`…), largest first.
    pub per_origin: Vec<(String, u64)>,
    /// Decisions in force.
    pub held: u64,
    /// Elements the kernel holds for them (nested ones are one element).
    pub elements: u64,
    /// Decisions refused since the puller started (protected, ignored, this host's).
    pub refused: u64,
    /// Decisions left out since it started because `CROWDSEC_MAX_DECISIONS` was reached.
    pub over_limit: u64,
    /// Where they go: `nftables`, `routes` or `none`.
    pub room: String,
}

impl PullSnapshot {
    /// One line for `status` and `list`: `12000 decisions in force (CAPI 11990, crowdsec
    /// 10), 11990 elements in nftables, 3 refused`.
    pub fn summary(&self) -> String {
        let origins = if self.per_origin.is_empty() {
            String::new()
        } else {
            let each: Vec<String> = self
                .per_origin
                .iter()
                .map(|(o, n)| format!("{o} {n}"))
                .collect();
            format!(" ({})", each.join(", "))
        };
        let over = if self.over_limit > 0 {
            format!(", {} over CROWDSEC_MAX_DECISIONS", self.over_limit)
        } else {
            String::new()
        };
        format!(
            "{} decisions in force{origins}, {} elements in {}, {} refused{over}",
            self.held, self.elements, self.room, self.refused
        )
    }
}

/// The puller's published [`PullSnapshot`]; one per [`Fleet`], kept across restarts of
/// the puller, so that the metrics can hold it from the start.
#[derive(Debug, Default)]
pub struct PullView {
    current: RwLock<Arc<PullSnapshot>>,
}

impl PullView {
    /// Replaces the snapshot.
    pub fn publish(&self, snapshot: PullSnapshot) {
        *crate::sync::write(&self.current) = Arc::new(snapshot);
    }

    /// The latest snapshot.
    pub fn read(&self) -> Arc<PullSnapshot> {
        Arc::clone(&crate::sync::read(&self.current))
    }
}

/// No request has answered or failed yet.
const LINK_UNTRIED: u8 = 0;
/// The last request was answered.
const LINK_UP: u8 = 1;
/// The last request failed and is being retried.
const LINK_DOWN: u8 = 2;

impl LinkView {
    fn set(&self, state: u8) {
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        self.state.store(state, Ordering::Relaxed);
        self.since.store(now, Ordering::Relaxed);
    }

    /// The state in words (`connected`, `unreachable, retrying`, `not yet contacted`) and
    /// since when.
    pub fn read(&self) -> (&'static str, Option<SystemTime>) {
        let state = match self.state.load(Ordering::Relaxed) {
            LINK_UP => "connected",
            LINK_DOWN => "failing, retrying",
            LINK_UNTRIED => "not yet contacted",
            _ => "unknown",
        };
        let since = match self.since.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs)),
        };
        (state, since)
    }
}

/// The LAPI's state as one direction sees it, logged once per change (not per attempt) and
/// published in a [`LinkView`] for `status`.
pub(crate) struct Health {
    url: String,
    direction: &'static str,
    up: Option<bool>,
    view: Arc<LinkView>,
}

impl Health {
    pub(crate) fn new(url: &str, direction: &'static str) -> Health {
        Health {
            url: url.to_string(),
            direction,
            up: None,
            view: Arc::new(LinkView::default()),
        }
    }

    /// The view `status` reads.
    pub(crate) fn view(&self) -> Arc<LinkView> {
        Arc::clone(&self.view)
    }

    /// A request succeeded.
    pub(crate) fn ok(&mut self) {
        match self.up {
            Some(true) => {}
            Some(false) => log::info!(
                "{}",
                log_lines::fleet_reachable_again(&self.url, self.direction)
            ),
            None => log::info!("{}", log_lines::fleet_connected(&self.url, self.direction)),
        }
        if self.up != Some(true) {
            self.view.set(LINK_UP);
        }
        self.up = Some(true);
    }

    /// A request failed in a way worth retrying.
    pub(crate) fn failed(&mut self, e: &LapiError) {
        if self.up != Some(false) {
            log::warn!("{}", log_lines::fleet_failing(&self.url, e, self.direction));
            self.view.set(LINK_DOWN);
        }
        self.up = Some(false);
    }
}

/// What a running fleet was built from: a reload that changes none of it keeps the threads.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Built {
    push: Option<push::PushConfig>,
    pull: Option<pull::PullConfig>,
}

/// The fleet threads of the generation in force.
pub struct Fleet {
    built: Built,
    stop: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    /// Each running direction with its URL and link view, for `status`.
    links: Vec<(&'static str, String, Arc<LinkView>)>,
    /// What the puller publishes.
    pulled: Arc<PullView>,
    /// The protected addresses the puller refuses.
    protect: ProtectView,
    /// The config in force, for the puller's responders.
    config: Arc<Config>,
}

impl Fleet {
    /// Starts what the generation's config asks for (nothing when `CROWDSEC_LAPI_URL` is
    /// unset). A direction that cannot start (unreadable secret, outbox) is logged and left
    /// off; the daemon runs on. The puller refuses the addresses `protect` names, and the
    /// generation's ignore list.
    pub fn start(generation: &Generation, blocks: &BlockManager, protect: ProtectView) -> Fleet {
        let built = build(generation);
        let mut fleet = Fleet {
            built: Built {
                push: None,
                pull: None,
            },
            stop: None,
            threads: Vec::new(),
            links: Vec::new(),
            pulled: Arc::new(PullView::default()),
            protect,
            config: Arc::clone(&generation.config),
        };
        fleet.launch(built, blocks);
        fleet
    }

    /// What the puller publishes (empty without one), for the metrics.
    pub fn pulled(&self) -> Arc<PullView> {
        Arc::clone(&self.pulled)
    }

    /// What the puller holds now, for `list`; `None` without a puller.
    pub fn decisions(&self) -> Option<PullSnapshot> {
        self.links
            .iter()
            .any(|(d, _, _)| *d == "pull")
            .then(|| (*self.pulled.read()).clone())
    }

    /// Follows a reload: re-reads the secret files and restarts the threads when the
    /// settings, the secrets or the ignore list changed.
    pub fn follow(&mut self, generation: &Generation, blocks: &BlockManager) {
        let built = build(generation);
        if built == self.built {
            return;
        }
        log::info!("{}", log_lines::fleet_settings_changed());
        self.halt(blocks);
        self.config = Arc::clone(&generation.config);
        self.launch(built, blocks);
    }

    /// Stops the threads (the outbox keeps what was not delivered).
    pub fn stop(mut self, blocks: &BlockManager) {
        self.halt(blocks);
    }

    fn halt(&mut self, blocks: &BlockManager) {
        blocks.observe(None);
        self.stop = None;
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        self.links.clear();
    }

    /// Each running direction (`push`, `pull`), its LAPI, the link's state and since when:
    /// what `portsentry status` shows. Empty without a fleet.
    pub fn status(&self) -> Vec<FleetLink> {
        self.links
            .iter()
            .map(|(direction, url, view)| {
                let (state, since) = view.read();
                FleetLink {
                    direction: direction.to_string(),
                    url: url.clone(),
                    state: state.to_string(),
                    since,
                    decisions: (*direction == "pull").then(|| (*self.pulled.read()).clone()),
                }
            })
            .collect()
    }

    fn launch(&mut self, built: Built, blocks: &BlockManager) {
        let (stop_tx, stop_rx) = bounded::<()>(0);
        if let Some(cfg) = &built.push {
            let (notes_tx, notes_rx) = bounded(NOTE_QUEUE);
            match push::spawn(cfg.clone(), notes_rx, stop_rx.clone()) {
                Ok((t, view)) => {
                    blocks.observe(Some(notes_tx));
                    self.threads.push(t);
                    self.links.push(("push", cfg.lapi_url.clone(), view));
                }
                Err(e) => log::error!("{}", log_lines::fleet_not_started("push", e)),
            }
        }
        if let Some(cfg) = &built.pull {
            let context = pull::Context {
                blocks: blocks.view(),
                protect: self.protect.clone(),
                view: Arc::clone(&self.pulled),
                config: Arc::clone(&self.config),
            };
            match pull::spawn(cfg.clone(), context, stop_rx) {
                Ok((t, view)) => {
                    self.threads.push(t);
                    self.links.push(("pull", cfg.lapi_url.clone(), view));
                }
                Err(e) => log::error!("{}", log_lines::fleet_not_started("pull", e)),
            }
        }
        self.stop = Some(stop_tx);
        self.built = built;
    }
}

/// The TLS files of the settings.
fn tls_of(s: &FleetSettings) -> client::Tls {
    client::Tls {
        ca_cert: s.ca_cert.clone(),
        client: s.cert.clone().zip(s.key.clone()),
    }
}

/// `--check-config`: the secret files the config names, read as the start would read them
/// (a missing, empty, world-readable or non-regular file turns that direction off at start).
/// Each problem names the key and the file, never the content.
pub fn check_secrets(config: &Config) -> Vec<String> {
    let s = &config.fleet;
    if s.lapi_url.is_none() {
        return Vec::new();
    }
    [
        ("CROWDSEC_PASSWORD_FILE", &s.password_file),
        ("CROWDSEC_BOUNCER_KEY_FILE", &s.bouncer_key_file),
        ("CROWDSEC_KEY", &s.key),
    ]
    .into_iter()
    .filter_map(|(key, file)| read_secret(key, file.as_deref()?).err())
    .collect()
}

/// What to run for this generation, with the secrets read now.
fn build(generation: &Generation) -> Built {
    let config = &generation.config;
    let s = &config.fleet;
    let Some(url) = &s.lapi_url else {
        return Built {
            push: None,
            pull: None,
        };
    };
    let push = match (&s.machine_id, &s.password_file) {
        (Some(machine_id), Some(file)) => match read_secret("CROWDSEC_PASSWORD_FILE", file) {
            Ok(password) => Some(push::PushConfig {
                lapi_url: url.clone(),
                machine_id: machine_id.clone(),
                password: Secret(password),
                outbox_file: s.outbox_path(&config.block_state_file),
                tls: tls_of(s),
            }),
            Err(e) => {
                log::error!("{}", log_lines::fleet_off("push", e));
                None
            }
        },
        _ => None,
    };
    let pull = match &s.bouncer_key_file {
        Some(file) => match read_secret("CROWDSEC_BOUNCER_KEY_FILE", file) {
            Ok(key) => Some(pull::PullConfig {
                lapi_url: url.clone(),
                bouncer_key: Secret(key),
                poll_interval: s.poll_interval,
                max_decisions: s.max_decisions,
                filter: client::StreamFilter {
                    origins: s.origins.clone(),
                    scenarios_containing: s.scenarios_containing.clone(),
                    scenarios_not_containing: s.scenarios_not_containing.clone(),
                },
                tls: tls_of(s),
                room: room::RoomSettings::from_config(config),
                ignore: Arc::clone(&generation.ignore),
                responders: responders::ResponderKeys::from_config(config),
            }),
            Err(e) => {
                log::error!("{}", log_lines::fleet_off("pull", e));
                None
            }
        },
        None => None,
    };
    Built { push, pull }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_link_view_follows_each_change_of_state() {
        let mut health = Health::new("http://127.0.0.1:1", "push");
        let view = health.view();
        assert_eq!(view.read(), ("not yet contacted", None));
        health.ok();
        let (state, since) = view.read();
        assert_eq!(state, "connected");
        assert!(since.is_some());
        health.failed(&LapiError::Status(503, "down".into()));
        assert_eq!(view.read().0, "failing, retrying");
        health.ok();
        assert_eq!(view.read().0, "connected");
    }

    #[test]
    fn check_names_each_unusable_secret_file_and_never_its_content() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key");
        std::fs::write(&key, "s3cret-key\n").unwrap();
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let mut config = crate::config::build::defaults(Path::new("f.conf"));
        config.fleet.lapi_url = Some("http://127.0.0.1:1".into());
        config.fleet.bouncer_key_file = Some(key.clone());
        config.fleet.password_file = Some(dir.path().join("missing"));
        let problems = check_secrets(&config);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("CROWDSEC_PASSWORD_FILE: cannot read"),
            "{problems:?}"
        );
        assert!(
            problems[1].contains("readable by every user"),
            "{problems:?}"
        );
        assert!(
            !problems.iter().any(|p| p.contains("s3cret")),
            "{problems:?}"
        );
        // Positive control: the same files made usable pass.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::fs::write(dir.path().join("missing"), "pw\n").unwrap();
        std::fs::set_permissions(
            dir.path().join("missing"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        assert_eq!(check_secrets(&config), Vec::<String>::new());
    }

    #[test]
    fn lapi_urls_are_base_urls_only() {
        assert_eq!(
            check_lapi_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            check_lapi_url("https://lapi.example:8443").unwrap(),
            "https://lapi.example:8443"
        );
        for bad in [
            "127.0.0.1:8080",
            "ftp://x",
            "http://",
            "http://h/v1",
            "http://u:p@h",
        ] {
            assert!(check_lapi_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secrets_are_trimmed_and_world_readable_ones_refused_without_showing_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret-value\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secret("K", &path).unwrap(), "s3cret-value");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_secret("K", &path).unwrap_err();
        assert!(err.contains("readable by every user (mode 0644)"), "{err}");
        assert!(!err.contains("s3cret"), "{err}");
        std::fs::write(&path, "  \n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(read_secret("K", &path).unwrap_err().contains("empty"));
        assert_eq!(format!("{:?}", Secret("x".into())), "Secret(…)");
    }

    #[test]
    fn the_outbox_sits_beside_the_journal_unless_named() {
        let mut s = FleetSettings::default();
        assert_eq!(
            s.outbox_path(Path::new("/var/lib/portsentry/portsentry.state")),
            Path::new("/var/lib/portsentry/crowdsec.outbox")
        );
        s.outbox_file = Some("/tmp/o".into());
        assert_eq!(s.outbox_path(Path::new("/x/y")), Path::new("/tmp/o"));
    }
}
