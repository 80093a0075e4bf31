//! The modes file: Debian's `/etc/default/portsentry` names the modes its init script starts
//! (`TCP_MODE` / `UDP_MODE`) when the command line gives none. Read at start and again at
//! each reload (to say that a change needs a restart), so it lives with the other files the
//! daemon reads rather than in the command line.

use std::path::Path;

use crate::event::{Mode, Proto};

/// Reads `TCP_MODE` / `UDP_MODE` from Debian's defaults file (same `KEY="value"` syntax as
/// portsentry.conf).
pub fn modes_from_file(path: &Path) -> Result<Vec<Mode>, String> {
    let text =
        super::read::read_regular_text(path, super::read::TEXT_CAP, "modes file").map_err(|e| {
            format!(
                "no mode given on the command line and {} cannot be read ({}); \
                 pass -tcp, -udp, -stcp, -sudp, -atcp or -audp",
                path.display(),
                e.reason()
            )
        })?;
    let raw = super::parse(path, &text).map_err(|e| e.to_string())?;
    let mut modes = Vec::new();
    for key in ["TCP_MODE", "UDP_MODE"] {
        let Some(entry) = raw.entries.iter().find(|e| e.key == key) else {
            continue;
        };
        let value = entry.value.trim();
        if value.is_empty() {
            continue;
        }
        match Mode::from_name(value) {
            Some(m) if (key == "TCP_MODE") == (m.proto() == Proto::Tcp) => modes.push(m),
            _ => {
                return Err(format!(
                    "{}:{}: {key}: \"{value}\": expected {}",
                    path.display(),
                    entry.line,
                    if key == "TCP_MODE" {
                        "tcp, stcp or atcp"
                    } else {
                        "udp, sudp or audp"
                    }
                ));
            }
        }
    }
    if modes.is_empty() {
        return Err(format!(
            "no mode given on the command line and {} sets neither TCP_MODE nor UDP_MODE; \
             pass -tcp, -udp, -stcp, -sudp, -atcp or -audp",
            path.display()
        ));
    }
    Ok(modes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_come_from_the_debian_defaults_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("portsentry");
        std::fs::write(&f, "# comment\nTCP_MODE=\"atcp\"\nUDP_MODE=\"sudp\"\n").unwrap();
        assert_eq!(modes_from_file(&f).unwrap(), vec![Mode::Atcp, Mode::Sudp]);
        std::fs::write(&f, "TCP_MODE=\"udp\"\n").unwrap();
        let err = modes_from_file(&f).unwrap_err();
        assert!(
            err.ends_with(":1: TCP_MODE: \"udp\": expected tcp, stcp or atcp"),
            "{err}"
        );
        std::fs::write(&f, "# nothing\n").unwrap();
        assert!(
            modes_from_file(&f)
                .unwrap_err()
                .contains("neither TCP_MODE nor UDP_MODE")
        );
        assert!(
            modes_from_file(&dir.path().join("missing"))
                .unwrap_err()
                .contains("cannot be read")
        );
        let err = crate::config::read::tests::within_5s(|| {
            modes_from_file(Path::new("/dev/zero")).unwrap_err()
        });
        assert!(err.contains("is a character device"), "{err}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let err =
            crate::config::read::tests::within_5s(move || modes_from_file(&fifo).unwrap_err());
        assert!(err.contains("is a FIFO"), "{err}");
    }
}
