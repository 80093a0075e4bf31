//! Stealth (`-stcp`/`-sudp`) and advanced (`-atcp`/`-audp`) sensors: raw capture of the
//! probes sent to this host, for IPv4 and IPv6, in one socket for all modes.
//!
//! How a packet travels:
//! 1. The kernel runs the [`bpf`] prefilter: only packets addressed to this host that could
//!    be probes to a watched port are copied to the daemon, and the SYNs and UDP datagrams
//!    this host sends from a watched port. Traffic to services (ports with a listener) and
//!    the data of every connection never are, so bulk transfers cost the daemon nothing.
//! 2. [`capture`] reads it from a `TPACKET_V3` ring, block by block, with the kernel's
//!    checksum verdict and capture time.
//! 3. What this host sent is named by [`classify::outgoing`] and, if it left from one of
//!    this host's addresses and a watched port, remembered in the [`flows`] table.
//! 4. What came in is named by [`classify::inspect`] (pure function), and [`watched`] decides
//!    whether it counts: sent to one of this host's addresses, to a watched port with no
//!    listener. Then it must not answer a flow this host started ([`flows`]), and a UDP
//!    datagram, bare ACK or FIN+ACK must not be taken by a socket the kernel knows of at
//!    this moment ([`live`]: one sock_diag request, cheap under a flood).
//! 5. The [`Hit`]s of every block ready at a wake-up go to the [`HitSink`] in one batch; a
//!    full channel counts them as dropped and the sensor logs the count every
//!    [`DROP_REPORT`]; it never blocks on the pipeline. Under a flood the sensor wakes at
//!    most every [`FLOOD_READ_INTERVAL`] ([`next_read`]): a wake-up costs more than the
//!    probes of a block.
//!
//! Listeners and host addresses are re-read every [`REFRESH`] (and never per packet; the
//! addresses come from the process-wide [`crate::local_addrs`] read); the
//! prefilter is re-attached when the listeners change or the config is reloaded, without reopening
//! the socket.
//!
//! Duplicates: a frame that crosses a bridge or bond is seen once per device. A probe
//! identical to one seen on another interface within [`DUPLICATE_WINDOW`] is dropped.

pub mod bpf;
pub mod capture;
pub mod flows;
pub mod live;
pub mod ports;
pub mod watched;

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};

use crate::config::Config;
use crate::event::{Hit, Mode, ProbeKind, Proto};
use crate::log_lines;
use crate::sensor::classify::{self, ChecksumCheck, Probe};
use crate::sensor::listeners::Listeners;
use crate::sensor::{HitSink, Sensor, SensorControl};

use self::bpf::{BuildError, Program};
use self::capture::{Capture, Packet};
use self::flows::Flows;
use self::live::LiveSockets;
use self::watched::{Skip, Watch};
use crate::local_addrs::LocalAddrs;

/// How often listeners and host addresses are re-read: a service that starts or stops is
/// taken into account within this long.
pub const REFRESH: Duration = Duration::from_secs(1);

/// How often dropped probes (pipeline behind, kernel buffer full) are reported, if any.
pub const DROP_REPORT: Duration = Duration::from_secs(10);

/// The longest the sensor waits before looking at its control channel.
pub const CONTROL_TICK: Duration = Duration::from_millis(250);

/// Hits handed to the pipeline in one message at most (a batch is cut there, so the
/// pipeline's queue of batches stays bounded in probes too).
pub const BATCH: usize = 256;

/// Under a flood, the sensor reads the ring no more often than this (see [`next_read`]).
/// Each wake-up of the thread costs 15-35 µs of CPU on the virtual machines measured
/// (the longer the thread slept, the more), whatever it then reads: at 6,000 evenly paced
/// forged SYNs a second the ring's 1 ms retire timeout meant 1,000 wake-ups a second and
/// half of the daemon's CPU. Reading every 3 ms cuts them to a third; a probe then waits
/// at most 3 ms (plus its judging) instead of 1, still under the 5 ms the daemon answers in.
pub const FLOOD_READ_INTERVAL: Duration = Duration::from_millis(3);

/// Packets read at one wake-up from which the traffic counts as a flood for
/// [`FLOOD_READ_INTERVAL`]: 4 in the ring's 1 ms is 4,000 packets a second. A scan of a few
/// hundred ports a second, and any lone probe, is still read at once.
pub const FLOOD_PACKETS: u64 = 4;

/// When the sensor reads the ring again at the earliest, after a wake-up at `woke` that read
/// `packets` packets (every block the kernel had handed over): at once when traffic is
/// light, so a lone probe waits only for its block to retire; [`FLOOD_READ_INTERVAL`] after
/// `woke` under a flood, so the blocks retired meanwhile are read at one wake-up (interrupt
/// moderation, as network drivers do it). The ring holds 60 ms of a 100,000 a second flood,
/// far more than the interval.
pub fn next_read(woke: Instant, packets: u64) -> Option<Instant> {
    (packets >= FLOOD_PACKETS).then(|| woke + FLOOD_READ_INTERVAL)
}

/// Identical probes on two interfaces this close together are one probe.
pub const DUPLICATE_WINDOW: Duration = Duration::from_millis(50);

/// Why the raw sensor could not start.
#[derive(Debug, thiserror::Error)]
pub enum RawSensorError {
    /// Not root / no CAP_NET_RAW.
    #[error(
        "raw capture (-stcp/-sudp/-atcp/-audp) needs root (CAP_NET_RAW) to open an AF_PACKET socket: {0}"
    )]
    NotPermitted(#[source] io::Error),
    /// The socket could not be opened or set up.
    #[error("cannot open the AF_PACKET capture socket: {0}")]
    Socket(#[source] io::Error),
    /// A classic mode was handed to the raw sensor.
    #[error("-{0} is not a raw-capture mode (the raw sensor serves -stcp, -sudp, -atcp, -audp)")]
    NotRawMode(Mode),
    /// No mode at all.
    #[error("the raw sensor was given no mode")]
    NoMode,
    /// The kernel socket tables could not be read.
    #[error("cannot read the listening sockets: {0}")]
    Listeners(#[source] io::Error),
    /// The interface addresses could not be read.
    #[error("cannot list this host's addresses: {0}")]
    Addrs(#[source] nix::Error),
    /// The prefilter could not be built.
    #[error(transparent)]
    Filter(#[from] BuildError),
}

/// Counters of what the sensor saw, logged at debug level when it stops.
#[derive(Debug, Default, Clone, Copy)]
pub struct RawStats {
    /// Packets the prefilter let through.
    pub packets: u64,
    /// Packets that classified as probes.
    pub probes: u64,
    /// Probes that became hits (emitted or dropped by a full channel).
    pub hits: u64,
    /// Duplicates seen on a second interface.
    pub duplicates: u64,
    /// Flows this host started from a watched port (outgoing UDP datagrams and SYNs).
    pub flows: u64,
    /// Probes that answered one of those flows.
    pub answers: u64,
    /// Probes a live socket took, as the kernel said when asked.
    pub taken: u64,
    /// Probes reported without the live check, because asking the kernel failed.
    pub unchecked: u64,
}

/// The raw sensor: one capture socket serving every raw mode of the process.
pub struct RawSensor {
    modes: Vec<Mode>,
    config: Arc<Config>,
    capture: Capture,
    watch: Watch,
    program: Program,
    state: State,
}

impl std::fmt::Debug for RawSensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSensor")
            .field("modes", &self.modes)
            .field("watch", &self.watch)
            .finish_non_exhaustive()
    }
}

impl RawSensor {
    /// Opens the capture socket with its prefilter for `modes` (raw modes only), reading
    /// the current listeners and addresses, and logs the 1.2 start-up lines. Fails clearly
    /// without root.
    pub fn open(modes: &[Mode], config: Arc<Config>) -> Result<RawSensor, RawSensorError> {
        if let Some(m) = modes.iter().find(|m| !m.is_raw()) {
            return Err(RawSensorError::NotRawMode(*m));
        }
        if modes.is_empty() {
            return Err(RawSensorError::NoMode);
        }
        let mut unique: Vec<Mode> = Vec::new();
        for m in modes {
            if !unique.contains(m) {
                unique.push(*m);
            }
        }
        let listeners = Listeners::read().map_err(RawSensorError::Listeners)?;
        let addrs = LocalAddrs::read().map_err(RawSensorError::Addrs)?;
        let watch = Watch::new(&unique, &config, listeners, addrs);
        let program = watch.program()?;
        let capture = Capture::open(&program.sock_filters()).map_err(|e| {
            if matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES)) {
                RawSensorError::NotPermitted(e)
            } else {
                RawSensorError::Socket(e)
            }
        })?;
        for line in watch.startup_lines(&config) {
            log::info!("{line}");
        }
        Ok(RawSensor {
            modes: unique,
            config,
            capture,
            watch,
            program,
            state: State::new(
                LiveSockets::open()
                    .map(|l| Box::new(l) as Box<dyn SocketCheck + Send>)
                    .map_err(|e| e.to_string()),
            ),
        })
    }

    /// What the sensor watches right now (for tests and diagnostics).
    pub fn watch(&self) -> &Watch {
        &self.watch
    }

    fn modes_label(&self) -> String {
        self.modes
            .iter()
            .map(|m| m.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Re-attaches the prefilter if the watch sets changed it.
    fn apply_filter(&mut self) {
        match self.watch.program() {
            Ok(p) if p != self.program => match self.capture.set_filter(&p.sock_filters()) {
                Ok(()) => self.program = p,
                Err(e) => log::error!("{}", log_lines::prefilter_refused(e)),
            },
            Ok(_) => {}
            Err(e) => log::error!("{}", log_lines::prefilter_not_built(e)),
        }
    }

    fn refresh(&mut self) {
        let now = Instant::now();
        let mut changed = false;
        let mut changes = Vec::new();
        match Listeners::read() {
            Ok(l) if l == *self.watch.listeners() => {}
            Ok(l) => {
                changes = self.watch.set_listeners(l, now);
                changed = true;
            }
            Err(e) => log::warn!(
                "{}",
                log_lines::refresh_failed("the listening sockets", &e.to_string())
            ),
        }
        let ended = self.watch.expire(now);
        changed |= !ended.is_empty();
        // Only listeners change the prefilter here (addresses are checked in user space), so
        // an unchanged snapshot costs no rebuild.
        if changed {
            self.apply_filter();
        }
        for c in changes.into_iter().chain(ended) {
            if c.appeared {
                log::info!("{}", log_lines::listener_appeared(c.proto, c.port));
            } else {
                log::info!("{}", log_lines::listener_gone(c.proto, c.port));
            }
        }
        self.watch.refresh_addrs(now);
    }

    fn reconfigure(&mut self, config: Arc<Config>) {
        if self.watch.reconfigure(&self.modes, &config) {
            log::info!("{}", log_lines::reconfigured(&self.modes_label()));
            for line in self.watch.startup_lines(&config) {
                log::info!("{line}");
            }
        }
        self.config = config;
        self.apply_filter();
    }

    fn run_loop(&mut self, sink: &HitSink, control: &Receiver<SensorControl>) {
        let mut next_refresh = Instant::now() + REFRESH;
        let mut next_report = Instant::now() + DROP_REPORT;
        let mut kernel_drops = 0u64;
        // The batch handed to the pipeline, its memory reused from wake-up to wake-up.
        let mut hits = Vec::with_capacity(BATCH);
        loop {
            crate::heartbeat::beat();
            loop {
                match control.try_recv() {
                    Ok(SensorControl::Reconfigure(c)) => self.reconfigure(c),
                    Ok(SensorControl::Stop) | Err(TryRecvError::Disconnected) => return,
                    Err(TryRecvError::Empty) => break,
                }
            }
            let now = Instant::now();
            if now >= next_refresh {
                self.refresh();
                next_refresh = now + REFRESH;
            }
            if now >= next_report {
                if let Ok(ring) = self.capture.ring_stats() {
                    kernel_drops += u64::from(ring.drops);
                    if ring.freezes > 0 {
                        log::debug!("capture ring full {} time(s)", ring.freezes);
                    }
                }
                if kernel_drops > 0 {
                    log::warn!(
                        "{}",
                        log_lines::kernel_dropped(kernel_drops, DROP_REPORT.as_secs())
                    );
                    kernel_drops = 0;
                }
                if self.state.unchecked_since_report > 0 {
                    log::warn!(
                        "{}",
                        log_lines::live_check_failed(
                            self.state.unchecked_since_report,
                            DROP_REPORT.as_secs(),
                            &self.state.last_live_error
                        )
                    );
                    self.state.unchecked_since_report = 0;
                }
                next_report = now + DROP_REPORT;
            }
            let wait = sink.tick_and_wait(
                now,
                next_refresh
                    .saturating_duration_since(now)
                    .min(CONTROL_TICK),
            );
            // Whole milliseconds, rounded up: a wait of less than one must not spin.
            let millis = wait.as_micros().div_ceil(1000);
            let timeout = PollTimeout::try_from(millis).unwrap_or(PollTimeout::ZERO);
            let mut fds = [PollFd::new(self.capture.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, timeout) {
                Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
                Ok(_) => {}
                Err(e) => {
                    log::error!("{}", log_lines::capture_wait_failed(e));
                    std::thread::sleep(CONTROL_TICK);
                    continue;
                }
            }
            let woke = Instant::now();
            let packets_before = self.state.stats.packets;
            // Every block the kernel has handed over, in one batch for the pipeline.
            for _ in 0..capture::BLOCK_COUNT {
                // A probe is judged against listeners at most one second old.
                if Instant::now() >= next_refresh {
                    self.refresh();
                    next_refresh = Instant::now() + REFRESH;
                }
                let now = Instant::now();
                let (watch, state) = (&self.watch, &mut self.state);
                match self.capture.next_block(|pkt| {
                    handle(pkt, now, watch, state, &mut hits);
                }) {
                    Ok(true) => {}
                    Ok(false) => break,
                    Err(e) => log::error!("{}", log_lines::capture_read_failed(e)),
                }
                if hits.len() >= BATCH {
                    sink.emit_batch(&mut hits);
                }
            }
            sink.emit_batch(&mut hits);
            if let Some(at) = next_read(woke, self.state.stats.packets - packets_before) {
                // The control channel waits meanwhile, 3 ms at most.
                std::thread::sleep(at.saturating_duration_since(Instant::now()));
            }
        }
    }
}

/// Whether a socket of this host takes a segment or datagram that reached a watched port:
/// asked of the kernel by the running sensor ([`LiveSockets`]), of the capture by a replay.
pub trait SocketCheck {
    /// A UDP socket is bound to `port` (as of at most a moment before `now`).
    fn udp_bound(&mut self, port: u16, now: Instant) -> io::Result<bool>;
    /// A TCP socket owns the segment between `local` and `remote`.
    fn tcp_owned(&mut self, local: SocketAddr, remote: SocketAddr) -> io::Result<bool>;
    /// Questions asked so far (statistics).
    fn queries(&self) -> u64 {
        0
    }
}

impl SocketCheck for LiveSockets {
    fn udp_bound(&mut self, port: u16, now: Instant) -> io::Result<bool> {
        LiveSockets::udp_bound(self, port, now)
    }

    fn tcp_owned(&mut self, local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
        LiveSockets::tcp_owned(self, local, remote)
    }

    fn queries(&self) -> u64 {
        LiveSockets::queries(self)
    }
}

/// What the sensor keeps from one packet to the next, besides what it watches.
pub struct State {
    recent: Recent,
    flows: Flows,
    /// The socket check (the sock_diag socket live), or why it could not be opened.
    live: Result<Box<dyn SocketCheck + Send>, String>,
    stats: RawStats,
    unchecked_since_report: u64,
    last_live_error: String,
}

impl State {
    /// Fresh state around a socket check (or the reason there is none: probes are then
    /// reported unchecked).
    pub fn new(live: Result<Box<dyn SocketCheck + Send>, String>) -> State {
        State {
            recent: Recent::default(),
            flows: Flows::default(),
            live,
            stats: RawStats::default(),
            unchecked_since_report: 0,
            last_live_error: String::new(),
        }
    }

    /// What was seen so far.
    pub fn stats(&self) -> RawStats {
        self.stats
    }

    /// Asks the kernel whether a socket takes `probe` now (UDP datagrams, bare ACKs and
    /// FIN+ACKs; other probes are never taken by a socket). A TCP socket that owns it
    /// renews its flow, so that the connection's next segments are recognised without
    /// asking again. When the kernel cannot be asked, the probe is reported (and counted).
    fn live_socket_takes(&mut self, probe: &Probe, now: Instant) -> bool {
        if !matches!(
            probe.kind,
            ProbeKind::Udp | ProbeKind::Ack | ProbeKind::Maimon
        ) {
            return false;
        }
        let asked = match &mut self.live {
            Err(e) => Err(e.clone()),
            Ok(live) if probe.proto == Proto::Udp => live
                .udp_bound(probe.dst_port, now)
                .map_err(|e| e.to_string()),
            Ok(live) => live
                .tcp_owned(
                    SocketAddr::new(probe.dst, probe.dst_port),
                    SocketAddr::new(probe.src, probe.src_port),
                )
                .map_err(|e| e.to_string()),
        };
        match asked {
            Ok(true) => {
                if probe.proto == Proto::Tcp {
                    self.flows.confirm(probe, now);
                }
                true
            }
            Ok(false) => false,
            Err(e) => {
                self.stats.unchecked += 1;
                self.unchecked_since_report += 1;
                self.last_live_error = e;
                false
            }
        }
    }
}

/// Turns one captured packet into at most one hit (pushed on `out`), or into a flow this
/// host started. A function of the packet (with its capture time), `now` and the state
/// only, so that it runs on a recorded packet source and a simulated clock too (replay).
/// Returns why an incoming probe did not become a hit, if it was one.
pub fn handle(
    pkt: &Packet<'_>,
    now: Instant,
    watch: &Watch,
    st: &mut State,
    out: &mut Vec<Hit>,
) -> Option<(Probe, Skip)> {
    st.stats.packets += 1;
    if pkt.truncated {
        return None;
    }
    match pkt.pkttype {
        libc::PACKET_HOST => {}
        libc::PACKET_OUTGOING => {
            if let Ok(start) = classify::outgoing(pkt.data)
                && watch.starts_flow(&start)
            {
                st.stats.flows += 1;
                st.flows.record(&start, now);
            }
            return None;
        }
        _ => return None,
    }
    let check = if pkt.checksum_trusted {
        ChecksumCheck::Trusted
    } else {
        ChecksumCheck::Verify
    };
    let Ok(probe) = classify::inspect(pkt.data, check) else {
        return None;
    };
    st.stats.probes += 1;
    let mode = match watch.decide(&probe) {
        Ok(mode) => mode,
        Err(skip) => return Some((probe, skip)),
    };
    if st.flows.answers(&probe, now) {
        st.stats.answers += 1;
        return Some((probe, Skip::Answer));
    }
    if st.recent.is_duplicate(pkt.data, pkt.ifindex, now) {
        st.stats.duplicates += 1;
        return Some((probe, Skip::Duplicate));
    }
    if st.live_socket_takes(&probe, now) {
        st.stats.taken += 1;
        return Some((probe, Skip::Socket));
    }
    st.stats.hits += 1;
    out.push(Hit {
        src: probe.src,
        port: probe.dst_port,
        mode,
        kind: probe.kind,
        ip_options: probe.ip_options,
        time: pkt.time,
    });
    None
}

/// The last few probes seen, to drop the copy of a frame that crossed a bridge or bond.
#[derive(Default)]
struct Recent {
    slots: [(u64, i32, Option<Instant>); 16],
    next: usize,
}

impl Recent {
    fn is_duplicate(&mut self, data: &[u8], ifindex: i32, now: Instant) -> bool {
        let mut h = DefaultHasher::new();
        data.hash(&mut h);
        let hash = h.finish();
        let dup = self.slots.iter().any(|(sh, si, st)| {
            *sh == hash
                && *si != ifindex
                && st.is_some_and(|t| now.saturating_duration_since(t) < DUPLICATE_WINDOW)
        });
        if !dup {
            self.slots[self.next] = (hash, ifindex, Some(now));
            self.next = (self.next + 1) % self.slots.len();
        }
        dup
    }
}

impl Sensor for RawSensor {
    fn name(&self) -> String {
        format!("raw {}", self.modes_label())
    }

    fn modes(&self) -> Vec<Mode> {
        self.modes.clone()
    }

    fn run(mut self: Box<Self>, sink: HitSink, control: Receiver<SensorControl>) {
        self.run_loop(&sink, &control);
        log::debug!(
            "raw sensor ({}) stopped: {:?}, {} flows evicted, {} live checks, {} dropped by a full pipeline",
            self.modes_label(),
            self.state.stats,
            self.state.flows.evicted(),
            self.state.live.as_ref().map_or(0, |l| l.queries()),
            sink.dropped()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_probe_on_a_second_interface_is_a_duplicate() {
        let mut r = Recent::default();
        let t = Instant::now();
        assert!(!r.is_duplicate(b"probe", 2, t));
        assert!(r.is_duplicate(b"probe", 3, t + Duration::from_millis(10)));
        // A retransmission on the same interface is a new probe.
        assert!(!r.is_duplicate(b"probe", 2, t + Duration::from_millis(20)));
        // Too late to be the same frame.
        assert!(!r.is_duplicate(b"probe", 4, t + Duration::from_millis(500)));
        assert!(!r.is_duplicate(b"other", 3, t));
    }

    #[test]
    fn light_traffic_is_read_at_once_and_a_flood_every_interval() {
        let woke = Instant::now();
        for light in 0..FLOOD_PACKETS {
            assert_eq!(next_read(woke, light), None, "{light} packets");
        }
        assert_eq!(
            next_read(woke, FLOOD_PACKETS),
            Some(woke + FLOOD_READ_INTERVAL)
        );
        assert_eq!(next_read(woke, 10_000), Some(woke + FLOOD_READ_INTERVAL));
        // A probe read late is still judged within the daemon's 5 ms.
        assert!(
            FLOOD_READ_INTERVAL + Duration::from_millis(capture::RETIRE_TIMEOUT_MS.into())
                < Duration::from_millis(5)
        );
    }

    #[test]
    fn classic_modes_are_refused() {
        let c = Arc::new(crate::config::build::defaults(std::path::Path::new("x")));
        assert!(matches!(
            RawSensor::open(&[Mode::Atcp, Mode::Tcp], c.clone()),
            Err(RawSensorError::NotRawMode(Mode::Tcp))
        ));
        assert!(matches!(
            RawSensor::open(&[], c),
            Err(RawSensorError::NoMode)
        ));
    }
}
