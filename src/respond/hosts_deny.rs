//! `KILL_HOSTS_DENY`: a TCP-wrappers line appended to `HOSTS_DENY_FILE` (`/etc/hosts.deny`).

use std::fs::OpenOptions;
use std::io::Write;
use std::path::PathBuf;

use super::command::expand_macros;
use super::{Action, Outcome, Responder, ResponseContext};
use crate::report;

/// Appends the configured line once per host; an identical line already in the file is not
/// written again (restarts and re-scans must not grow the file).
pub struct HostsDenyResponder {
    template: String,
    file: PathBuf,
}

impl HostsDenyResponder {
    /// A responder for one config generation.
    pub fn new(template: &str, file: PathBuf) -> HostsDenyResponder {
        HostsDenyResponder {
            template: template.to_string(),
            file,
        }
    }

    fn append(&self, line: &str) -> std::io::Result<bool> {
        let existing = match std::fs::read(&self.file) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(e),
        };
        let text = String::from_utf8_lossy(&existing);
        if text.lines().any(|l| l.trim_end() == line) {
            return Ok(false);
        }
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.file)?;
        let mut out = String::new();
        if !existing.is_empty() && !existing.ends_with(b"\n") {
            out.push('\n');
        }
        out.push_str(line);
        out.push('\n');
        f.write_all(out.as_bytes())?;
        f.flush()?;
        Ok(true)
    }
}

impl Responder for HostsDenyResponder {
    fn name(&self) -> String {
        "hosts_deny".to_string()
    }

    fn respond(&mut self, ctx: &ResponseContext<'_>) -> Outcome {
        let line = expand_macros(&self.template, ctx);
        match self.append(&line) {
            Ok(written) => {
                log::info!("{}", report::blocked_via_wrappers(ctx.target_text(), &line));
                let note = if written {
                    ""
                } else {
                    " (line was already present)"
                };
                Outcome::Done(Action {
                    responder: self.name(),
                    detail: format!("{}: {line}{note}", self.file.display()),
                    undo: Default::default(),
                })
            }
            Err(e) => Outcome::Failed(format!("cannot append to {}: {e}", self.file.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Mode, ProbeKind};
    use crate::respond::respond_once;

    #[test]
    fn line_is_appended_once_and_missing_newline_is_mended() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.deny");
        std::fs::write(&file, "sshd: 10.0.0.1").unwrap();
        let mut r = HostsDenyResponder::new("ALL: $TARGET$ : DENY", file.clone());
        for _ in 0..2 {
            let outcome = respond_once(&mut r, "10.77.1.2", 1, Mode::Tcp, ProbeKind::Connect);
            assert!(matches!(outcome, Outcome::Done(_)), "{outcome:?}");
        }
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "sshd: 10.0.0.1\nALL: 10.77.1.2 : DENY\n"
        );
    }

    #[test]
    fn unwritable_file_is_a_failure() {
        let mut r = HostsDenyResponder::new("ALL: $TARGET$", "/nonexistent/dir/hosts.deny".into());
        let outcome = respond_once(&mut r, "10.77.1.2", 1, Mode::Tcp, ProbeKind::Connect);
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    }
}
