//! The block record and its target: plain data shared by the block manager (which owns the
//! records), the responders (which act on a target and say how to undo it), the journal and
//! the control socket. A leaf: it depends on nothing but [`crate::event`] and
//! [`crate::respond::Action`]'s plain data.
//!
//! A block is about a [`Target`]: one address (`/32`, `/128`) or, for blocks made by hand or
//! imported from a list, a network.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::event::{Mode, Proto};

/// What a responder did, kept in the block record so that expiry or `unblock` can undo it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Action {
    /// Responder name (`hosts_deny`, `route`, `run_cmd`, `lua:nftables`, …).
    pub responder: String,
    /// What was applied: the command line run, the line appended, …
    pub detail: String,
    /// How to take it back, decided when it was done (so a later config edit cannot change
    /// what an expiry removes).
    #[serde(default)]
    pub undo: Undo,
}

/// How an [`Action`] is undone; stored in the journal with the action.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Undo {
    /// It cannot be undone (no `UNKILL_RUN_CMD`, a notification…); the text says why.
    Impossible {
        /// Why, for the log line at expiry and for `--check-config`.
        why: String,
    },
    /// A shell command, run with `KILL_CMD_TIMEOUT` (`ip route del …`).
    Command {
        /// The command line, macros already substituted.
        command: String,
    },
    /// Remove exactly this line from this file (hosts.deny), other lines untouched.
    RemoveLine {
        /// The file the line was appended to.
        file: PathBuf,
        /// The line as written, without its newline.
        line: String,
    },
    /// The plugin's `unblock` handler.
    Lua {
        /// Plugin name (without `lua:`).
        plugin: String,
    },
    /// Delete the target from its set of this nftables table (`KILL_NFTABLES`); the table
    /// is recorded because a reload may since have changed `NFTABLES_TABLE`.
    Nftables {
        /// The inet table whose set holds the host.
        table: String,
    },
}

impl Default for Undo {
    /// Records written before undo existed.
    fn default() -> Self {
        Undo::Impossible {
            why: "recorded without a way to undo it".into(),
        }
    }
}

/// What a block applies to: a host (`/32`, `/128`) or a network.
pub type Target = IpNet;

/// The target of one address; IPv4-mapped IPv6 addresses become the IPv4 host they carry.
pub fn host_target(ip: IpAddr) -> Target {
    IpNet::from(ip.to_canonical())
}

/// `$TARGET$` and log text: a host as its bare address, a network as `addr/len`.
pub fn target_text(target: &Target) -> String {
    if target.prefix_len() == target.max_prefix_len() {
        target.addr().to_string()
    } else {
        target.trunc().to_string()
    }
}

/// Parses an address or a CIDR network (`10.0.0.5`, `10.0.0.0/24`, `fd77::/64`); a network
/// is truncated to its prefix (`10.0.0.5/24` is `10.0.0.0/24`).
pub fn parse_target(text: &str) -> Result<Target, String> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(host_target(ip));
    }
    match text.parse::<IpNet>() {
        Ok(net) => {
            let net = net.trunc();
            // An IPv4-mapped network is the IPv4 network it carries.
            if let IpNet::V6(v6) = net
                && let Some(v4) = v6.addr().to_ipv4_mapped()
                && v6.prefix_len() >= 96
            {
                return ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                    .map(|n| IpNet::V4(n.trunc()))
                    .map_err(|e| e.to_string());
            }
            Ok(net)
        }
        Err(_) => Err(format!(
            "\"{}\" is not an IP address or CIDR network (expected e.g. 192.0.2.7, \
             192.0.2.0/24 or 2001:db8::/64)",
            excerpt(text)
        )),
    }
}

pub use crate::config::read::excerpt;

/// Why a block exists: a scan seen here, an operator's command, an imported list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// A probe crossed the trigger.
    Scan,
    /// `portsentry block` (or `block --from-file`).
    Manual,
    /// Read from a 1.2 / earlier `BLOCKED_FILE` when the journal was first created.
    Import,
    /// A CrowdSec decision pulled from the fleet's Local API; the record's `reason` holds
    /// the decision's origin and scenario (`cscli manual 'ban' from 'host'`).
    Fleet,
}

impl Origin {
    /// Lower-case name, as `list` shows it.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Scan => "scan",
            Origin::Manual => "manual",
            Origin::Import => "import",
            Origin::Fleet => "fleet",
        }
    }
}

/// The probe that caused a block made from a scan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trigger {
    /// Destination port probed.
    pub port: u16,
    /// Its protocol.
    #[serde(with = "proto_name")]
    pub proto: Proto,
    /// The sensor mode that saw it.
    #[serde(with = "mode_name")]
    pub mode: Mode,
    /// Scan description (`TCP SYN/Normal scan`).
    pub kind: String,
}

/// One block in force (or, in the journal, once in force): enough to list it, expire it,
/// undo every action it took, and re-apply it after a reboot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockRecord {
    /// Who is blocked.
    pub target: Target,
    /// When the block was applied.
    #[serde(with = "time_text")]
    pub since: SystemTime,
    /// When it ends; `None`: permanent (1.2's only kind).
    #[serde(with = "opt_time_text", default)]
    pub until: Option<SystemTime>,
    /// 1 for a first block, n for the n-th block of a repeat offender.
    pub offences: u32,
    /// Scan, manual or import.
    pub origin: Origin,
    /// The probe behind a scan block; `None` for manual and imported blocks.
    #[serde(default)]
    pub trigger: Option<Trigger>,
    /// The operator's reason for a manual block, empty otherwise.
    #[serde(default)]
    pub reason: String,
    /// What each responder did, in order; undone in reverse.
    #[serde(default)]
    pub actions: Vec<Action>,
    /// For a prefix block escalated from host blocks (`ESCALATE_AFTER_V4` / `_V6`): the
    /// hosts whose blocks it took over, so `list`, the Lua events and the fleet can say why
    /// a whole network is blocked. Empty for every other block.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<IpAddr>,
}

impl BlockRecord {
    /// How long the block lasts in total; `None` when permanent.
    pub fn duration(&self) -> Option<Duration> {
        self.until
            .map(|u| u.duration_since(self.since).unwrap_or_default())
    }

    /// Time left at `now`; `None` when permanent, zero once expired.
    pub fn remaining(&self, now: SystemTime) -> Option<Duration> {
        self.until
            .map(|u| u.duration_since(now).unwrap_or_default())
    }

    /// Whether the block has run out at `now`.
    pub fn expired(&self, now: SystemTime) -> bool {
        self.until.is_some_and(|u| u <= now)
    }

    /// The origin as `list` shows it: `scan`, `manual`, `import`, or for a block pulled
    /// from the fleet `fleet:` and the decision's origin (`fleet:cscli`).
    pub fn origin_text(&self) -> String {
        match self.origin {
            Origin::Fleet => {
                let source = self.reason.split_whitespace().next().unwrap_or("unknown");
                format!("fleet:{source}")
            }
            other => other.as_str().to_string(),
        }
    }

    /// Port and protocol for the 1.2 line of `BLOCKED_FILE` (manual and imported blocks
    /// have no probe: port 0, TCP).
    pub fn port_proto(&self) -> (u16, Proto) {
        self.trigger
            .as_ref()
            .map_or((0, Proto::Tcp), |t| (t.port, t.proto))
    }
}

/// Serializes a protocol as `tcp` / `udp`, the names Lua and `$PROTO$` use.
pub(crate) mod proto_name {
    use crate::event::Proto;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(p: &Proto, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.lower())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Proto, D::Error> {
        let name = String::deserialize(d)?;
        match name.as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(D::Error::custom(format!(
                "unknown protocol \"{name}\", expected tcp or udp"
            ))),
        }
    }
}

/// Serializes a mode with its 1.2 name (`stcp`, …), the `$MODE$` spelling.
pub(crate) mod mode_name {
    use crate::event::Mode;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(m: &Mode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(m.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Mode, D::Error> {
        let name = String::deserialize(d)?;
        Mode::from_name(&name).ok_or_else(|| {
            D::Error::custom(format!(
                "unknown mode \"{name}\", expected tcp, udp, stcp, sudp, atcp or audp"
            ))
        })
    }
}

/// Times as RFC 3339 UTC text with milliseconds (`2026-11-28T14:24:12.345Z`): readable in
/// the journal and in `list --json`, exact enough for second-long test timeouts.
pub(crate) mod time_text {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use std::time::SystemTime;

    /// Latest time written: 9999-12-31T23:59:59Z (humantime cannot format later ones).
    const LATEST: u64 = 253_402_300_799;

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        // A clock before 1970 or a time past year 9999 (a huge `--for`) is clamped rather
        // than allowed to fail the whole answer or journal line.
        let latest = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(LATEST);
        let t = (*t).clamp(SystemTime::UNIX_EPOCH, latest);
        s.serialize_str(&humantime::format_rfc3339_millis(t).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_rfc3339_weak(&text)
            .map_err(|e| D::Error::custom(format!("bad time \"{text}\": {e}")))
    }
}

/// [`time_text`] for an optional time (`null`: none).
pub(crate) mod opt_time_text {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::SystemTime;

    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => super::time_text::serialize(t, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        #[derive(Deserialize)]
        struct Wrap(#[serde(with = "super::time_text")] SystemTime);
        Ok(Option::<Wrap>::deserialize(d)?.map(|w| w.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_parse_hosts_and_networks_canonically() {
        assert_eq!(target_text(&parse_target("10.0.0.5").unwrap()), "10.0.0.5");
        assert_eq!(
            target_text(&parse_target("::ffff:10.0.0.5").unwrap()),
            "10.0.0.5"
        );
        assert_eq!(
            target_text(&parse_target("10.0.0.5/24").unwrap()),
            "10.0.0.0/24"
        );
        assert_eq!(
            target_text(&parse_target("::ffff:10.0.0.0/120").unwrap()),
            "10.0.0.0/24"
        );
        assert_eq!(
            target_text(&parse_target("fd77::9/128").unwrap()),
            "fd77::9"
        );
        let err = parse_target("10.0.0.x").unwrap_err();
        assert!(err.contains("not an IP address or CIDR"), "{err}");
    }

    #[test]
    fn times_out_of_humantime_range_are_clamped_not_a_panic() {
        #[derive(Serialize)]
        struct T(#[serde(with = "time_text")] SystemTime);
        let far = SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        let json = serde_json::to_string(&T(far)).unwrap();
        assert_eq!(json, "\"9999-12-31T23:59:59.000Z\"");
        let before = SystemTime::UNIX_EPOCH - Duration::from_secs(10);
        assert_eq!(
            serde_json::to_string(&T(before)).unwrap(),
            "\"1970-01-01T00:00:00.000Z\""
        );
    }

    #[test]
    fn record_round_trips_through_json_with_readable_times() {
        let since = SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let rec = BlockRecord {
            members: Vec::new(),
            target: parse_target("fd77::5").unwrap(),
            since,
            until: Some(since + Duration::from_secs(3600)),
            offences: 2,
            origin: Origin::Scan,
            trigger: Some(Trigger {
                port: 22,
                proto: Proto::Tcp,
                mode: Mode::Stcp,
                kind: "TCP SYN/Normal scan".into(),
            }),
            reason: String::new(),
            actions: Vec::new(),
        };
        let json = serde_json::to_string(&rec).unwrap();
        assert!(
            json.contains("\"since\":\"2023-11-14T22:13:20.123Z\""),
            "{json}"
        );
        assert!(json.contains("\"mode\":\"stcp\""), "{json}");
        let back: BlockRecord = serde_json::from_str(&json).unwrap();
        assert_eq!(back, rec);
        assert_eq!(back.duration(), Some(Duration::from_secs(3600)));
        let permanent = BlockRecord { until: None, ..rec };
        let json = serde_json::to_string(&permanent).unwrap();
        assert!(json.contains("\"until\":null"), "{json}");
        assert_eq!(
            serde_json::from_str::<BlockRecord>(&json).unwrap(),
            permanent
        );
    }
}
