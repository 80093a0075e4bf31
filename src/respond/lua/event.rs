//! The event a handler receives: [`EventData`] as the daemon builds it, and [`LuaEvent`], the
//! same event as the plain fields of the Lua table, which crosses to the plugin's host
//! process and becomes that table there.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use mlua::{Lua, Table};
use serde::{Deserialize, Serialize};

use crate::event::{Mode, Proto};
use crate::record::{Target, target_text};
use crate::respond::ResponseContext;
use crate::respond::UnblockReason;

/// Events a plugin can register for with `portsentry.on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventName {
    /// Every alert that crossed the trigger (notification; the return value is ignored).
    Alert,
    /// A host is being blocked (the plugin acts as a responder and may veto).
    Block,
    /// A block the plugin made ends (expired or lifted by hand): undo it.
    Unblock,
}

impl EventName {
    /// Every event, in documentation order.
    pub const ALL: [EventName; 3] = [EventName::Alert, EventName::Block, EventName::Unblock];

    /// The name used in `portsentry.on(name, fn)` and in the event's `event` field.
    pub fn as_str(self) -> &'static str {
        match self {
            EventName::Alert => "alert",
            EventName::Block => "block",
            EventName::Unblock => "unblock",
        }
    }

    /// Parses the name a plugin passed to `portsentry.on`.
    pub fn from_name(name: &str) -> Option<EventName> {
        EventName::ALL.into_iter().find(|e| e.as_str() == name)
    }
}

/// One alert, as every plugin sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventData {
    /// Which event this is.
    pub name: EventName,
    /// Who is blocked: the source address (always an IP, never a name), or a network (a
    /// block made by hand, or a prefix escalated from its hosts' blocks).
    pub target: Target,
    /// The hosts an escalated prefix block took over; empty for every other block.
    pub members: Vec<IpAddr>,
    /// Destination port probed.
    pub port: u16,
    /// Protocol of the probe.
    pub proto: Proto,
    /// Sensor mode that saw it (`stcp`, …).
    pub mode: Mode,
    /// Scan description (`TCP SYN/Normal scan`, …).
    pub kind: String,
    /// Distinct probes from this source in the trigger window.
    pub count: u32,
    /// When the probe was seen.
    pub time: SystemTime,
    /// Reverse-DNS name when one was resolved.
    pub host: Option<String>,
    /// The source was already blocked.
    pub already_blocked: bool,
    /// IPv4 options were present.
    pub ip_options: bool,
    /// Whole seconds until the block ends (at least 1); `None` when permanent.
    pub timeout: Option<u64>,
    /// The block is re-applied after a restart, not new.
    pub restored: bool,
    /// Why an `unblock` event happens; `None` for the other events.
    pub reason: Option<UnblockReason>,
}

impl EventData {
    /// Builds the event for an alert being handled by the responders.
    pub fn from_context(name: EventName, ctx: &ResponseContext<'_>) -> EventData {
        let hit = &ctx.alert.hit;
        let ip_text = hit.src.to_string();
        EventData {
            name,
            target: ctx.target,
            members: ctx.members.to_vec(),
            port: hit.port,
            proto: hit.proto(),
            mode: hit.mode,
            kind: hit.kind.describe(),
            count: ctx.alert.count,
            time: hit.time,
            host: (!ctx.resolved.is_empty() && ctx.resolved != ip_text)
                .then(|| ctx.resolved.to_string()),
            already_blocked: ctx.alert.already_blocked,
            ip_options: hit.ip_options,
            timeout: ctx
                .until
                .map(|until| seconds_left(until, SystemTime::now())),
            restored: ctx.restored,
            reason: None,
        }
    }

    /// The `unblock` event of the block `ctx` describes.
    pub fn unblock(ctx: &ResponseContext<'_>, reason: UnblockReason) -> EventData {
        EventData {
            timeout: None,
            reason: Some(reason),
            ..EventData::from_context(EventName::Unblock, ctx)
        }
    }

    /// The same event under another name (the block that follows an alert).
    pub fn renamed(&self, name: EventName) -> EventData {
        EventData {
            name,
            ..self.clone()
        }
    }

    /// The event as the handlers will see it, ready to cross to the plugin's process.
    pub(crate) fn to_wire(&self) -> LuaEvent {
        let secs = self
            .time
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        LuaEvent {
            name: self.name,
            ip: target_text(&self.target),
            target: target_text(&self.target),
            prefix_len: self.target.prefix_len(),
            members: self.members.iter().map(IpAddr::to_string).collect(),
            family: if self.target.addr().is_ipv4() {
                "ipv4"
            } else {
                "ipv6"
            }
            .to_string(),
            port: self.port,
            proto: self.proto.lower().to_string(),
            mode: self.mode.as_str().to_string(),
            kind: self.kind.clone(),
            count: self.count,
            time: i64::try_from(secs).unwrap_or(i64::MAX),
            host: self.host.clone(),
            already_blocked: self.already_blocked,
            ip_options: self.ip_options,
            timeout: self.timeout.map(|s| i64::try_from(s).unwrap_or(i64::MAX)),
            restored: self.restored,
            reason: self.reason.map(|r| r.as_str().to_string()),
        }
    }
}

/// An event as the fields of the table a handler receives (plain data: it is what crosses
/// to the plugin's host process).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct LuaEvent {
    /// Which handlers run.
    pub name: EventName,
    /// `ev.ip`: address or network, as text (kept for plugins written before `target`).
    pub ip: String,
    /// `ev.target`: what `$TARGET$` says, a bare address for a host, `addr/len` for a
    /// network.
    pub target: String,
    /// `ev.prefix_len`: 32 or 128 for a host, the network's length otherwise.
    pub prefix_len: u8,
    /// `ev.members`: the hosts an escalated prefix block took over, as text; empty for
    /// every other block.
    pub members: Vec<String>,
    /// `ev.family`: `ipv4` or `ipv6`.
    pub family: String,
    /// `ev.port`.
    pub port: u16,
    /// `ev.proto`: `tcp` or `udp`.
    pub proto: String,
    /// `ev.mode`: the sensor mode.
    pub mode: String,
    /// `ev.kind`: the scan description.
    pub kind: String,
    /// `ev.count`.
    pub count: u32,
    /// `ev.time`: Unix seconds.
    pub time: i64,
    /// `ev.host`, when resolved.
    pub host: Option<String>,
    /// `ev.already_blocked`.
    pub already_blocked: bool,
    /// `ev.ip_options`.
    pub ip_options: bool,
    /// `ev.timeout`: seconds until the block ends.
    pub timeout: Option<i64>,
    /// `ev.restored`.
    pub restored: bool,
    /// `ev.reason` of an `unblock`.
    pub reason: Option<String>,
}

impl LuaEvent {
    /// The table handlers receive, with the plugin's settings as `config`.
    pub fn to_lua(&self, lua: &Lua) -> mlua::Result<Table> {
        let t = lua.create_table()?;
        t.raw_set("event", self.name.as_str())?;
        t.raw_set("ip", self.ip.as_str())?;
        t.raw_set("target", self.target.as_str())?;
        t.raw_set("prefix_len", self.prefix_len)?;
        t.raw_set(
            "members",
            lua.create_sequence_from(self.members.iter().map(String::as_str))?,
        )?;
        t.raw_set("family", self.family.as_str())?;
        t.raw_set("port", self.port)?;
        t.raw_set("proto", self.proto.as_str())?;
        t.raw_set("mode", self.mode.as_str())?;
        t.raw_set("kind", self.kind.as_str())?;
        t.raw_set("count", self.count)?;
        t.raw_set("time", self.time)?;
        if let Some(h) = &self.host {
            t.raw_set("host", h.as_str())?;
        }
        t.raw_set("already_blocked", self.already_blocked)?;
        t.raw_set("ip_options", self.ip_options)?;
        if let Some(secs) = self.timeout {
            t.raw_set("timeout", secs)?;
        }
        t.raw_set("restored", self.restored)?;
        if let Some(reason) = &self.reason {
            t.raw_set("reason", reason.as_str())?;
        }
        let config: Table = lua.named_registry_value(super::sandbox::CONFIG_KEY)?;
        t.raw_set("config", config)?;
        Ok(t)
    }
}

/// Whole seconds from `now` to `until`, rounded up and at least 1: a block about to end still
/// has a timeout, and a kernel given 0 would read it as "for ever".
fn seconds_left(until: SystemTime, now: SystemTime) -> u64 {
    let left = until.duration_since(now).unwrap_or_default();
    let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
    secs.max(1)
}

#[cfg(test)]
mod tests {
    use super::seconds_left;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn seconds_left_rounds_up_and_never_reaches_zero() {
        let now = UNIX_EPOCH + Duration::from_secs(1000);
        assert_eq!(seconds_left(now + Duration::from_secs(3600), now), 3600);
        assert_eq!(seconds_left(now + Duration::from_millis(1500), now), 2);
        assert_eq!(seconds_left(now, now), 1);
        assert_eq!(seconds_left(now - Duration::from_secs(5), now), 1);
    }
}
