//! The `portsentry` binary: parse the command line, run, map errors to exit codes.

use portsentry::respond::lua::host;

fn main() {
    // A plugin host (the daemon re-executing itself for one Lua plugin) starts nothing
    // else; the flag is not a clap option, so it is in no help text or completion.
    if std::env::args_os().nth(1).as_deref() == Some(std::ffi::OsStr::new(host::HOST_FLAG)) {
        std::process::exit(host::host_main());
    }
    // The package build's `--generate-man DIR` / `--generate-completions DIR`: read before
    // clap, so that no help text, man page or completion offers admins a maintainer's flag.
    let argv: Vec<String> = std::env::args().collect();
    if let Some(code) = portsentry::docs::generate(&argv) {
        std::process::exit(code);
    }
    std::process::exit(portsentry::cli::main());
}
