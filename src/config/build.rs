//! Stage two: raw entries -> typed [`Config`], with every error named by file and line.
//! (Implementation in progress.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{BlockLevel, Config, ConfigError, ConfigErrors, RawConfig, Template};

/// Debian 12's defaults: what a key that is absent from the file means.
pub fn defaults(path: &Path) -> Config {
    Config {
        path: path.to_path_buf(),
        tcp_ports: vec![
            1, 11, 15, 79, 111, 119, 143, 540, 635, 1080, 1524, 2000, 5742, 6667, 12345, 12346,
            20034, 27665, 31337, 32771, 32772, 32773, 32774, 40421, 49724, 54320,
        ],
        udp_ports: vec![
            1, 7, 9, 69, 161, 162, 513, 635, 640, 641, 700, 37444, 34555, 31335, 32770, 32771,
            32772, 32773, 32774, 31337, 54321,
        ],
        advanced_ports_tcp: 1024,
        advanced_ports_udp: 1024,
        advanced_exclude_tcp: vec![113, 139],
        advanced_exclude_udp: vec![520, 138, 137, 67],
        ignore_file: PathBuf::from("/etc/portsentry/portsentry.ignore"),
        history_file: PathBuf::from("/var/lib/portsentry/portsentry.history"),
        blocked_file: PathBuf::from("/var/lib/portsentry/portsentry.blocked"),
        hosts_deny_file: PathBuf::from("/etc/hosts.deny"),
        resolve_host: false,
        block_tcp: BlockLevel::LogOnly,
        block_udp: BlockLevel::LogOnly,
        kill_route: None,
        kill_hosts_deny: None,
        kill_run_cmd: None,
        kill_run_cmd_first: false,
        kill_cmd_timeout: Duration::from_secs(30),
        scan_trigger: 0,
        scan_trigger_window: Duration::from_secs(3600),
        scan_trigger_table_size: 65536,
        port_banner: None,
        plugin_dir: PathBuf::from("/etc/portsentry/plugins"),
        lua_lib_dir: PathBuf::from("/usr/share/portsentry/lua"),
        lua_responders: Vec::new(),
        lua_responders_first: false,
        raw: BTreeMap::new(),
        warnings: Vec::new(),
    }
}

/// Builds the typed config from raw entries.
pub fn build(raw: &RawConfig) -> Result<Config, ConfigErrors> {
    let mut config = defaults(&raw.path);
    for e in &raw.entries {
        config.raw.insert(e.key.clone(), e.value.clone());
        if e.key == "KILL_RUN_CMD" {
            config.kill_run_cmd = Some(Template { text: e.value.clone(), line: e.line });
        }
    }
    Ok(config)
}

/// Reads, parses and builds a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_path_buf(),
            line: 0,
            message: format!("cannot read: {e}"),
        }])
    })?;
    build(&super::parse(path, &text)?)
}
