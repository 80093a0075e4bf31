//! The pusher thread: blocks made here become CrowdSec alerts with one `ban` decision, and
//! blocks lifted here delete that decision, exactly: by the decision ids learnt after the
//! post (`GET /v1/alerts/:id`, kept in the outbox), so another portsentry host's decision
//! for the same address stays; only when they are unknown (that GET failed, or an outbox
//! from an older version) by scope, value and origin `portsentry`, which is logged once.
//!
//! Notes from the block manager go into the [`Outbox`] first (fsynced), then delivery is
//! tried: consecutive posts share one `POST /v1/alerts` (a burst of blocks is one request),
//! the JWT is fetched on first use and again on a 401, and a LAPI that is down or answers
//! 5xx or garbage is retried with capped exponential backoff while new notes keep being
//! written to the outbox. Nothing here ever waits on the block manager or slows it.

use std::path::PathBuf;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::{Receiver, never, select};
use serde_json::json;

use super::client::{Lapi, LapiError};
use super::outbox::{Delete, Outbox, Post, Work};
use super::{Health, LinkView, ORIGIN, Secret, duration};
use crate::block::manager::BlockNote;
use crate::block::{BlockRecord, Origin, target_text};
use crate::log_lines;

/// Alerts in one POST at most.
const BATCH: usize = 100;
/// First retry delay; it doubles with each failure up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(500);
/// Longest wait between two delivery attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Consecutive 5xx answers to the same first item after which it is posted alone (the
/// LAPI answers a malformed alert with a 500, so one bad item must not hold a batch back).
const ALONE_AFTER: u32 = 3;
/// Consecutive 5xx answers to the same single item after which it is dropped (logged), so
/// that one item the LAPI will never take cannot block the outbox for good.
const DROP_AFTER: u32 = 10;
/// Duration posted for a permanent block (Go durations end near 292 years; ten is plenty).
const PERMANENT: Duration = Duration::from_secs(10 * 365 * 86400);

/// What the pusher needs; compared at reload to decide whether to restart it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushConfig {
    /// LAPI base URL.
    pub lapi_url: String,
    /// Machine login.
    pub machine_id: String,
    /// Its password (from `CROWDSEC_PASSWORD_FILE`).
    pub password: Secret,
    /// The persistent outbox.
    pub outbox_file: PathBuf,
    /// Certificates for an `https://` LAPI.
    pub tls: super::client::Tls,
}

/// Opens the outbox and starts the thread; `Err` when the outbox cannot be opened.
pub fn spawn(
    config: PushConfig,
    notes: Receiver<BlockNote>,
    stop: Receiver<()>,
) -> Result<(JoinHandle<()>, Arc<LinkView>), String> {
    let (outbox, warnings) = Outbox::open(&config.outbox_file).map_err(|e| {
        format!(
            "cannot open the outbox {}: {e}",
            config.outbox_file.display()
        )
    })?;
    for w in warnings {
        log::warn!("{}", log_lines::warning(w));
    }
    let waiting = outbox.pending().count();
    if waiting > 0 {
        log::info!("{}", log_lines::fleet_backlog(waiting));
    }
    let mut pusher = Pusher::new(config, outbox)?;
    let view = pusher.health.view();
    std::thread::Builder::new()
        .name("fleet-push".into())
        .spawn(move || pusher.run(&notes, &stop))
        .map(|t| (t, view))
        .map_err(|e| format!("cannot start the thread: {e}"))
}

/// Why a delivery attempt failed.
enum Failure {
    /// The login itself failed: keep everything and retry later.
    Login(LapiError),
    /// The request failed.
    Request(LapiError),
}

struct Pusher {
    config: PushConfig,
    lapi: Lapi,
    health: Health,
    token: Option<String>,
    outbox: Outbox,
    failures: u32,
    /// Consecutive 5xx answers while the first pending item was in the request.
    refusals: u32,
    next_try: Instant,
    /// Whether the fallback delete (ids unknown) was logged already: said once per start.
    fallback_said: bool,
}

impl Pusher {
    /// A pusher that has not logged in or failed yet, delivering `outbox` to `config`'s LAPI.
    fn new(config: PushConfig, outbox: Outbox) -> Result<Pusher, String> {
        Ok(Pusher {
            lapi: Lapi::with_tls(&config.lapi_url, &config.tls)?,
            health: Health::new(&config.lapi_url, "push"),
            config,
            token: None,
            outbox,
            failures: 0,
            refusals: 0,
            next_try: Instant::now(),
            fallback_said: false,
        })
    }

    fn run(&mut self, notes: &Receiver<BlockNote>, stop: &Receiver<()>) {
        let mut notes_open = true;
        loop {
            let wait = if self.outbox.is_empty() {
                Duration::from_secs(3600)
            } else {
                self.next_try.saturating_duration_since(Instant::now())
            };
            let never_rx = never();
            let rx = if notes_open { notes } else { &never_rx };
            select! {
                recv(stop) -> _ => return,
                recv(rx) -> note => match note {
                    Ok(note) => {
                        let mut work = vec![work_of(&note)];
                        work.extend(rx.try_iter().map(|n| work_of(&n)));
                        self.store(work);
                    }
                    Err(_) => notes_open = false,
                },
                default(wait) => {}
            }
            if !self.outbox.is_empty() && Instant::now() >= self.next_try {
                self.deliver(stop);
            }
        }
    }

    fn store(&mut self, work: Vec<Work>) {
        if let Err(e) = self.outbox.push(work) {
            log::error!(
                "{}",
                log_lines::fleet_outbox_unwritable(
                    self.outbox.path(),
                    e,
                    "; those changes are delivered only if the daemon stays up"
                )
            );
        }
        if self.outbox.dropped > 0 {
            log::warn!("{}", log_lines::fleet_outbox_full(self.outbox.dropped));
            self.outbox.dropped = 0;
        }
    }

    /// Delivers what is pending, oldest first, until done, a failure worth retrying, or a
    /// stop (the outbox keeps the rest).
    fn deliver(&mut self, stop: &Receiver<()>) {
        loop {
            if !matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Empty)) {
                return;
            }
            let Some((_, first)) = self.outbox.pending().next() else {
                self.failures = 0;
                return;
            };
            let now = SystemTime::now();
            // What a success leaves to do: the posted values to learn the decision ids of,
            // with the alert ids the LAPI gave; or the value whose ids were deleted.
            let mut posted: Vec<String> = Vec::new();
            let mut alert_ids: Vec<String> = Vec::new();
            let mut deleted: Option<String> = None;
            let (ids, result) = match first {
                Work::Post(_) => {
                    let mut ids = Vec::new();
                    let mut alerts = Vec::new();
                    let batch = if self.refusals >= ALONE_AFTER {
                        1
                    } else {
                        BATCH
                    };
                    for (id, work) in self.outbox.pending().take(batch) {
                        let Work::Post(post) = work else { break };
                        ids.push(*id);
                        // A block that has ended since is not posted at all.
                        if let Some(alert) = alert_json(post, now) {
                            alerts.push(alert);
                            posted.push(post.value.clone());
                        }
                    }
                    let result = if alerts.is_empty() {
                        Ok(())
                    } else {
                        let alerts = serde_json::Value::Array(alerts);
                        self.with_login(|lapi, token| lapi.post_alerts(token, &alerts))
                            .map(|answer| alert_ids = answer)
                    };
                    (ids, result)
                }
                Work::Delete(d) => {
                    let (id, d) = (self.outbox.pending().next().map_or(0, |p| p.0), d.clone());
                    let result = match self.outbox.known_ids(&d.value).map(<[u64]>::to_vec) {
                        // Exactly this host's own decisions: another portsentry host's
                        // decision for the same address stays.
                        Some(known) => self.with_login(|lapi, token| {
                            known
                                .iter()
                                .try_for_each(|&n| lapi.delete_decision_by_id(token, n).map(drop))
                        }),
                        None => {
                            if !self.fallback_said {
                                self.fallback_said = true;
                                log::warn!("{}", log_lines::fleet_delete_fallback(&d.value));
                            }
                            self.with_login(|lapi, token| {
                                lapi.delete_decision(token, &d.scope, &d.value, ORIGIN)
                                    .map(drop)
                            })
                        }
                    };
                    deleted = Some(d.value);
                    (vec![id], result)
                }
            };
            let refused =
                matches!(&result, Err(Failure::Request(LapiError::Status(c, _))) if *c >= 500);
            self.refusals = if refused { self.refusals + 1 } else { 0 };
            if refused && ids.len() == 1 && self.refusals >= DROP_AFTER {
                log::error!(
                    "{}",
                    log_lines::fleet_refused(
                        self.lapi.base(),
                        format_args!("the same change {DROP_AFTER} times in a row")
                    )
                );
                self.refusals = 0;
                self.acknowledge(&ids);
                if let Some(value) = &deleted {
                    self.forget(value);
                }
                continue;
            }
            match result {
                Ok(()) => {
                    self.health.ok();
                    self.failures = 0;
                    self.acknowledge(&ids);
                    if let Some(value) = &deleted {
                        self.forget(value);
                    }
                    self.learn(&posted, &alert_ids, stop);
                }
                Err(Failure::Request(e)) if !e.retryable() => {
                    self.health.ok();
                    log::error!(
                        "{}",
                        log_lines::fleet_refused(
                            self.lapi.base(),
                            format_args!("{} change(s): {e}", ids.len())
                        )
                    );
                    self.acknowledge(&ids);
                    if let Some(value) = &deleted {
                        self.forget(value);
                    }
                }
                Err(Failure::Request(e) | Failure::Login(e)) => {
                    self.health.failed(&e);
                    self.failures = self.failures.saturating_add(1);
                    self.next_try = Instant::now() + backoff(self.failures);
                    return;
                }
            }
        }
    }

    /// Learns the decision ids of the alerts just posted (`values[i]` got `alert_ids[i]`)
    /// and remembers them in the outbox, so that lifting the block deletes exactly those.
    /// One GET per alert, each bounded by the request timeout; the first failure (or a
    /// stop) ends the learning: the values not learnt become unknown (ids remembered for
    /// them from an earlier post are forgotten too, or their delete would leave this post's
    /// decision behind), so their delete falls back to scope, value and origin. The posts
    /// themselves are already acknowledged, so nothing here can post twice.
    fn learn(&mut self, values: &[String], alert_ids: &[String], stop: &Receiver<()>) {
        // Not one id per alert: which id is whose cannot be told.
        let mut learnt = 0;
        if values.len() == alert_ids.len() {
            for (value, alert) in values.iter().zip(alert_ids) {
                if !matches!(stop.try_recv(), Err(crossbeam_channel::TryRecvError::Empty)) {
                    break;
                }
                let found = self.with_login(|lapi, token| lapi.alert_decision_ids(token, alert));
                let Ok(decisions) = found else { break };
                if decisions.is_empty() {
                    break;
                }
                if let Err(e) = self.outbox.remember(value, &decisions) {
                    log::error!(
                        "{}",
                        log_lines::fleet_outbox_unwritable(self.outbox.path(), e, "")
                    );
                    break;
                }
                learnt += 1;
            }
        }
        for value in &values[learnt..] {
            self.forget(value);
        }
    }

    /// Forgets the ids of a value whose delete is done (or given up).
    fn forget(&mut self, value: &str) {
        if let Err(e) = self.outbox.forget(value) {
            log::error!(
                "{}",
                log_lines::fleet_outbox_unwritable(self.outbox.path(), e, "")
            );
        }
    }

    fn acknowledge(&mut self, ids: &[u64]) {
        if let Err(e) = self.outbox.ack(ids) {
            log::error!(
                "{}",
                log_lines::fleet_outbox_unwritable(self.outbox.path(), e, "")
            );
        }
    }

    /// Runs a request with a JWT, logging in first when there is none and again once on a
    /// 401 (expired token, or a LAPI restarted with a new secret).
    fn with_login<T>(
        &mut self,
        mut request: impl FnMut(&Lapi, &str) -> Result<T, LapiError>,
    ) -> Result<T, Failure> {
        let token = match self.token.take() {
            Some(t) => t,
            None => self.login()?,
        };
        match request(&self.lapi, &token) {
            Err(e) if e.unauthorized() => {
                let token = self.login()?;
                let result = request(&self.lapi, &token);
                self.token = Some(token);
                result.map_err(Failure::Request)
            }
            result => {
                self.token = Some(token);
                result.map_err(Failure::Request)
            }
        }
    }

    fn login(&self) -> Result<String, Failure> {
        self.lapi
            .login(&self.config.machine_id, self.config.password.expose())
            .map_err(|e| match e {
                LapiError::Status(code, text) => {
                    LapiError::Status(code, format!("machine login refused: {text}"))
                }
                other => other,
            })
            .map_err(Failure::Login)
    }
}

/// Delay before the n-th retry in a row: 0.5 s, 1 s, 2 s, … up to [`MAX_BACKOFF`].
fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    FIRST_BACKOFF.saturating_mul(1 << shift).min(MAX_BACKOFF)
}

/// `Ip` for one address, `Range` for a network.
fn scope_of(record: &BlockRecord) -> &'static str {
    let t = &record.target;
    if t.prefix_len() == t.max_prefix_len() {
        "Ip"
    } else {
        "Range"
    }
}

/// The outbox item of a note.
fn work_of(note: &BlockNote) -> Work {
    match note {
        BlockNote::Made(record) => Work::Post(post_of(record)),
        BlockNote::Lifted(record) => Work::Delete(Delete {
            scope: scope_of(record).into(),
            value: target_text(&record.target),
        }),
    }
}

fn post_of(record: &BlockRecord) -> Post {
    let value = target_text(&record.target);
    let pair = |k: &str, v: String| (k.to_string(), v);
    let (scenario, message, meta) = match (&record.origin, &record.trigger) {
        (Origin::Scan, Some(t)) => (
            "portsentry/port-scan",
            format!(
                "portsentry: {} from {} on port {}/{} (mode {}), offence {}",
                t.kind,
                value,
                t.port,
                t.proto.lower(),
                t.mode.as_str(),
                record.offences
            ),
            vec![
                pair("log_type", "portsentry_probe".into()),
                pair("source_ip", value.clone()),
                pair("destination_port", t.port.to_string()),
                pair("protocol", t.proto.lower().to_string()),
                pair("mode", t.mode.as_str().to_string()),
                pair("probe", t.kind.clone()),
                pair("offence", record.offences.to_string()),
            ],
        ),
        _ => (
            "portsentry/manual",
            format!(
                "portsentry: {} blocked by hand{}",
                value,
                if record.reason.is_empty() {
                    String::new()
                } else {
                    format!(": {}", crate::record::excerpt(&record.reason))
                }
            ),
            vec![
                pair("log_type", "portsentry_manual".into()),
                pair("source_ip", value.clone()),
                pair("reason", crate::record::excerpt(&record.reason)),
            ],
        ),
    };
    Post {
        scope: scope_of(record).into(),
        value,
        scenario: scenario.into(),
        message,
        since: record.since,
        until: record.until,
        meta,
    }
}

/// The alert the LAPI takes for one post, with the time left at `now`; `None` once the
/// block has ended.
fn alert_json(post: &Post, now: SystemTime) -> Option<serde_json::Value> {
    let left = match post.until {
        Some(until) => until.duration_since(now).ok().filter(|d| !d.is_zero())?,
        None => PERMANENT,
    };
    let time = |t: SystemTime| humantime::format_rfc3339_millis(t).to_string();
    // The evidence, so that `cscli alerts inspect -d` shows why the host was blocked.
    let events = if post.meta.is_empty() {
        json!([])
    } else {
        let meta: Vec<serde_json::Value> = post
            .meta
            .iter()
            .map(|(k, v)| json!({"key": k, "value": v}))
            .collect();
        json!([{"timestamp": time(post.since.min(now)), "meta": meta}])
    };
    Some(json!({
        "scenario": post.scenario,
        "scenario_hash": "",
        "scenario_version": env!("CARGO_PKG_VERSION"),
        "message": post.message,
        "events_count": 1,
        "events": events,
        "start_at": time(post.since.min(now)),
        "stop_at": time(now),
        "capacity": 0,
        "leakspeed": "0",
        "simulated": false,
        "remediation": true,
        "source": {"scope": post.scope, "value": post.value},
        "decisions": [{
            "origin": ORIGIN,
            "type": "ban",
            "scope": post.scope,
            "value": post.value,
            "duration": duration::format_secs(left),
            "scenario": post.scenario,
        }],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{Trigger, parse_target};
    use crate::event::{Mode, Proto};

    fn scan_record(target: &str) -> BlockRecord {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000);
        BlockRecord {
            members: Vec::new(),
            target: parse_target(target).unwrap(),
            since,
            until: Some(since + Duration::from_secs(3600)),
            offences: 2,
            origin: Origin::Scan,
            trigger: Some(Trigger {
                port: 143,
                proto: Proto::Tcp,
                mode: Mode::Stcp,
                kind: "TCP SYN/Normal scan".into(),
            }),
            reason: String::new(),
            actions: Vec::new(),
        }
    }

    /// A scripted LAPI on loopback: every request (keep-alive connections too) is recorded
    /// as (method and path, Authorization header, body) and answered by `answer`.
    type Seen = std::sync::Arc<std::sync::Mutex<Vec<(String, String, String)>>>;

    fn scripted_lapi(answer: fn(&str, &str, &str) -> (u16, String)) -> (String, Seen) {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Default::default();
        let log = std::sync::Arc::clone(&seen);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let log = std::sync::Arc::clone(&log);
                std::thread::spawn(move || {
                    let mut reader = BufReader::new(stream.try_clone().unwrap());
                    let mut out = stream;
                    loop {
                        let mut first = String::new();
                        if reader.read_line(&mut first).unwrap_or(0) == 0 {
                            return;
                        }
                        let (mut length, mut auth) = (0usize, String::new());
                        loop {
                            let mut h = String::new();
                            reader.read_line(&mut h).unwrap();
                            let h = h.trim_end();
                            if h.is_empty() {
                                break;
                            }
                            let lower = h.to_ascii_lowercase();
                            if let Some(v) = lower.strip_prefix("content-length:") {
                                length = v.trim().parse().unwrap();
                            }
                            if lower.starts_with("authorization:") {
                                auth = h["authorization:".len()..].trim().to_string();
                            }
                        }
                        let mut body = vec![0u8; length];
                        reader.read_exact(&mut body).unwrap();
                        let body = String::from_utf8(body).unwrap();
                        let request: String = first
                            .split_whitespace()
                            .take(2)
                            .collect::<Vec<_>>()
                            .join(" ");
                        let (status, text) = answer(&request, &auth, &body);
                        log.lock().unwrap().push((request, auth, body));
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                             Content-Length: {}\r\n\r\n{text}",
                            text.len()
                        );
                        if out.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (base, seen)
    }

    fn pusher(base: &str, dir: &std::path::Path, values: &[&str]) -> Pusher {
        let (mut outbox, _) = Outbox::open(&dir.join("outbox")).unwrap();
        let now = SystemTime::now();
        let work = values
            .iter()
            .map(|v| {
                let mut r = scan_record(v);
                r.since = now;
                r.until = Some(now + Duration::from_secs(600));
                work_of(&BlockNote::Made(r))
            })
            .collect();
        outbox.push(work).unwrap();
        let config = PushConfig {
            lapi_url: base.into(),
            machine_id: "m".into(),
            password: Secret("pw".into()),
            outbox_file: dir.join("outbox"),
            tls: Default::default(),
        };
        Pusher::new(config, outbox).unwrap()
    }

    #[test]
    fn a_burst_is_one_post_and_a_401_renews_the_jwt() {
        let (base, seen) = scripted_lapi(|request, auth, _| match request {
            "POST /v1/watchers/login" => {
                static LOGINS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = LOGINS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                (200, format!("{{\"code\":200,\"token\":\"t{n}\"}}"))
            }
            "POST /v1/alerts" if auth == "Bearer t1" => (401, "{}".into()),
            "POST /v1/alerts" => (201, "[\"1\"]".into()),
            _ => (404, "{}".into()),
        });
        let dir = tempfile::tempdir().unwrap();
        let values = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "fd77::4", "10.0.0.5"];
        let mut p = pusher(&base, dir.path(), &values);
        let (_stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        p.deliver(&stop);
        assert!(p.outbox.is_empty(), "all delivered");
        let seen = seen.lock().unwrap().clone();
        let requests: Vec<(&str, &str)> = seen
            .iter()
            .map(|(r, a, _)| (r.as_str(), a.as_str()))
            .collect();
        assert_eq!(
            requests,
            [
                ("POST /v1/watchers/login", ""),
                ("POST /v1/alerts", "Bearer t1"),
                ("POST /v1/watchers/login", ""),
                ("POST /v1/alerts", "Bearer t2"),
            ]
        );
        let posted: serde_json::Value = serde_json::from_str(&seen[3].2).unwrap();
        assert_eq!(
            posted.as_array().map(Vec::len),
            Some(5),
            "one POST for the burst"
        );
        assert!(!seen[0].2.is_empty() && seen[0].2.contains("\"machine_id\":\"m\""));
        drop(p);
        let (outbox, _) = Outbox::open(&dir.path().join("outbox")).unwrap();
        assert!(outbox.is_empty(), "acknowledged on disk too");
    }

    #[test]
    fn a_5xx_keeps_everything_and_an_item_refused_for_good_is_dropped_alone() {
        let (base, seen) = scripted_lapi(|request, _, body| match request {
            "POST /v1/watchers/login" => (200, "{\"token\":\"t\"}".into()),
            "POST /v1/alerts" if body.contains("10.0.0.66") => {
                (500, "{\"message\":\"missing field\"}".into())
            }
            "POST /v1/alerts" => (201, "[\"1\"]".into()),
            _ => (404, "{}".into()),
        });
        let dir = tempfile::tempdir().unwrap();
        let mut p = pusher(&base, dir.path(), &["10.0.0.66", "10.0.0.7", "10.0.0.8"]);
        let (_stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        p.deliver(&stop);
        assert_eq!(p.outbox.pending().count(), 3, "a 500 keeps everything");
        assert!(p.next_try > Instant::now(), "and waits before the next try");
        for _ in 0..DROP_AFTER + 2 {
            p.next_try = Instant::now();
            p.deliver(&stop);
        }
        assert!(
            p.outbox.is_empty(),
            "{:?}",
            p.outbox.pending().collect::<Vec<_>>()
        );
        let seen = seen.lock().unwrap().clone();
        let delivered: Vec<&String> = seen
            .iter()
            .filter(|(r, _, b)| r == "POST /v1/alerts" && !b.contains("10.0.0.66"))
            .map(|(_, _, b)| b)
            .collect();
        assert_eq!(
            delivered.len(),
            1,
            "the other two in one POST once the bad one went"
        );
        assert!(delivered[0].contains("10.0.0.7") && delivered[0].contains("10.0.0.8"));
        let alone = seen
            .iter()
            .filter(|(r, _, b)| r == "POST /v1/alerts" && b.contains("10.0.0.66"))
            .filter(|(_, _, b)| !b.contains("10.0.0.7"))
            .count();
        assert_eq!(
            alone as u32,
            DROP_AFTER - ALONE_AFTER,
            "posted alone before the drop"
        );
    }

    #[test]
    fn a_lifted_block_deletes_its_own_decision_ids_and_an_unknown_one_falls_back() {
        let (base, seen) = scripted_lapi(|request, _, _| match request {
            "POST /v1/watchers/login" => (200, "{\"token\":\"t\"}".into()),
            "POST /v1/alerts" => (201, "[\"5\",\"6\"]".into()),
            "GET /v1/alerts/5" => (200, "{\"id\":5,\"decisions\":[{\"id\":50}]}".into()),
            "GET /v1/alerts/6" => (500, "{\"message\":\"db locked\"}".into()),
            "DELETE /v1/decisions/50" => (200, "{\"nbDeleted\":\"1\"}".into()),
            r if r.starts_with("DELETE /v1/decisions?") => (200, "{\"nbDeleted\":\"1\"}".into()),
            _ => (404, "{}".into()),
        });
        let dir = tempfile::tempdir().unwrap();
        let mut p = pusher(&base, dir.path(), &["10.0.0.1", "10.0.0.2"]);
        // An id from an earlier post of 10.0.0.2: deleting only it would leave the new one.
        p.outbox.remember("10.0.0.2", &[40]).unwrap();
        let (_stop_tx, stop) = crossbeam_channel::bounded::<()>(0);
        p.deliver(&stop);
        assert_eq!(p.outbox.known_ids("10.0.0.1"), Some(&[50][..]));
        assert_eq!(
            p.outbox.known_ids("10.0.0.2"),
            None,
            "its GET failed: unknown, earlier ids forgotten"
        );
        for v in ["10.0.0.1", "10.0.0.2"] {
            let mut r = scan_record(v);
            r.until = None;
            p.store(vec![work_of(&BlockNote::Lifted(r))]);
        }
        p.deliver(&stop);
        assert!(p.outbox.is_empty());
        assert_eq!(
            p.outbox.known_ids("10.0.0.1"),
            None,
            "forgotten once deleted"
        );
        let requests: Vec<String> = seen.lock().unwrap().iter().map(|r| r.0.clone()).collect();
        assert_eq!(
            requests,
            [
                "POST /v1/watchers/login",
                "POST /v1/alerts",
                "GET /v1/alerts/5",
                "GET /v1/alerts/6",
                "DELETE /v1/decisions/50",
                "DELETE /v1/decisions?scopes=Ip&value=10.0.0.2&origin=portsentry",
            ]
        );
        assert!(p.fallback_said);
        drop(p);
        let (outbox, _) = Outbox::open(&dir.path().join("outbox")).unwrap();
        assert_eq!(outbox.known_ids("10.0.0.1"), None, "forgotten on disk too");
    }

    #[test]
    fn backoff_doubles_from_half_a_second_and_is_capped() {
        let got: Vec<u64> = (1..=7).map(|n| backoff(n).as_millis() as u64).collect();
        assert_eq!(got, [500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn a_scan_block_is_an_ip_ban_with_the_time_left_in_go_syntax() {
        let record = scan_record("fd77:0:0::0:9");
        let Work::Post(post) = work_of(&BlockNote::Made(record.clone())) else {
            panic!("a block is a post");
        };
        assert_eq!(post.value, "fd77::9", "RFC 5952 form");
        let now = record.since + Duration::from_millis(1500);
        let alert = alert_json(&post, now).unwrap();
        let d = &alert["decisions"][0];
        assert_eq!(d["scope"], "Ip");
        assert_eq!(d["origin"], "portsentry");
        assert_eq!(d["type"], "ban");
        assert_eq!(d["duration"], "3599s");
        assert_eq!(d["scenario"], "portsentry/port-scan");
        assert_eq!(alert["source"]["value"], "fd77::9");
        let event = &alert["events"][0];
        assert_eq!(event["timestamp"], "2027-01-15T08:00:00.000Z");
        let meta: Vec<(String, String)> = event["meta"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                (
                    m["key"].as_str().unwrap().into(),
                    m["value"].as_str().unwrap().into(),
                )
            })
            .collect();
        let has = |k: &str, v: &str| meta.contains(&(k.to_string(), v.to_string()));
        assert!(has("destination_port", "143"), "{meta:?}");
        assert!(has("protocol", "tcp") && has("mode", "stcp"), "{meta:?}");
        assert!(has("probe", "TCP SYN/Normal scan"), "{meta:?}");
        assert!(has("source_ip", "fd77::9"), "{meta:?}");
        let message = alert["message"].as_str().unwrap();
        assert!(
            message.contains("TCP SYN/Normal scan")
                && message.contains("143/tcp")
                && message.contains("stcp"),
            "{message}"
        );
        assert!(alert_json(&post, record.since + Duration::from_secs(3600)).is_none());
    }

    #[test]
    fn a_post_from_an_older_outbox_has_no_events_and_still_posts() {
        let line = r#"{"scope":"Ip","value":"10.0.0.1","scenario":"portsentry/port-scan","message":"m","since":"2027-01-15T08:00:00Z","until":"2027-01-15T09:00:00Z"}"#;
        let post: Post = serde_json::from_str(line).unwrap();
        assert!(post.meta.is_empty());
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_060);
        let alert = alert_json(&post, now).unwrap();
        assert_eq!(alert["events"], json!([]));
        assert_eq!(alert["decisions"][0]["duration"], "3540s");
    }

    #[test]
    fn a_network_blocked_by_hand_is_a_range_and_its_lifting_an_exact_delete() {
        let mut record = scan_record("10.9.0.0/16");
        record.origin = Origin::Manual;
        record.trigger = None;
        record.reason = "noisy".into();
        record.until = None;
        let Work::Post(post) = work_of(&BlockNote::Made(record.clone())) else {
            panic!("a block is a post");
        };
        let alert = alert_json(&post, record.since).unwrap();
        assert_eq!(alert["decisions"][0]["scope"], "Range");
        assert_eq!(alert["decisions"][0]["value"], "10.9.0.0/16");
        assert_eq!(alert["decisions"][0]["duration"], "315360000s");
        assert_eq!(alert["scenario"], "portsentry/manual");
        assert_eq!(
            work_of(&BlockNote::Lifted(record)),
            Work::Delete(Delete {
                scope: "Range".into(),
                value: "10.9.0.0/16".into()
            })
        );
    }
}
