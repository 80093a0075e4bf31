use super::*;

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}

fn sh(script: &str, timeout: Duration) -> Finished {
    let argv = argv(&["/bin/sh", "-c", script]);
    run(&Job {
        argv: &argv,
        stdin: None,
        timeout,
        output_cap: 4096,
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The pids a script printed as `<label> <pid>` lines.
fn pid_of(output: &str, label: &str) -> i32 {
    output
        .lines()
        .find_map(|l| l.strip_prefix(label)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no '{label}' pid in {output:?}"))
}

/// True when `pid` is gone or a zombie (killed, not yet reaped by whoever adopted it).
fn dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

/// Waits up to two seconds for `pid` to die.
fn dies(pid: i32) -> bool {
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        if dead(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

fn kill(pid: i32) {
    let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
}

#[test]
fn exit_status_and_both_streams_are_reported() {
    let r = sh("echo out; echo err >&2; exit 3", Duration::from_secs(5));
    assert_eq!(r.ending, Ending::Exited(3));
    assert_eq!(text(&r.stdout), "out\n");
    assert_eq!(text(&r.stderr), "err\n");
}

#[test]
fn a_signal_is_reported_as_such() {
    let r = sh("kill -TERM $$", Duration::from_secs(5));
    assert_eq!(r.ending, Ending::Signaled(15));
}

#[test]
fn environment_is_clean_and_path_is_fixed() {
    // SAFETY: test-only; no other test reads this variable.
    unsafe { std::env::set_var("PORTSENTRY_PROCESS_SECRET", "leak") };
    let r = run(&Job {
        argv: &argv(&["env"]),
        stdin: None,
        timeout: Duration::from_secs(5),
        output_cap: 4096,
    });
    let mut vars: Vec<String> = text(&r.stdout).lines().map(String::from).collect();
    vars.sort();
    assert_eq!(
        vars,
        ["LC_ALL=C".to_string(), format!("PATH={COMMAND_PATH}")]
    );
}

#[test]
fn stdin_larger_than_a_pipe_is_fed_without_deadlock() {
    // 1 MiB in, its length out: the runner must write and read in turn.
    let input = vec![b'x'; 1 << 20];
    let r = run(&Job {
        argv: &argv(&["/bin/sh", "-c", "wc -c; head -c 300000 /dev/zero"]),
        stdin: Some(&input),
        timeout: Duration::from_secs(10),
        output_cap: 16,
    });
    assert_eq!(r.ending, Ending::Exited(0));
    assert_eq!(text(&r.stdout), "1048576\n\0\0\0\0\0\0\0\0");
}

#[test]
fn output_is_capped_per_stream_and_the_program_still_finishes() {
    let r = run(&Job {
        argv: &argv(&["head", "-c", "200000", "/dev/zero"]),
        stdin: None,
        timeout: Duration::from_secs(5),
        output_cap: 1000,
    });
    assert_eq!(r.ending, Ending::Exited(0));
    assert_eq!(r.stdout.len(), 1000);
}

#[test]
fn missing_program_or_empty_argv_is_a_failure_not_a_panic() {
    let r = run(&Job {
        argv: &argv(&["no-such-program-portsentry"]),
        stdin: None,
        timeout: Duration::from_secs(5),
        output_cap: 10,
    });
    assert_eq!(
        r.ending,
        Ending::Failed(format!(
            "no-such-program-portsentry: not found in {COMMAND_PATH}"
        ))
    );
    let r = run(&Job {
        argv: &[],
        stdin: None,
        timeout: Duration::from_secs(5),
        output_cap: 10,
    });
    assert!(matches!(r.ending, Ending::Failed(_)), "{r:?}");
}

#[test]
fn timeout_kills_the_whole_process_group() {
    let started = Instant::now();
    let r = sh(
        "sleep 30 & echo \"bg $!\"; sleep 30; echo never",
        Duration::from_millis(300),
    );
    assert_eq!(r.ending, Ending::TimedOut);
    assert!(started.elapsed() < Duration::from_secs(5), "{r:?}");
    let out = text(&r.stdout);
    assert!(!out.contains("never"), "{out}");
    assert!(dies(pid_of(&out, "bg")), "the background sleep survived");
}

#[test]
fn grandchildren_holding_the_output_are_not_waited_for() {
    // The case: one daemonized grandchild (own session, output elsewhere), one
    // background child holding stdout. Both lines come back at once; the background child,
    // still in the group, is killed; the setsid one cannot be reached and is left alone.
    // The shell waits (2 s at most) until `setsid` has left the group, its session id
    // (field 6 of /proc/PID/stat) its own pid: a fixed 0.2 s sleep lost that race when the
    // whole suite loaded both cores, and the group kill then took the setsid child too.
    let started = Instant::now();
    let r = sh(
        "echo before; setsid sleep 300 >/dev/null 2>&1 & s=$!; echo \"setsid $s\"; \
         sleep 300 & echo \"bg $!\"; \
         for i in $(seq 200); do [ \"$(cut -d' ' -f6 /proc/$s/stat 2>/dev/null)\" = \"$s\" ] && break; sleep 0.01; done; \
         echo after",
        Duration::from_secs(10),
    );
    let elapsed = started.elapsed();
    let out = text(&r.stdout);
    let (setsid, bg) = (pid_of(&out, "setsid"), pid_of(&out, "bg"));
    assert_eq!(r.ending, Ending::Exited(0));
    assert!(
        out.starts_with("before\n") && out.ends_with("after\n"),
        "{out}"
    );
    assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
    assert!(dies(bg), "the background child holding stdout survived");
    // Positive control for `dead`: the setsid grandchild really is alive, then killed here.
    assert!(
        !dead(setsid),
        "the setsid grandchild was expected to be running"
    );
    kill(setsid);
    assert!(dies(setsid));
}

/// Threads of this process.
fn threads() -> usize {
    std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count())
}

/// Set in the environment of the re-executed test binary that runs [`thread_count_probe`].
const PROBE_ENV: &str = "PORTSENTRY_THREAD_PROBE";

/// Runs 50 commands that leave grandchildren and prints the thread count before and after.
/// Run alone in its own process by [`no_thread_outlives_a_run`] (other tests of this binary
/// start threads of their own, which would blur the count).
#[test]
#[ignore = "run by no_thread_outlives_a_run in a process of its own"]
fn thread_count_probe() {
    if std::env::var_os(PROBE_ENV).is_none() {
        return;
    }
    let before = threads();
    let mut outputs = 0;
    for _ in 0..50 {
        let r = sh(
            "echo before; setsid sleep 30 >/dev/null 2>&1 & echo \"setsid $!\"; \
             sleep 30 & echo after",
            Duration::from_secs(10),
        );
        let out = text(&r.stdout);
        kill(pid_of(&out, "setsid"));
        if out.starts_with("before\n") && out.ends_with("after\n") {
            outputs += 1;
        }
    }
    println!(
        "THREADS before={before} after={} outputs={outputs}",
        threads()
    );
}

#[test]
fn no_thread_outlives_a_run() {
    let Ok(exe) = std::env::current_exe() else {
        panic!("cannot find the test binary");
    };
    let started = Instant::now();
    let out = std::process::Command::new(exe)
        .args([
            "respond::process::tests::thread_count_probe",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(PROBE_ENV, "1")
        .output()
        .unwrap();
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", text(&out.stderr));
    let line = stdout
        .lines()
        .find_map(|l| l.find("THREADS ").map(|i| &l[i..]))
        .unwrap_or_else(|| panic!("no THREADS line in {stdout}"));
    let numbers: Vec<usize> = line
        .split_whitespace()
        .filter_map(|w| w.split_once('=')?.1.parse().ok())
        .collect();
    let [before, after, outputs] = numbers[..] else {
        panic!("{line}")
    };
    assert_eq!(outputs, 50, "some runs lost their output: {line}");
    assert_eq!(before, after, "threads grew: {line}");
    assert!(before > 0, "{line}");
    // 50 runs, each returning at once rather than after a grace period per run.
    assert!(started.elapsed() < Duration::from_secs(20), "{line}");
}
