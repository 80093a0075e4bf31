//! Protected addresses: sources never acted on, whatever a probe claims, because a forged
//! packet carrying them would otherwise turn the daemon against its owner.
//!
//! This host's own addresses are the ignore filter's business. Here, three more kinds:
//! - the gateways of the routing table: the `via` of every default route and of every other
//!   route, IPv4 and IPv6 (`PROTECT_GATEWAYS`): blocking the gateway cuts the host off;
//! - the nameservers of `RESOLV_CONF` (`PROTECT_RESOLVERS`): blocking them stops name
//!   resolution;
//! - the peers of established TCP sessions to a local service, for probes later than the
//!   moment the session was first seen (`PROTECT_ESTABLISHED`): the handshake proved the
//!   peer's address, a raw SYN carrying it proves nothing, and an admin's SSH session must
//!   not be cut by one.
//!
//! One refresher thread, owned by a [`Protector`], reads the kernel and the file and
//! publishes an immutable [`Snapshot`]; it is the only writer. The [`ProtectFilter`] in the
//! filter chain, and anyone else holding a [`ProtectView`] (the block manager, for blocks
//! made by hand or pulled from a fleet), read it without any I/O. The view and snapshot types
//! live in [`crate::protected`], so that the block manager reads them without importing a
//! filter.

mod refresher;
pub mod resolv;
pub mod routes;
pub mod sessions;

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, bounded, unbounded};

use super::{DropReason, Filter, Verdict};
use crate::config::Config;
use crate::config::ignore::IgnoreList;
use crate::event::Candidate;
use crate::log_lines;

pub use crate::protected::{Peer, ProtectView, Reason, Snapshot};
pub use refresher::REFRESH_INTERVAL;

/// Gathers the three kinds of one refresh into the snapshot readers see (each empty when its
/// `PROTECT_*` key is off).
pub fn snapshot(
    gateways: &routes::Gateways,
    resolvers: &[IpAddr],
    peers: Arc<HashMap<IpAddr, Peer>>,
) -> Snapshot {
    Snapshot::new(&gateways.default, &gateways.routers, resolvers, peers)
}

/// Longest wait for the refresher's first read at start, and for it to take a reload.
const READY_WAIT: Duration = Duration::from_secs(5);

/// The refresher thread and the way to steer it; the daemon holds it from start to stop.
pub struct Protector {
    view: ProtectView,
    control: Sender<refresher::Msg>,
    thread: Option<JoinHandle<()>>,
}

impl Protector {
    /// Starts the refresher and waits (bounded) for its first read, so that protection is in
    /// force before the first probe is judged.
    pub fn start(config: &Config) -> io::Result<Protector> {
        let view = ProtectView::new();
        let (control, rx) = unbounded();
        let (ready_tx, ready) = bounded(1);
        let settings = refresher::Settings::of(config);
        let writer = view.clone();
        let thread = std::thread::Builder::new()
            .name("protect".into())
            .spawn(move || refresher::run(settings, writer, rx, ready_tx))?;
        if ready.recv_timeout(READY_WAIT).is_err() {
            log::warn!("{}", log_lines::protected_not_ready(READY_WAIT.as_secs()));
        }
        Ok(Protector {
            view,
            control,
            thread: Some(thread),
        })
    }

    /// The read side, for the filter and the block manager.
    pub fn view(&self) -> ProtectView {
        self.view.clone()
    }

    /// Follows a reload (`PROTECT_*`, `RESOLV_CONF`): the refresher reads everything again
    /// and this returns once the new snapshot is published (or after a bounded wait).
    pub fn reconfigure(&self, config: &Config) {
        let (done, applied) = bounded(1);
        let msg = refresher::Msg::Reconfigure(refresher::Settings::of(config), done);
        if self.control.send(msg).is_err() || applied.recv_timeout(READY_WAIT).is_err() {
            log::warn!("{}", log_lines::protected_slow_to_reload());
        }
    }

    /// Stops the refresher and waits for it.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let _ = self.control.send(refresher::Msg::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Protector {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How long a protected address stays quiet in the log after its line.
pub const LOG_PERIOD: Duration = Duration::from_secs(3600);

/// Addresses the log gate remembers at once. When that many were logged within the last
/// [`LOG_PERIOD`], further ones are not logged until a slot frees: a flood "from" many
/// protected peers costs at most this many lines an hour.
pub const LOG_GATE_CAPACITY: usize = 4096;

/// Once per address per period, in fixed memory.
#[derive(Debug, Clone)]
pub struct LogGate {
    logged: HashSet<IpAddr>,
    /// (when, address) in the order they were logged: the oldest expires first.
    order: VecDeque<(Instant, IpAddr)>,
    period: Duration,
    capacity: usize,
}

impl LogGate {
    /// A gate letting each address through once per `period`, remembering at most
    /// `capacity` addresses.
    pub fn new(period: Duration, capacity: usize) -> LogGate {
        LogGate {
            logged: HashSet::new(),
            order: VecDeque::new(),
            period,
            capacity,
        }
    }

    /// Whether `ip`'s line is due at `now`; if so, it is not due again for a period.
    pub fn admit(&mut self, ip: IpAddr, now: Instant) -> bool {
        while let Some(&(at, old)) = self.order.front() {
            if now.saturating_duration_since(at) < self.period {
                break;
            }
            self.order.pop_front();
            self.logged.remove(&old);
        }
        if self.logged.contains(&ip) || self.logged.len() >= self.capacity {
            return false;
        }
        self.logged.insert(ip);
        self.order.push_back((now, ip));
        true
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.logged.len()
    }

    /// True when no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.logged.is_empty()
    }
}

/// Second filter, right after the ignore list: drops probes from protected addresses and
/// logs the first of each address per hour with the reason.
#[derive(Debug)]
pub struct ProtectFilter {
    view: ProtectView,
    cached: Arc<Snapshot>,
    cached_version: u64,
    gate: LogGate,
}

impl ProtectFilter {
    /// A filter reading `view`.
    pub fn new(view: ProtectView) -> ProtectFilter {
        ProtectFilter {
            cached_version: view.version(),
            cached: view.snapshot(),
            view,
            gate: LogGate::new(LOG_PERIOD, LOG_GATE_CAPACITY),
        }
    }

    /// The decision, and the line to log when this probe's is due, with the clock passed in.
    pub fn inspect_at(&mut self, candidate: &Candidate, now: Instant) -> (Verdict, Option<String>) {
        let version = self.view.version();
        if version != self.cached_version {
            self.cached = self.view.snapshot();
            self.cached_version = version;
        }
        let hit = &candidate.hit;
        match self.cached.protection_at(hit.src, hit.time) {
            None => (Verdict::Pass, None),
            Some(reason) => {
                let line = self
                    .gate
                    .admit(hit.src.to_canonical(), now)
                    .then(|| log_lines::protected(candidate, reason));
                (Verdict::Drop(DropReason::Protected), line)
            }
        }
    }
}

impl Filter for ProtectFilter {
    fn name(&self) -> &'static str {
        "protect"
    }

    fn inspect(&mut self, candidate: &mut Candidate, now: Instant) -> Verdict {
        let (verdict, line) = self.inspect_at(candidate, now);
        if let Some(line) = line {
            log::info!("{line}");
        }
        verdict
    }

    /// The refresher follows reloads through [`Protector::reconfigure`]; the filter only
    /// reads what it publishes.
    fn reconfigure(&mut self, _config: &Config, _ignore: &Arc<IgnoreList>) {}
}

#[cfg(test)]
pub(crate) mod test_netns {
    //! A named network namespace for one unit test, deleted on drop.

    use std::os::fd::AsRawFd;
    use std::process::Command;

    /// See the module documentation.
    pub struct NetNs {
        name: String,
    }

    impl NetNs {
        /// Creates `pst-<tag>-<pid>`. Not being root fails the test, as the end-to-end
        /// tests do: a test that passed without running would hide a regression.
        pub fn new(tag: &str) -> NetNs {
            assert!(
                nix::unistd::geteuid().is_root(),
                "this test needs root (a private network namespace); run the suite as root \
                 after scripts/setup-deps.sh"
            );
            let ns = NetNs {
                name: format!("pst-{tag}-{}", std::process::id()),
            };
            let _ = Command::new("ip").args(["netns", "del", &ns.name]).output();
            ns.cmd(&["ip", "netns", "add", &ns.name]);
            ns.ip(&["link", "set", "lo", "up"]);
            ns
        }

        fn cmd(&self, args: &[&str]) {
            let out = Command::new(args[0])
                .args(&args[1..])
                .output()
                .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }

        /// `ip -n <ns> <args>`, which must succeed.
        pub fn ip(&self, args: &[&str]) {
            let mut all = vec!["ip", "-n", &self.name];
            all.extend_from_slice(args);
            self.cmd(&all);
        }

        /// As [`NetNs::new`], with a link `d0` that is up and holds `10.77.251.1/24` and
        /// `fd77:251::1/64` (a veth pair inside the namespace: containers may lack the dummy
        /// driver). No packet leaves the namespace.
        pub fn with_link(tag: &str) -> NetNs {
            let ns = NetNs::new(tag);
            ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"]);
            ns.ip(&["link", "set", "d1", "up"]);
            ns.ip(&["link", "set", "d0", "up"]);
            ns.ip(&["addr", "add", "10.77.251.1/24", "dev", "d0"]);
            ns.ip(&["-6", "addr", "add", "fd77:251::1/64", "dev", "d0", "nodad"]);
            ns
        }

        /// Runs `f` on a thread inside the namespace.
        pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
            let path = format!("/run/netns/{}", self.name);
            std::thread::spawn(move || {
                let file = std::fs::File::open(&path).unwrap();
                // SAFETY: a valid namespace fd; setns changes only the calling thread.
                assert_eq!(
                    unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) },
                    0
                );
                f()
            })
            .join()
            .unwrap()
        }
    }

    impl Drop for NetNs {
        fn drop(&mut self) {
            let _ = Command::new("ip")
                .args(["netns", "del", &self.name])
                .output();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Hit, Mode, ProbeKind};
    use std::collections::BTreeSet;
    use std::time::SystemTime;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn alert_at(src: &str, time: SystemTime) -> Candidate {
        let mut hit = Hit::now(ip(src), 22, Mode::Stcp, ProbeKind::Syn);
        hit.time = time;
        Candidate {
            hit,
            count: 0,
            already_blocked: false,
            actionable: true,
        }
    }

    fn gateways(default: &[&str], routers: &[&str]) -> routes::Gateways {
        let set = |l: &[&str]| l.iter().map(|a| ip(a)).collect::<BTreeSet<_>>();
        routes::Gateways {
            default: set(default),
            routers: set(routers),
        }
    }

    fn peers(list: &[(&str, u16, SystemTime)]) -> Arc<HashMap<IpAddr, Peer>> {
        Arc::new(
            list.iter()
                .map(|&(a, port, first_seen)| (ip(a), Peer { port, first_seen }))
                .collect(),
        )
    }

    #[test]
    fn a_network_block_covering_a_protected_address_is_named() {
        let t = SystemTime::now();
        let s = snapshot(
            &gateways(&["10.77.1.1"], &[]),
            &[ip("fd77:1::53")],
            peers(&[("10.77.2.20", 22, t)]),
        );
        let net = |t: &str| t.parse::<ipnet::IpNet>().unwrap();
        assert_eq!(
            s.protected_in(&net("10.77.1.0/24")),
            Some((ip("10.77.1.1"), Reason::DefaultGateway))
        );
        assert_eq!(
            s.protected_in(&net("fd77:1::/64")),
            Some((ip("fd77:1::53"), Reason::Resolver))
        );
        assert_eq!(
            s.protected_in(&net("10.77.2.20/32")),
            Some((ip("10.77.2.20"), Reason::Established { port: 22 }))
        );
        assert_eq!(s.protected_in(&net("10.77.3.0/24")), None);
    }

    #[test]
    fn snapshot_names_the_reason_of_each_kind() {
        let t = SystemTime::now();
        let s = snapshot(
            &gateways(&["10.77.1.1", "fe80::1"], &["10.77.1.9"]),
            &[ip("10.77.1.53"), ip("10.77.1.1")],
            peers(&[("10.77.1.20", 22, t)]),
        );
        let later = t + Duration::from_secs(1);
        assert_eq!(
            s.protection_at(ip("10.77.1.1"), later),
            Some(Reason::DefaultGateway),
            "a gateway that is also a nameserver is named as the gateway"
        );
        assert_eq!(
            s.protection_at(ip("fe80::1"), later),
            Some(Reason::DefaultGateway)
        );
        assert_eq!(
            s.protection_at(ip("::ffff:10.77.1.9"), later),
            Some(Reason::Router)
        );
        assert_eq!(
            s.protection_at(ip("10.77.1.53"), later),
            Some(Reason::Resolver)
        );
        assert_eq!(
            s.protection_at(ip("10.77.1.20"), later),
            Some(Reason::Established { port: 22 })
        );
        assert_eq!(s.protection_at(ip("10.77.1.21"), later), None);
    }

    #[test]
    fn established_peer_is_protected_only_from_probes_later_than_its_session() {
        let seen = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = snapshot(
            &routes::Gateways::default(),
            &[],
            peers(&[("10.77.1.20", 22, seen)]),
        );
        let peer = ip("10.77.1.20");
        assert_eq!(
            s.protection_at(peer, seen - Duration::from_millis(1)),
            None,
            "a probe from before the session was seen is evidence"
        );
        assert_eq!(
            s.protection_at(peer, seen),
            None,
            "not later: not protected"
        );
        assert_eq!(
            s.protection_at(peer, seen + Duration::from_millis(1)),
            Some(Reason::Established { port: 22 })
        );
    }

    #[test]
    fn log_gate_lets_each_address_through_once_per_period() {
        let t0 = Instant::now();
        let mut g = LogGate::new(LOG_PERIOD, 16);
        let a = ip("10.77.1.1");
        assert!(g.admit(a, t0));
        assert!(!g.admit(a, t0 + Duration::from_secs(1)));
        assert!(!g.admit(a, t0 + LOG_PERIOD - Duration::from_secs(1)));
        assert!(g.admit(ip("10.77.1.2"), t0 + Duration::from_secs(5)));
        assert!(g.admit(a, t0 + LOG_PERIOD), "an hour later it is due again");
        assert!(!g.admit(a, t0 + LOG_PERIOD + Duration::from_secs(1)));
        assert!(!g.admit(ip("10.77.1.2"), t0 + LOG_PERIOD + Duration::from_secs(1)));
        assert!(g.admit(ip("10.77.1.2"), t0 + LOG_PERIOD + Duration::from_secs(5)));
    }

    #[test]
    fn log_gate_memory_is_bounded_and_frees_as_entries_expire() {
        let t0 = Instant::now();
        let mut g = LogGate::new(LOG_PERIOD, 4);
        for h in 1..=4u8 {
            assert!(g.admit(
                IpAddr::from([10, 77, 1, h]),
                t0 + Duration::from_secs(h.into())
            ));
        }
        // Full: a fifth address is not logged, and memory does not grow.
        assert!(!g.admit(ip("10.77.1.5"), t0 + Duration::from_secs(10)));
        assert_eq!(g.len(), 4);
        // When the first entry expires, one slot frees.
        let later = t0 + LOG_PERIOD + Duration::from_secs(1);
        assert!(g.admit(ip("10.77.1.5"), later));
        assert!(!g.admit(ip("10.77.1.6"), later));
        assert_eq!(g.len(), 4);
    }

    #[test]
    fn filter_drops_protected_sources_logging_once_and_passes_others() {
        let view = ProtectView::new();
        let t = SystemTime::now();
        view.publish(Arc::new(snapshot(
            &gateways(&["10.77.1.1"], &[]),
            &[ip("10.77.1.53")],
            peers(&[]),
        )));
        let mut f = ProtectFilter::new(view.clone());
        let now = Instant::now();
        let (v, line) = f.inspect_at(&alert_at("10.77.1.1", t), now);
        assert_eq!(v, Verdict::Drop(DropReason::Protected));
        assert_eq!(
            line.as_deref(),
            Some(
                "attackalert: Host 10.77.1.1 is protected (default gateway) and will not be \
                 blocked: TCP SYN/Normal scan to TCP port 22"
            )
        );
        let (v, line) = f.inspect_at(&alert_at("10.77.1.1", t), now + Duration::from_secs(60));
        assert_eq!((v, line), (Verdict::Drop(DropReason::Protected), None));
        let (v, line) = f.inspect_at(&alert_at("::ffff:10.77.1.53", t), now);
        assert_eq!(v, Verdict::Drop(DropReason::Protected));
        assert!(
            line.unwrap()
                .contains("Host 10.77.1.53 is protected (nameserver)")
        );
        assert_eq!(
            f.inspect_at(&alert_at("10.77.1.7", t), now).0,
            Verdict::Pass
        );
    }

    #[test]
    fn filter_sees_a_new_snapshot_at_the_next_probe() {
        let view = ProtectView::new();
        let mut f = ProtectFilter::new(view.clone());
        let t = SystemTime::now();
        let now = Instant::now();
        assert_eq!(
            f.inspect_at(&alert_at("10.77.1.1", t), now).0,
            Verdict::Pass
        );
        view.publish(Arc::new(snapshot(
            &gateways(&[], &["10.77.1.1"]),
            &[],
            peers(&[]),
        )));
        let (v, line) = f.inspect_at(&alert_at("10.77.1.1", t), now);
        assert_eq!(v, Verdict::Drop(DropReason::Protected));
        assert!(line.unwrap().contains("(gateway of a route)"));
        assert_eq!(
            view.protection(ip("10.77.1.1")),
            Some(Reason::Router),
            "the query for the block manager reads the same snapshot"
        );
    }

    #[test]
    fn protector_reads_the_namespace_and_follows_reloads() {
        let ns = test_netns::NetNs::with_link("protector");
        ns.ip(&["route", "add", "default", "via", "10.77.251.254"]);
        let dir = tempfile::tempdir().unwrap();
        let resolv = dir.path().join("resolv.conf");
        std::fs::write(&resolv, "nameserver 10.77.251.53\n").unwrap();
        let mut config = crate::config::build::defaults(std::path::Path::new("x.conf"));
        config.resolv_conf = resolv.clone();
        let gw = ip("10.77.251.254");
        let ns53 = ip("10.77.251.53");
        let (p, view) = ns.run(move || {
            let p = Protector::start(&config).unwrap();
            let view = p.view();
            assert_eq!(view.protection(gw), Some(Reason::DefaultGateway));
            assert_eq!(view.protection(ns53), Some(Reason::Resolver));
            config.protect_gateways = false;
            p.reconfigure(&config);
            assert_eq!(view.protection(gw), None, "turned off by a reload");
            assert_eq!(view.protection(ns53), Some(Reason::Resolver));
            config.protect_gateways = true;
            p.reconfigure(&config);
            (p, view)
        });
        assert_eq!(view.protection(gw), Some(Reason::DefaultGateway));
        // A route change is followed without a reload (notification, then a re-read).
        ns.ip(&["route", "replace", "default", "via", "10.77.251.253"]);
        // And so is an edit of the resolver file.
        std::fs::write(&resolv, "nameserver 10.77.251.54\n").unwrap();
        let deadline = Instant::now() + REFRESH_INTERVAL * 3;
        while view.protection(ip("10.77.251.54")).is_none()
            || view.protection(ip("10.77.251.253")).is_none()
        {
            assert!(Instant::now() < deadline, "changes not followed");
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(view.protection(gw), None);
        assert_eq!(view.protection(ns53), None);
        p.stop();
    }
}
