//! `KILL_ROUTE` without a shell: the route forms the README documents are done over
//! rtnetlink, many routes per `sendmsg`, instead of a `sh` + `ip` fork per block (2.9 to 4.4
//! ms of CPU each, 32 to 70 s to restore 20,000 blocks).
//!
//! Only commands whose kernel request is known exactly are taken over, so that the routing
//! table ends byte for byte as the command would have left it:
//!
//! - `ip [-4|-6] route add unreachable|blackhole|prohibit $TARGET$` (a host or a network,
//!   IPv4 or IPv6; `-4`/`-6` only with a target of that family), undone by the same words with
//!   `del`;
//! - `route add -host $TARGET$ reject` (net-tools; an IPv4 host), undone by `route del`.
//!
//! The program is `ip` / `route` or one of their usual paths (`/sbin`, `/usr/sbin`, `/bin`,
//! `/usr/bin`). Anything else (other options, `metric`, `table`, a script, a target the form
//! does not cover) still runs as a command. What a block records is unchanged: the command it
//! stands for as detail, the `UNKILL_ROUTE` command as undo, the 1.2 log line naming the
//! command; undoing a recorded command of a known form deletes the route over rtnetlink too,
//! whichever version recorded it.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkHeader, NetlinkMessage,
    NetlinkPayload,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::protocols::NETLINK_ROUTE;
use netlink_sys::{Socket, SocketAddr};

use super::command::expand_macros;
use super::shell::ShellResponder;
use super::{Outcome, Responder, ResponseContext};
use crate::config::Config;

/// Requests per `sendmsg`: their acks (16 bytes of payload each, the request not echoed)
/// stay far below the socket's receive buffer, so none is dropped.
const CHUNK: usize = 512;

/// Longest wait for the kernel's acks of one chunk: it answers at once, so a wait this long
/// means the socket is broken and the routes not answered for count as failed.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// The route type a form installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `unreachable`: the sender gets ICMP unreachable.
    Unreachable,
    /// `blackhole`: dropped silently.
    Blackhole,
    /// `prohibit`: ICMP administratively prohibited.
    Prohibit,
}

impl Kind {
    fn parse(word: &str) -> Option<Kind> {
        match word {
            "unreachable" => Some(Kind::Unreachable),
            "blackhole" => Some(Kind::Blackhole),
            "prohibit" => Some(Kind::Prohibit),
            _ => None,
        }
    }

    fn route_type(self) -> RouteType {
        match self {
            Kind::Unreachable => RouteType::Unreachable,
            Kind::Blackhole => RouteType::BlackHole,
            Kind::Prohibit => RouteType::Prohibit,
        }
    }
}

/// A `KILL_ROUTE` form done in-process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `ip [-4|-6] route add KIND $TARGET$`; `v6` is `Some` when a family is forced.
    Ip {
        /// The route type.
        kind: Kind,
        /// `-4` (`Some(false)`), `-6` (`Some(true)`) or neither.
        v6: Option<bool>,
    },
    /// `route add -host $TARGET$ reject`.
    NetTools,
}

/// Paths under which `ip` and `route` are the system's own tools.
const TOOL_DIRS: &[&str] = &["", "/sbin/", "/usr/sbin/", "/bin/", "/usr/bin/"];

/// Whether `word` names `tool` (bare or under one of [`TOOL_DIRS`]).
fn is_tool(word: &str, tool: &str) -> bool {
    TOOL_DIRS
        .iter()
        .any(|dir| word.strip_prefix(dir) == Some(tool))
}

/// Reads a command line as one of the forms, with `verb` (`add` or `del`) and `target` as
/// the target word; returns the form and the target word.
fn parse_words<'a>(line: &'a str, verb: &str) -> Option<(Form, &'a str)> {
    let words: Vec<&str> = line.split_whitespace().collect();
    match words.as_slice() {
        [ip, "route", v, kind, target] if is_tool(ip, "ip") && *v == verb => Some((
            Form::Ip {
                kind: Kind::parse(kind)?,
                v6: None,
            },
            target,
        )),
        [ip, family, "route", v, kind, target] if is_tool(ip, "ip") && *v == verb => {
            let v6 = match *family {
                "-4" => false,
                "-6" => true,
                _ => return None,
            };
            Some((
                Form::Ip {
                    kind: Kind::parse(kind)?,
                    v6: Some(v6),
                },
                target,
            ))
        }
        [route, v, "-host", target, "reject"] if is_tool(route, "route") && *v == verb => {
            Some((Form::NetTools, target))
        }
        _ => None,
    }
}

impl Form {
    /// The form of a `KILL_ROUTE` template, `None` when it runs as a command.
    pub fn of_template(template: &str) -> Option<Form> {
        match parse_words(template, "add")? {
            (form, "$TARGET$") => Some(form),
            _ => None,
        }
    }

    /// Whether this form does exactly what its command would for `target`: the family a
    /// `-4`/`-6` forces, net-tools' `-host` only for an IPv4 host (it refuses the rest, and
    /// the command says so).
    pub fn covers(self, target: &IpNet) -> bool {
        match self {
            Form::Ip { v6: None, .. } => true,
            Form::Ip { v6: Some(v6), .. } => v6 == target.addr().is_ipv6(),
            Form::NetTools => {
                matches!(target, IpNet::V4(n) if n.prefix_len() == 32)
            }
        }
    }

    /// The kernel request `ip route add` / `route add` sends for `target`.
    fn add(self, target: &IpNet) -> RouteMessage {
        match self {
            // iproute2: protocol boot, scope universe, table main, NLM_F_CREATE|NLM_F_EXCL.
            Form::Ip { kind, .. } => {
                message(target, RouteProtocol::Boot, RouteScope::Universe, kind)
            }
            // The kernel's rtentry conversion of SIOCADDRT with RTF_REJECT: protocol boot,
            // scope host, unreachable, table main.
            Form::NetTools => message(
                target,
                RouteProtocol::Boot,
                RouteScope::Host,
                Kind::Unreachable,
            ),
        }
    }

    /// The kernel request `ip route del` / `route del` sends for `target`.
    fn del(self, target: &IpNet) -> RouteMessage {
        match self {
            // iproute2 leaves protocol unspecified and the scope "nowhere" (any) on delete.
            Form::Ip { kind, .. } => {
                message(target, RouteProtocol::Unspec, RouteScope::NoWhere, kind)
            }
            Form::NetTools => message(
                target,
                RouteProtocol::Unspec,
                RouteScope::Host,
                Kind::Unreachable,
            ),
        }
    }

    /// NLM flags of an add: net-tools' ioctl creates without `EXCL` (an existing route of
    /// another type is kept beside), iproute2's `add` with it.
    fn add_flags(self) -> u16 {
        match self {
            Form::Ip { .. } => NLM_F_CREATE | NLM_F_EXCL,
            Form::NetTools => NLM_F_CREATE,
        }
    }

    /// What `--check-config` says about the path a `KILL_ROUTE` takes.
    pub fn describe(template: &str) -> String {
        match Form::of_template(template) {
            Some(Form::NetTools) => format!(
                "KILL_ROUTE \"{template}\" is done in-process over rtnetlink for IPv4 hosts \
                 (no command runs); other targets run it as a command"
            ),
            Some(Form::Ip { v6: Some(v6), .. }) => format!(
                "KILL_ROUTE \"{template}\" is done in-process over rtnetlink for IPv{} targets \
                 (no command runs); other targets run it as a command",
                if v6 { 6 } else { 4 }
            ),
            Some(Form::Ip { v6: None, .. }) => format!(
                "KILL_ROUTE \"{template}\" is done in-process over rtnetlink (no command runs)"
            ),
            None => format!(
                "KILL_ROUTE \"{template}\" runs as a command through /bin/sh (not a form done \
                 in-process: ip route add unreachable|blackhole|prohibit $TARGET$, route add \
                 -host $TARGET$ reject)"
            ),
        }
    }
}

/// `--check-config`: which path the configured `KILL_ROUTE` takes, `None` without one.
pub fn check_config_note(config: &Config) -> Option<String> {
    config.kill_route.as_ref().map(|t| Form::describe(&t.text))
}

/// An expanded undo command of a known form, with its target: deleted over rtnetlink.
pub fn parse_undo(command: &str) -> Option<(Form, IpNet)> {
    let (form, word) = parse_words(command, "del")?;
    let target = match word.parse::<IpAddr>() {
        Ok(ip) => IpNet::from(ip),
        // A network with host bits set is refused by the tools; let the command say so.
        Err(_) => word.parse::<IpNet>().ok().filter(|n| n.trunc() == *n)?,
    };
    form.covers(&target).then_some((form, target))
}

fn message(target: &IpNet, protocol: RouteProtocol, scope: RouteScope, kind: Kind) -> RouteMessage {
    let (family, dst) = match target {
        IpNet::V4(n) => (AddressFamily::Inet, RouteAddress::Inet(n.addr())),
        IpNet::V6(n) => (AddressFamily::Inet6, RouteAddress::Inet6(n.addr())),
    };
    let header = RouteHeader {
        address_family: family,
        destination_prefix_length: target.prefix_len(),
        table: RouteHeader::RT_TABLE_MAIN,
        protocol,
        scope,
        kind: kind.route_type(),
        ..RouteHeader::default()
    };
    let mut route = RouteMessage::default();
    route.header = header;
    route.attributes = vec![RouteAttribute::Destination(dst)];
    route
}

/// Of `targets`, those the main routing table holds a route for, exactly, that blocks
/// nothing (unicast, local, …): one dump of the table.
fn routes_that_are_not_blocks(targets: &[IpNet]) -> io::Result<Vec<IpNet>> {
    let mut found = Vec::new();
    crate::netlink::dump(
        NETLINK_ROUTE,
        RouteNetlinkMessage::GetRoute(RouteMessage::default()),
        |answer| {
            let RouteNetlinkMessage::NewRoute(route) = answer else {
                return;
            };
            if let Some(dst) = destination(&route)
                && route.header.table == RouteHeader::RT_TABLE_MAIN
                && !matches!(
                    route.header.kind,
                    RouteType::Unreachable | RouteType::BlackHole | RouteType::Prohibit
                )
                && targets.contains(&dst)
            {
                found.push(dst);
            }
        },
    )?;
    Ok(found)
}

/// A route's destination as a network (`0.0.0.0/0` for a default route).
fn destination(route: &RouteMessage) -> Option<IpNet> {
    let len = route.header.destination_prefix_length;
    let addr: IpAddr = route
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
            RouteAttribute::Destination(RouteAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
            _ => None,
        })
        .or(match route.header.address_family {
            AddressFamily::Inet => Some(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)),
            AddressFamily::Inet6 => Some(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)),
            _ => None,
        })?;
    IpNet::new(addr, len).ok().map(|n| n.trunc())
}

/// Which way a batch goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `route add`: `EEXIST` when the route is there.
    Add,
    /// `route del`: `ESRCH` when it is not.
    Del,
}

/// Sends one request per `(form, target)` over a new rtnetlink socket of the calling thread's
/// namespace, [`CHUNK`] per `sendmsg`, and returns the kernel's answer to each, in order
/// (`Err` with the kernel's errno, `EEXIST` and `ESRCH` included: the caller decides what
/// they mean). A socket that cannot be opened fails every request with that error.
pub fn batch(op: Op, routes: &[(Form, IpNet)]) -> Vec<io::Result<()>> {
    let socket = match open() {
        Ok(s) => s,
        Err(e) => {
            return routes
                .iter()
                .map(|_| Err(io::Error::new(e.kind(), format!("rtnetlink socket: {e}"))))
                .collect();
        }
    };
    let mut answers = Vec::with_capacity(routes.len());
    for chunk in routes.chunks(CHUNK) {
        answers.extend(send_chunk(&socket, op, chunk));
    }
    answers
}

fn open() -> io::Result<Socket> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    // Acks without the request echoed: a chunk's acks are 36 bytes each.
    socket.set_cap_ack(true)?;
    socket2::SockRef::from(&socket).set_read_timeout(Some(ACK_TIMEOUT))?;
    Ok(socket)
}

/// One `sendmsg` of `chunk`'s requests (sequence numbers 1..=n), then its acks.
fn send_chunk(socket: &Socket, op: Op, chunk: &[(Form, IpNet)]) -> Vec<io::Result<()>> {
    let mut out = Vec::new();
    for (seq, (form, target)) in (1u32..).zip(chunk) {
        let (payload, flags) = match op {
            Op::Add => (
                RouteNetlinkMessage::NewRoute(form.add(target)),
                form.add_flags(),
            ),
            Op::Del => (RouteNetlinkMessage::DelRoute(form.del(target)), 0),
        };
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let at = out.len();
        out.resize(at + msg.buffer_len(), 0);
        msg.serialize(&mut out[at..]);
    }
    let mut answers: Vec<Option<io::Result<()>>> = (0..chunk.len()).map(|_| None).collect();
    if let Err(e) = socket.send(&out, 0) {
        return fail_all(chunk.len(), &format!("rtnetlink send: {e}"));
    }
    let mut left = chunk.len();
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = match socket.recv(&mut &mut buf[..], 0) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                let why = format!("rtnetlink: no answer from the kernel: {e}");
                return answers
                    .into_iter()
                    .map(|a| a.unwrap_or_else(|| Err(io::Error::other(why.clone()))))
                    .collect();
            }
        };
        for (seq, answer) in acks(buf.get(..n).unwrap_or_default()) {
            let slot = (seq as usize)
                .checked_sub(1)
                .and_then(|i| answers.get_mut(i));
            if let Some(slot) = slot.filter(|s| s.is_none()) {
                *slot = Some(answer);
                left -= 1;
            }
        }
    }
    answers
        .into_iter()
        .map(|a| a.unwrap_or_else(|| Err(io::Error::other("rtnetlink: no answer"))))
        .collect()
}

fn fail_all(n: usize, why: &str) -> Vec<io::Result<()>> {
    (0..n)
        .map(|_| Err(io::Error::other(why.to_string())))
        .collect()
}

/// The acks in one datagram: (sequence number, `Ok` or the kernel's errno).
fn acks(mut datagram: &[u8]) -> Vec<(u32, io::Result<()>)> {
    let mut found = Vec::new();
    while datagram.len() >= 16 {
        let Ok(msg) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(datagram) else {
            break;
        };
        let len = msg.header.length as usize;
        if let NetlinkPayload::Error(e) = &msg.payload {
            let answer = match e.code {
                None => Ok(()),
                Some(_) => Err(e.clone().to_io()),
            };
            found.push((msg.header.sequence_number, answer));
        }
        if len == 0 {
            break;
        }
        datagram = datagram.get((len + 3) & !3..).unwrap_or_default();
    }
    found
}

/// `KILL_ROUTE` of a form done in-process; targets it does not cover go to the command.
pub struct NetlinkRoute {
    form: Form,
    template: String,
    command: ShellResponder,
}

impl NetlinkRoute {
    /// The responder for `template` when it is a form done in-process, else `None` (the
    /// caller runs it as a command).
    pub fn new(template: &str, timeout: Duration) -> Option<NetlinkRoute> {
        Some(NetlinkRoute {
            form: Form::of_template(template)?,
            template: template.to_string(),
            command: ShellResponder::route(template, timeout),
        })
    }
}

impl Responder for NetlinkRoute {
    fn name(&self) -> String {
        self.command.name()
    }

    fn respond(&mut self, ctx: &ResponseContext<'_>) -> Outcome {
        self.respond_batch(std::slice::from_ref(ctx))
            .pop()
            .unwrap_or_else(|| Outcome::Failed("rtnetlink: no outcome".into()))
    }

    fn batched(&self) -> bool {
        true
    }

    /// One rtnetlink exchange, answered by the kernel (at worst after [`ACK_TIMEOUT`]).
    fn in_process(&self, target: &IpNet) -> bool {
        self.form.covers(target)
    }

    /// The covered targets in one batch of requests; the others through the command.
    fn respond_batch(&mut self, ctxs: &[ResponseContext<'_>]) -> Vec<Outcome> {
        let covered: Vec<(Form, IpNet)> = ctxs
            .iter()
            .filter(|c| self.form.covers(&c.target))
            .map(|c| (self.form, c.target))
            .collect();
        let answers = batch(Op::Add, &covered);
        // "File exists" is success only when what exists is a block: a route of another
        // kind for exactly this prefix (a static or on-link route) would leave it reachable.
        let existing: Vec<IpNet> = covered
            .iter()
            .zip(&answers)
            .filter(|(_, a)| matches!(a, Err(e) if e.raw_os_error() == Some(libc::EEXIST)))
            .map(|((_, t), _)| *t)
            .collect();
        let not_blocks = if existing.is_empty() {
            Ok(Vec::new())
        } else {
            routes_that_are_not_blocks(&existing)
        };
        let mut answers = answers.into_iter();
        ctxs.iter()
            .map(|ctx| {
                if !self.form.covers(&ctx.target) {
                    crate::heartbeat::busy(super::step_limit(ctx.config, "route"));
                    return self.command.respond(ctx);
                }
                let command = expand_macros(&self.template, ctx);
                match answers.next() {
                    Some(Ok(())) => self.command.done(ctx, command, false),
                    Some(Err(e)) if e.raw_os_error() == Some(libc::EEXIST) => match &not_blocks {
                        Ok(others) if others.contains(&ctx.target) => Outcome::Failed(format!(
                            "command \"{command}\" (done in-process over rtnetlink): a route \
                             for {} is in the table already and is not a block; it is left \
                             as it is",
                            ctx.target_text()
                        )),
                        Ok(_) => self.command.done(ctx, command, true),
                        Err(e) => Outcome::Failed(format!(
                            "command \"{command}\" (done in-process over rtnetlink): the route \
                             exists, and what it is could not be read: {e}"
                        )),
                    },
                    Some(Err(e)) => Outcome::Failed(format!(
                        "command \"{command}\" (done in-process over rtnetlink): {e}"
                    )),
                    None => Outcome::Failed(format!(
                        "command \"{command}\" (done in-process over rtnetlink): no answer"
                    )),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        crate::record::parse_target(s).unwrap()
    }

    #[test]
    fn documented_forms_are_recognised_and_others_are_not() {
        let ip = |kind, v6| Some(Form::Ip { kind, v6 });
        for (template, form) in [
            (
                "/sbin/ip route add unreachable $TARGET$",
                ip(Kind::Unreachable, None),
            ),
            ("ip route add blackhole $TARGET$", ip(Kind::Blackhole, None)),
            (
                "/usr/sbin/ip -6 route add prohibit $TARGET$",
                ip(Kind::Prohibit, Some(true)),
            ),
            (
                "ip  -4 route  add unreachable   $TARGET$",
                ip(Kind::Unreachable, Some(false)),
            ),
            (
                "/sbin/route add -host $TARGET$ reject",
                Some(Form::NetTools),
            ),
            ("route add -host $TARGET$ reject", Some(Form::NetTools)),
            ("ip route add unreachable $TARGET$ metric 5", None),
            ("ip route add $TARGET$ via 192.0.2.1", None),
            ("ip route add throw $TARGET$", None),
            ("ip route replace unreachable $TARGET$", None),
            ("/opt/bin/ip route add unreachable $TARGET$", None),
            ("ip route add unreachable $TARGET$; logger x", None),
            ("ip route add unreachable $TARGET$/24", None),
            ("ip -6 -4 route add unreachable $TARGET$", None),
            ("route add -net $TARGET$ reject", None),
            ("/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP", None),
            ("sh -c 'ip route add unreachable $TARGET$'", None),
        ] {
            assert_eq!(Form::of_template(template), form, "{template:?}");
        }
    }

    #[test]
    fn a_form_covers_only_targets_its_command_would_take() {
        let any = Form::of_template("ip route add unreachable $TARGET$").unwrap();
        let v4 = Form::of_template("ip -4 route add unreachable $TARGET$").unwrap();
        let v6 = Form::of_template("ip -6 route add unreachable $TARGET$").unwrap();
        let tools = Form::NetTools;
        for t in ["10.77.1.2", "10.77.0.0/16", "fd77::2", "fd77:1::/64"] {
            assert!(any.covers(&net(t)), "{t}");
        }
        assert!(v4.covers(&net("10.77.0.0/16")) && !v4.covers(&net("fd77::2")));
        assert!(v6.covers(&net("fd77::2")) && !v6.covers(&net("10.77.1.2")));
        assert!(tools.covers(&net("10.77.1.2")));
        assert!(!tools.covers(&net("10.77.0.0/24")) && !tools.covers(&net("fd77::2")));
    }

    #[test]
    fn undo_commands_of_known_forms_are_read_with_their_target() {
        assert_eq!(
            parse_undo("/sbin/ip route del unreachable 10.77.1.2"),
            Some((
                Form::Ip {
                    kind: Kind::Unreachable,
                    v6: None
                },
                net("10.77.1.2")
            ))
        );
        assert_eq!(
            parse_undo("ip -6 route del blackhole fd77:1::/64"),
            Some((
                Form::Ip {
                    kind: Kind::Blackhole,
                    v6: Some(true)
                },
                net("fd77:1::/64")
            ))
        );
        assert_eq!(
            parse_undo("route del -host 10.77.1.2 reject"),
            Some((Form::NetTools, net("10.77.1.2")))
        );
        for other in [
            "ip route del unreachable 10.77.1.2/24",
            "ip -4 route del unreachable fd77::2",
            "route del -host fd77::2 reject",
            "ip route del unreachable 10.77.1.2 metric 3",
            "ip route del unreachable host.example",
            "ip route add unreachable 10.77.1.2",
            "/usr/sbin/iptables -D INPUT -s 10.77.1.2 -j DROP",
        ] {
            assert_eq!(parse_undo(other), None, "{other:?}");
        }
    }

    #[test]
    fn check_config_names_the_path_taken() {
        assert!(
            Form::describe("/sbin/ip route add unreachable $TARGET$")
                .ends_with("is done in-process over rtnetlink (no command runs)")
        );
        assert!(
            Form::describe("/usr/sbin/iptables -I INPUT -s $TARGET$ -j DROP")
                .contains("runs as a command through /bin/sh")
        );
    }

    /// `ip route show` and `ip -6 route show` of the calling thread's namespace.
    fn routes() -> String {
        let show = |args: &[&str]| {
            let out = std::process::Command::new("ip")
                .args(args)
                .output()
                .unwrap();
            assert!(out.status.success(), "ip {args:?}");
            String::from_utf8(out.stdout).unwrap()
        };
        show(&["route", "show"]) + &show(&["-6", "route", "show"])
    }

    /// Per form, the targets it covers: what the command does in one namespace and the
    /// netlink batch in another leave the same tables, added, added again, deleted and
    /// deleted again.
    #[test]
    fn netlink_batches_leave_the_tables_the_commands_leave() {
        use crate::filter::protect::test_netns::NetNs;
        use crate::respond::command::run_shell;
        let (by_command, by_netlink) = (NetNs::new("rtcmd"), NetNs::new("rtnl"));
        let targets = ["10.77.1.2", "10.77.8.0/24", "fd77::2", "fd77:9::/64"];
        let templates = [
            "/sbin/ip route add unreachable $TARGET$",
            "ip route add blackhole $TARGET$",
            "ip -6 route add prohibit $TARGET$",
            "ip -4 route add prohibit $TARGET$",
            "route add -host $TARGET$ reject",
        ];
        for template in templates {
            let form = Form::of_template(template).unwrap();
            let undo = crate::config::unkill::derive_unkill_route(template).unwrap();
            let covered: Vec<IpNet> = targets
                .iter()
                .map(|t| net(t))
                .filter(|t| form.covers(t))
                .collect();
            let commands = |template: &str| -> Vec<String> {
                covered
                    .iter()
                    .map(|t| template.replace("$TARGET$", &crate::record::target_text(t)))
                    .collect()
            };
            let (adds, dels) = (commands(template), commands(&undo));
            let tables_by_command = by_command.run(move || {
                let mut tables = Vec::new();
                for round in [&adds, &adds, &dels, &dels] {
                    for c in round {
                        let r = run_shell(c, Duration::from_secs(5));
                        let expected = r.success()
                            || r.output.contains("File exists")
                            || r.output.contains("No such process");
                        assert!(expected, "{c}: {r:?}");
                    }
                    tables.push(routes());
                }
                tables
            });
            let requests: Vec<(Form, IpNet)> = covered.iter().map(|t| (form, *t)).collect();
            let tables_by_netlink = by_netlink.run(move || {
                let mut tables = Vec::new();
                for (op, errno) in [
                    (Op::Add, None),
                    (Op::Add, Some(libc::EEXIST)),
                    (Op::Del, None),
                    (Op::Del, Some(libc::ESRCH)),
                ] {
                    for answer in batch(op, &requests) {
                        assert_eq!(answer.err().and_then(|e| e.raw_os_error()), errno);
                    }
                    tables.push(routes());
                }
                tables
            });
            assert!(
                tables_by_command[0].lines().count() >= covered.len(),
                "positive control: the routes are there: {}",
                tables_by_command[0]
            );
            assert_eq!(tables_by_netlink, tables_by_command, "{template}");
        }
    }

    /// "File exists" is a block only when the route there is one: a unicast route of the
    /// same prefix is named, a block route of ours and an absent route are not.
    #[test]
    fn an_existing_route_that_blocks_nothing_is_told_apart_from_a_block() {
        use crate::filter::protect::test_netns::NetNs;
        use crate::respond::command::run_shell;
        let ns = NetNs::new("rtexist");
        let found = ns.run(|| {
            for c in [
                "ip link set lo up",
                "ip route add 10.77.8.0/24 dev lo",
                "ip route add unreachable 10.77.9.0/24",
                "ip -6 route add fd77:8::/64 dev lo",
            ] {
                assert!(run_shell(c, Duration::from_secs(5)).success(), "{c}");
            }
            let asked = [
                net("10.77.8.0/24"),
                net("10.77.9.0/24"),
                net("10.77.10.0/24"),
                net("fd77:8::/64"),
            ];
            routes_that_are_not_blocks(&asked).unwrap()
        });
        assert_eq!(found, [net("10.77.8.0/24"), net("fd77:8::/64")]);
    }

    #[test]
    fn acks_are_read_by_sequence_number() {
        // Two NLMSG_ERROR messages with the request's header only (NETLINK_CAP_ACK): seq 1
        // acknowledged (error 0), seq 2 answered EEXIST (-17).
        let ack = |seq: u32, code: i32| {
            let mut m = Vec::new();
            m.extend_from_slice(&36u32.to_ne_bytes());
            m.extend_from_slice(&2u16.to_ne_bytes()); // NLMSG_ERROR
            m.extend_from_slice(&0x100u16.to_ne_bytes()); // NLM_F_CAPPED
            m.extend_from_slice(&seq.to_ne_bytes());
            m.extend_from_slice(&0u32.to_ne_bytes());
            m.extend_from_slice(&code.to_ne_bytes());
            m.extend_from_slice(&[0u8; 16]);
            m
        };
        let mut datagram = ack(1, 0);
        datagram.extend(ack(2, -libc::EEXIST));
        let found = acks(&datagram);
        assert_eq!(found.len(), 2);
        assert_eq!(found[0].0, 1);
        assert!(found[0].1.is_ok());
        assert_eq!(found[1].0, 2);
        assert_eq!(
            found[1].1.as_ref().unwrap_err().raw_os_error(),
            Some(libc::EEXIST)
        );
        assert!(
            acks(&datagram[..20]).is_empty(),
            "a torn message is ignored"
        );
    }
}
