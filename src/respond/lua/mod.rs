//! Lua responders (being built on their own branch).

use std::net::IpAddr;
use std::path::Path;

/// `--test-plugin` placeholder until the Lua branch lands.
pub fn cli_test_plugin(
    _plugin: &Path,
    _target: Option<IpAddr>,
    _port: u16,
    _proto: &str,
    _config: &Path,
) -> i32 {
    eprintln!("portsentry: --test-plugin: Lua responders are not yet supported");
    2
}
