//! The refresher thread: the one writer of the protected-address snapshot. It reads the
//! routing table (again at once when the kernel announces a route change), `RESOLV_CONF`
//! (when its stamp changes) and the established sessions (every [`REFRESH_INTERVAL`]), and
//! publishes a new [`Snapshot`] after each read. Reloads arrive as a message; it stops on
//! request or when its [`super::Protector`] is gone.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};

use super::ProtectView;
use super::resolv::ResolvFile;
use super::routes::{self, Gateways, RouteWatch};
use super::sessions::{self, MAX_PEERS, PeerTable};
use crate::config::Config;
use crate::log_lines;

/// How often sessions and `RESOLV_CONF` are looked at (and the routes, when the kernel's
/// change notifications are unavailable): a session is protected at most this long after
/// it is established.
pub const REFRESH_INTERVAL: Duration = Duration::from_secs(2);

/// How often the thread wakes to look for route notifications and messages.
const TICK: Duration = Duration::from_millis(250);

/// Route re-reads prompted by notifications are at least this far apart, so a router whose
/// table churns costs one dump a second, not one per change.
const MIN_ROUTE_GAP: Duration = Duration::from_secs(1);

/// Routes are re-read this often even without notifications (a lost notification, a
/// change the groups do not report).
const ROUTE_SAFETY_INTERVAL: Duration = Duration::from_secs(30);

/// What the refresher reads, from the `PROTECT_*` keys and `RESOLV_CONF`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Settings {
    pub gateways: bool,
    pub resolvers: bool,
    pub established: bool,
    pub resolv_conf: PathBuf,
}

impl Settings {
    pub fn of(config: &Config) -> Settings {
        Settings {
            gateways: config.protect_gateways,
            resolvers: config.protect_resolvers,
            established: config.protect_established,
            resolv_conf: config.resolv_conf.clone(),
        }
    }
}

/// Messages to the refresher.
pub(super) enum Msg {
    /// A reload: follow these settings, read everything again, then answer.
    Reconfigure(Settings, Sender<()>),
    /// End the thread.
    Stop,
}

/// What one log line is about, so that a failure is logged once, not every two seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Source {
    Routes,
    Resolv,
    Sessions,
}

impl Source {
    fn what(self) -> &'static str {
        match self {
            Source::Routes => "the routing table (protected gateways)",
            Source::Resolv => "RESOLV_CONF (protected nameservers)",
            Source::Sessions => "the established sessions (protected peers)",
        }
    }
}

struct Refresher {
    settings: Settings,
    view: ProtectView,
    gateways: Gateways,
    resolv: ResolvFile,
    peers: PeerTable,
    sessions: sessions::Reader,
    watch: Option<RouteWatch>,
    routes_dirty: bool,
    last_routes: Option<Instant>,
    last_poll: Option<Instant>,
    failing: HashSet<Source>,
    peers_full: bool,
    announced: Option<String>,
}

/// The thread's body: a first full read (then `ready` is told, so the daemon judges no probe
/// before protection is in force), then ticks until stopped.
pub(super) fn run(
    settings: Settings,
    view: ProtectView,
    control: Receiver<Msg>,
    ready: Sender<()>,
) {
    let mut r = Refresher {
        resolv: ResolvFile::new(&settings.resolv_conf),
        settings,
        view,
        gateways: Gateways::default(),
        peers: PeerTable::default(),
        sessions: sessions::Reader::default(),
        watch: None,
        routes_dirty: false,
        last_routes: None,
        last_poll: None,
        failing: HashSet::new(),
        peers_full: false,
        announced: None,
    };
    r.refresh_all(Instant::now());
    let _ = ready.send(());
    loop {
        match control.recv_timeout(TICK) {
            Ok(Msg::Reconfigure(settings, done)) => {
                r.follow(settings);
                r.refresh_all(Instant::now());
                let _ = done.send(());
            }
            Ok(Msg::Stop) | Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => r.tick(Instant::now()),
        }
    }
}

impl Refresher {
    /// Takes new settings; a new `RESOLV_CONF` path is read afresh.
    fn follow(&mut self, settings: Settings) {
        if settings.resolv_conf != self.resolv.path() {
            self.resolv = ResolvFile::new(&settings.resolv_conf);
            self.failing.remove(&Source::Resolv);
        }
        self.settings = settings;
    }

    /// Reads every enabled source now and publishes.
    fn refresh_all(&mut self, now: Instant) {
        self.read_routes(now);
        self.read_resolv(true);
        self.read_sessions(now);
        self.publish();
    }

    /// Re-reads what is due: routes on a notification (or periodically), sessions and
    /// `RESOLV_CONF` every [`REFRESH_INTERVAL`].
    fn tick(&mut self, now: Instant) {
        let mut changed = false;
        if self.settings.gateways {
            if let Some(w) = &mut self.watch {
                self.routes_dirty |= w.changed();
            }
            let since = self
                .last_routes
                .map_or(Duration::MAX, |t| now.saturating_duration_since(t));
            let due = match self.watch {
                Some(_) => {
                    (self.routes_dirty && since >= MIN_ROUTE_GAP) || since >= ROUTE_SAFETY_INTERVAL
                }
                None => since >= REFRESH_INTERVAL,
            };
            if due {
                self.read_routes(now);
                changed = true;
            }
        }
        let poll_due = self
            .last_poll
            .is_none_or(|t| now.saturating_duration_since(t) >= REFRESH_INTERVAL);
        if poll_due {
            changed |= self.read_resolv(false);
            changed |= self.read_sessions(now);
        }
        if changed {
            self.publish();
        }
    }

    fn read_routes(&mut self, now: Instant) {
        if !self.settings.gateways {
            self.gateways = Gateways::default();
            self.watch = None;
            return;
        }
        if self.watch.is_none() {
            // Without notifications the table is simply read every REFRESH_INTERVAL.
            self.watch = RouteWatch::open()
                .inspect_err(|e| log::debug!("no route change notifications: {e}"))
                .ok();
        }
        self.routes_dirty = false;
        self.last_routes = Some(now);
        let result = routes::read();
        if let Some(g) = self.settled(Source::Routes, result) {
            self.gateways = g;
        }
    }

    /// Reads `RESOLV_CONF` if it changed (or always when `force`); true when the servers
    /// may have changed.
    fn read_resolv(&mut self, force: bool) -> bool {
        if !self.settings.resolvers {
            let had = !self.resolv.servers().is_empty();
            self.resolv = ResolvFile::new(&self.settings.resolv_conf);
            return had;
        }
        if force {
            self.resolv = ResolvFile::new(&self.settings.resolv_conf);
        }
        let result = self.resolv.poll();
        let changed = self.settled(Source::Resolv, result).unwrap_or(false);
        if changed && self.resolv.is_missing() {
            log::warn!("{}", log_lines::resolv_conf_missing(self.resolv.path()));
        }
        changed
    }

    /// Reads the established sessions; true when it did (the peers may have changed).
    fn read_sessions(&mut self, now: Instant) -> bool {
        self.last_poll = Some(now);
        if !self.settings.established {
            self.peers.clear();
            return false;
        }
        let result = self.sessions.read(MAX_PEERS);
        // Stamped after the read: an upper bound of when each new session was established.
        let seen_at = SystemTime::now();
        let Some(s) = self.settled(Source::Sessions, result) else {
            return false;
        };
        if s.overflow && !self.peers_full {
            log::warn!("{}", log_lines::established_peers_full(MAX_PEERS));
        }
        self.peers_full = s.overflow;
        self.peers.update(&s, seen_at);
        true
    }

    /// The value of a read, or `None` after logging its failure (once per failing streak;
    /// the previous view is kept).
    fn settled<T>(&mut self, source: Source, result: std::io::Result<T>) -> Option<T> {
        match result {
            Ok(v) => {
                self.failing.remove(&source);
                Some(v)
            }
            Err(e) => {
                if self.failing.insert(source) {
                    log::error!(
                        "{}",
                        log_lines::refresh_failed(source.what(), &e.to_string())
                    );
                }
                None
            }
        }
    }

    /// Publishes what was read; says so when the gateways or nameservers changed.
    fn publish(&mut self) {
        let resolvers: &[std::net::IpAddr] = if self.settings.resolvers {
            self.resolv.servers()
        } else {
            &[]
        };
        let snapshot = super::snapshot(&self.gateways, resolvers, self.peers.peers());
        let default: Vec<_> = self.gateways.default.iter().copied().collect();
        let routers: Vec<_> = self.gateways.routers.iter().copied().collect();
        let line = log_lines::protected_addresses(&default, &routers, resolvers);
        if self.announced.as_ref() != Some(&line) {
            log::info!("{line}");
            self.announced = Some(line);
        }
        self.view.publish(Arc::new(snapshot));
    }
}
