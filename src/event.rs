//! The data that flows through the pipeline: a probe seen by a sensor (`Hit`) and the same
//! probe as a `Candidate` while the filters judge it and after it crossed them.
//!
//! Everything here is plain data so that sensors, filters, responders, tests and benches
//! can build and inspect it without any runtime attached.

use std::fmt;
use std::net::IpAddr;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

/// Transport protocol of a probe; responders and the history line speak in these terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP segment or connection.
    Tcp,
    /// UDP datagram.
    Udp,
}

impl Proto {
    /// Upper-case name as 1.2 prints it in log and history lines (`TCP`, `UDP`).
    pub fn upper(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }

    /// Lower-case name, the value of the `$PROTO$` macro and of Lua's `proto` field.
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// Sensor mode, named as the 1.2 command-line flag. Scripts read it through `$MODE$`, so the
/// spelling is part of the compatibility contract (2.0 changed it and broke them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mode {
    /// Classic TCP: bind the trap ports and accept connections.
    Tcp,
    /// Classic UDP: bind the trap ports and read datagrams.
    Udp,
    /// Stealth TCP: raw capture on the trap ports.
    Stcp,
    /// Stealth UDP: raw capture on the trap ports.
    Sudp,
    /// Advanced TCP: raw capture on every unused port below the limit.
    Atcp,
    /// Advanced UDP: raw capture on every unused port below the limit.
    Audp,
}

impl Mode {
    /// Every mode, in the order the flags are documented.
    pub const ALL: [Mode; 6] = [
        Mode::Tcp,
        Mode::Udp,
        Mode::Stcp,
        Mode::Sudp,
        Mode::Atcp,
        Mode::Audp,
    ];

    /// Position in [`Mode::ALL`]: per-mode counters are arrays indexed by it, so counting a
    /// probe by mode costs one atomic add.
    pub fn index(self) -> usize {
        match self {
            Mode::Tcp => 0,
            Mode::Udp => 1,
            Mode::Stcp => 2,
            Mode::Sudp => 3,
            Mode::Atcp => 4,
            Mode::Audp => 5,
        }
    }

    /// The 1.2 spelling (`tcp`, `stcp`, …): the flag without its dash and the `$MODE$` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Tcp => "tcp",
            Mode::Udp => "udp",
            Mode::Stcp => "stcp",
            Mode::Sudp => "sudp",
            Mode::Atcp => "atcp",
            Mode::Audp => "audp",
        }
    }

    /// Parses the 1.2 spelling, as found in flags and in `/etc/default/portsentry`.
    pub fn from_name(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.as_str() == name)
    }

    /// The protocol this mode watches.
    pub fn proto(self) -> Proto {
        match self {
            Mode::Tcp | Mode::Stcp | Mode::Atcp => Proto::Tcp,
            Mode::Udp | Mode::Sudp | Mode::Audp => Proto::Udp,
        }
    }

    /// Raw-capture modes see unproven source addresses; classic modes saw a handshake.
    pub fn is_raw(self) -> bool {
        !matches!(self, Mode::Tcp | Mode::Udp)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// TCP flag bits as they appear in the header's flag byte, for the `Unknown Type` line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpFlags {
    /// SYN bit.
    pub syn: bool,
    /// FIN bit.
    pub fin: bool,
    /// ACK bit.
    pub ack: bool,
    /// PSH bit.
    pub psh: bool,
    /// URG bit.
    pub urg: bool,
    /// RST bit.
    pub rst: bool,
}

/// What the probe looked like; decides the wording of the detection line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ProbeKind {
    /// A completed TCP handshake on a bound trap port (classic `-tcp`).
    Connect,
    /// A UDP datagram (classic or raw).
    Udp,
    /// SYN alone.
    Syn,
    /// FIN alone.
    Fin,
    /// No flag at all.
    Null,
    /// FIN+URG+PSH.
    Xmas,
    /// ACK alone (PSH may ride along), no payload, answering no connection or flow of this
    /// host: `nmap -sA` maps firewall rules with these. Ours; 1.2 skipped every ACK.
    Ack,
    /// FIN+ACK, no payload, answering no connection or flow of this host: Uriel Maimon's
    /// scan (`nmap -sM`), which some BSD stacks answer differently on open ports. Ours.
    Maimon,
    /// Any other combination without ACK/RST; the flags are printed.
    UnknownTcp(TcpFlags),
}

impl ProbeKind {
    /// Only a completed TCP handshake proves the source address; anything seen by raw
    /// capture, and any UDP datagram, can be forged by whoever sends it.
    pub fn is_proven(&self) -> bool {
        matches!(self, ProbeKind::Connect)
    }

    /// The scan name 1.2 prints (`TCP SYN/Normal scan`, …); Lua sees it as `kind`.
    pub fn describe(&self) -> String {
        match self {
            ProbeKind::Connect => "TCP connect".to_string(),
            ProbeKind::Udp => "UDP scan".to_string(),
            ProbeKind::Syn => "TCP SYN/Normal scan".to_string(),
            ProbeKind::Fin => "TCP FIN scan".to_string(),
            ProbeKind::Null => "TCP NULL scan".to_string(),
            ProbeKind::Xmas => "TCP XMAS scan".to_string(),
            ProbeKind::Ack => "TCP ACK scan".to_string(),
            ProbeKind::Maimon => "TCP Maimon scan".to_string(),
            ProbeKind::UnknownTcp(f) => format!(
                "Unknown Type: TCP Packet Flags: SYN: {} FIN: {} ACK: {} PSH: {} URG: {} RST: {}",
                u8::from(f.syn),
                u8::from(f.fin),
                u8::from(f.ack),
                u8::from(f.psh),
                u8::from(f.urg),
                u8::from(f.rst)
            ),
        }
    }
}

/// One probe seen by a sensor. Cheap to copy: sensors emit many of these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Claimed source address (proven only for `ProbeKind::Connect`).
    pub src: IpAddr,
    /// Destination port on this host.
    pub port: u16,
    /// The sensor mode that saw it.
    pub mode: Mode,
    /// Shape of the probe.
    pub kind: ProbeKind,
    /// IPv4 options were present (1.2 reports them as detection avoidance).
    pub ip_options: bool,
    /// When the sensor saw it.
    pub time: SystemTime,
}

impl Hit {
    /// A hit stamped now; the usual constructor for sensors.
    pub fn now(src: IpAddr, port: u16, mode: Mode, kind: ProbeKind) -> Hit {
        Hit {
            src,
            port,
            mode,
            kind,
            ip_options: false,
            time: SystemTime::now(),
        }
    }

    /// Protocol of the probe, derived from the mode.
    pub fn proto(&self) -> Proto {
        self.mode.proto()
    }
}

/// A probe under judgement: the filters take it as a candidate, the trigger fills in the
/// evidence, and one that crossed them all is logged and, only when `actionable` and not
/// `already_blocked`, handed on for a block. Not named "alert": most candidates that reach the
/// log are below the forgeable trigger and nothing is done about them; responders and Lua
/// handlers still see it as "the alert" when a block does follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The probe that crossed the trigger.
    pub hit: Hit,
    /// Distinct (protocol, port) probes from this source within the trigger window.
    pub count: u32,
    /// The source was already blocked: report it, do not act again.
    pub already_blocked: bool,
    /// The evidence is enough to block: proven (a handshake) at `SCAN_TRIGGER`, forgeable
    /// (raw segments, UDP) at `FORGEABLE_SCAN_TRIGGER`. Otherwise the alert is only logged,
    /// within the log budget.
    pub actionable: bool,
}

/// Why a block ended, kept in its journal line and its `unblock` event. Here rather than in
/// the block manager, so that the event log (which the manager writes to) needs nothing of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnblockReason {
    /// Its time ran out.
    Expired,
    /// An operator unblocked it.
    Manual,
    /// The manager gave it up (e.g. re-applying it after a restart failed).
    Released,
    /// A host block taken over by the block of its prefix (`ESCALATE_AFTER_V4` / `_V6`):
    /// the prefix covers it from now on.
    Escalated,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_names_round_trip_with_the_1_2_flags() {
        for (i, m) in Mode::ALL.into_iter().enumerate() {
            assert_eq!(Mode::from_name(m.as_str()), Some(m));
            assert_eq!(m.index(), i, "index is the position in ALL");
        }
        assert_eq!(Mode::from_name("stealth"), None);
    }

    #[test]
    fn unknown_tcp_kind_prints_flags_in_1_2_order() {
        let k = ProbeKind::UnknownTcp(TcpFlags {
            syn: true,
            fin: true,
            ..TcpFlags::default()
        });
        assert_eq!(
            k.describe(),
            "Unknown Type: TCP Packet Flags: SYN: 1 FIN: 1 ACK: 0 PSH: 0 URG: 0 RST: 0"
        );
    }
}
