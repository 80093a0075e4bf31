//! Command line: 1.2's single-dash mode flags (`-atcp`), several per process, plus our
//! options. Without a mode flag, the modes come from `/etc/default/portsentry` as Debian's
//! init script read them.
//!
//! The subcommands (`status`, `list`, `block`, `unblock`, `reload`) do not run a daemon: they
//! are clients of the running one's control socket ([`crate::control::commands`]).

use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::modes::modes_from_file;
use crate::config::{self, DEFAULT_CONFIG_PATH};
use crate::control::commands::{self, block_duration, canonical_target};
use crate::control::protocol::Request;
use crate::control::select::origin_filter;
use crate::daemon::{self, RunOptions};
use crate::event::Mode;
use crate::logging::{self, DEFAULT_SYSLOG_SOCKET, LogSettings};
use crate::respond::lua;

/// Debian's file naming the modes its init script starts.
pub const DEFAULT_MODES_FILE: &str = "/etc/default/portsentry";

/// Exit code for a bad config or a failed start.
pub const EXIT_FAILURE: i32 = 1;
/// Exit code for a bad command line.
pub const EXIT_USAGE: i32 = 2;

/// Detects port scans and blocks the scanner.
#[derive(Debug, Parser)]
#[command(
    name = "portsentry",
    version,
    args_conflicts_with_subcommands = true,
    about = "Detects port scans and blocks the scanner (a drop-in for PortSentry 1.2).",
    after_help = "Modes (several may be combined, e.g. -atcp -audp):\n  \
        -tcp, -udp     bind the trap ports (TCP_PORTS / UDP_PORTS)\n  \
        -stcp, -sudp   raw capture on the trap ports\n  \
        -atcp, -audp   raw capture on every unused port below ADVANCED_PORTS_*\n\
        Without a mode, TCP_MODE / UDP_MODE are read from /etc/default/portsentry."
)]
struct Args {
    /// A client command for the running daemon; without one, this process is the daemon.
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    modes: ModeFlags,
    /// Configuration file.
    #[arg(short = 'c', long = "config", value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Validate the configuration and ignore files, print every problem, and exit (-t as
    /// in fail2ban, nginx and the CrowdSec bouncers).
    #[arg(short = 't', long)]
    check_config: bool,
    /// File with TCP_MODE / UDP_MODE, read when no mode flag is given.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MODES_FILE)]
    modes_file: PathBuf,
    /// Syslog socket.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_SYSLOG_SOCKET)]
    syslog_socket: PathBuf,
    /// Do not log to syslog (stderr only).
    #[arg(long)]
    no_syslog: bool,
    /// Do not copy log lines to stderr.
    #[arg(long)]
    quiet: bool,
    /// Log filter decisions and other debug details.
    #[arg(long)]
    debug: bool,
    /// Load a Lua plugin as the daemon would, fire a synthetic alert and block, report.
    #[arg(long, value_name = "PLUGIN.lua")]
    test_plugin: Option<PathBuf>,
    /// Attacker address for --test-plugin.
    #[arg(long, value_name = "IP", requires = "test_plugin")]
    target: Option<IpAddr>,
    /// Destination port for --test-plugin.
    #[arg(long, requires = "test_plugin", default_value_t = 31337)]
    port: u16,
    /// Protocol for --test-plugin (tcp or udp).
    #[arg(long, requires = "test_plugin", default_value = "tcp", value_parser = ["tcp", "udp"])]
    proto: String,
    /// With --test-plugin: show every command the plugin runs (arguments shell-quoted) and
    /// every line it appends to a file, without doing it; the plugin sees them succeed.
    #[arg(long, requires = "test_plugin")]
    dry_run: bool,
    /// With --test-plugin: a plugin setting on top of the -c config, by its full name
    /// (MAIL_TO=root) or the plugin's name for it (to=root). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "test_plugin")]
    set: Vec<String>,
}

/// The 1.2 mode flags (`-tcp` … `-audp`), for the daemon and for `replay`.
#[derive(Debug, clap::Args)]
struct ModeFlags {
    /// Classic TCP: listen on TCP_PORTS.
    #[arg(long)]
    tcp: bool,
    /// Classic UDP: listen on UDP_PORTS.
    #[arg(long)]
    udp: bool,
    /// Stealth TCP: raw capture on TCP_PORTS.
    #[arg(long)]
    stcp: bool,
    /// Stealth UDP: raw capture on UDP_PORTS.
    #[arg(long)]
    sudp: bool,
    /// Advanced TCP: raw capture on every unused port below ADVANCED_PORTS_TCP.
    #[arg(long)]
    atcp: bool,
    /// Advanced UDP: raw capture on every unused port below ADVANCED_PORTS_UDP.
    #[arg(long)]
    audp: bool,
}

impl ModeFlags {
    /// The modes flagged, in the order above.
    fn modes(&self) -> Vec<Mode> {
        [
            (self.tcp, Mode::Tcp),
            (self.udp, Mode::Udp),
            (self.stcp, Mode::Stcp),
            (self.sudp, Mode::Sudp),
            (self.atcp, Mode::Atcp),
            (self.audp, Mode::Audp),
        ]
        .into_iter()
        .filter_map(|(on, m)| on.then_some(m))
        .collect()
    }
}

/// The command line as clap knows it: what `--help` prints, and the source of the man pages
/// and shell completions ([`crate::docs`]).
pub fn command() -> clap::Command {
    Args::command()
}

/// Client commands: each asks the running daemon over its control socket.
#[derive(Debug, Subcommand)]
enum Command {
    /// Show the running daemon's version, modes, uptime, configuration generation, last
    /// reload and counters.
    Status {
        /// Print the report as JSON, for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the blocks in force: address, since, until, offences, mode, port, origin and
    /// the responders that acted.
    #[command(after_help = "Examples:\n  \
        portsentry list 192.0.2.7          the blocks covering this address\n  \
        portsentry list 192.0.2.0/24       the blocks inside (or covering) this network\n  \
        portsentry list --origin fleet --json")]
    List {
        /// Only the blocks that cover these addresses, or lie inside (or cover) these
        /// networks.
        #[arg(value_name = "ADDR|NET", value_parser = canonical_target)]
        targets: Vec<String>,
        /// Only the blocks of this origin: scan, manual, import, fleet (every CrowdSec
        /// source) or fleet:SOURCE.
        #[arg(long, value_name = "ORIGIN", value_parser = origin_filter)]
        origin: Option<String>,
        /// Print the blocks as JSON (every field of the block records), for scripts.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Lift blocks and undo what their responders did (route, hosts.deny line, plugins).
    #[command(after_help = "Examples:\n  \
        portsentry unblock 192.0.2.7 2001:db8::/64\n  \
        portsentry unblock --all --origin scan")]
    Unblock {
        /// The blocked addresses or networks, as `list` shows them.
        #[arg(
            value_name = "ADDR",
            value_parser = canonical_target,
            required_unless_present = "all",
            conflicts_with_all = ["all", "origin"]
        )]
        targets: Vec<String>,
        /// Lift every block in force (of one origin with --origin).
        #[arg(long)]
        all: bool,
        /// With --all: only the blocks of this origin (scan, manual, import, fleet or
        /// fleet:SOURCE).
        #[arg(long, value_name = "ORIGIN", value_parser = origin_filter)]
        origin: Option<String>,
        /// An ADDR with no block of its own but inside a blocked prefix: lift that prefix's
        /// block (without this, unblock names the prefix and lifts nothing).
        #[arg(long, conflicts_with = "all")]
        covering: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Block addresses or networks by hand; the same responders run as for a scan.
    #[command(after_help = "Examples:\n  \
        portsentry block 192.0.2.7 --for 1h --reason \"brute force\"\n  \
        portsentry block --from-file bad-hosts.txt --for 7d\n\
        A --from-file list has one address or CIDR network a line; # comments and blank \
        lines are allowed. If any line is bad, every bad line is reported and nothing is \
        sent.")]
    Block(BlockArgs),
    /// Re-read every configuration file (as SIGHUP does) and report whether the new
    /// configuration was taken or refused.
    Reload(ClientArgs),
    /// Replay capture files (pcap, pcapng) through this configuration: which sources it
    /// would have blocked, for how long, and why (not). Touches nothing of the system.
    #[command(after_help = "Examples:\n  \
        portsentry replay scan.pcap\n  \
        portsentry replay -c /tmp/try.conf -atcp -audp --json day1.pcapng day2.pcapng\n  \
        portsentry replay --plugins --gateway 192.0.2.1 capture.pcap\n\
        Modes (-tcp -udp -stcp -sudp -atcp -audp) as for the daemon; without one, the modes \
        file's, else -atcp -audp. Exit 0 when it ran, 1 on a bad configuration, 2 on a bad \
        file (named with the packet number).")]
    Replay(ReplayArgs),
}

/// Where the running daemon is.
#[derive(Debug, clap::Args)]
struct ClientArgs {
    /// Control socket [default: CONTROL_SOCKET from the configuration, else
    /// /run/portsentry/portsentry.sock].
    #[arg(long, value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Configuration file to read CONTROL_SOCKET from [default:
    /// /etc/portsentry/portsentry.conf].
    #[arg(short = 'c', long = "config", value_name = "PATH")]
    config: Option<PathBuf>,
}

/// `replay`: capture files and what to assume of the host that took them.
#[derive(Debug, clap::Args)]
struct ReplayArgs {
    /// Capture files (tcpdump -w, Wireshark; pcap or pcapng), merged in time order.
    #[arg(value_name = "FILE", required = true)]
    files: Vec<PathBuf>,
    /// Configuration file to try.
    #[arg(short = 'c', long = "config", value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// File with TCP_MODE / UDP_MODE, read when no mode flag is given.
    #[arg(long, value_name = "PATH", default_value = DEFAULT_MODES_FILE)]
    modes_file: PathBuf,
    #[command(flatten)]
    modes: ModeFlags,
    /// One JSON object per source, then a summary object (JSON lines).
    #[arg(long)]
    json: bool,
    /// List every source in the table (by default, sources below the trigger are cut
    /// after 20).
    #[arg(long)]
    all: bool,
    /// Fire the configured Lua responders' alert and block events in dry run: the commands
    /// and file writes they would have made are shown, not done.
    #[arg(long)]
    plugins: bool,
    /// Ports that had a listener, e.g. tcp/22,tcp/80,udp/53 (a bare number is TCP) [default:
    /// learned from the capture: a SYN-ACK or UDP sent from the port].
    #[arg(long, value_name = "PORTS")]
    listening: Option<String>,
    /// The capturing host's addresses (repeatable, or comma-separated) [default: learned
    /// from the capture].
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    local: Vec<IpAddr>,
    /// A gateway to protect (PROTECT_GATEWAYS), as the route table would have named it.
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    gateway: Vec<IpAddr>,
    /// A nameserver to protect (PROTECT_RESOLVERS), as RESOLV_CONF would have named it.
    #[arg(long, value_name = "IP", value_delimiter = ',')]
    resolver: Vec<IpAddr>,
    /// Verify TCP/UDP checksums (a capture off the wire with forged bad sums); by default
    /// they are trusted, as the kernel trusts packets the host built or its NIC checked.
    #[arg(long)]
    verify_checksums: bool,
}

/// `block`: targets from the command line or from a file.
#[derive(Debug, clap::Args)]
struct BlockArgs {
    /// Addresses or CIDR networks (192.0.2.7, 192.0.2.0/24, 2001:db8::/64).
    #[arg(
        value_name = "ADDR",
        value_parser = canonical_target,
        required_unless_present = "from_file",
        conflicts_with = "from_file"
    )]
    targets: Vec<String>,
    /// Read the targets from FILE (a regular file of at most 64 MiB).
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
    /// How long the block lasts (30s, 10m, "1h 30m", 7d) [default: BLOCK_TIMEOUT].
    #[arg(long = "for", value_name = "DURATION", value_parser = block_duration)]
    duration: Option<String>,
    /// Why, kept in the block record and shown by `list --json`.
    #[arg(
        long,
        value_name = "TEXT",
        default_value = "",
        hide_default_value = true,
        allow_hyphen_values = true
    )]
    reason: String,
    #[command(flatten)]
    client: ClientArgs,
}

/// Subcommand names: legacy flag rewriting stops at the first of them, so that a value
/// such as `--reason -tcp` reaches the subcommand as written.
const SUBCOMMANDS: [&str; 5] = ["status", "list", "unblock", "block", "reload"];

/// 1.2 spells its flags with one dash (`-atcp`); clap wants two for long names.
fn rewrite_legacy_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut in_subcommand = false;
    args.into_iter()
        .enumerate()
        .map(|(i, a)| {
            if i > 0 && SUBCOMMANDS.contains(&a.as_str()) {
                in_subcommand = true;
            }
            match a.strip_prefix('-') {
                Some(name)
                    if !in_subcommand
                        && !name.starts_with('-')
                        && Mode::from_name(name).is_some() =>
                {
                    format!("--{name}")
                }
                _ => a,
            }
        })
        .collect()
}

/// The request a client command sends, with where to send it and whether `list` prints
/// JSON. `Err`: every problem found in a `--from-file` list (nothing is sent then).
fn client_request(command: Command) -> Result<(ClientArgs, Request, bool), Vec<String>> {
    Ok(match command {
        Command::Status { json, client } => (client, Request::Status, json),
        Command::List {
            targets,
            origin,
            json,
            client,
        } => (client, Request::List { targets, origin }, json),
        // One target goes as the plain request an older daemon also answers.
        Command::Unblock {
            mut targets,
            all: false,
            covering,
            client,
            ..
        } if targets.len() == 1 => {
            let target = targets.remove(0);
            (client, Request::Unblock { target, covering }, false)
        }
        Command::Unblock {
            targets,
            all,
            origin,
            covering,
            client,
        } => (
            client,
            Request::UnblockMany {
                targets,
                all,
                origin,
                covering,
            },
            false,
        ),
        Command::Reload(client) => (client, Request::Reload, false),
        // Run in this process by `replay_command`, never sent.
        Command::Replay(_) => return Err(vec!["replay is not a client command".into()]),
        Command::Block(args) => {
            let targets = match &args.from_file {
                None => args.targets,
                Some(file) => commands::read_targets_file(file)?,
            };
            let request = Request::Block {
                targets,
                duration: args.duration,
                reason: args.reason,
            };
            (args.client, request, false)
        }
    })
}

/// `portsentry replay`: loads the configuration, replays the files, prints the report.
fn replay_command(args: ReplayArgs) -> i32 {
    let flagged = args.modes.modes();
    let modes = if !flagged.is_empty() {
        flagged
    } else if args.modes_file.exists() {
        match modes_from_file(&args.modes_file) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("portsentry: {e}");
                return EXIT_USAGE;
            }
        }
    } else {
        vec![Mode::Atcp, Mode::Audp]
    };
    let listening = match args
        .listening
        .as_deref()
        .map(crate::replay::parse_listening)
    {
        None => None,
        Some(Ok(l)) => Some(l),
        Some(Err(e)) => {
            eprintln!("portsentry: {e}");
            return EXIT_USAGE;
        }
    };
    let generation = match crate::generation::Generation::load(1, &args.config) {
        Ok((g, _warnings)) => g,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {}", crate::logging::escape_controls(&e.to_string()));
            }
            eprintln!("{}: configuration refused", args.config.display());
            return EXIT_FAILURE;
        }
    };
    let options = crate::replay::Options {
        files: args.files,
        modes,
        local: (!args.local.is_empty()).then_some(args.local),
        listening,
        gateways: args.gateway,
        resolvers: args.resolver,
        verify_checksums: args.verify_checksums,
        plugins: args.plugins,
        json: args.json,
        all: args.all,
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let result = crate::replay::run(&options, generation, &mut out);
    let _ = out.flush();
    match result {
        Ok(_) => 0,
        Err(crate::replay::ReplayError::File(e)) => {
            eprintln!("portsentry: replay: {e}");
            EXIT_USAGE
        }
        Err(e) => {
            eprintln!("portsentry: replay: {e}");
            EXIT_FAILURE
        }
    }
}

/// Runs a client command: the request goes to the daemon; its answer is printed and
/// decides the exit code.
fn client_command(command: Command) -> i32 {
    let (client, request, json) = match client_request(command) {
        Ok(r) => r,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!("portsentry: nothing sent");
            return EXIT_FAILURE;
        }
    };
    let socket = match commands::socket_path(client.socket.as_deref(), client.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            return EXIT_FAILURE;
        }
    };
    let printed = commands::run(&socket, request, json);
    // A closed stdout (`list | head`) is not an error worth a panic.
    let _ = std::io::stdout().lock().write_all(printed.out.as_bytes());
    let _ = std::io::stderr().lock().write_all(printed.err.as_bytes());
    printed.code
}

impl Args {
    fn flagged_modes(&self) -> Vec<Mode> {
        self.modes.modes()
    }
}

/// `--check-config`: every error and warning of every file in one run, exit 0 only when the
/// files are valid. It also runs the start-up checks that need the modes (from the flags, or
/// the modes file, as the start takes them), so that what it passes starts.
fn check_config(args: &Args) -> i32 {
    let path = &args.config;
    lua::load_warnings_to_stderr();
    // Every plugin is loaded (each in its own process), as a reload would.
    let checked = crate::generation::Generation::check(path, |g| {
        crate::respond::lua::LuaPlugins::for_generation(g)
    });
    let mut errors: Vec<String> = checked.errors.iter().map(ToString::to_string).collect();
    let mut warnings: Vec<String> = checked.warnings.iter().map(ToString::to_string).collect();
    let flagged = args.flagged_modes();
    let modes = if !flagged.is_empty() {
        Some(flagged)
    } else {
        match modes_from_file(&args.modes_file) {
            Ok(m) => Some(m),
            Err(_) if !args.modes_file.exists() => {
                eprintln!(
                    "note: no mode flag and no {}: the checks that depend on the modes are skipped",
                    args.modes_file.display()
                );
                None
            }
            Err(e) => {
                errors.push(e);
                None
            }
        }
    };
    if let Some(generation) = &checked.generation {
        let config = &generation.config;
        let mut more = config::build::command_warnings(config);
        if let Some(lua) = &checked.built {
            more.extend(lua.undo_warnings(config));
        }
        more.extend(crate::respond::nftables::config_warnings(config));
        if let Some(path) = crate::respond::route::check_config_note(config) {
            eprintln!("note: {}", crate::logging::escape_controls(&path));
        }
        warnings.extend(more.iter().map(ToString::to_string));
        // A full or read-only disk under the state and log files: the start goes on.
        warnings.extend(config::preflight::storage_warnings(config));
        // A secret the start cannot use turns that fleet direction off: an error here.
        errors.extend(crate::fleet::check_secrets(config));
        // Without modes, the checks that do not depend on them (output files) still run.
        errors.extend(
            config::preflight::preflight(config, modes.as_deref().unwrap_or_default())
                .iter()
                .map(ToString::to_string),
        );
    }
    for w in &warnings {
        eprintln!("warning: {}", crate::logging::escape_controls(w));
    }
    for e in &errors {
        eprintln!("error: {}", crate::logging::escape_controls(e));
    }
    if errors.is_empty() {
        println!("{}: configuration OK", path.display());
        0
    } else {
        eprintln!(
            "{}: {} error(s), configuration refused",
            path.display(),
            errors.len()
        );
        EXIT_FAILURE
    }
}

/// `--test-plugin`: the plugin runs with the settings of `-c` (or the defaults when that file
/// does not exist, e.g. when trying a plugin from a checkout) and of `--set`, and the report
/// goes to stdout. A watchdog ends the process with [`lua::EXIT_TIMED_OUT`] should the plugin
/// run past every budget.
fn test_plugin(plugin: &Path, args: &Args) -> i32 {
    let Some(target) = args.target else {
        eprintln!("portsentry: --test-plugin needs --target IP (e.g. --target 192.0.2.7)");
        return EXIT_USAGE;
    };
    let mut config = if args.config.exists() {
        match config::load(&args.config) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("error: {e}");
                }
                return EXIT_FAILURE;
            }
        }
    } else {
        eprintln!(
            "note: {} not found, plugin settings are empty and defaults apply",
            args.config.display()
        );
        config::build::defaults(&args.config)
    };
    // From a checkout the Lua library sits in ./lua rather than in LUA_PATH_DIR.
    if !config.lua_lib_dir.is_dir() && Path::new("lua").is_dir() {
        eprintln!(
            "note: {} not found, using ./lua for the Lua library",
            config.lua_lib_dir.display()
        );
        config.lua_lib_dir = PathBuf::from("lua");
    }
    if let Err(e) = lua::apply_settings(&mut config, plugin, &args.set) {
        eprintln!("portsentry: {e}");
        return EXIT_USAGE;
    }
    let proto = if args.proto == "udp" {
        crate::event::Proto::Udp
    } else {
        crate::event::Proto::Tcp
    };
    let limit = lua::watchdog_limit(&config);
    let watchdog = std::thread::Builder::new()
        .name("test-plugin watchdog".into())
        .spawn(move || {
            std::thread::sleep(limit);
            eprintln!(
                "portsentry: --test-plugin: the plugin was still running after {} (past its \
                 LUA_CALL_TIMEOUT budget); stopped",
                humantime::format_duration(limit)
            );
            std::process::exit(lua::EXIT_TIMED_OUT);
        });
    if let Err(e) = watchdog {
        eprintln!("portsentry: --test-plugin: cannot start the watchdog: {e}");
        return EXIT_FAILURE;
    }
    lua::load_warnings_to_stderr();
    let options = lua::TestOptions {
        target,
        port: args.port,
        proto,
        dry_run: args.dry_run,
    };
    lua::test_plugin_with(plugin, &options, &config, &mut std::io::stdout().lock())
}

/// Entry point of the binary; returns the exit code.
pub fn main() -> i32 {
    let argv: Vec<String> = std::env::args().collect();
    let argv = rewrite_legacy_flags(argv);
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    if let Some(command) = args.command {
        if let Command::Replay(replay) = command {
            return replay_command(replay);
        }
        return client_command(command);
    }
    if args.check_config {
        return check_config(&args);
    }
    if let Some(plugin) = &args.test_plugin {
        return test_plugin(plugin, &args);
    }
    let flagged = args.flagged_modes();
    let modes_file = flagged.is_empty().then(|| args.modes_file.clone());
    let modes = match &modes_file {
        None => flagged,
        Some(path) => match modes_from_file(path) {
            Ok(m) => m,
            Err(e) => {
                eprintln!("portsentry: {e}");
                return EXIT_USAGE;
            }
        },
    };
    let settings = LogSettings {
        stderr: !args.quiet,
        syslog_socket: (!args.no_syslog).then(|| args.syslog_socket.clone()),
        debug: args.debug,
    };
    match logging::init(&settings) {
        Ok(Some(note)) => log::warn!("{note}"),
        Ok(None) => {}
        Err(e) => {
            eprintln!("portsentry: cannot set up logging: {e}");
            return EXIT_FAILURE;
        }
    }
    let options = RunOptions {
        modes,
        modes_file,
        config_path: args.config,
    };
    match daemon::run(&options) {
        Ok(()) => 0,
        Err(e) => {
            log::error!("{e:#}");
            EXIT_FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_dash_mode_flags_are_accepted_together() {
        let argv = rewrite_legacy_flags(
            ["portsentry", "-atcp", "-audp", "-c", "/x.conf"]
                .iter()
                .map(|s| s.to_string()),
        );
        let args = Args::try_parse_from(argv).unwrap();
        assert_eq!(args.flagged_modes(), vec![Mode::Atcp, Mode::Audp]);
        assert_eq!(args.config, PathBuf::from("/x.conf"));
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Args::try_parse_from(rewrite_legacy_flags(argv.iter().map(|s| s.to_string())))
    }

    fn request(argv: &[&str]) -> Result<(ClientArgs, Request, bool), Vec<String>> {
        client_request(parse(argv).unwrap().command.unwrap())
    }

    #[test]
    fn list_takes_json_and_a_socket() {
        let (client, req, json) =
            request(&["portsentry", "list", "--json", "--socket", "/x"]).unwrap();
        assert_eq!(
            req,
            Request::List {
                targets: vec![],
                origin: None
            }
        );
        assert!(json);
        assert_eq!(client.socket, Some(PathBuf::from("/x")));
        assert_eq!(client.config, None);
        let (client, req, json) = request(&["portsentry", "status", "-c", "/y.conf"]).unwrap();
        assert_eq!((req, json), (Request::Status, false));
        assert_eq!(client.config, Some(PathBuf::from("/y.conf")));
    }

    #[test]
    fn block_takes_a_duration_and_a_reason() {
        let (_, req, _) = request(&[
            "portsentry",
            "block",
            "10.0.0.1",
            "--for",
            "1h",
            "--reason",
            "test",
        ])
        .unwrap();
        assert_eq!(
            req,
            Request::Block {
                targets: vec!["10.0.0.1".into()],
                duration: Some("1h".into()),
                reason: "test".into()
            }
        );
        // Networks are sent as `list` shows them; a reason that looks like a mode flag stays.
        let (_, req, _) =
            request(&["portsentry", "block", "10.0.0.9/24", "--reason", "-tcp"]).unwrap();
        assert_eq!(
            req,
            Request::Block {
                targets: vec!["10.0.0.0/24".into()],
                duration: None,
                reason: "-tcp".into()
            }
        );
        let (_, req, _) = request(&["portsentry", "unblock", "fd77::5"]).unwrap();
        assert_eq!(
            req,
            Request::Unblock {
                target: "fd77::5".into(),
                covering: false,
            }
        );
        let (_, req, _) = request(&["portsentry", "unblock", "--covering", "fd77::5"]).unwrap();
        assert_eq!(
            req,
            Request::Unblock {
                target: "fd77::5".into(),
                covering: true,
            }
        );
        assert_eq!(
            request(&["portsentry", "reload"]).unwrap().1,
            Request::Reload
        );
    }

    #[test]
    fn list_takes_addresses_networks_and_an_origin() {
        let (_, req, json) = request(&[
            "portsentry",
            "list",
            "192.0.2.7",
            "10.0.0.9/24",
            "--origin",
            "fleet",
        ])
        .unwrap();
        assert_eq!(
            req,
            Request::List {
                targets: vec!["192.0.2.7".into(), "10.0.0.0/24".into()],
                origin: Some("fleet".into())
            }
        );
        assert!(!json);
        let err = parse(&["portsentry", "list", "--origin", "cron"]).unwrap_err();
        assert_eq!(err.exit_code(), EXIT_USAGE);
        assert!(err.to_string().contains("is not an origin"), "{err}");
    }

    #[test]
    fn unblock_takes_several_targets_or_all_of_an_origin() {
        let (_, req, _) = request(&["portsentry", "unblock", "fd77::5", "10.0.0.1"]).unwrap();
        assert_eq!(
            req,
            Request::UnblockMany {
                targets: vec!["fd77::5".into(), "10.0.0.1".into()],
                all: false,
                origin: None,
                covering: false
            }
        );
        let (_, req, _) =
            request(&["portsentry", "unblock", "--all", "--origin", "fleet:cscli"]).unwrap();
        assert_eq!(
            req,
            Request::UnblockMany {
                targets: vec![],
                all: true,
                origin: Some("fleet:cscli".into()),
                covering: false
            }
        );
        // --origin only narrows --all; --all and addresses do not mix.
        for argv in [
            &["portsentry", "unblock", "10.0.0.1", "--origin", "scan"][..],
            &["portsentry", "unblock", "10.0.0.1", "--all"][..],
            &["portsentry", "unblock", "--all", "--origin", "bogus"][..],
            &["portsentry", "unblock", "--origin", "scan"][..],
            &["portsentry", "unblock", "--all", "--covering"][..],
        ] {
            let err = parse(argv).unwrap_err();
            assert_eq!(err.exit_code(), EXIT_USAGE, "{argv:?}");
        }
    }

    #[test]
    fn status_takes_json_and_t_is_check_config() {
        let (_, req, json) = request(&["portsentry", "status", "--json"]).unwrap();
        assert_eq!((req, json), (Request::Status, true));
        let args = parse(&["portsentry", "-t", "-c", "/x.conf"]).unwrap();
        assert!(args.check_config);
        // -t with 1.2's mode flags, which start with the same letter.
        let args = parse(&["portsentry", "-t", "-tcp", "-udp"]).unwrap();
        assert!(args.check_config);
        assert_eq!(args.flagged_modes(), vec![Mode::Tcp, Mode::Udp]);
        assert!(!parse(&["portsentry", "-tcp"]).unwrap().check_config);
    }

    #[test]
    fn bad_block_arguments_are_usage_errors() {
        let err = parse(&["portsentry", "block", "10.0.0.1", "--for", "30"]).unwrap_err();
        assert!(err.to_string().contains("add a unit, e.g. 30s"), "{err}");
        let err = parse(&["portsentry", "block", "10.0.0.x"]).unwrap_err();
        assert!(
            err.to_string().contains("not an IP address or CIDR"),
            "{err}"
        );
        assert!(parse(&["portsentry", "block"]).is_err());
        assert!(parse(&["portsentry", "block", "10.0.0.1", "--from-file", "/f"]).is_err());
        assert!(parse(&["portsentry", "unblock"]).is_err());
        // Mode flags are for running the daemon, not for a client command.
        assert!(parse(&["portsentry", "-atcp", "status"]).is_err());
    }

    #[test]
    fn block_from_file_reports_every_bad_line_and_sends_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("hosts.txt");
        std::fs::write(&f, "# list\n10.0.0.1\n10.0.0.0/33\n\nfd77::1\n").unwrap();
        let file = f.to_str().unwrap();
        let errors = request(&["portsentry", "block", "--from-file", file, "--for", "7d"])
            .err()
            .unwrap();
        assert_eq!(
            errors,
            vec![format!(
                "{file}:3: \"10.0.0.0/33\": not an IP address or CIDR network"
            )]
        );
        std::fs::write(&f, "10.0.0.1\nfd77::1 # v6\n").unwrap();
        let (_, req, _) =
            request(&["portsentry", "block", "--from-file", file, "--for", "7d"]).unwrap();
        assert_eq!(
            req,
            Request::Block {
                targets: vec!["10.0.0.1".into(), "fd77::1".into()],
                duration: Some("7d".into()),
                reason: String::new()
            }
        );
    }

    #[test]
    fn every_subcommand_has_help() {
        for sub in SUBCOMMANDS {
            let err = parse(&["portsentry", sub, "--help"]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
            let text = err.to_string();
            assert!(text.contains("--socket <PATH>"), "{sub}: {text}");
            assert!(text.contains("-c, --config <PATH>"), "{sub}: {text}");
        }
    }

    #[test]
    fn generate_flags_are_no_flags_of_the_daemon() {
        // `portsentry::docs::generate` takes them before clap (see main.rs).
        assert!(parse(&["portsentry", "--generate-man", "/x"]).is_err());
    }
}
