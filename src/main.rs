//! The `portsentry` binary: parse the command line, run, map errors to exit codes.

use portsentry::respond::lua::host;

fn main() {
    // A plugin host (the daemon re-executing itself for one Lua plugin) starts nothing
    // else; the flag is not a clap option, so it is in no help text or completion.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(host::HOST_FLAG)) {
        std::process::exit(host::host_main());
    }
    std::process::exit(portsentry::cli::main());
}
