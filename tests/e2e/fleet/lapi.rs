//! A real CrowdSec Local API for the fleet tests and bench: Debian's `crowdsec` 1.4.6
//! binaries (unpacked by scripts/setup-deps.sh, never installed), run LAPI-only (no agent,
//! no hub, no central API) inside a test's network namespace, with its own temp dir, a
//! machine login and bouncer keys created with `cscli` before it starts. Killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::lab::Lab;

/// Where scripts/setup-deps.sh unpacks the crowdsec package.
pub const CROWDSEC_ROOT: &str = "/var/cache/portsentry-test/crowdsec";
/// The machine login the daemon pushes with.
pub const MACHINE: &str = "portsentry-test";
/// Its password.
pub const PASSWORD: &str = "machine-password-for-tests";
/// The bouncer key the test itself reads decisions with.
const READER_KEY: &str = "reader-key-for-tests";

/// One LAPI, listening on `listen` inside namespace `ns`.
pub struct LapiServer {
    ns: String,
    listen: String,
    /// Its temp dir (config, database, log).
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

fn bin(name: &str) -> PathBuf {
    let path = Path::new(CROWDSEC_ROOT).join("usr/bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: the fleet tests need Debian's crowdsec binaries, unpacked by \
         scripts/setup-deps.sh (apt-get download crowdsec && dpkg -x … {CROWDSEC_ROOT})",
        path.display()
    );
    path
}

impl LapiServer {
    /// Writes the config and creates the credentials: machine [`MACHINE`] and one bouncer
    /// key per name in `bouncers` (key `NAME-key`), plus the test's reader. Not started yet.
    pub fn new(ns: &str, listen: &str, bouncers: &[&str]) -> LapiServer {
        let dir = tempfile::tempdir().expect("tempdir");
        let t = dir.path().display().to_string();
        std::fs::create_dir_all(dir.path().join("data")).expect("mkdir data");
        std::fs::write(
            dir.path().join("config.yaml"),
            format!(
                "common: {{daemonize: false, log_media: stdout, log_level: info, working_dir: .}}\n\
                 config_paths: {{config_dir: {t}/, data_dir: {t}/data/, simulation_path: \
                 {t}/simulation.yaml, hub_dir: {t}/hub/, index_path: {t}/hub/.index.json}}\n\
                 db_config: {{type: sqlite, db_path: {t}/data/crowdsec.db, use_wal: true, \
                 max_open_conns: 1}}\n\
                 api:\n  client: {{credentials_path: {t}/local_api_credentials.yaml}}\n  \
                 server: {{listen_uri: \"{listen}\", profiles_path: {t}/profiles.yaml, \
                 trusted_ips: [127.0.0.1, \"::1\"]}}\n\
                 prometheus: {{enabled: false}}\n"
            ),
        )
        .expect("write config.yaml");
        std::fs::write(
            dir.path().join("profiles.yaml"),
            "name: default_ip_remediation\nfilters:\n - Alert.Remediation == true && \
             Alert.GetScope() == \"Ip\"\ndecisions:\n - type: ban\n   duration: 4h\n\
             on_success: break\n",
        )
        .expect("write profiles.yaml");
        std::fs::write(dir.path().join("simulation.yaml"), "simulation: off\n")
            .expect("write simulation.yaml");
        let lapi = LapiServer {
            ns: ns.to_string(),
            listen: listen.to_string(),
            dir,
            child: None,
        };
        let creds = lapi.dir.path().join("local_api_credentials.yaml");
        let creds = creds.display().to_string();
        lapi.cscli_ok(&[
            "machines",
            "add",
            MACHINE,
            "--password",
            PASSWORD,
            "-f",
            &creds,
            "--force",
        ]);
        lapi.cscli_ok(&["bouncers", "add", "test-reader", "-k", READER_KEY]);
        for b in bouncers {
            lapi.cscli_ok(&["bouncers", "add", b, "-k", &format!("{b}-key")]);
        }
        lapi
    }

    /// `http://LISTEN`.
    pub fn url(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Starts it and waits (10 s at most) until `/health` answers.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "the LAPI is already running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("crowdsec.log"))
            .expect("open the LAPI log");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns])
            .arg(bin("crowdsec"))
            .arg("-c")
            .arg(self.dir.path().join("config.yaml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start crowdsec");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self
                .curl(&["-s", "-m", "1", &format!("{}/health", self.url())])
                .contains("up")
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the LAPI did not come up in 10 s: {}", self.log());
    }

    /// Stops it: SIGTERM, then SIGKILL after 3 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // `ip netns exec` execs crowdsec: the child's pid is crowdsec's.
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// The LAPI's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("crowdsec.log")).unwrap_or_default()
    }

    /// Runs `cscli` on this LAPI's config inside its namespace.
    pub fn cscli(&self, args: &[&str]) -> Output {
        Command::new("timeout")
            .args(["30", "ip", "netns", "exec", &self.ns])
            .arg(bin("cscli"))
            .arg("-c")
            .arg(self.dir.path().join("config.yaml"))
            .args(args)
            .output()
            .expect("run cscli")
    }

    /// [`LapiServer::cscli`], panicking with its output when it fails.
    pub fn cscli_ok(&self, args: &[&str]) -> String {
        let out = self.cscli(args);
        assert!(
            out.status.success(),
            "cscli {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn curl(&self, args: &[&str]) -> String {
        let out = Command::new("timeout")
            .args(["10", "ip", "netns", "exec", &self.ns, "curl"])
            .args(args)
            .output()
            .expect("run curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `GET /v1/decisions` (every active decision, or those matching `?ip=`), as the
    /// test's own bouncer; `null` is an empty list.
    pub fn decisions(&self, ip: Option<&str>) -> Vec<serde_json::Value> {
        let mut url = format!("{}/v1/decisions", self.url());
        if let Some(ip) = ip {
            url.push_str(&format!("?ip={ip}"));
        }
        let body = self.curl(&[
            "-s",
            "-m",
            "5",
            "-H",
            &format!("X-Api-Key: {READER_KEY}"),
            &url,
        ]);
        match serde_json::from_str::<serde_json::Value>(&body) {
            Ok(serde_json::Value::Array(list)) => list,
            Ok(serde_json::Value::Null) => Vec::new(),
            other => panic!("GET {url}: {other:?}: {body}"),
        }
    }

    /// Active decisions naming exactly `value`.
    pub fn decisions_for(&self, value: &str) -> Vec<serde_json::Value> {
        self.decisions(None)
            .into_iter()
            .filter(|d| d["value"] == value)
            .collect()
    }

    /// Writes the daemon's secret files (mode 0600) into `dir`: returns the config lines
    /// for push (`push`) and pull with `bouncer`'s key (`bouncer`), polling every `poll`.
    pub fn daemon_config(
        &self,
        dir: &Path,
        push: bool,
        bouncer: Option<&str>,
        poll: &str,
    ) -> String {
        use std::os::unix::fs::PermissionsExt;
        let mut lines = format!(
            "CROWDSEC_LAPI_URL=\"{}\"\nCROWDSEC_POLL_INTERVAL=\"{poll}\"\n",
            self.url()
        );
        let secret = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, format!("{text}\n")).expect("write secret");
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                .expect("chmod secret");
            path.display().to_string()
        };
        if push {
            let pw = secret("crowdsec.password", PASSWORD);
            lines.push_str(&format!(
                "CROWDSEC_MACHINE_ID=\"{MACHINE}\"\nCROWDSEC_PASSWORD_FILE=\"{pw}\"\n"
            ));
        }
        if let Some(b) = bouncer {
            let key = secret("crowdsec.bouncer-key", &format!("{b}-key"));
            lines.push_str(&format!("CROWDSEC_BOUNCER_KEY_FILE=\"{key}\"\n"));
        }
        lines
    }
}

impl Drop for LapiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Classic TCP traps blocked with an unreachable route, the fleet lines first.
pub fn daemon_config(lab: &Lab, fleet: &str) -> String {
    lab.write_config(&format!(
        "{fleet}\n\
         TCP_PORTS=\"79,111,31337\"\n\
         BLOCK_TCP=\"1\"\n\
         BLOCK_TIMEOUT=\"1h\"\n\
         KILL_ROUTE=\"/sbin/ip route add unreachable $TARGET$\"\n"
    ))
    .display()
    .to_string()
}

/// An `unreachable` route for `target` (address or network) in the defender's table.
pub fn has_route(lab: &Lab, target: &str) -> bool {
    let prefix = format!("unreachable {target}");
    lab.def_routes()
        .lines()
        .any(|l| l == prefix || l.starts_with(&format!("{prefix} ")))
}

/// Polls (every 10 ms) until `cond` holds; the time it took, or `None` after `limit`.
pub fn time_until(limit: Duration, mut cond: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if cond() {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    None
}
