//! The one way the daemon runs a program: `KILL_ROUTE` / `KILL_RUN_CMD` and their undo
//! commands ([`super::command`]) and the Lua `portsentry.exec` ([`super::lua::exec`]) all
//! come here.
//!
//! Every program gets the same treatment: a clean environment (only [`COMMAND_PATH`] and
//! `LC_ALL=C`), no standard input unless bytes are given, its own process group, and a hard
//! timeout that kills the whole group. Its real exit status is reported.
//!
//! Output is collected by the calling thread with `poll(2)`: no reader threads, so nothing
//! can outlive the call. The collection ends when the direct child has exited, not when the
//! pipes reach end-of-file: a command that leaves a background process holding its output
//! (`sleep 300 &`) returns at once with what it printed. What is immediately readable is
//! then taken, the pipes are closed, and, when something still held them, the process group
//! is killed (a process that left the group with `setsid` cannot be reached that way: it is
//! simply not waited for).

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

/// PATH given to every program the daemon runs, also the directories searched for a program
/// named without a slash. Fixed, so a command behaves the same whatever environment the
/// daemon was started from, and nothing from that environment leaks into firewall commands.
pub const COMMAND_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Longest the waiting thread sleeps in `poll` before looking whether the child has exited
/// while something else still holds its pipes.
const TICK: Duration = Duration::from_millis(10);

/// What to run and within which limits.
#[derive(Debug, Clone, Copy)]
pub struct Job<'a> {
    /// Program and arguments, never interpreted by a shell (pass `/bin/sh -c …` for one).
    pub argv: &'a [String],
    /// Bytes written to standard input, which is then closed; `None` gives `/dev/null`.
    pub stdin: Option<&'a [u8]>,
    /// Hard limit: when it passes, the program's whole process group is killed.
    pub timeout: Duration,
    /// Bytes kept per stream (stdout, stderr); the rest is read and thrown away, so the
    /// program never blocks on a full pipe.
    pub output_cap: usize,
}

/// How a program ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// It exited with this status.
    Exited(i32),
    /// A signal (not ours) killed it.
    Signaled(i32),
    /// It ran past the timeout; its process group was killed.
    TimedOut,
    /// It could not be started (not found, not executable…) or waited for.
    Failed(String),
}

/// A finished program.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finished {
    /// How it ended.
    pub ending: Ending,
    /// The start of its standard output (at most the job's cap).
    pub stdout: Vec<u8>,
    /// The start of its standard error (at most the job's cap).
    pub stderr: Vec<u8>,
    /// Wall-clock time from start to end.
    pub elapsed: Duration,
}

/// Resolves a program name against [`COMMAND_PATH`] (names with a slash are used as given),
/// so that "not found" names the directories searched.
pub fn resolve_program(name: &str) -> Result<String, String> {
    if name.is_empty() {
        return Err("empty program name".to_string());
    }
    if name.contains('/') {
        return Ok(name.to_string());
    }
    COMMAND_PATH
        .split(':')
        .map(|dir| std::path::Path::new(dir).join(name))
        .find(|candidate| candidate.is_file())
        .map(|p| p.to_string_lossy().into_owned())
        .ok_or_else(|| format!("{name}: not found in {COMMAND_PATH}"))
}

/// One output pipe: the bytes kept so far, and the pipe until it reaches end-of-file.
struct Sink<R> {
    pipe: Option<R>,
    kept: Vec<u8>,
    cap: usize,
}

impl<R: Read + AsFd> Sink<R> {
    fn new(pipe: Option<R>, cap: usize) -> Sink<R> {
        let pipe = pipe.filter(|p| set_nonblocking(p).is_ok());
        Sink {
            pipe,
            kept: Vec::new(),
            cap,
        }
    }

    /// Reads what is available now, keeping up to the cap; closes the pipe at end-of-file
    /// or on an error.
    fn read_available(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => {
                    self.pipe = None;
                    return;
                }
                Ok(n) => {
                    let room = self.cap.saturating_sub(self.kept.len());
                    self.kept.extend_from_slice(&buf[..n.min(room)]);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.pipe = None;
                    return;
                }
            }
        }
    }
}

/// Standard input still to be written.
struct Feed<'a> {
    pipe: Option<ChildStdin>,
    rest: &'a [u8],
}

impl Feed<'_> {
    /// Writes what the pipe takes now; closes it when all is written or the reader is gone
    /// (a program that exits without reading gives EPIPE: not a failure to report).
    fn write_available(&mut self) {
        let Some(pipe) = self.pipe.as_mut() else {
            return;
        };
        while !self.rest.is_empty() {
            match pipe.write(self.rest) {
                Ok(n) => self.rest = &self.rest[n..],
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(_) => break,
            }
        }
        self.pipe = None;
    }
}

fn set_nonblocking(fd: &impl AsFd) -> nix::Result<()> {
    let flags = OFlag::from_bits_truncate(fcntl(fd.as_fd(), FcntlArg::F_GETFL)?);
    fcntl(fd.as_fd(), FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(|_| ())
}

/// Kills the process group `child` leads (it was made leader at spawn). The group outlives
/// its leader while members remain, and its id is not reused meanwhile.
fn kill_group(child: &Child) {
    if let Ok(pid) = i32::try_from(child.id()) {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Runs `job` to its end or its timeout. Never panics, starts no thread, and returns within
/// the timeout plus a few milliseconds whatever the program leaves behind.
pub fn run(job: &Job<'_>) -> Finished {
    let started = Instant::now();
    let failed = |why: String| Finished {
        ending: Ending::Failed(why),
        stdout: Vec::new(),
        stderr: Vec::new(),
        elapsed: started.elapsed(),
    };
    let Some((first, args)) = job.argv.split_first() else {
        return failed("empty argument list".to_string());
    };
    let program = match resolve_program(first) {
        Ok(p) => p,
        Err(e) => return failed(e),
    };
    let mut cmd = Command::new(&program);
    cmd.args(args)
        .env_clear()
        .env("PATH", COMMAND_PATH)
        .env("LC_ALL", "C")
        .stdin(if job.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return failed(format!("{program}: {e}")),
    };
    let mut out = Sink::new(child.stdout.take(), job.output_cap);
    let mut err = Sink::new(child.stderr.take(), job.output_cap);
    let mut feed = Feed {
        pipe: child.stdin.take().filter(|p| set_nonblocking(p).is_ok()),
        rest: job.stdin.unwrap_or_default(),
    };
    let deadline = started + job.timeout;
    // `None`: the child has exited but is not reaped yet, so its process group id cannot
    // have been reused and the group can still be killed safely.
    let mut nap = Duration::from_millis(1);
    let ended = loop {
        match exited(&child) {
            Ok(true) => break None,
            Ok(false) => {}
            Err(e) => {
                kill_group(&child);
                let _ = child.wait();
                break Some(Ending::Failed(format!("wait failed: {e}")));
            }
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(&child);
            let _ = child.kill();
            let _ = child.wait();
            break Some(Ending::TimedOut);
        }
        if out.pipe.is_none() && err.pipe.is_none() && feed.pipe.is_none() {
            // Nothing left to collect: look again soon (no SIGCHLD handler of our own,
            // nothing reaped behind the back of `exited`). The pipes usually close just
            // before the exit: 1 ms first, so a quick command costs no more than that.
            std::thread::sleep((deadline - now).min(nap));
            nap = (nap * 2).min(TICK);
            continue;
        }
        wait_for_io(&mut out, &mut err, &mut feed, (deadline - now).min(TICK));
    };
    // The direct child is gone: take what is already there, without waiting for whatever
    // still holds a pipe; kill what is left of its group if something does.
    out.read_available();
    err.read_available();
    let ending = match ended {
        Some(ending) => ending,
        None => {
            if out.pipe.is_some() || err.pipe.is_some() {
                kill_group(&child);
            }
            match child.wait() {
                Ok(status) => ending_of(status),
                Err(e) => Ending::Failed(format!("wait failed: {e}")),
            }
        }
    };
    Finished {
        ending,
        stdout: out.kept,
        stderr: err.kept,
        elapsed: started.elapsed(),
    }
}

/// True once the child has exited, without reaping it (`waitid` with `WNOWAIT`).
fn exited(child: &Child) -> nix::Result<bool> {
    let pid = i32::try_from(child.id()).map_err(|_| nix::errno::Errno::ESRCH)?;
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    Ok(!matches!(
        waitid(Id::Pid(Pid::from_raw(pid)), flags)?,
        WaitStatus::StillAlive
    ))
}

fn ending_of(status: ExitStatus) -> Ending {
    match (status.code(), status.signal()) {
        (Some(code), _) => Ending::Exited(code),
        (None, Some(sig)) => Ending::Signaled(sig),
        (None, None) => Ending::Failed("ended without a status".to_string()),
    }
}

/// Waits up to `wait` for a pipe to become ready and serves it.
fn wait_for_io<R: Read + AsFd>(
    out: &mut Sink<R>,
    err: &mut Sink<impl Read + AsFd>,
    feed: &mut Feed<'_>,
    wait: Duration,
) {
    let timeout = PollTimeout::try_from(wait).unwrap_or(PollTimeout::ZERO);
    let (ready_out, ready_err, ready_in) = {
        let mut fds = Vec::with_capacity(3);
        let mut slots = [None; 3];
        if let Some(p) = &out.pipe {
            slots[0] = Some(fds.len());
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = &err.pipe {
            slots[1] = Some(fds.len());
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
        }
        if let Some(p) = &feed.pipe {
            slots[2] = Some(fds.len());
            fds.push(PollFd::new(p.as_fd(), PollFlags::POLLOUT));
        }
        if fds.is_empty() {
            return;
        }
        if poll(&mut fds, timeout).is_err() {
            return;
        }
        let ready = |slot: Option<usize>| {
            slot.and_then(|i| fds.get(i))
                .and_then(|fd| fd.revents())
                .is_some_and(|r| !r.is_empty())
        };
        (ready(slots[0]), ready(slots[1]), ready(slots[2]))
    };
    if ready_out {
        out.read_available();
    }
    if ready_err {
        err.read_available();
    }
    if ready_in {
        feed.write_available();
    }
}

#[cfg(test)]
mod tests;
