//! The `portsentry` binary: parse the command line, run, map errors to exit codes.

fn main() {
    std::process::exit(portsentry::cli::main());
}
