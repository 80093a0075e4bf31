//! The replay's driver: it plays the daemon's shell around the daemon's own stages (the raw
//! sensor's packet handling, the filter chain, the announcer's rule, the block core), on the
//! capture's clock, and tells the report what each stage said.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::announce::{self, Decision};
use crate::block::core::{BlockCore, BlockNote, CoreSetup, Effect, Guard, Input, Now, Work};
use crate::block::view::BlockView;
use crate::config::ignore::IgnoreList;
use crate::event::{Candidate, Hit, Mode, ProbeKind, Proto};
use crate::filter::{self, DropReason, Filter};
use crate::generation::Generation;
use crate::local_addrs::LocalAddrs;
use crate::protected::{Peer, ProtectView, Snapshot};
use crate::record::{Action, Target, Undo};
use crate::respond::ResponseContext;
use crate::respond::lua::{DryRunPlugins, EventData, EventName};
use crate::respond::pool::JobResult;
use crate::sensor::raw::capture::Packet;
use crate::sensor::raw::watched::{Skip, Watch};
use crate::sensor::raw::{self, SocketCheck, State};

use super::file::Frame;
use super::host::HostView;
use super::link;
use super::report::{Sources, Summary, Verdict, clock};
use super::{Options, ReplayError};

/// How often (capture time) the established sessions seen so far are published to the
/// protect filter: the live refresher reads the kernel's as often.
const PEERS_REFRESH: Duration = Duration::from_secs(1);
/// Connections remembered per table at most (handshakes under way, sessions of the host).
const MAX_CONNECTIONS: usize = 65_536;
/// A SYN-ACK whose handshake did not complete within this long is forgotten when the table
/// is full.
const HANDSHAKE_WAIT: Duration = Duration::from_secs(10);
/// A session not seen for this long is forgotten by the socket check.
const SESSION_IDLE: Duration = Duration::from_secs(300);
/// The block core's longest sleep between ticks, as in the manager.
const TICK_CAP: Duration = Duration::from_secs(60);
/// Jobs in flight in the replayed pool (the shell's default).
const WORKERS: usize = 8;

/// The sockets of the host as the capture shows them: the raw sensor asks the kernel whether
/// a socket takes a bare ACK or a datagram; a replay answers from what the host sent.
#[derive(Debug, Default)]
struct CaptureSockets {
    /// TCP connections the host sent on (local, remote), with when.
    sessions: HashMap<(SocketAddr, SocketAddr), Instant>,
    udp: std::collections::BTreeSet<u16>,
}

impl CaptureSockets {
    fn sent(&mut self, local: SocketAddr, remote: SocketAddr, now: Instant) {
        if self.sessions.len() >= MAX_CONNECTIONS {
            self.sessions
                .retain(|_, t| now.saturating_duration_since(*t) < SESSION_IDLE);
            if self.sessions.len() >= MAX_CONNECTIONS {
                self.sessions.clear();
            }
        }
        self.sessions.insert((local, remote), now);
    }
}

/// The replay's socket check, shared with the sensor state.
#[derive(Debug, Clone, Default)]
struct SharedSockets(Arc<std::sync::Mutex<CaptureSockets>>);

impl SocketCheck for SharedSockets {
    fn udp_bound(&mut self, port: u16, _now: Instant) -> io::Result<bool> {
        Ok(crate::sync::lock(&self.0).udp.contains(&port))
    }

    fn tcp_owned(&mut self, local: SocketAddr, remote: SocketAddr) -> io::Result<bool> {
        Ok(crate::sync::lock(&self.0)
            .sessions
            .contains_key(&(local, remote)))
    }
}

/// The classic modes' bound trap ports, and the handshakes under way to them.
#[derive(Debug, Default)]
struct Classic {
    tcp: std::collections::BTreeSet<u16>,
    udp: std::collections::BTreeSet<u16>,
    /// SYNs to a trap port: (remote, local) → when.
    syns: HashMap<(SocketAddr, SocketAddr), Instant>,
}

/// The replay's guard: the host's addresses as learned, the protected ones as given.
struct ReplayGuard {
    local: LocalAddrs,
    protect: ProtectView,
}

impl Guard for ReplayGuard {
    fn refusal(&self, target: &Target, ignore: &IgnoreList) -> Option<String> {
        crate::block::refusal::refusal(target, &self.local, &self.protect.snapshot(), ignore)
    }
}

/// Timestamps read as the two clocks of the daemon: the wall clock is the capture's, the
/// monotonic one starts at the replay's start and never goes back.
struct Clock {
    base: Instant,
    first: Option<SystemTime>,
    last: Instant,
    last_wall: SystemTime,
}

impl Clock {
    fn at(&mut self, wall: SystemTime) -> Now {
        let first = *self.first.get_or_insert(wall);
        let mono = self.base + wall.duration_since(first).unwrap_or_default();
        self.last = self.last.max(mono);
        self.last_wall = self.last_wall.max(wall);
        Now {
            wall: self.last_wall,
            mono: self.last,
        }
    }
}

/// The daemon's stages and the shell around them, for one replay.
pub(super) struct Replay {
    config: Arc<crate::config::Config>,
    host: HostView,
    watch: Option<Watch>,
    raw: State,
    sockets: SharedSockets,
    classic: Classic,
    chain: Vec<Box<dyn Filter>>,
    view: BlockView,
    protect: ProtectView,
    gateways: std::collections::BTreeSet<IpAddr>,
    resolvers: Vec<IpAddr>,
    protect_established: bool,
    /// Handshakes to the host's listeners under way: (remote, local) → when the SYN-ACK left.
    accepting: HashMap<(SocketAddr, SocketAddr), Instant>,
    peers: HashMap<IpAddr, Peer>,
    peers_changed: bool,
    peers_published: Instant,
    core: BlockCore,
    next_tick: Instant,
    clock: Clock,
    pub(super) sources: Sources,
    summary: Summary,
    verify: bool,
    plugins: Option<DryRunPlugins>,
    hits: Vec<Hit>,
}

impl Replay {
    pub(super) fn new(
        options: &Options,
        generation: Generation,
        host: HostView,
        plugins: Option<DryRunPlugins>,
    ) -> Replay {
        let config = Arc::clone(&generation.config);
        let base = Instant::now();
        let local = LocalAddrs::fixed(host.local.iter().copied());
        let raw_modes: Vec<Mode> = options
            .modes
            .iter()
            .copied()
            .filter(|m| m.is_raw())
            .collect();
        let watch = (!raw_modes.is_empty())
            .then(|| Watch::new(&raw_modes, &config, host.listeners.clone(), local.clone()));
        let sockets = SharedSockets::default();
        crate::sync::lock(&sockets.0).udp = host.listeners.udp.clone();
        let mut classic = Classic::default();
        for m in &options.modes {
            match m {
                Mode::Tcp => classic.tcp.extend(config.watched_ports(Mode::Tcp)),
                Mode::Udp => classic.udp.extend(config.watched_ports(Mode::Udp)),
                _ => {}
            }
        }
        if options.listening.is_some() {
            // Ports named as another service's: the trap could not have bound them.
            for p in &host.listeners.tcp {
                classic.tcp.remove(p);
            }
            for p in &host.listeners.udp {
                classic.udp.remove(p);
            }
        }
        let view = BlockView::new();
        let protect = ProtectView::new();
        let chain =
            filter::chain_with_local(&config, &generation.ignore, &view, &protect, local.clone());
        let gateways = if config.protect_gateways {
            options
                .gateways
                .iter()
                .map(|ip| ip.to_canonical())
                .collect()
        } else {
            Default::default()
        };
        let resolvers = if config.protect_resolvers {
            options
                .resolvers
                .iter()
                .map(|ip| ip.to_canonical())
                .collect()
        } else {
            Vec::new()
        };
        let now = Now {
            wall: UNIX_EPOCH,
            mono: base,
        };
        let mut core = BlockCore::new(CoreSetup {
            generation,
            guard: Box::new(ReplayGuard {
                local,
                protect: protect.clone(),
            }),
            counters: Default::default(),
            offences: HashMap::new(),
            workers: WORKERS,
            max_waiting: crate::block::manager::MAX_WAITING,
            events: false,
            now,
        });
        // The notes of blocks made are how the replay learns of them.
        let _ = core.handle(Input::Observing(true), now);
        let mut r = Replay {
            protect_established: config.protect_established,
            config,
            summary: Summary {
                local: host.local.iter().map(ToString::to_string).collect(),
                local_learned: host.guessed_local,
                listening_learned: host.guessed_listeners,
                ..Summary::default()
            },
            host,
            watch,
            raw: State::new(Ok(Box::new(sockets.clone()))),
            sockets,
            classic,
            chain,
            view,
            protect,
            gateways,
            resolvers,
            accepting: HashMap::new(),
            peers: HashMap::new(),
            peers_changed: true,
            peers_published: base,
            core,
            next_tick: base,
            clock: Clock {
                base,
                first: None,
                last: base,
                last_wall: UNIX_EPOCH,
            },
            sources: Sources::default(),
            verify: options.verify_checksums,
            plugins,
            hits: Vec::new(),
        };
        r.publish_peers();
        r
    }

    fn publish_peers(&mut self) {
        let snapshot = Snapshot::new(
            &self.gateways,
            &Default::default(),
            &self.resolvers,
            Arc::new(self.peers.clone()),
        );
        self.protect.publish(Arc::new(snapshot));
        self.peers_changed = false;
    }

    /// One packet of the capture.
    pub(super) fn frame(
        &mut self,
        frame: &Frame<'_>,
        out: &mut dyn Write,
    ) -> Result<(), ReplayError> {
        self.summary.packets += 1;
        let now = self.clock.at(frame.time);
        if self.summary.packets == 1 {
            self.summary.capture_start = frame
                .time
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
        }
        self.tick_until(now, out)?;
        let d = match link::decode(frame.link, frame.data) {
            Ok(d) => d,
            Err(link::NotIp::UnknownLink(_)) => {
                self.summary.unknown_link += 1;
                return Ok(());
            }
            Err(link::NotIp::Other) => return Ok(()),
        };
        self.summary.ip_packets += 1;
        let ways = self.host.ways(frame.iface, &d);
        if ways.outgoing {
            self.outgoing(d.ip, frame, now);
        }
        if ways.incoming {
            self.incoming(d.ip, frame, now, out)?;
        }
        Ok(())
    }

    /// What the host sent: flows for the sensor, sessions for the socket check and the
    /// protect filter.
    fn outgoing(&mut self, ip: &[u8], frame: &Frame<'_>, now: Now) {
        if self.host.guessed_listeners
            && let Some((tcp, port)) = super::host::peek(ip).and_then(|p| p.listener)
        {
            self.listener_seen(tcp, port, now);
        }
        let pkt = Packet {
            data: ip,
            time: frame.time,
            ifindex: frame.iface as i32,
            pkttype: libc::PACKET_OUTGOING,
            checksum_trusted: true,
            truncated: false,
        };
        if let Some(watch) = &self.watch {
            raw::handle(&pkt, now.mono, watch, &mut self.raw, &mut self.hits);
        }
        if let Some(seg) = tcp_segment(ip) {
            // The socket check is asked only of segments to a watched port: a session from
            // any other port (a listener's, an ephemeral one) needs no entry, so bulk
            // traffic costs nothing here.
            if self
                .watch
                .as_ref()
                .is_some_and(|w| w.effective(Proto::Tcp).contains(seg.src.port()))
            {
                crate::sync::lock(&self.sockets.0).sent(seg.src, seg.dst, now.mono);
            }
            if seg.flags & 0x12 == 0x12 {
                // Handshakes never completed (forged SYNs answered) are dropped by age.
                if self.accepting.len() >= MAX_CONNECTIONS {
                    let mono = now.mono;
                    self.accepting
                        .retain(|_, t| mono.saturating_duration_since(*t) < HANDSHAKE_WAIT);
                }
                if self.accepting.len() < MAX_CONNECTIONS {
                    self.accepting.insert((seg.dst, seg.src), now.mono);
                }
            }
        }
    }

    /// A port answered a SYN with a SYN-ACK, or sent UDP, that the first look had not met:
    /// it has a listener from now on, for the sensor and the socket check alike.
    fn listener_seen(&mut self, tcp: bool, port: u16, now: Now) {
        let listeners = &mut self.host.listeners;
        let new = if tcp {
            listeners.tcp.insert(port)
        } else {
            listeners.udp.insert(port)
        };
        if !new {
            return;
        }
        if !tcp {
            crate::sync::lock(&self.sockets.0).udp.insert(port);
        }
        if let Some(watch) = &mut self.watch {
            watch.set_listeners(self.host.listeners.clone(), now.mono);
        }
    }

    fn incoming(
        &mut self,
        ip: &[u8],
        frame: &Frame<'_>,
        now: Now,
        out: &mut dyn Write,
    ) -> Result<(), ReplayError> {
        let seg = tcp_segment(ip);
        if let Some(seg) = &seg {
            self.handshake(seg, frame.time, now);
        }
        let mut hits = std::mem::take(&mut self.hits);
        if let Some(watch) = &self.watch {
            let pkt = Packet {
                data: ip,
                time: frame.time,
                ifindex: frame.iface as i32,
                pkttype: libc::PACKET_HOST,
                checksum_trusted: !self.verify,
                // As the live sensor: a probe cut short by the snap length is not judged.
                truncated: frame.truncated(),
            };
            if let Some((probe, skip)) =
                raw::handle(&pkt, now.mono, watch, &mut self.raw, &mut hits)
            {
                self.summary.probes += 1;
                if skip == Skip::Answer {
                    let hit = Hit {
                        src: probe.src,
                        port: probe.dst_port,
                        mode: match probe.proto {
                            Proto::Tcp => Mode::Atcp,
                            Proto::Udp => Mode::Audp,
                        },
                        kind: probe.kind,
                        ip_options: probe.ip_options,
                        time: frame.time,
                    };
                    self.sources.probe(&hit, Verdict::AnswerToOwnTraffic, false);
                }
            } else if !hits.is_empty() {
                self.summary.probes += 1;
            }
        }
        self.classic_hits(ip, seg.as_ref(), frame.time, now, &mut hits);
        for hit in hits.drain(..) {
            self.judge(hit, now, out)?;
        }
        self.hits = hits;
        Ok(())
    }

    /// The protect filter's established peers, and the classic TCP trap's connections.
    fn handshake(&mut self, seg: &Segment, at: SystemTime, now: Now) {
        let completes = seg.flags & 0x17 == 0x10;
        if !completes {
            return;
        }
        if self.protect_established
            && self.peers.len() < MAX_CONNECTIONS
            && self.accepting.remove(&(seg.src, seg.dst)).is_some()
            && !self.classic.tcp.contains(&seg.dst.port())
        {
            self.peers
                .entry(seg.src.ip().to_canonical())
                .or_insert(Peer {
                    port: seg.dst.port(),
                    first_seen: at,
                });
            self.peers_changed = true;
        }
        if self.peers_changed
            && now.mono.saturating_duration_since(self.peers_published) >= PEERS_REFRESH
        {
            self.peers_published = now.mono;
            self.publish_peers();
        }
    }

    /// Hits of the classic modes: a completed handshake to a TCP trap port, a datagram to
    /// a UDP one.
    fn classic_hits(
        &mut self,
        ip: &[u8],
        seg: Option<&Segment>,
        at: SystemTime,
        now: Now,
        hits: &mut Vec<Hit>,
    ) {
        if self.classic.tcp.is_empty() && self.classic.udp.is_empty() {
            return;
        }
        if let Some(seg) = seg {
            if !self.classic.tcp.contains(&seg.dst.port())
                || !self.host.local.contains(&seg.dst.ip().to_canonical())
            {
                return;
            }
            let key = (seg.src, seg.dst);
            if seg.flags & 0x17 == 0x02 {
                if self.classic.syns.len() >= MAX_CONNECTIONS {
                    self.classic.syns.clear();
                }
                self.classic.syns.insert(key, now.mono);
            } else if seg.flags & 0x17 == 0x10 && self.classic.syns.remove(&key).is_some() {
                self.summary.probes += 1;
                hits.push(Hit {
                    src: seg.src.ip(),
                    port: seg.dst.port(),
                    mode: Mode::Tcp,
                    kind: ProbeKind::Connect,
                    ip_options: false,
                    time: at,
                });
            }
        } else if let Some((src, dst, port)) = udp_datagram(ip)
            && self.classic.udp.contains(&port)
            && self.host.local.contains(&dst.to_canonical())
        {
            self.summary.probes += 1;
            hits.push(Hit {
                src,
                port,
                mode: Mode::Udp,
                kind: ProbeKind::Udp,
                ip_options: false,
                time: at,
            });
        }
    }

    /// One hit through the filters, the announcer's rule and the block core.
    fn judge(&mut self, hit: Hit, now: Now, out: &mut dyn Write) -> Result<(), ReplayError> {
        self.summary.counted += 1;
        let mut candidate = Candidate {
            hit,
            count: 0,
            already_blocked: false,
            actionable: true,
        };
        if let Err((_, reason)) = filter::judge(&mut self.chain, &mut candidate, now.mono) {
            let verdict = match reason {
                DropReason::Ignored => Verdict::Ignored,
                DropReason::Protected => Verdict::Protected,
                DropReason::BelowTrigger => Verdict::BelowTrigger,
            };
            self.sources.probe(&candidate.hit, verdict, false);
            return Ok(());
        }
        let decision = announce::decide(&candidate, &self.config);
        let verdict = match decision {
            Decision::Block | Decision::AlreadyBlocked => Verdict::WouldBlock,
            Decision::NotActionable | Decision::LogOnly => Verdict::AlertOnly,
        };
        // Blocks come from the core's notes; until then the probe counts as an alert.
        let acted = verdict == Verdict::WouldBlock;
        self.sources
            .probe(&candidate.hit, verdict.max(Verdict::AlertOnly), acted);
        let (src, at) = (candidate.hit.src, candidate.hit.time);
        let resolved = src.to_string();
        if candidate.actionable
            && let Some(plugins) = &self.plugins
        {
            let ctx = ResponseContext::for_alert(&candidate, &resolved, &self.config);
            let event = EventData::from_context(EventName::Alert, &ctx);
            plugins.fire(&event, &format!("{} alert {src}:", clock(at)), out)?;
        }
        match decision {
            Decision::NotActionable => {
                self.sources
                    .not_acted(src, at, "forgeable evidence below FORGEABLE_SCAN_TRIGGER")
            }
            Decision::LogOnly => self
                .sources
                .not_acted(src, at, "BLOCK_TCP/BLOCK_UDP: log only"),
            Decision::AlreadyBlocked => self.sources.already_blocked(src, at),
            Decision::Block => {
                self.sources.requested(src, at);
                let request = crate::block::core::BlockRequest {
                    alert: candidate,
                    resolved,
                };
                self.core_input(Input::Request(request), now, out)?;
            }
        }
        Ok(())
    }

    /// Hands the core a message and plays the shell: every job succeeds at once (nothing is
    /// applied), the view follows, the notes of blocks made go to the report.
    fn core_input(
        &mut self,
        input: Input,
        now: Now,
        out: &mut dyn Write,
    ) -> Result<(), ReplayError> {
        let mut inputs = vec![input];
        while let Some(input) = inputs.pop() {
            let output = self.core.handle(input, now);
            for change in output.view {
                match change {
                    crate::block::core::ViewChange::Insert(t) => self.view.insert(t),
                    crate::block::core::ViewChange::Remove(t) => self.view.remove(&t),
                }
            }
            for work in output.work {
                inputs.push(Input::Result(done(work)));
            }
            for effect in output.effects {
                if let Effect::Note(BlockNote::Made(record)) = effect {
                    self.summary.blocks += 1;
                    self.sources.blocked(&record);
                    if let Some(plugins) = &self.plugins {
                        self.fire_block(plugins, &record, now, out)?;
                    }
                }
            }
        }
        let wake = self
            .core
            .next_wake(now, TICK_CAP)
            .max(Duration::from_millis(1));
        self.next_tick = now.mono + wake;
        Ok(())
    }

    fn fire_block(
        &self,
        plugins: &DryRunPlugins,
        record: &crate::record::BlockRecord,
        now: Now,
        out: &mut dyn Write,
    ) -> io::Result<()> {
        let (port, mode, kind) = match &record.trigger {
            Some(t) => (t.port, t.mode, t.kind.clone()),
            None => (0, Mode::Atcp, String::new()),
        };
        let event = EventData {
            name: EventName::Block,
            target: record.target,
            members: record.members.clone(),
            port,
            proto: mode.proto(),
            mode,
            kind,
            count: 0,
            time: record.since,
            host: None,
            already_blocked: false,
            ip_options: false,
            timeout: record.until.map(|u| {
                u.duration_since(now.wall)
                    .unwrap_or_default()
                    .as_secs()
                    .max(1)
            }),
            restored: false,
            reason: None,
        };
        let header = format!(
            "{} block {}:",
            clock(record.since),
            crate::record::target_text(&record.target)
        );
        plugins.fire(&event, &header, out)
    }

    /// Time passes in the capture: the core's expiries, held-back blocks and summaries
    /// happen at the times they would have.
    fn tick_until(&mut self, now: Now, out: &mut dyn Write) -> Result<(), ReplayError> {
        while self.next_tick <= now.mono {
            let at = self.next_tick;
            let wall = now.wall - now.mono.saturating_duration_since(at);
            self.core_input(Input::Tick, Now { wall, mono: at }, out)?;
            if self.next_tick <= at {
                self.next_tick = at + Duration::from_millis(1);
            }
        }
        Ok(())
    }

    pub(super) fn finish(&mut self, out: &mut dyn Write) -> Result<(), ReplayError> {
        let now = Now {
            wall: self.clock.last_wall,
            mono: self.clock.last,
        };
        self.tick_until(now, out)
    }

    pub(super) fn summary(&mut self) -> Summary {
        let mut s = self.summary.clone();
        let sorted = self.sources.sorted();
        s.sources = sorted.len() as u64;
        s.would_block = sorted
            .iter()
            .filter(|x| x.verdict() == Verdict::WouldBlock)
            .count() as u64;
        s.held_back = sorted
            .iter()
            .filter(|x| x.verdict() == Verdict::HeldBack)
            .count() as u64;
        s.unlisted_probes = self.sources.untracked;
        s.listening_tcp = self.host.listeners.tcp.iter().copied().collect();
        s.listening_udp = self.host.listeners.udp.iter().copied().collect();
        s.capture_seconds = self
            .clock
            .last
            .saturating_duration_since(self.clock.base)
            .as_secs_f64();
        s
    }
}

/// The result of a job the replay pretends to have run: every responder "acted" (nothing
/// is applied), so that the core goes on as it would after a block in force.
fn done(work: Work) -> JobResult {
    work.succeeded(
        |_| Action {
            responder: "replay".into(),
            detail: "not applied (replay)".into(),
            undo: Undo::Impossible {
                why: "replay: nothing was applied".into(),
            },
        },
        Vec::new(),
    )
}

/// The parts of a TCP segment the replay's own bookkeeping reads.
#[derive(Debug, Clone, Copy)]
struct Segment {
    src: SocketAddr,
    dst: SocketAddr,
    flags: u8,
}

/// The transport header of an IPv4 (first fragment) or IPv6 (no extension header) packet.
fn transport(ip: &[u8]) -> Option<(IpAddr, IpAddr, u8, &[u8])> {
    let h = link::ip_header(ip)?;
    Some((h.src, h.dst, h.proto, h.l4?))
}

fn tcp_segment(ip: &[u8]) -> Option<Segment> {
    let (src, dst, proto, l4) = transport(ip)?;
    if proto != 6 || l4.len() < 14 {
        return None;
    }
    let port = |at: usize| u16::from_be_bytes([l4[at], l4[at + 1]]);
    Some(Segment {
        src: SocketAddr::new(src, port(0)),
        dst: SocketAddr::new(dst, port(2)),
        flags: l4[13],
    })
}

fn udp_datagram(ip: &[u8]) -> Option<(IpAddr, IpAddr, u16)> {
    let (src, dst, proto, l4) = transport(ip)?;
    if proto != 17 || l4.len() < 8 {
        return None;
    }
    Some((src, dst, u16::from_be_bytes([l4[2], l4[3]])))
}
