//! The control socket's wire format: one JSON [`Request`] per connection on one line, one
//! JSON [`Response`] back on one line. The names (`"request": "block"`, `"response":
//! "blocked"`, field names) are a public interface scripts may speak directly: keep them
//! stable, add fields with `#[serde(default)]` rather than renaming.

use std::io;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant, SystemTime};

use crossbeam_channel::Sender;
use serde::{Deserialize, Serialize};

use crate::block::BlockRecord;

/// Largest request line the server reads; a `block --from-file` of a large list is sent in
/// several requests below it (see [`MAX_TARGETS_PER_REQUEST`]).
pub const MAX_REQUEST_BYTES: usize = 16 * 1024 * 1024;

/// Targets per `block` request, so that even the longest IPv6 networks stay far below
/// [`MAX_REQUEST_BYTES`].
pub const MAX_TARGETS_PER_REQUEST: usize = 50_000;

/// What a client asks. Tagged by `"request"` (`{"request":"unblock","target":"10.0.0.5"}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Version, modes, uptime, generation, last reload and counters.
    Status,
    /// The blocks in force; with `targets` or `origin`, only those that match (the control
    /// server filters the block manager's list).
    List {
        /// Addresses or networks: a block matches when it covers one of them or lies inside
        /// one (`10.0.0.5` finds the block of `10.0.0.0/24`). Empty: every block.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        targets: Vec<String>,
        /// Only the blocks of this origin (`scan`, `manual`, `import`, `fleet` or
        /// `fleet:SOURCE`, see [`super::select`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
    },
    /// Lift one block (address or network as `list` shows it) and undo its actions.
    Unblock {
        /// Address or CIDR network.
        target: String,
        /// An address with no block of its own: lift the network block that covers it
        /// (a prefix escalated from host blocks) instead of refusing.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        covering: bool,
    },
    /// Lift several blocks: the `targets` listed, or with `all` every block in force (of
    /// `origin` only, when given). The control server sends one [`Request::Unblock`] per
    /// target to the daemon and gathers the answers, so the block manager only ever lifts
    /// one block at a time.
    UnblockMany {
        /// Addresses or CIDR networks, as `list` shows them.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        targets: Vec<String>,
        /// Every block in force instead of `targets`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        all: bool,
        /// With `all`: only the blocks of this origin.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        origin: Option<String>,
        /// As [`Request::Unblock`]'s `covering`, for each of `targets`.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        covering: bool,
    },
    /// Block by hand: the same responders a scan block runs.
    Block {
        /// Addresses or CIDR networks.
        targets: Vec<String>,
        /// Humantime text (`1h 30m`), parsed again by the daemon; `None`: `BLOCK_TIMEOUT`.
        #[serde(default)]
        duration: Option<String>,
        /// The operator's reason, kept in the block record.
        #[serde(default)]
        reason: String,
    },
    /// The same as SIGHUP, but the caller learns whether the new config was taken.
    Reload,
}

impl Request {
    /// How long the server waits for the daemon's answer: blocking runs responders and a
    /// reload rebuilds everything (both can run external commands), the rest is a lookup.
    pub fn answer_timeout(&self) -> Duration {
        match self {
            Request::Block { .. } | Request::Reload | Request::UnblockMany { .. } => {
                Duration::from_secs(600)
            }
            _ => Duration::from_secs(30),
        }
    }

    /// Lower-case name, for messages about the exchange.
    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::List { .. } => "list",
            Request::Unblock { .. } => "unblock",
            Request::UnblockMany { .. } => "unblock_many",
            Request::Block { .. } => "block",
            Request::Reload => "reload",
        }
    }
}

/// What the daemon (or the server, for errors it catches itself) answers. Tagged by
/// `"response"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "response", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "one response per connection, serialized at once: boxing the status buys nothing"
)]
pub enum Response {
    /// Answer to [`Request::Status`].
    Status(StatusReport),
    /// Answer to [`Request::List`].
    List {
        /// Every block in force, as the block manager holds it.
        blocks: Vec<BlockRecord>,
        /// The decisions pulled from the fleet (in the kernel, not blocks of the manager):
        /// their counts per origin. `None` without a puller.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fleet: Option<crate::fleet::PullSnapshot>,
    },
    /// The block is gone.
    Unblocked {
        /// The target as the daemon names it (canonical form).
        target: String,
        /// One line per action undone (or that could not be undone, and why).
        #[serde(default)]
        detail: Vec<String>,
    },
    /// Answer to [`Request::UnblockMany`]: one result per target, in order (for `all`, in
    /// the order of the list).
    UnblockedMany {
        /// Per-target outcome.
        results: Vec<UnblockResult>,
    },
    /// Answer to [`Request::Block`]: one result per target, in request order.
    Blocked {
        /// Per-target outcome.
        results: Vec<TargetResult>,
    },
    /// The new configuration is in force.
    Reloaded {
        /// Its generation number.
        generation: u64,
    },
    /// The new configuration was refused; the old one still runs.
    ReloadRefused {
        /// The generation still in force.
        kept_generation: u64,
        /// Every problem found (`file:line: KEY: ...`).
        errors: Vec<String>,
    },
    /// The request failed as a whole (not running a responder: malformed, refused, busy,
    /// unknown target…).
    Error {
        /// One line for the operator.
        message: String,
    },
}

impl Response {
    /// An [`Response::Error`] from any text.
    pub fn error(message: impl Into<String>) -> Response {
        Response::Error {
            message: message.into(),
        }
    }

    /// Lower-case name, as tagged on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            Response::Status(_) => "status",
            Response::List { .. } => "list",
            Response::Unblocked { .. } => "unblocked",
            Response::UnblockedMany { .. } => "unblocked_many",
            Response::Blocked { .. } => "blocked",
            Response::Reloaded { .. } => "reloaded",
            Response::ReloadRefused { .. } => "reload_refused",
            Response::Error { .. } => "error",
        }
    }
}

/// The outcome of blocking one target of a [`Request::Block`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetResult {
    /// The target as the daemon names it.
    pub target: String,
    /// Whether the block is in force now.
    pub ok: bool,
    /// What was done, or why not (`already blocked`, `protected address`, responder errors).
    #[serde(default)]
    pub detail: String,
}

/// The outcome of lifting one target of a [`Request::UnblockMany`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnblockResult {
    /// The target as the daemon names it.
    pub target: String,
    /// Whether the block is gone.
    pub ok: bool,
    /// One line per action undone (or that could not be undone, and why); when not `ok`,
    /// why not (`not blocked`…).
    #[serde(default)]
    pub detail: Vec<String>,
}

/// Two outcomes of an `unblock` of several targets, one lifted and one not blocked: the
/// protocol's and the client's tests read the same answer.
#[cfg(test)]
pub(crate) fn sample_unblock_results() -> Vec<UnblockResult> {
    vec![
        UnblockResult {
            target: "10.0.0.5".into(),
            ok: true,
            detail: vec!["route: ip route del 10.0.0.5".into()],
        },
        UnblockResult {
            target: "10.0.0.6".into(),
            ok: false,
            detail: vec!["10.0.0.6 is not blocked".into()],
        },
    ]
}

/// What `portsentry status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// The daemon's version (it may differ from the client's after an upgrade).
    pub version: String,
    /// The modes running (`atcp`, `audp`…).
    pub modes: Vec<String>,
    /// When the daemon started.
    #[serde(with = "crate::block::time_text")]
    pub started: SystemTime,
    /// Seconds since then.
    pub uptime_secs: u64,
    /// Configuration generation in force (1 at start, +1 per accepted reload).
    pub generation: u64,
    /// The latest reload attempt, if any.
    #[serde(default)]
    pub last_reload: Option<ReloadInfo>,
    /// What the pipeline has done since start.
    #[serde(default)]
    pub counters: Counters,
    /// The CrowdSec fleet's directions and the state of their link to the LAPI (empty
    /// without `CROWDSEC_LAPI_URL`).
    #[serde(default)]
    pub fleet: Vec<crate::fleet::FleetLink>,
    /// Whether the block journal, the history file and the blocked file take writes, and
    /// what waits in memory for them (empty from a daemon older than this field).
    #[serde(default)]
    pub storage: Vec<crate::storage::FileHealth>,
}

/// One reload attempt, so that a refused reload stays visible after the fact.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadInfo {
    /// When it was attempted.
    #[serde(with = "crate::block::time_text")]
    pub at: SystemTime,
    /// Whether the new configuration was taken.
    pub ok: bool,
    /// Why not, when refused.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// Counts since start. Every field defaults to 0 so that a newer daemon can add counters
/// an older client simply ignores, and an older daemon's answer still reads.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counters {
    /// Probes the sensors reported.
    pub probes_seen: u64,
    /// Probes that crossed the filters.
    pub alerts: u64,
    /// Blocks applied.
    pub blocks_made: u64,
    /// Blocks every responder failed to apply.
    pub blocks_failed: u64,
    /// Blocks lifted because their time ran out.
    pub blocks_expired: u64,
    /// Blocks in force now.
    pub blocks_active: u64,
    /// Probes lost because the filter queue was full.
    pub probes_dropped: u64,
    /// Alerts lost because the responder queue was full.
    pub alerts_dropped: u64,
    /// Blocks lost because the block manager's queue was full.
    pub blocks_dropped: u64,
    /// Responder runs that failed.
    pub responder_failures: u64,
}

impl Counters {
    /// Every counter with the words `status` prints, in a stable order.
    pub fn named(&self) -> [(&'static str, u64); 10] {
        [
            ("probes seen", self.probes_seen),
            ("alerts", self.alerts),
            ("blocks made", self.blocks_made),
            ("blocks failed", self.blocks_failed),
            ("blocks expired", self.blocks_expired),
            ("blocks active", self.blocks_active),
            ("probes dropped", self.probes_dropped),
            ("alerts dropped", self.alerts_dropped),
            ("blocks dropped", self.blocks_dropped),
            ("responder failures", self.responder_failures),
        ]
    }
}

/// A request handed to the daemon's main loop, with the way back to the waiting client.
pub struct ControlCall {
    /// What the client asked.
    pub request: Request,
    /// Where the answer goes; a capacity-1 channel, so answering never blocks the daemon.
    pub reply: Sender<Response>,
}

impl ControlCall {
    /// Sends the answer; a client that gave up (timeout, disconnect) is not the daemon's
    /// problem, so a closed channel is ignored.
    pub fn answer(self, response: Response) {
        let _ = self.reply.send(response);
    }
}

/// Why [`read_line`] stopped without a line.
#[derive(Debug)]
pub(crate) enum LineError {
    /// The deadline passed first.
    TimedOut,
    /// More than the allowed bytes came without a newline.
    TooLarge,
    /// The socket failed.
    Io(io::Error),
}

/// Reads one line (without its newline, or everything up to the end of the stream; empty
/// when the peer sent nothing) before `deadline`, at most `max` bytes: both sides read this
/// way, so neither can be held or flooded by the other.
pub(crate) fn read_line(
    mut stream: &UnixStream,
    deadline: Instant,
    max: usize,
) -> Result<Vec<u8>, LineError> {
    let mut line = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LineError::TimedOut);
        }
        stream.set_read_timeout(Some(left)).map_err(LineError::Io)?;
        let n = match super::read_chunk(&mut stream, &mut chunk) {
            super::Chunk::Data(n) => n,
            super::Chunk::Interrupted => continue,
            // The timeout was the time left until the deadline.
            super::Chunk::TimedOut => return Err(LineError::TimedOut),
            super::Chunk::Failed(e) => return Err(LineError::Io(e)),
        };
        let got = &chunk[..n];
        let end = got.iter().position(|&b| b == b'\n');
        line.extend_from_slice(&got[..end.unwrap_or(n)]);
        if line.len() > max {
            return Err(LineError::TooLarge);
        }
        if n == 0 || end.is_some() {
            return Ok(line);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::block::{Origin, parse_target};

    fn round_trip_request(request: Request) -> String {
        let json = serde_json::to_string(&request).unwrap();
        assert!(!json.contains('\n'), "{json}");
        assert_eq!(serde_json::from_str::<Request>(&json).unwrap(), request);
        json
    }

    fn round_trip_response(response: Response) -> String {
        let json = serde_json::to_string(&response).unwrap();
        assert!(!json.contains('\n'), "{json}");
        assert_eq!(serde_json::from_str::<Response>(&json).unwrap(), response);
        json
    }

    #[test]
    fn every_request_round_trips_with_its_stable_name() {
        assert_eq!(
            round_trip_request(Request::Status),
            r#"{"request":"status"}"#
        );
        assert_eq!(
            round_trip_request(Request::List {
                targets: vec![],
                origin: None
            }),
            r#"{"request":"list"}"#,
            "an unfiltered list reads as before"
        );
        assert_eq!(
            round_trip_request(Request::List {
                targets: vec!["10.0.0.5".into()],
                origin: Some("fleet".into())
            }),
            r#"{"request":"list","targets":["10.0.0.5"],"origin":"fleet"}"#
        );
        assert_eq!(
            round_trip_request(Request::UnblockMany {
                targets: vec![],
                all: true,
                origin: Some("scan".into()),
                covering: false
            }),
            r#"{"request":"unblock_many","all":true,"origin":"scan"}"#
        );
        assert_eq!(
            round_trip_request(Request::UnblockMany {
                targets: vec!["10.0.0.5".into(), "fd77::/64".into()],
                all: false,
                origin: None,
                covering: true
            }),
            r#"{"request":"unblock_many","targets":["10.0.0.5","fd77::/64"],"covering":true}"#
        );
        assert_eq!(
            round_trip_request(Request::Reload),
            r#"{"request":"reload"}"#
        );
        assert_eq!(
            round_trip_request(Request::Unblock {
                target: "10.0.0.5".into(),
                covering: false,
            }),
            r#"{"request":"unblock","target":"10.0.0.5"}"#
        );
        assert_eq!(
            round_trip_request(Request::Unblock {
                target: "10.0.0.5".into(),
                covering: true,
            }),
            r#"{"request":"unblock","target":"10.0.0.5","covering":true}"#
        );
        let json = round_trip_request(Request::Block {
            targets: vec!["10.0.0.5".into(), "fd77::/64".into()],
            duration: Some("1h 30m".into()),
            reason: "test".into(),
        });
        assert!(
            json.starts_with(r#"{"request":"block","targets":"#),
            "{json}"
        );
        round_trip_request(Request::Block {
            targets: vec![],
            duration: None,
            reason: String::new(),
        });
    }

    #[test]
    fn block_request_defaults_duration_and_reason() {
        let r: Request =
            serde_json::from_str(r#"{"request":"block","targets":["10.0.0.1"]}"#).unwrap();
        assert_eq!(
            r,
            Request::Block {
                targets: vec!["10.0.0.1".into()],
                duration: None,
                reason: String::new()
            }
        );
    }

    #[test]
    fn unknown_request_fields_are_refused_rather_than_ignored() {
        // A newer client's option must not be silently dropped by an older daemon.
        let err = serde_json::from_str::<Request>(
            r#"{"request":"block","targets":["10.0.0.1"],"dry_run":true}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `dry_run`"), "{err}");
    }

    #[test]
    fn unknown_request_names_what_is_expected() {
        let err = serde_json::from_str::<Request>(r#"{"request":"explode"}"#).unwrap_err();
        assert!(err.to_string().contains("expected one of"), "{err}");
    }

    fn sample_record() -> BlockRecord {
        let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        BlockRecord {
            members: Vec::new(),
            target: parse_target("10.0.0.0/24").unwrap(),
            since,
            until: None,
            offences: 1,
            origin: Origin::Manual,
            trigger: None,
            reason: "lab".into(),
            actions: Vec::new(),
        }
    }

    #[test]
    fn every_response_round_trips_with_its_stable_name() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_250);
        let json = round_trip_response(Response::Status(StatusReport {
            version: "0.1.0".into(),
            modes: vec!["atcp".into(), "audp".into()],
            started: at,
            uptime_secs: 42,
            generation: 3,
            last_reload: Some(ReloadInfo {
                at,
                ok: false,
                errors: vec!["portsentry.conf:3: TCP_PORTS: \"x\"".into()],
            }),
            counters: Counters {
                probes_seen: 7,
                responder_failures: 1,
                ..Counters::default()
            },
            fleet: vec![crate::fleet::FleetLink {
                direction: "pull".into(),
                url: "http://127.0.0.1:8080".into(),
                state: "connected".into(),
                since: Some(at),
                decisions: None,
            }],
            storage: vec![crate::storage::FileHealth {
                file: "journal".into(),
                path: "/var/lib/portsentry/portsentry.state".into(),
                failing_since: Some(at),
                error: "No space left on device (os error 28)".into(),
                waiting: 4,
                blocks_unwritten: 2,
                dropped: 0,
            }],
        }));
        assert!(
            json.starts_with(r#"{"response":"status","version":"0.1.0""#),
            "{json}"
        );
        assert!(
            json.contains(r#""started":"2023-11-14T22:13:20.250Z""#),
            "{json}"
        );
        let json = round_trip_response(Response::List {
            blocks: vec![sample_record()],
            fleet: None,
        });
        let json_fleet = round_trip_response(Response::List {
            blocks: vec![],
            fleet: Some(crate::fleet::PullSnapshot {
                per_origin: vec![("CAPI".into(), 3)],
                held: 3,
                elements: 3,
                refused: 0,
                over_limit: 0,
                room: "nftables".into(),
            }),
        });
        assert!(
            json_fleet.contains(r#""per_origin":[["CAPI",3]]"#),
            "{json_fleet}"
        );
        assert!(json.contains(r#""target":"10.0.0.0/24""#), "{json}");
        round_trip_response(Response::List {
            blocks: vec![],
            fleet: None,
        });
        round_trip_response(Response::Unblocked {
            target: "10.0.0.5".into(),
            detail: vec!["route: ip route del 10.0.0.5".into()],
        });
        round_trip_response(Response::UnblockedMany {
            results: sample_unblock_results(),
        });
        round_trip_response(Response::Blocked {
            results: vec![
                TargetResult {
                    target: "10.0.0.5".into(),
                    ok: true,
                    detail: "route".into(),
                },
                TargetResult {
                    target: "10.0.0.6".into(),
                    ok: false,
                    detail: "protected address".into(),
                },
            ],
        });
        assert_eq!(
            round_trip_response(Response::Reloaded { generation: 4 }),
            r#"{"response":"reloaded","generation":4}"#
        );
        round_trip_response(Response::ReloadRefused {
            kept_generation: 3,
            errors: vec!["bad".into()],
        });
        assert_eq!(
            round_trip_response(Response::error("busy")),
            r#"{"response":"error","message":"busy"}"#
        );
    }

    #[test]
    fn status_from_an_older_daemon_without_counters_still_reads() {
        let json = r#"{"response":"status","version":"0.1.0","modes":[],
            "started":"2023-11-14T22:13:20Z","uptime_secs":1,"generation":1,
            "counters":{"probes_seen":5}}"#;
        let Response::Status(report) = serde_json::from_str(json).unwrap() else {
            panic!("not a status");
        };
        assert_eq!(report.counters.probes_seen, 5);
        assert_eq!(report.counters.alerts, 0);
        assert_eq!(report.last_reload, None);
    }

    #[test]
    fn block_and_reload_may_wait_longer_than_lookups() {
        assert_eq!(Request::Reload.answer_timeout(), Duration::from_secs(600));
        let list = Request::List {
            targets: vec![],
            origin: None,
        };
        assert_eq!(list.answer_timeout(), Duration::from_secs(30));
    }
}
