//! Start-up checks that need the modes as well as the config: what a valid file can still
//! make the start fail on (nothing to listen on, more sockets than descriptors, an output
//! file that is a directory). `--check-config` and the daemon's start run the same
//! [`preflight`], so a config the check passes does not fail at start for a reason a file
//! holds, and the other way round.

use std::os::unix::fs::FileTypeExt;
use std::path::Path;

use nix::sys::resource::{Resource, getrlimit, setrlimit};
use nix::unistd::{AccessFlags, access};

use super::read::{TEXT_CAP, non_regular_kind, read_regular};
use super::{Config, ConfigError};
use crate::event::Mode;
use crate::storage::file_system_problem;

/// Descriptors the daemon needs besides its listeners: journal, history, event log, control
/// and metrics sockets, netlink, inotify, commands' pipes, plugin processes.
pub const FD_RESERVE: u64 = 256;

/// Every problem the config causes with these modes, each naming file and line.
pub fn preflight(config: &Config, modes: &[Mode]) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let error = |key: &str, message: String| ConfigError {
        file: config.path.clone(),
        line: key_line(&config.path, key),
        message,
    };
    for &mode in modes {
        if config.watched_ports(mode).is_empty() {
            let key = ports_key(mode);
            errors.push(error(
                key,
                format!(
                    "{key}: no port to watch in -{} mode (expected at least one port)",
                    mode.as_str()
                ),
            ));
        }
    }
    let (soft, hard) = raise_nofile_limit();
    let sockets = listener_sockets(config, modes);
    if let Some(message) = fd_shortage(sockets, soft, hard) {
        let key = if modes.contains(&Mode::Tcp) || !modes.contains(&Mode::Udp) {
            "TCP_PORTS"
        } else {
            "UDP_PORTS"
        };
        errors.push(error(key, message));
    }
    // The journal, the history and the blocked file: only what no free space or fixed
    // permission would cure (a directory, a FIFO in their place) refuses the start; that
    // they cannot be written now is a warning ([`storage_warnings`]), since the daemon starts
    // without them and writes them once it can.
    for (key, path) in kept_files(config) {
        if let Err(why) = output_kind(path) {
            errors.push(error(key, format!("{key}: \"{}\": {why}", path.display())));
        }
    }
    if let Some(path) = config.event_log.as_deref()
        && let Err(why) = output_kind(path).and_then(|()| writable_file(path))
    {
        errors.push(error(
            "EVENT_LOG",
            format!("EVENT_LOG: \"{}\": {why}", path.display()),
        ));
    }
    errors
}

/// The files the block manager keeps writing, with their keys.
fn kept_files(config: &Config) -> [(&'static str, &Path); 3] {
    [
        ("HISTORY_FILE", config.history_file.as_path()),
        ("BLOCKED_FILE", config.blocked_file.as_path()),
        ("BLOCK_STATE_FILE", config.block_state_file.as_path()),
    ]
}

/// Warnings (`--check-config` prints them, the start logs them) about the state and log
/// files' disks: a journal, history or blocked file that cannot be written or created now
/// (a read-only file system, a permission), and a file system that is full or read-only
/// under any of them or under `EVENT_LOG`. None of these stops the daemon: it detects and
/// blocks, keeps what it cannot write in memory and writes it once it can.
pub fn storage_warnings(config: &Config) -> Vec<String> {
    let mut warnings = Vec::new();
    let then = "the daemon starts and blocks anyway, keeps what it cannot write in memory \
                and writes it as soon as it can";
    let mut paths: Vec<(&str, &Path)> = kept_files(config).to_vec();
    if let Some(log) = config.event_log.as_deref() {
        paths.push(("EVENT_LOG", log));
    }
    for (key, path) in paths {
        let kept = key != "EVENT_LOG";
        let problem =
            file_system_problem(path).or_else(|| kept.then(|| writable_file(path).err()).flatten());
        if let Some(why) = problem {
            let then = if kept {
                then
            } else {
                "events are counted as write errors until it can be written"
            };
            warnings.push(format!(
                "{}:{}: {key}: \"{}\": {why}; {then}",
                config.path.display(),
                key_line(&config.path, key),
                path.display()
            ));
        }
    }
    warnings
}

/// The key that sets a mode's ports, for messages.
fn ports_key(mode: Mode) -> &'static str {
    match mode {
        Mode::Tcp | Mode::Stcp => "TCP_PORTS",
        Mode::Udp | Mode::Sudp => "UDP_PORTS",
        Mode::Atcp => "ADVANCED_PORTS_TCP",
        Mode::Audp => "ADVANCED_PORTS_UDP",
    }
}

/// Sockets the classic modes open: one IPv4 and one IPv6 per port.
pub fn listener_sockets(config: &Config, modes: &[Mode]) -> u64 {
    modes
        .iter()
        .filter(|m| matches!(m, Mode::Tcp | Mode::Udp))
        .map(|m| 2 * config.trap_ports(m.proto()).len() as u64)
        .sum()
}

/// Raises the soft limit on open files to the hard one, as the daemon does before it opens
/// its listeners; returns (soft, hard) after. On failure the limits stay as they were.
pub fn raise_nofile_limit() -> (u64, u64) {
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return (u64::MAX, u64::MAX);
    };
    if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
        return (hard, hard);
    }
    (soft, hard)
}

/// The message when `sockets` listeners plus [`FD_RESERVE`] do not fit in the soft limit.
pub fn fd_shortage(sockets: u64, soft: u64, hard: u64) -> Option<String> {
    let needed = sockets.saturating_add(FD_RESERVE);
    (needed > soft).then(|| {
        format!(
            "{} listening sockets (one IPv4 and one IPv6 per port) and {FD_RESERVE} other \
             descriptors need {needed} open files, more than the limit of {soft} (hard limit \
             {hard}); watch fewer ports or raise the limit (systemd: LimitNOFILE=)",
            sockets
        )
    })
}

/// Whether what is at `path` (if anything) can be an output file: not a directory or a
/// FIFO (`/dev/null` and terminals are fine: an admin may send the event log there).
fn output_kind(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(meta) => match non_regular_kind(&meta) {
            Some(kind) if !meta.file_type().is_char_device() => {
                Err(format!("is {kind}, expected a regular file"))
            }
            _ => Ok(()),
        },
        Err(_) => Ok(()),
    }
}

/// Whether the daemon can append to `path`, creating it (and, for the journal, its
/// directories) if missing: a writable file, or a writable directory to create it in.
fn writable_file(path: &Path) -> Result<(), String> {
    match std::fs::metadata(path) {
        Ok(_) => access(path, AccessFlags::W_OK).map_err(|e| format!("not writable ({e})")),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            let mut dir = path.parent();
            while let Some(d) = dir {
                let d = if d.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    d
                };
                match std::fs::metadata(d) {
                    Ok(m) if m.is_dir() => {
                        return access(d, AccessFlags::W_OK | AccessFlags::X_OK).map_err(|e| {
                            format!("cannot be created: {} is not writable ({e})", d.display())
                        });
                    }
                    Ok(_) => {
                        return Err(format!(
                            "cannot be created: {} is not a directory",
                            d.display()
                        ));
                    }
                    Err(_) => dir = d.parent(),
                }
            }
            Ok(())
        }
        Err(e) => Err(format!("cannot be checked ({e})")),
    }
}

/// The line a key is set on (first occurrence, as the loader reads it); 0 when absent or the
/// file cannot be read.
pub fn key_line(config_path: &Path, key: &str) -> usize {
    read_regular(config_path, TEXT_CAP, "configuration file")
        .ok()
        .and_then(|bytes| {
            super::parse::parse_collect(config_path, &bytes)
                .0
                .entries
                .into_iter()
                .find(|e| e.key == key)
        })
        .map_or(0, |e| e.line)
}

/// The value a config file's text gives `key` (first occurrence), for a config that does not
/// build: `--check-config` still checks the ignore file it names.
pub fn key_value(config_path: &Path, key: &str) -> Option<String> {
    let bytes = read_regular(config_path, TEXT_CAP, "configuration file").ok()?;
    super::parse::parse_collect(config_path, &bytes)
        .0
        .entries
        .into_iter()
        .find(|e| e.key == key && !e.value.trim().is_empty())
        .map(|e| e.value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, text: &str) -> Config {
        let path = dir.join("portsentry.conf");
        std::fs::write(
            &path,
            format!(
                "{text}ADVANCED_PORTS_TCP=\"1024\"\nADVANCED_PORTS_UDP=\"1024\"\n\
                 HISTORY_FILE=\"{0}/h\"\nBLOCKED_FILE=\"{0}/b\"\nBLOCK_STATE_FILE=\"{0}/s/j\"\n",
                dir.display()
            ),
        )
        .unwrap();
        crate::config::load(&path).unwrap()
    }

    fn messages(config: &Config, modes: &[Mode]) -> Vec<String> {
        preflight(config, modes)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn empty_tcp_ports_with_tcp_mode_is_refused_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "TCP_PORTS=\"\"\nUDP_PORTS=\"1\"\n");
        let errs = messages(&c, &[Mode::Tcp]);
        assert_eq!(
            errs,
            vec![format!(
                "{}:1: TCP_PORTS: no port to watch in -tcp mode (expected at least one port)",
                c.path.display()
            )]
        );
        // Positive control: the same file in -udp mode has a port and passes.
        assert_eq!(messages(&c, &[Mode::Udp]), Vec::<String>::new());
    }

    #[test]
    fn more_ports_than_descriptors_is_refused_with_the_numbers() {
        assert_eq!(fd_shortage(1000, 2048, 4096), None);
        let m = fd_shortage(131_070, 20_000, 20_000).unwrap();
        assert!(
            m.starts_with("131070 listening sockets") && m.contains("limit of 20000"),
            "{m}"
        );
    }

    #[test]
    fn the_whole_port_range_with_tcp_mode_exceeds_the_descriptor_limit() {
        let dir = tempfile::tempdir().unwrap();
        let c = config(dir.path(), "TCP_PORTS=\"1-65535\"\n");
        let (soft, _) = raise_nofile_limit();
        let errs = messages(&c, &[Mode::Tcp]);
        if soft >= 131_070 + FD_RESERVE {
            // This machine really has room for every port: nothing to refuse.
            assert!(errs.is_empty(), "{errs:?}");
        } else {
            assert_eq!(errs.len(), 1, "{errs:?}");
            assert!(errs[0].contains(":1: 131070 listening sockets"), "{errs:?}");
        }
        // The raw mode opens no listener per port, whatever the range.
        assert_eq!(listener_sockets(&c, &[Mode::Stcp]), 0);
        assert_eq!(listener_sockets(&c, &[Mode::Tcp]), 131_070);
    }

    #[test]
    fn an_output_file_that_is_a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("hist")).unwrap();
        let c = config(
            dir.path(),
            &format!(
                "TCP_PORTS=\"1\"\nHISTORY_FILE=\"{}/hist\"\n",
                dir.path().display()
            ),
        );
        let errs = messages(&c, &[Mode::Tcp]);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].ends_with(&format!(
                ":2: HISTORY_FILE: \"{}/hist\": is a directory, expected a regular file",
                dir.path().display()
            )),
            "{errs:?}"
        );
        // Positive control: files that do not exist yet in a writable directory are fine.
        let ok = config(dir.path(), "TCP_PORTS=\"1\"\n");
        assert_eq!(messages(&ok, &[Mode::Tcp]), Vec::<String>::new());
        assert_eq!(storage_warnings(&ok), Vec::<String>::new());
    }

    #[test]
    fn a_state_file_that_cannot_be_created_now_is_a_warning_and_not_a_refusal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), "").unwrap();
        let c = config(
            dir.path(),
            &format!(
                "TCP_PORTS=\"1\"\nBLOCK_STATE_FILE=\"{}/file/state\"\n",
                dir.path().display()
            ),
        );
        assert_eq!(messages(&c, &[Mode::Tcp]), Vec::<String>::new());
        let warnings = storage_warnings(&c);
        let [w] = warnings.as_slice() else {
            panic!("{warnings:?}")
        };
        assert!(
            w.starts_with(&format!(
                "{}:2: BLOCK_STATE_FILE: \"{}/file/state\": cannot be created: ",
                c.path.display(),
                dir.path().display()
            )),
            "{w}"
        );
        assert!(w.ends_with("writes it as soon as it can"), "{w}");
    }
}
