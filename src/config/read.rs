//! Reading a file an administrator named (`-c`, `IGNORE_FILE`, the modes file, resolv.conf,
//! hosts.deny, plugin sources): only a regular file, only up to a size cap.
//!
//! A path can name anything: a FIFO (opening it for reading waits for a writer, reading it
//! waits for data: a reload that points there would wedge every later reload and SIGTERM), a
//! character device (`/dev/zero` never ends: memory grows by gigabytes in seconds) or a
//! directory. [`read_regular`] opens without blocking, checks the type of what it opened
//! (not of the path, so a swap between check and open changes nothing) and reads at most the
//! cap plus one byte. [`excerpt`] is the one way to quote untrusted text in a message.

use std::fs::{File, Metadata};
use std::io::{self, Read};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// One MiB, the unit caps and messages are written in.
pub const MIB: u64 = 1 << 20;

/// Cap for text an administrator writes by hand: portsentry.conf, ignore files, the modes
/// file, resolv.conf. Real ones are a few KiB; a long ignore list of 100k entries is ~2 MiB.
pub const TEXT_CAP: u64 = 16 * MIB;

/// Cap for hosts.deny, which grows by one line per block (20k blocks ≈ 1 MiB) and is read
/// whole to undo one.
pub const HOSTS_DENY_CAP: u64 = 64 * MIB;

/// Why a file was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Open or read failed (missing, permission, I/O).
    #[error("cannot read the {what} {}: {source}", path.display())]
    Io {
        /// What the file is, e.g. "configuration file".
        what: &'static str,
        /// The path as named.
        path: std::path::PathBuf,
        /// The error from the system.
        #[source]
        source: io::Error,
    },
    /// Not a regular file: a FIFO, a device, a directory, a socket.
    #[error("the {what} {} is {kind}, not a regular file", path.display())]
    NotRegular {
        /// What the file is.
        what: &'static str,
        /// The path as named.
        path: std::path::PathBuf,
        /// "a FIFO", "a character device", "a directory"…
        kind: &'static str,
    },
    /// More than the cap.
    #[error("the {what} {} is larger than {} MiB", path.display(), cap / MIB)]
    TooLarge {
        /// What the file is.
        what: &'static str,
        /// The path as named.
        path: std::path::PathBuf,
        /// The cap in bytes.
        cap: u64,
    },
}

impl ReadError {
    /// Whether the file does not exist (callers that treat a missing file as empty).
    pub fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }

    /// The message without the leading "cannot read the WHAT PATH: " context, for
    /// callers that already name the file (a `file:line:` prefix).
    pub fn reason(&self) -> String {
        match self {
            ReadError::Io { source, .. } => source.to_string(),
            ReadError::NotRegular { kind, .. } => format!("is {kind}, not a regular file"),
            ReadError::TooLarge { cap, .. } => format!("is larger than {} MiB", cap / MIB),
        }
    }
}

/// What identifies one version of a file: a rename-save changes the inode, an in-place
/// write the size or the modification time, a metadata change the ctime. Whoever keeps what
/// it last read of a file (resolv.conf, hosts.deny) compares stamps to know when to read
/// it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    /// The stamp of the file `meta` describes.
    pub fn of(meta: &Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            len: meta.len(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }

    /// The file's size when stamped.
    pub fn size(&self) -> u64 {
        self.len
    }

    /// A stamp no file has: what was never read compares unequal to whatever is there.
    pub fn never() -> FileStamp {
        FileStamp {
            dev: u64::MAX,
            ino: u64::MAX,
            len: u64::MAX,
            mtime: (i64::MIN, 0),
            ctime: (i64::MIN, 0),
        }
    }
}

/// What a file's metadata says it is, in the words of a message ("a FIFO"); `None` for a
/// regular file.
pub fn non_regular_kind(meta: &Metadata) -> Option<&'static str> {
    let t = meta.file_type();
    if t.is_file() {
        None
    } else if t.is_dir() {
        Some("a directory")
    } else if t.is_fifo() {
        Some("a FIFO")
    } else if t.is_char_device() {
        Some("a character device")
    } else if t.is_block_device() {
        Some("a block device")
    } else if t.is_socket() {
        Some("a socket")
    } else {
        Some("not a file")
    }
}

/// Reads the regular file at `path`, at most `cap` bytes; `what` names it in errors
/// ("configuration file"). Opening never blocks (`O_NONBLOCK`, so a FIFO with no writer
/// opens at once and is then refused by the `fstat` of the opened descriptor).
pub fn read_regular(path: &Path, cap: u64, what: &'static str) -> Result<Vec<u8>, ReadError> {
    let io_err = |source: io::Error| ReadError::Io {
        what,
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(path)
        .map_err(io_err)?;
    let meta = file.metadata().map_err(io_err)?;
    if let Some(kind) = non_regular_kind(&meta) {
        return Err(ReadError::NotRegular {
            what,
            path: path.to_path_buf(),
            kind,
        });
    }
    read_capped(file, meta.len(), cap).map_err(|e| match e {
        None => ReadError::TooLarge {
            what,
            path: path.to_path_buf(),
            cap,
        },
        Some(source) => io_err(source),
    })
}

/// As [`read_regular`], as text (invalid UTF-8 replaced by U+FFFD; the parsers warn about it).
pub fn read_regular_text(path: &Path, cap: u64, what: &'static str) -> Result<String, ReadError> {
    read_regular(path, cap, what).map(|b| String::from_utf8_lossy(&b).into_owned())
}

/// Reads at most `cap + 1` bytes; `Err(None)` when there were more than `cap`.
fn read_capped(file: File, size_hint: u64, cap: u64) -> Result<Vec<u8>, Option<io::Error>> {
    let mut bytes = Vec::with_capacity(usize::try_from(size_hint.min(cap)).unwrap_or(0));
    file.take(cap.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(Some)?;
    if bytes.len() as u64 > cap {
        return Err(None);
    }
    Ok(bytes)
}

/// Characters of untrusted text an error message quotes.
const EXCERPT_CHARS: usize = 80;

/// At most 80 characters of untrusted text, for error messages, with control characters shown
/// as `?` (no log injection); a longer text ends in `… (N bytes)` so the reader knows its
/// size. One 10 MB garbage line must not become 10 MB of stderr and syslog.
pub fn excerpt(text: &str) -> String {
    excerpt_n(text, EXCERPT_CHARS)
}

/// A whole message that may embed untrusted text (a parser's reason quoting a token): at most
/// 240 characters, cut like [`excerpt`].
pub fn clip_message(text: &str) -> String {
    excerpt_n(text, 3 * EXCERPT_CHARS)
}

/// At most `max` characters of `text`, cut like [`excerpt`].
pub fn excerpt_n(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push_str(&format!("… ({} bytes)", text.len()));
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn mkfifo(path: &Path) {
        nix::unistd::mkfifo(path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    }

    /// Runs `f` on a thread and fails the test if it has not returned within 5 s (a FIFO read
    /// that blocks would otherwise hang the test run).
    pub(crate) fn within_5s<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(5))
            .expect("the read blocked for more than 5 s")
    }

    #[test]
    fn a_regular_file_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, "hello\n").unwrap();
        assert_eq!(read_regular(&p, TEXT_CAP, "test file").unwrap(), b"hello\n");
    }

    #[test]
    fn a_fifo_is_refused_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("fifo");
        mkfifo(&p);
        let err = within_5s(move || read_regular(&p, TEXT_CAP, "ignore file")).unwrap_err();
        assert!(err.to_string().contains("is a FIFO"), "{err}");
        assert!(err.to_string().contains("ignore file"), "{err}");
    }

    #[test]
    fn dev_zero_is_refused_as_a_character_device() {
        let err = within_5s(|| read_regular(Path::new("/dev/zero"), TEXT_CAP, "x")).unwrap_err();
        assert!(err.to_string().contains("is a character device"), "{err}");
    }

    #[test]
    fn a_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_regular(dir.path(), TEXT_CAP, "x").unwrap_err();
        assert!(err.to_string().contains("is a directory"), "{err}");
    }

    #[test]
    fn a_file_over_the_cap_is_refused_and_one_at_the_cap_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big");
        std::fs::write(&p, vec![b'a'; (2 * MIB) as usize]).unwrap();
        let err = read_regular(&p, MIB, "x").unwrap_err();
        assert_eq!(err.reason(), "is larger than 1 MiB");
        assert_eq!(
            read_regular(&p, 2 * MIB, "x").unwrap().len() as u64,
            2 * MIB
        );
    }

    #[test]
    fn a_missing_file_is_not_found() {
        let err = read_regular(Path::new("/nonexistent/x"), TEXT_CAP, "x").unwrap_err();
        assert!(err.is_not_found());
    }

    #[test]
    fn excerpt_keeps_short_text_and_cuts_long_text_with_its_size() {
        assert_eq!(excerpt("10.0.0.x"), "10.0.0.x");
        assert_eq!(excerpt("a\nb"), "a?b");
        let long = "x".repeat(10_000_000);
        let e = excerpt(&long);
        assert_eq!(e, format!("{}… (10000000 bytes)", "x".repeat(80)));
    }
}
