//! Command line: 1.2's single-dash mode flags (`-atcp`), several per process, plus our
//! options. Without a mode flag, the modes come from `/etc/default/portsentry` as Debian's
//! init script read them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use clap::Parser;

use crate::config::{self, DEFAULT_CONFIG_PATH};
use crate::daemon::{self, RunOptions};
use crate::event::Mode;
use crate::logging::{self, DEFAULT_SYSLOG_SOCKET, LogSettings};

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
    about = "Detects port scans and blocks the scanner (a drop-in for PortSentry 1.2).",
    after_help = "Modes (several may be combined, e.g. -atcp -audp):\n  \
        -tcp, -udp     bind the trap ports (TCP_PORTS / UDP_PORTS)\n  \
        -stcp, -sudp   raw capture on the trap ports\n  \
        -atcp, -audp   raw capture on every unused port below ADVANCED_PORTS_*\n\
        Without a mode, TCP_MODE / UDP_MODE are read from /etc/default/portsentry."
)]
struct Args {
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
    /// Configuration file.
    #[arg(short = 'c', long = "config", value_name = "PATH", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Validate the configuration and ignore files, print every problem, and exit.
    #[arg(long)]
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
}

/// 1.2 spells its flags with one dash (`-atcp`); clap wants two for long names.
fn rewrite_legacy_flags(args: impl IntoIterator<Item = String>) -> Vec<String> {
    args.into_iter()
        .map(|a| match a.strip_prefix('-') {
            Some(name) if !name.starts_with('-') && Mode::from_name(name).is_some() => {
                format!("--{name}")
            }
            _ => a,
        })
        .collect()
}

impl Args {
    fn flagged_modes(&self) -> Vec<Mode> {
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

/// Reads `TCP_MODE` / `UDP_MODE` from Debian's defaults file (same `KEY="value"` syntax as
/// portsentry.conf).
pub fn modes_from_file(path: &Path) -> Result<Vec<Mode>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        format!(
            "no mode given on the command line and {} cannot be read ({e}); \
             pass -tcp, -udp, -stcp, -sudp, -atcp or -audp",
            path.display()
        )
    })?;
    let raw = config::parse(path, &text).map_err(|e| e.to_string())?;
    let mut modes = Vec::new();
    for key in ["TCP_MODE", "UDP_MODE"] {
        let Some(entry) = raw.entries.iter().find(|e| e.key == key) else {
            continue;
        };
        let value = entry.value.trim();
        if value.is_empty() {
            continue;
        }
        match Mode::from_name(value) {
            Some(m) if (key == "TCP_MODE") == (m.proto() == crate::event::Proto::Tcp) => {
                modes.push(m)
            }
            _ => {
                return Err(format!(
                    "{}:{}: {key}: \"{value}\": expected {}",
                    path.display(),
                    entry.line,
                    if key == "TCP_MODE" {
                        "tcp, stcp or atcp"
                    } else {
                        "udp, sudp or audp"
                    }
                ));
            }
        }
    }
    if modes.is_empty() {
        return Err(format!(
            "no mode given on the command line and {} sets neither TCP_MODE nor UDP_MODE; \
             pass -tcp, -udp, -stcp, -sudp, -atcp or -audp",
            path.display()
        ));
    }
    Ok(modes)
}

/// `--check-config`: every error and warning, exit 0 only when the files are valid.
fn check_config(path: &Path) -> i32 {
    match crate::generation::Generation::load(1, path) {
        Ok((generation, warnings)) => {
            for w in warnings
                .iter()
                .chain(config::build::command_warnings(&generation.config).iter())
            {
                eprintln!("warning: {w}");
            }
            println!("{}: configuration OK", path.display());
            0
        }
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{}: {} error(s), configuration refused",
                path.display(),
                errors.0.len()
            );
            EXIT_FAILURE
        }
    }
}

/// `--test-plugin`: the plugin runs with the settings of `-c` (or the defaults when that file
/// does not exist, e.g. when trying a plugin from a checkout), and the report goes to stdout.
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
    let proto = if args.proto == "udp" {
        crate::event::Proto::Udp
    } else {
        crate::event::Proto::Tcp
    };
    crate::respond::lua::test_plugin(
        plugin,
        target,
        args.port,
        proto,
        &config,
        &mut std::io::stdout().lock(),
    )
}

/// Entry point of the binary; returns the exit code.
pub fn main() -> i32 {
    let argv = rewrite_legacy_flags(std::env::args());
    let args = match Args::try_parse_from(argv) {
        Ok(a) => a,
        Err(e) => {
            let code = if e.use_stderr() { EXIT_USAGE } else { 0 };
            let _ = e.print();
            return code;
        }
    };
    if args.check_config {
        return check_config(&args.config);
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

    #[test]
    fn modes_come_from_the_debian_defaults_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("portsentry");
        std::fs::write(&f, "# comment\nTCP_MODE=\"atcp\"\nUDP_MODE=\"sudp\"\n").unwrap();
        assert_eq!(modes_from_file(&f).unwrap(), vec![Mode::Atcp, Mode::Sudp]);
        std::fs::write(&f, "TCP_MODE=\"udp\"\n").unwrap();
        let err = modes_from_file(&f).unwrap_err();
        assert!(
            err.ends_with(":1: TCP_MODE: \"udp\": expected tcp, stcp or atcp"),
            "{err}"
        );
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(
            modes_from_file(&f)
                .unwrap_err()
                .contains("neither TCP_MODE nor UDP_MODE")
        );
        assert!(
            modes_from_file(&dir.path().join("missing"))
                .unwrap_err()
                .contains("cannot be read")
        );
    }
}
