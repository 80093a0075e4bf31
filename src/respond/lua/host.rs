//! Plugin host processes: every plugin runs in a child process of its own, so a plugin that
//! exceeds its budget can be stopped for sure, whatever it does (a loop in a `__close`
//! handler, a backtracking pattern inside one C call): a thread cannot be killed, a process
//! can.
//!
//! The child is the portsentry binary re-executed with the hidden `--lua-host` flag
//! ([`HostProgram`]). Parent and child talk over a socket pair (the child's standard input)
//! in newline-delimited JSON: the parent sends `ToHost::Load` then one `ToHost::Event` at
//! a time; the child answers `FromHost::Started` (running, limited), then
//! `FromHost::Ready` or `FromHost::LoadFailed`, then one `FromHost::Report` per event, with
//! `FromHost::Log` lines (the plugin's own and the sandbox's) forwarded as they happen. The parent side (`Host`) waits for each answer
//! with a deadline and kills the child's whole process tree when it passes.
//!
//! Before loading the plugin the child limits itself: address space (the Lua memory limit
//! plus the binary's own needs), CPU seconds, no core files; it dies with the daemon
//! (`PR_SET_PDEATHSIG`) and closes every descriptor it may have inherited.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nix::sys::resource::{Resource, UsageWho, getrusage, setrlimit};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::LuaError;
use super::event::{EventName, LuaEvent};
use super::sandbox::{PluginSpec, clip, lock};
use super::state::{CallReport, PluginState};

/// The hidden command-line flag that turns the binary into a plugin host.
pub const HOST_FLAG: &str = "--lua-host";

/// Address space a host needs besides the Lua state: the binary, its libraries, thread
/// stacks for `portsentry.exec`'s output readers, allocator arenas. Measured on a debug
/// build: 87 MiB mapped while a command runs, 151 MiB at the peak (the two output reader
/// threads each reserve a 64 MiB allocator arena); 256 MiB leaves room for both.
pub const ADDRESS_SPACE_HEADROOM: u64 = 256 * 1024 * 1024;

/// CPU seconds a host may use over its life (`RLIMIT_CPU`). Generous: the wall-clock budget
/// stops runaway calls long before; this only catches a host the parent lost track of. A
/// host retires on its own (and is restarted transparently) once it has used half.
pub const CPU_SECONDS: u64 = 3600;

/// Longest message either side accepts; a host's messages are small (traces are capped).
const MAX_MESSAGE: u64 = 16 * 1024 * 1024;

/// Longest log line a host forwards; the rest is cut and marked.
const MAX_LOG_MESSAGE: usize = 8 * 1024;

/// Longest wait for a new host to be running (before it loads the plugin, which has the
/// budget): starting a process is not the plugin's doing, and a busy machine may be slow.
pub const START_WAIT: Duration = Duration::from_secs(10);

/// Time a host gets to exit by itself once its pipe is closed, before it is killed.
const EXIT_GRACE: Duration = Duration::from_millis(500);

/// How to start a plugin host: the program, its arguments and environment (the environment
/// is otherwise empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostProgram {
    /// The executable.
    pub program: PathBuf,
    /// Its arguments (for the daemon binary: the hidden flag).
    pub args: Vec<OsString>,
    /// Its environment variables.
    pub env: Vec<(OsString, OsString)>,
}

static PROGRAM: OnceLock<HostProgram> = OnceLock::new();

/// The binary as the command line named it (`argv[0]`): absolute, relative to the working
/// directory, or looked up in `PATH` the way the shell found it.
fn started_as() -> Option<PathBuf> {
    let argv0 = PathBuf::from(std::env::args_os().next()?);
    if argv0.components().count() > 1 {
        return std::path::absolute(&argv0).ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(&argv0))
        .find(|candidate| candidate.is_file())
}

impl HostProgram {
    /// This very binary with the hidden flag: right for the daemon and `--test-plugin`.
    /// `/proc/self/exe` when /proc is mounted (it still works after a package upgrade
    /// replaced the file); otherwise (a chroot, an early-boot rescue shell) the path the
    /// binary was started by, made absolute now so a later `chdir` cannot change it.
    pub fn this_binary() -> HostProgram {
        let proc_exe = Path::new("/proc/self/exe");
        let program = if proc_exe.exists() {
            proc_exe.to_path_buf()
        } else {
            started_as().unwrap_or_else(|| proc_exe.to_path_buf())
        };
        HostProgram {
            program,
            args: vec![OsString::from(HOST_FLAG)],
            env: Vec::new(),
        }
    }

    /// The portsentry binary at `path` with the hidden flag: for benches and integration
    /// tests, whose own binary is not portsentry (`env!("CARGO_BIN_EXE_portsentry")`).
    pub fn binary(path: impl Into<PathBuf>) -> HostProgram {
        HostProgram {
            program: path.into(),
            args: vec![OsString::from(HOST_FLAG)],
            env: Vec::new(),
        }
    }

    /// Makes `program` the host of every plugin this process loads from now on. Call it
    /// before loading any; false when one was already set.
    pub fn install(program: HostProgram) -> bool {
        PROGRAM.set(program).is_ok()
    }

    /// The program plugins are started with: the one installed, else this binary (in the
    /// library's unit tests: the test binary, running the host entry test).
    pub fn current() -> HostProgram {
        if let Some(p) = PROGRAM.get() {
            return p.clone();
        }
        #[cfg(test)]
        {
            tests::test_binary()
        }
        #[cfg(not(test))]
        {
            HostProgram::this_binary()
        }
    }
}

/// What the parent sends a host.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ToHost {
    /// The first message: what to load and how to limit itself.
    Load(LoadSpec),
    /// Run one event's handlers and report.
    Event(LuaEvent),
}

/// The first message to a host.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct LoadSpec {
    /// The plugin and its sandbox limits.
    pub plugin: PluginSpec,
    /// The daemon's process id: a host whose parent is already gone exits.
    pub parent: u32,
    /// Most verbose log level worth forwarding (`log::LevelFilter` as text).
    pub log_level: String,
    /// `RLIMIT_AS` in bytes.
    pub address_space: u64,
    /// `RLIMIT_CPU` in seconds.
    pub cpu_seconds: u64,
}

/// What a host sends back.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum FromHost {
    /// Running and limited; about to load the plugin.
    Started,
    /// Loaded; the events it has handlers for.
    Ready(Vec<EventName>),
    /// The plugin did not load.
    LoadFailed(LuaError),
    /// A log line from the plugin or the sandbox, to log in the daemon.
    Log {
        /// The `log` target.
        target: String,
        /// `ERROR` … `TRACE`.
        level: String,
        /// The text.
        message: String,
    },
    /// An event's outcome; `retiring`: the host exits after this (CPU allowance half used)
    /// and the next event gets a fresh one.
    Report {
        /// What happened.
        report: CallReport,
        /// The host is about to exit.
        retiring: bool,
    },
}

/// Why a host gave no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostFailure {
    /// No answer in time: the host was killed.
    Timeout,
    /// The host died (or broke the protocol) without answering; its status when known.
    Died(String),
    /// The host could not be started at all.
    Spawn(String),
}

/// A running plugin host, seen from the daemon.
pub(crate) struct Host {
    child: Child,
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    plugin: String,
}

impl Host {
    /// Starts a host for `spec`, waits up to [`START_WAIT`] for it to run, then up to `load`
    /// (the budget plus a grace) for it to load the plugin. `Ok(Err(e))`: the plugin itself
    /// failed to load.
    pub fn start(
        program: &HostProgram,
        spec: &PluginSpec,
        load: Duration,
    ) -> Result<Result<(Host, Vec<EventName>), LuaError>, HostFailure> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| HostFailure::Spawn(format!("socketpair: {e}")))?;
        let mut cmd = Command::new(&program.program);
        cmd.args(&program.args)
            .env_clear()
            .envs(program.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0);
        let child = cmd.spawn().map_err(|e| {
            HostFailure::Spawn(format!("cannot start {}: {e}", program.program.display()))
        })?;
        drop(cmd);
        let reader = match ours.try_clone() {
            Ok(r) => BufReader::new(r),
            Err(e) => {
                let mut child = child;
                kill_tree(&mut child);
                return Err(HostFailure::Spawn(format!("socket: {e}")));
            }
        };
        let mut host = Host {
            child,
            writer: ours,
            reader,
            plugin: spec.name.clone(),
        };
        let spec_msg = LoadSpec {
            plugin: spec.clone(),
            parent: std::process::id(),
            log_level: log::max_level().to_string(),
            address_space: u64::try_from(spec.memory_limit)
                .unwrap_or(u64::MAX)
                .saturating_add(ADDRESS_SPACE_HEADROOM),
            cpu_seconds: CPU_SECONDS,
        };
        host.send(&ToHost::Load(spec_msg))?;
        let mut deadline = Instant::now() + START_WAIT;
        loop {
            match host.receive(deadline)? {
                FromHost::Started => deadline = Instant::now() + load,
                FromHost::Ready(handled) => return Ok(Ok((host, handled))),
                FromHost::LoadFailed(e) => {
                    host.finish();
                    return Ok(Err(e));
                }
                FromHost::Log { .. } => {}
                FromHost::Report { .. } => {
                    return Err(host.broken("a report before the plugin loaded"));
                }
            }
        }
    }

    /// Runs one event; waits until `deadline` for the report. On any failure the host is
    /// gone (killed and reaped) and must be started again. `Ok((report, retiring))`.
    pub fn call(
        &mut self,
        event: &LuaEvent,
        deadline: Instant,
    ) -> Result<(CallReport, bool), HostFailure> {
        self.send(&ToHost::Event(event.clone()))?;
        loop {
            match self.receive(deadline)? {
                FromHost::Report { report, retiring } => return Ok((report, retiring)),
                FromHost::Log { .. } => {}
                FromHost::Started | FromHost::Ready(_) | FromHost::LoadFailed(_) => {
                    return Err(self.broken("a load answer to an event"));
                }
            }
        }
    }

    /// Ends the host: closes its pipe, gives it a moment to exit, then kills what is left.
    pub fn finish(mut self) {
        let _ = self.writer.shutdown(std::net::Shutdown::Both);
        let until = Instant::now() + EXIT_GRACE;
        while Instant::now() < until {
            match self.child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                Err(_) => break,
            }
        }
        kill_tree(&mut self.child);
    }

    fn send(&mut self, msg: &ToHost) -> Result<(), HostFailure> {
        let mut line = serde_json::to_vec(msg)
            .map_err(|e| HostFailure::Died(format!("cannot encode a message: {e}")))?;
        line.push(b'\n');
        if let Err(e) = self.writer.write_all(&line) {
            return Err(self.dead(&format!("cannot write to it: {e}")));
        }
        Ok(())
    }

    /// The next message, logging forwarded log lines on the way.
    fn receive(&mut self, deadline: Instant) -> Result<FromHost, HostFailure> {
        let mut line = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.timed_out());
            }
            if let Err(e) = self.reader.get_ref().set_read_timeout(Some(left)) {
                return Err(self.dead(&format!("socket: {e}")));
            }
            let before = line.len();
            let limit = MAX_MESSAGE.saturating_sub(before as u64);
            match (&mut self.reader).take(limit).read_until(b'\n', &mut line) {
                Ok(0) if line.len() == before => {
                    return Err(self.dead("it closed its pipe"));
                }
                Ok(_) if line.last() == Some(&b'\n') => break,
                Ok(_) if line.len() as u64 >= MAX_MESSAGE => {
                    return Err(self.broken("an oversized message"));
                }
                Ok(_) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(self.dead(&format!("cannot read from it: {e}"))),
            }
        }
        let msg: FromHost = match serde_json::from_slice(&line) {
            Ok(m) => m,
            Err(e) => return Err(self.broken(&format!("an unreadable message ({e})"))),
        };
        if let FromHost::Log {
            target,
            level,
            message,
        } = &msg
        {
            let level = level.parse().unwrap_or(log::Level::Info);
            log::logger().log(
                &log::Record::builder()
                    .level(level)
                    .target(target)
                    .args(format_args!("{message}"))
                    .build(),
            );
        }
        Ok(msg)
    }

    fn timed_out(&mut self) -> HostFailure {
        kill_tree(&mut self.child);
        HostFailure::Timeout
    }

    fn broken(&mut self, what: &str) -> HostFailure {
        kill_tree(&mut self.child);
        HostFailure::Died(format!("its plugin process sent {what}"))
    }

    /// The host stopped talking: kill what is left and say how it ended.
    fn dead(&mut self, what: &str) -> HostFailure {
        // A host that closed its pipe is exiting; give it a moment so its status is known.
        let until = Instant::now() + Duration::from_millis(200);
        let mut status = None;
        while Instant::now() < until {
            match self.child.try_wait() {
                Ok(Some(s)) => {
                    status = Some(s);
                    break;
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                Err(_) => break,
            }
        }
        let status = match status {
            Some(s) => Some(s),
            None => kill_tree(&mut self.child),
        };
        HostFailure::Died(match status {
            Some(s) => format!("its plugin process {} ({what})", describe_exit(s)),
            None => format!("its plugin process stopped answering ({what})"),
        })
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        // Normally `finish` or a kill already reaped it; this only catches early returns.
        if let Ok(None) = self.child.try_wait() {
            log::debug!(target: "portsentry::lua", "lua:{}: stopping its plugin process", self.plugin);
            kill_tree(&mut self.child);
        }
    }
}

/// How a host process ended, in words.
fn describe_exit(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(sig)) => {
            let name = Signal::try_from(sig)
                .map(|s| s.as_str().to_string())
                .unwrap_or_else(|_| sig.to_string());
            let why = match sig {
                libc::SIGXCPU => " (CPU limit)",
                libc::SIGKILL => " (out of memory, or killed)",
                libc::SIGSEGV | libc::SIGABRT => " (crashed)",
                _ => "",
            };
            format!("was killed by {name}{why}")
        }
        (None, None) => "ended".to_string(),
    }
}

/// Kills a host and everything it started (commands run through `portsentry.exec` live in
/// process groups of their own), then reaps it. Returns the host's status when reaped.
fn kill_tree(child: &mut Child) -> Option<ExitStatus> {
    let Ok(pid) = i32::try_from(child.id()) else {
        return None;
    };
    // Freeze the host's group first, so it starts nothing new while its tree is listed.
    let _ = kill(Pid::from_raw(-pid), Signal::SIGSTOP);
    for d in descendants(pid) {
        let _ = kill(Pid::from_raw(d), Signal::SIGKILL);
    }
    let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    let _ = child.kill();
    child.wait().ok()
}

/// Every process whose parent chain leads to `root`, read from `/proc`: what a killed
/// plugin host leaves behind must go too (and tests count a daemon's plugin processes).
pub fn descendants(root: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(i32, i32)> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| Some((pid, parent_of(pid)?)))
        .collect();
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let p = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == p)
                .map(|(pid, _)| *pid),
        );
        i += 1;
    }
    found.remove(0);
    found
}

/// The parent process id, from `/proc/PID/stat` (the field after the `(comm)` and state).
fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

// ------------------------------------------------------------------------------ child side

/// Forwards every log record of the host to the daemon.
struct Forward {
    out: Mutex<UnixStream>,
}

impl log::Log for Forward {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = FromHost::Log {
            target: record.target().to_string(),
            level: record.level().to_string(),
            message: clip(record.args().to_string(), MAX_LOG_MESSAGE),
        };
        let _ = write_message(&mut lock(&self.out), &msg);
    }

    fn flush(&self) {}
}

fn write_message(out: &mut UnixStream, msg: &FromHost) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(msg).map_err(std::io::Error::other)?;
    line.push(b'\n');
    out.write_all(&line)
}

/// The `--lua-host` entry point: serves one plugin over standard input (a socket to the
/// daemon) until the daemon closes it. Returns the process exit code. Called first thing in
/// `main`, before anything else starts.
pub fn host_main() -> i32 {
    // First, before this process opens anything of its own.
    close_inherited_fds();
    let stdin = match std::io::stdin().as_fd().try_clone_to_owned() {
        Ok(fd) => fd,
        Err(_) => return 2,
    };
    let stream = UnixStream::from(stdin);
    match serve(stream) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("portsentry --lua-host: {e}");
            1
        }
    }
}

fn serve(stream: UnixStream) -> Result<(), String> {
    // Die with the daemon, and not outlive a daemon that died before this was set.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(|e| format!("prctl: {e}"))?;
    let mut out = stream.try_clone().map_err(|e| format!("socket: {e}"))?;
    let mut input = BufReader::new(stream);
    let Some(ToHost::Load(spec)) = read_message(&mut input)? else {
        return Err("the first message is not a load request".into());
    };
    if nix::unistd::getppid().as_raw() != i32::try_from(spec.parent).unwrap_or(-1) {
        return Err("the daemon is gone".into());
    }
    limit_self(&spec)?;
    write_message(&mut out, &FromHost::Started).map_err(|e| format!("socket: {e}"))?;
    let forward = Forward {
        out: Mutex::new(out.try_clone().map_err(|e| format!("socket: {e}"))?),
    };
    if log::set_boxed_logger(Box::new(forward)).is_ok() {
        log::set_max_level(spec.log_level.parse().unwrap_or(log::LevelFilter::Info));
    }
    let state = match PluginState::load(&spec.plugin) {
        Ok(s) => s,
        Err(e) => {
            return write_message(&mut out, &FromHost::LoadFailed(e))
                .map_err(|e| format!("socket: {e}"));
        }
    };
    write_message(&mut out, &FromHost::Ready(state.handled()))
        .map_err(|e| format!("socket: {e}"))?;
    while let Some(msg) = read_message(&mut input)? {
        let ToHost::Event(event) = msg else {
            return Err("a second load request".into());
        };
        let report = state.dispatch(&event);
        let retiring = cpu_used() > spec.cpu_seconds / 2;
        write_message(&mut out, &FromHost::Report { report, retiring })
            .map_err(|e| format!("socket: {e}"))?;
        if retiring {
            break;
        }
    }
    Ok(())
}

/// The next message from the daemon; `None` when it closed the pipe.
fn read_message(input: &mut BufReader<UnixStream>) -> Result<Option<ToHost>, String> {
    let mut line = Vec::new();
    let n = input
        .take(MAX_MESSAGE)
        .read_until(b'\n', &mut line)
        .map_err(|e| format!("socket: {e}"))?;
    if n == 0 {
        return Ok(None);
    }
    serde_json::from_slice(&line)
        .map(Some)
        .map_err(|e| format!("unreadable message: {e}"))
}

/// Closes every descriptor above standard error: the daemon's sockets and files must not
/// be reachable from a plugin (standard input is the pipe to the daemon).
fn close_inherited_fds() {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        // No /proc (a chroot): every descriptor number the limit allows, at most 2^20.
        let highest = nix::sys::resource::getrlimit(Resource::RLIMIT_NOFILE)
            .map_or(1024, |(soft, _)| soft.min(1 << 20));
        for fd in 3..i32::try_from(highest).unwrap_or(1 << 20) {
            let _ = nix::unistd::close(fd);
        }
        return;
    };
    let fds: Vec<i32> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // The directory's own descriptor is already closed by now: EBADF, ignored.
        let _ = nix::unistd::close(fd);
    }
}

/// Address space, CPU time and core files, set before any plugin code runs.
fn limit_self(spec: &LoadSpec) -> Result<(), String> {
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(|e| format!("RLIMIT_CORE: {e}"))?;
    setrlimit(
        Resource::RLIMIT_CPU,
        spec.cpu_seconds,
        spec.cpu_seconds.saturating_add(5),
    )
    .map_err(|e| format!("RLIMIT_CPU: {e}"))?;
    setrlimit(Resource::RLIMIT_AS, spec.address_space, spec.address_space)
        .map_err(|e| format!("RLIMIT_AS: {e}"))?;
    Ok(())
}

/// CPU seconds this process has used.
fn cpu_used() -> u64 {
    getrusage(UsageWho::RUSAGE_SELF)
        .map(|u| {
            let secs = u.user_time().tv_sec() + u.system_time().tv_sec();
            u64::try_from(secs).unwrap_or(0)
        })
        .unwrap_or(0)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Set in the environment of a test binary re-executed as a plugin host.
    const HOST_ENV: &str = "PORTSENTRY_LUA_HOST_TEST";

    /// The library's test binary, re-executed to run only [`lua_host_entry`].
    pub(crate) fn test_binary() -> HostProgram {
        HostProgram {
            program: PathBuf::from("/proc/self/exe"),
            args: [
                "--exact",
                "respond::lua::host::tests::lua_host_entry",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
                "-q",
            ]
            .into_iter()
            .map(OsString::from)
            .collect(),
            env: vec![(OsString::from(HOST_ENV), OsString::from("1"))],
        }
    }

    #[test]
    fn without_proc_the_host_is_the_binary_the_command_line_named() {
        let p = started_as().expect("argv[0] resolves");
        assert!(p.is_absolute() && p.is_file(), "{}", p.display());
        assert_eq!(
            std::fs::canonicalize(&p).unwrap(),
            std::fs::canonicalize("/proc/self/exe").unwrap()
        );
    }

    /// Not a test: the plugin host when this binary is re-executed by [`test_binary`].
    #[test]
    #[ignore = "entry point of the plugin host process in unit tests"]
    fn lua_host_entry() {
        if std::env::var_os(HOST_ENV).is_some() {
            std::process::exit(host_main());
        }
    }

    #[test]
    fn descendants_lists_children_and_grandchildren() {
        let mut child = Command::new("sh")
            .args(["-c", "sleep 5 & sleep 5"])
            .spawn()
            .expect("spawn sh");
        let pid = i32::try_from(child.id()).expect("pid");
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut found = Vec::new();
        while Instant::now() < deadline && found.len() < 2 {
            found = descendants(pid);
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(found.len(), 2, "{found:?}");
        let own = descendants(i32::try_from(std::process::id()).expect("pid"));
        assert!(own.contains(&pid), "{own:?}");
        kill_tree(&mut child);
        assert!(descendants(pid).is_empty());
    }
}
