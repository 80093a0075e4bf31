//! `KILL_HOSTS_DENY`: a TCP-wrappers line appended to `HOSTS_DENY_FILE` (`/etc/hosts.deny`),
//! and [`remove_line`], which takes it out again when the block ends.
//!
//! Appends and removals in this process take one lock, so an expiry rewriting the file can
//! never lose a line a new block appends at the same moment.
//!
//! Both work on batches: [`append_lines`] writes the missing lines of many blocks in one
//! append, [`remove_lines`] takes the lines of many undone blocks out in one rewrite. To stay
//! idempotent an append must know which lines the file holds; rather than reread the whole
//! file for every batch (20,000 restored blocks made that quadratic), the lines this process
//! last saw are kept as hashes, trusted only while the file is exactly as it was left
//! (same device, inode, size and modification time): any other change, by hand or by
//! another process, makes the next append read the file again.

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::hash::{BuildHasher, RandomState};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ipnet::IpNet;

use super::command::expand_macros;
use super::{Action, Outcome, Responder, ResponseContext, Undo};
use crate::config::read::{FileStamp, HOSTS_DENY_CAP, ReadError, read_regular};
use crate::log_lines;
use crate::record::Target;

/// Serialises edits of deny files by this process (appends and removals both run on the
/// block manager's responder workers, several at once), and holds what the last append saw.
static EDIT_LOCK: Mutex<Option<Known>> = Mutex::new(None);

/// The lines of one deny file as this process last left it: a hash per line (8 bytes, not
/// the text; SipHash with a key of this process, so two lines colliding is a 2^-64 chance
/// per pair, not something a scanner can arrange), and whether the file ends with a newline.
struct Known {
    path: PathBuf,
    stamp: FileStamp,
    hasher: RandomState,
    lines: HashSet<u64>,
    ends_with_newline: bool,
}

impl Known {
    /// Reads `path` (missing: empty) and hashes its lines as [`is_line`] compares them.
    fn read(path: &Path) -> std::io::Result<Known> {
        let (bytes, stamp) = match std::fs::metadata(path) {
            Ok(meta) => {
                let bytes = read_hosts_deny(path)?;
                (bytes, Some(FileStamp::of(&meta)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Vec::new(), None),
            Err(e) => return Err(e),
        };
        let hasher = RandomState::new();
        let lines = bytes
            .split(|&b| b == b'\n')
            .map(|l| hasher.hash_one(line_key(l)))
            .collect();
        Ok(Known {
            path: path.to_path_buf(),
            // A missing file matches no stamp: it is read again next time (cheap).
            stamp: stamp.unwrap_or_else(FileStamp::never),
            hasher,
            lines,
            ends_with_newline: bytes.is_empty() || bytes.ends_with(b"\n"),
        })
    }

    fn holds(&self, line: &str) -> bool {
        self.lines.contains(&self.hasher.hash_one(line.as_bytes()))
    }
}

/// Appends to `file` each of `lines` it does not hold yet, in one write (a missing final
/// newline mended first); `true` per line written, `false` per line already there (or
/// earlier in `lines`). The file is read only when it is not as this process left it.
pub fn append_lines(file: &Path, lines: &[String]) -> std::io::Result<Vec<bool>> {
    let mut known_slot = crate::sync::lock(&EDIT_LOCK);
    let now = match std::fs::metadata(file) {
        Ok(meta) => Some(FileStamp::of(&meta)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e),
    };
    let fresh = known_slot
        .as_ref()
        .is_some_and(|k| k.path == file && Some(k.stamp) == now);
    if !fresh {
        *known_slot = None;
        *known_slot = Some(Known::read(file)?);
    }
    let Some(known) = known_slot.as_mut() else {
        return Err(std::io::Error::other("hosts.deny index missing"));
    };
    let mut written = Vec::with_capacity(lines.len());
    let mut out = String::new();
    let mut new_hashes = Vec::new();
    for line in lines {
        let hash = known.hasher.hash_one(line.as_bytes());
        let new = !known.holds(line) && !new_hashes.contains(&hash);
        if new {
            out.push_str(line);
            out.push('\n');
            new_hashes.push(hash);
        }
        written.push(new);
    }
    if out.is_empty() {
        return Ok(written);
    }
    if !known.ends_with_newline {
        out.insert(0, '\n');
    }
    // Until the write is known to have gone through, the index is not to be trusted.
    let mut known = known_slot
        .take()
        .ok_or_else(|| std::io::Error::other("index"))?;
    let mut f = OpenOptions::new().create(true).append(true).open(file)?;
    f.write_all(out.as_bytes())?;
    f.flush()?;
    let after = FileStamp::of(&f.metadata()?);
    // Trusted again only when nobody else wrote in between: our bytes are all that changed.
    let before_len = now.map_or(0, |s| s.size());
    if after.size() == before_len + out.len() as u64 {
        known.lines.extend(new_hashes);
        known.stamp = after;
        known.ends_with_newline = true;
        *known_slot = Some(known);
    }
    Ok(written)
}

/// What of a line of the file is compared with the responder's line: its text without
/// trailing blanks (and a CR), as a hand edit may leave them.
fn line_key(file_line: &[u8]) -> &[u8] {
    file_line.trim_ascii_end()
}

/// Reads the deny file: a regular file only, at most [`HOSTS_DENY_CAP`] (it is read whole to
/// add or take out one line).
fn read_hosts_deny(path: &Path) -> std::io::Result<Vec<u8>> {
    read_regular(path, HOSTS_DENY_CAP, "hosts.deny file").map_err(|e| match e {
        ReadError::Io { source, .. } => source,
        other => std::io::Error::other(other.to_string()),
    })
}

/// `$TARGET$` as tcp_wrappers reads it (hosts_access(5)): an IPv4 host as 1.2 wrote it
/// (`10.0.0.1`), an IPv4 network as `net/mask` (`10.0.0.0/255.255.255.0`: the only IPv4
/// network form hosts_access(5) documents; tcp_wrappers 7.6 reads `10.0.0.0/24` as a bad
/// net/mask and grants access to everyone inside, though Debian 12's tcpd 7.6.q-32 happens to
/// accept it), an IPv6 one in brackets (`[fd98::2]`,
/// `[fd98::]/64`: unbracketed, tcpd reads `fd98::2` as the host name `fd98` and grants
/// access).
pub fn wrappers_target(target: &Target) -> String {
    match target {
        IpNet::V4(net) if net.prefix_len() == net.max_prefix_len() => net.addr().to_string(),
        IpNet::V4(net) => format!("{}/{}", net.network(), net.netmask()),
        IpNet::V6(net) if net.prefix_len() == net.max_prefix_len() => format!("[{}]", net.addr()),
        IpNet::V6(net) => format!("[{}]/{}", net.trunc().addr(), net.prefix_len()),
    }
}

/// The other form of one token of a line that names a target, when it has one: an IPv6
/// address or network bracketed or bare, an IPv4 network as `net/mask` or `net/bits`.
fn other_form(token: &str) -> Option<String> {
    if let Some(inner) = token.strip_prefix('[') {
        let (addr, rest) = inner.split_once(']')?;
        addr.parse::<std::net::Ipv6Addr>().ok()?;
        return Some(format!("{addr}{rest}"));
    }
    let (addr, rest) = match token.split_once('/') {
        Some((a, bits)) => (a, Some(bits)),
        None => (token, None),
    };
    if addr.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some(format!(
            "[{addr}]{}",
            rest.map(|b| format!("/{b}")).unwrap_or_default()
        ));
    }
    let net = addr.parse::<std::net::Ipv4Addr>().ok()?;
    let rest = rest?;
    if let Ok(mask) = rest.parse::<std::net::Ipv4Addr>() {
        let bits = ipnet::ipv4_mask_to_prefix(mask).ok()?;
        Some(format!("{net}/{bits}"))
    } else {
        let bits = rest.parse::<u8>().ok()?;
        let mask = ipnet::Ipv4Net::new(net, bits).ok()?.netmask();
        Some(format!("{net}/{mask}"))
    }
}

/// `line` and the same line with each target in its other form (see [`other_form`]), so that
/// a removal takes out lines written before IPv6 targets were bracketed and IPv4 networks
/// written as `net/mask`, as well as after.
fn target_forms(line: &str) -> Vec<String> {
    let mut forms = vec![line.to_string()];
    for token in line.split(|c: char| c.is_whitespace() || c == ',') {
        let Some(other) = other_form(token) else {
            continue;
        };
        let more: Vec<String> = forms.iter().map(|f| f.replace(token, &other)).collect();
        forms.extend(more);
    }
    forms.dedup();
    forms
}

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

    /// The line this block writes.
    fn line(&self, ctx: &ResponseContext<'_>) -> String {
        let template = self
            .template
            .replace("$TARGET$", &wrappers_target(&ctx.target));
        expand_macros(&template, ctx)
    }
}

impl Responder for HostsDenyResponder {
    fn name(&self) -> String {
        "hosts_deny".to_string()
    }

    fn respond(&mut self, ctx: &ResponseContext<'_>) -> Outcome {
        self.respond_batch(std::slice::from_ref(ctx))
            .pop()
            .unwrap_or_else(|| Outcome::Failed("hosts.deny: no outcome".into()))
    }

    fn batched(&self) -> bool {
        true
    }

    /// Every block's line in one append.
    fn respond_batch(&mut self, ctxs: &[ResponseContext<'_>]) -> Vec<Outcome> {
        let lines: Vec<String> = ctxs.iter().map(|c| self.line(c)).collect();
        let written = match append_lines(&self.file, &lines) {
            Ok(w) => w,
            Err(e) => {
                let why = format!("cannot append to {}: {e}", self.file.display());
                return ctxs.iter().map(|_| Outcome::Failed(why.clone())).collect();
            }
        };
        ctxs.iter()
            .zip(lines)
            .zip(written)
            .map(|((ctx, line), written)| {
                log::info!(
                    "{}",
                    log_lines::blocked_via_wrappers(ctx.target_text(), &line)
                );
                let note = if written {
                    ""
                } else {
                    " (line was already present)"
                };
                Outcome::Done(Action {
                    responder: self.name(),
                    detail: format!("{}: {line}{note}", self.file.display()),
                    undo: Undo::RemoveLine {
                        file: self.file.clone(),
                        line,
                    },
                })
            })
            .collect()
    }
}

/// What [`remove_line`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// This many copies of the line were taken out.
    Removed(usize),
    /// The file holds no such line (any more).
    NotPresent,
    /// There is no such file (any more).
    NoFile,
}

/// Takes every copy of `line` out of `file`, leaving the other lines byte for byte as they
/// were. The new content is written to a temporary file beside the real one (a symlink is
/// followed to it), given the original's mode and owner, synced, then renamed over it: a
/// crash leaves the old file or the new one, never half of one.
///
/// Where that cannot be done because the file is writable but its directory is not — the
/// systemd unit's `ProtectSystem=strict` with `ReadWritePaths=/etc/hosts.deny` makes `/etc`
/// read-only and the file a bind mount, which nothing can be renamed over — the file is
/// rewritten in place instead (see `rewrite_in_place`).
pub fn remove_line(file: &Path, line: &str) -> std::io::Result<Removal> {
    let mut one = remove_lines(file, &[line])?;
    one.pop()
        .ok_or_else(|| std::io::Error::other("hosts.deny: no removal"))
}

/// [`remove_line`] for many lines in one rewrite: one [`Removal`] per line, in order (a
/// line given twice is counted for the first).
pub fn remove_lines(file: &Path, lines: &[&str]) -> std::io::Result<Vec<Removal>> {
    let mut known = crate::sync::lock(&EDIT_LOCK);
    let real = match std::fs::canonicalize(file) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(lines.iter().map(|_| Removal::NoFile).collect());
        }
        Err(e) => return Err(e),
    };
    let bytes = read_hosts_deny(&real)?;
    // Every form of every line, to the first line it stands for.
    let forms: Vec<Vec<String>> = lines.iter().map(|l| target_forms(l)).collect();
    let mut owner: HashMap<&[u8], usize> = HashMap::new();
    for (i, fs) in forms.iter().enumerate() {
        for f in fs {
            owner.entry(f.as_bytes()).or_insert(i);
        }
    }
    let mut kept = Vec::with_capacity(bytes.len());
    let mut removed = vec![0usize; lines.len()];
    for piece in bytes.split_inclusive(|&b| b == b'\n') {
        let file_line = piece.strip_suffix(b"\n").unwrap_or(piece);
        match owner.get(line_key(file_line)) {
            Some(&i) => removed[i] += 1,
            None => kept.extend_from_slice(piece),
        }
    }
    if removed.iter().any(|&n| n > 0) {
        // The file changes under the index: the next append reads it again.
        *known = None;
        replace_contents(&real, &kept)?;
    }
    Ok(removed
        .into_iter()
        .map(|n| {
            if n > 0 {
                Removal::Removed(n)
            } else {
                Removal::NotPresent
            }
        })
        .collect())
}

/// Replaces `path`'s contents, keeping its permissions and owner: atomically by rename, or in
/// place when the directory refuses the temporary file or the rename.
fn replace_contents(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    match replace_by_rename(path, contents) {
        Err(e) if directory_refuses(&e) => {
            log::debug!(
                "cannot replace {} by rename ({e}); rewriting it in place",
                path.display()
            );
            rewrite_in_place(path, contents)
        }
        other => other,
    }
}

/// Errors that mean "this directory takes no new file or no rename over this one" (read-only
/// file system, a bind-mounted file, no write permission on the directory), so that the file
/// itself may still be writable.
fn directory_refuses(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EROFS | libc::EBUSY | libc::EXDEV | libc::EACCES | libc::EPERM)
    )
}

/// Rewrites `path` through the same inode: owner, mode and any bind mount on it stay as they
/// are. Not atomic, so only the fallback: the new content is never longer than the old (lines
/// are only taken out), it is written from the start and the file then cut to its length, and
/// the time in between is one write. A crash there can leave a stale tail of old lines, never
/// an empty file.
fn rewrite_in_place(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let f = OpenOptions::new().write(true).open(path)?;
    f.write_all_at(contents, 0)?;
    f.set_len(contents.len() as u64)?;
    f.sync_all()
}

/// Atomically replaces `path`'s contents by renaming a new file over it.
fn replace_by_rename(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temp = dir.join(format!(".{name}.portsentry.{}", std::process::id()));
    let written = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&temp)?;
        f.write_all(contents)?;
        if (meta.uid(), meta.gid()) != current_owner(&f)? {
            std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        }
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        f.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    // The rename is durable once the directory is synced too.
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

fn current_owner(f: &File) -> std::io::Result<(u32, u32)> {
    let m = f.metadata()?;
    Ok((m.uid(), m.gid()))
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
            match outcome {
                Outcome::Done(a) => assert_eq!(
                    a.undo,
                    Undo::RemoveLine {
                        file: file.clone(),
                        line: "ALL: 10.77.1.2 : DENY".into()
                    },
                    "the undo is recorded whether or not the line was already there"
                ),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "sshd: 10.0.0.1\nALL: 10.77.1.2 : DENY\n"
        );
    }

    #[test]
    fn ipv6_targets_are_bracketed_and_ipv4_lines_stay_as_1_2_wrote_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.deny");
        let mut r = HostsDenyResponder::new("ALL: $TARGET$ : DENY", file.clone());
        respond_once(&mut r, "fd98::2", 1, Mode::Tcp, ProbeKind::Connect);
        respond_once(&mut r, "10.77.1.2", 1, Mode::Tcp, ProbeKind::Connect);
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "ALL: [fd98::2] : DENY\nALL: 10.77.1.2 : DENY\n"
        );
        let net: Target = "fd98::/64".parse().unwrap();
        assert_eq!(wrappers_target(&net), "[fd98::]/64");
    }

    #[test]
    fn networks_are_written_as_tcpd_matches_them_ipv4_as_net_slash_mask() {
        for (target, written) in [
            ("10.0.0.0/24", "10.0.0.0/255.255.255.0"),
            ("10.77.5.0/25", "10.77.5.0/255.255.255.128"),
            ("10.0.0.0/8", "10.0.0.0/255.0.0.0"),
            ("10.1.2.3/32", "10.1.2.3"),
            ("fd98:1:2:3::/64", "[fd98:1:2:3::]/64"),
            ("fd98::7/128", "[fd98::7]"),
        ] {
            let t: Target = target.parse().unwrap();
            assert_eq!(wrappers_target(&t), written, "{target}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.deny");
        let mut r = HostsDenyResponder::new("ALL: $TARGET$ : DENY", file.clone());
        let outcome = respond_once(&mut r, "10.77.5.0/24", 1, Mode::Tcp, ProbeKind::Connect);
        assert!(matches!(outcome, Outcome::Done(_)), "{outcome:?}");
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "ALL: 10.77.5.0/255.255.255.0 : DENY\n"
        );
    }

    #[test]
    fn removal_of_an_ipv4_network_takes_out_the_mask_and_the_old_bits_form() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.deny");
        std::fs::write(
            &file,
            "ALL: 10.77.5.0/24 : DENY\nsshd: 10.77.6.0/255.255.255.0\n\
             ALL: 10.77.5.0/255.255.255.0 : DENY\nALL: 10.77.5.0/25 : DENY\n",
        )
        .unwrap();
        // An undo recorded before the change holds the /24 form; a new one the mask.
        assert_eq!(
            remove_line(&file, "ALL: 10.77.5.0/24 : DENY").unwrap(),
            Removal::Removed(2)
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "sshd: 10.77.6.0/255.255.255.0\nALL: 10.77.5.0/25 : DENY\n"
        );
        std::fs::write(&file, "ALL: 10.77.5.0/24 : DENY\n").unwrap();
        assert_eq!(
            remove_line(&file, "ALL: 10.77.5.0/255.255.255.0 : DENY").unwrap(),
            Removal::Removed(1)
        );
        // Hosts and non-contiguous masks have no other form.
        assert_eq!(other_form("10.77.5.9"), None);
        assert_eq!(other_form("10.77.5.0/255.0.255.0"), None);
        assert_eq!(other_form("sshd:"), None);
    }

    #[test]
    fn removal_takes_out_the_bracketed_and_the_old_bare_ipv6_form() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.deny");
        std::fs::write(
            &file,
            "ALL: fd98::2 : DENY\nsshd: 10.0.0.1\nALL: [fd98::2] : DENY\nALL: [fd98::3] : DENY\n",
        )
        .unwrap();
        // An undo recorded before the change holds the bare form; a new one the bracketed.
        assert_eq!(
            remove_line(&file, "ALL: fd98::2 : DENY").unwrap(),
            Removal::Removed(2)
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "sshd: 10.0.0.1\nALL: [fd98::3] : DENY\n"
        );
        assert_eq!(
            remove_line(&file, "ALL: [fd98::3] : DENY").unwrap(),
            Removal::Removed(1)
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "sshd: 10.0.0.1\n");
    }

    #[test]
    fn a_fifo_as_deny_file_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("hosts.deny");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        let f = fifo.clone();
        let err = crate::config::read::tests::within_5s(move || {
            remove_line(&f, "ALL: 10.0.0.1").unwrap_err()
        });
        assert!(err.to_string().contains("is a FIFO"), "{err}");
        let mut r = HostsDenyResponder::new("ALL: $TARGET$", fifo.clone());
        let outcome = crate::config::read::tests::within_5s(move || {
            format!(
                "{:?}",
                respond_once(&mut r, "10.77.1.2", 1, Mode::Tcp, ProbeKind::Connect)
            )
        });
        assert!(
            outcome.contains("Failed") && outcome.contains("FIFO"),
            "{outcome}"
        );
        let err = remove_line(Path::new("/dev/zero"), "ALL: 10.0.0.1").unwrap_err();
        assert!(err.to_string().contains("character device"), "{err}");
    }

    #[test]
    fn unwritable_file_is_a_failure() {
        let mut r = HostsDenyResponder::new("ALL: $TARGET$", "/nonexistent/dir/hosts.deny".into());
        let outcome = respond_once(&mut r, "10.77.1.2", 1, Mode::Tcp, ProbeKind::Connect);
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    }

    #[test]
    fn remove_line_takes_out_every_copy_and_leaves_other_bytes_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.deny");
        let before = "# keep me\r\nALL: 10.77.1.2 : DENY\nsshd: 10.77.1.2\nALL: 10.77.1.20 : DENY\n\
                      ALL: 10.77.1.2 : DENY  \nlast line without newline";
        std::fs::write(&file, before).unwrap();
        assert_eq!(
            remove_line(&file, "ALL: 10.77.1.2 : DENY").unwrap(),
            Removal::Removed(2)
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "# keep me\r\nsshd: 10.77.1.2\nALL: 10.77.1.20 : DENY\nlast line without newline"
        );
        assert_eq!(
            remove_line(&file, "ALL: 10.77.1.2 : DENY").unwrap(),
            Removal::NotPresent
        );
        assert_eq!(
            remove_line(&file, "last line without newline").unwrap(),
            Removal::Removed(1)
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "# keep me\r\nsshd: 10.77.1.2\nALL: 10.77.1.20 : DENY\n"
        );
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temporary file left behind");
    }

    #[test]
    fn remove_line_keeps_mode_and_owner_and_follows_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.deny");
        std::fs::write(&real, "a\nALL: x\nb\n").unwrap();
        std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o640)).unwrap();
        // Giving the file another owner needs root: not being root fails the test, as the
        // end-to-end tests do, rather than checking only half of it.
        assert!(
            nix::unistd::Uid::effective().is_root(),
            "this test needs root (to give the file another owner)"
        );
        std::os::unix::fs::chown(&real, Some(1), Some(2)).unwrap();
        let link = dir.path().join("hosts.deny");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        assert_eq!(remove_line(&link, "ALL: x").unwrap(), Removal::Removed(1));
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let meta = std::fs::metadata(&real).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o640);
        assert_eq!((meta.uid(), meta.gid()), (1, 2));
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "a\nb\n");
    }

    #[test]
    fn in_place_rewrite_keeps_the_inode_and_cuts_the_old_tail() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.deny");
        std::fs::write(&file, "a\nALL: x\nb\n").unwrap();
        let inode = std::fs::metadata(&file).unwrap().ino();
        rewrite_in_place(&file, b"a\nb\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "a\nb\n");
        assert_eq!(std::fs::metadata(&file).unwrap().ino(), inode);
    }

    #[test]
    fn read_only_directory_and_bind_mounts_fall_back_to_the_in_place_rewrite() {
        for errno in [
            libc::EROFS,
            libc::EBUSY,
            libc::EXDEV,
            libc::EACCES,
            libc::EPERM,
        ] {
            assert!(directory_refuses(&std::io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ENOSPC, libc::EIO, libc::ENOENT] {
            assert!(!directory_refuses(&std::io::Error::from_raw_os_error(
                errno
            )));
        }
    }

    fn strings(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|l| l.to_string()).collect()
    }

    #[test]
    fn a_batch_appends_the_missing_lines_once_in_one_write() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.deny");
        std::fs::write(&file, "sshd: 10.0.0.1\nALL: 10.77.1.3 : DENY  \nlast").unwrap();
        let batch = strings(&[
            "ALL: 10.77.1.2 : DENY",
            "ALL: 10.77.1.3 : DENY",
            "ALL: [fd77::2] : DENY",
            "ALL: 10.77.1.2 : DENY",
        ]);
        assert_eq!(
            append_lines(&file, &batch).unwrap(),
            [true, false, true, false]
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "sshd: 10.0.0.1\nALL: 10.77.1.3 : DENY  \nlast\n\
             ALL: 10.77.1.2 : DENY\nALL: [fd77::2] : DENY\n"
        );
        // Again: nothing is written, the file is not touched.
        let before = std::fs::metadata(&file).unwrap().mtime_nsec();
        assert_eq!(append_lines(&file, &batch).unwrap(), [false; 4]);
        assert_eq!(std::fs::metadata(&file).unwrap().mtime_nsec(), before);
    }

    #[test]
    fn an_edit_by_anyone_else_makes_the_next_append_read_the_file_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.deny");
        let one = strings(&["ALL: 10.77.1.2 : DENY"]);
        let two = strings(&["ALL: 10.77.1.4 : DENY"]);
        assert_eq!(append_lines(&file, &one).unwrap(), [true]);
        // The admin takes the line out by hand and adds another, same size: the index must
        // not be trusted (inode or time differ).
        std::fs::write(&file, "ALL: 10.77.1.4 : DENY\n").unwrap();
        assert_eq!(append_lines(&file, &two).unwrap(), [false]);
        assert_eq!(append_lines(&file, &one).unwrap(), [true]);
        // Another writer appends between two of ours.
        let mut f = OpenOptions::new().append(true).open(&file).unwrap();
        f.write_all(b"ALL: 10.77.1.5 : DENY\n").unwrap();
        drop(f);
        assert_eq!(
            append_lines(&file, &strings(&["ALL: 10.77.1.5 : DENY"])).unwrap(),
            [false]
        );
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            "ALL: 10.77.1.4 : DENY\nALL: 10.77.1.2 : DENY\nALL: 10.77.1.5 : DENY\n"
        );
        // A removal rewrites the file: the line removed is written again by the next append.
        remove_line(&file, "ALL: 10.77.1.2 : DENY").unwrap();
        assert_eq!(append_lines(&file, &one).unwrap(), [true]);
    }

    #[test]
    fn a_batch_of_removals_is_one_rewrite_with_an_answer_per_line() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hosts.deny");
        std::fs::write(
            &file,
            "# keep\nALL: 10.77.1.2 : DENY\nALL: fd77::2 : DENY\nsshd: x\n\
             ALL: [fd77::2] : DENY\nALL: 10.77.1.2 : DENY\n",
        )
        .unwrap();
        let inode = std::fs::metadata(&file).unwrap().ino();
        assert_eq!(
            remove_lines(
                &file,
                &[
                    "ALL: 10.77.1.2 : DENY",
                    "ALL: [fd77::2] : DENY",
                    "ALL: 10.77.1.9 : DENY",
                    "ALL: 10.77.1.2 : DENY",
                ]
            )
            .unwrap(),
            [
                Removal::Removed(2),
                Removal::Removed(2),
                Removal::NotPresent,
                Removal::NotPresent
            ]
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "# keep\nsshd: x\n");
        assert_ne!(
            std::fs::metadata(&file).unwrap().ino(),
            inode,
            "replaced by rename, atomically"
        );
        assert_eq!(
            remove_lines(&dir.path().join("nope"), &["a", "b"]).unwrap(),
            [Removal::NoFile, Removal::NoFile]
        );
    }

    #[test]
    fn remove_line_of_a_missing_file_is_no_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            remove_line(&dir.path().join("nope"), "ALL: x").unwrap(),
            Removal::NoFile
        );
    }
}
