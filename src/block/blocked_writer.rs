//! `BLOCKED_FILE` (1.2's list of the hosts blocked now) rewritten on a thread of its own.
//!
//! The rewrite (a temp file and a rename, once a second at most while blocks change) went
//! through the file system while the journal thread's `fdatasync` was in flight, and waited
//! for it: 50 to 130 ms on the manager's thread in the reaction benchmark of issue 19, with
//! the next scanner's block request queued behind it. The manager now hands over a copy of
//! the records; this thread writes the newest copy it has, and retries every second while
//! the file cannot be written (the [`BlockedFile`] logs the failure and the recovery).

use std::path::PathBuf;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded, unbounded};

use super::journal::{BlockedFile, BlockedLine};
use crate::heartbeat::{self, Kind};

/// How long a failed rewrite waits before the next try (as the manager's own timer did).
const RETRY: Duration = Duration::from_secs(1);

/// One list to write, and who waits for it (a start's first list, a stop's last).
struct Snapshot {
    path: PathBuf,
    records: Vec<BlockedLine>,
    done: Option<Sender<()>>,
}

/// The writer thread and the way to it.
pub struct BlockedFileWriter {
    tx: Option<Sender<Snapshot>>,
    thread: Option<JoinHandle<()>>,
}

impl BlockedFileWriter {
    /// Starts the thread, which owns `file` (its health reporting included).
    pub fn start(file: BlockedFile) -> std::io::Result<BlockedFileWriter> {
        let (tx, rx) = unbounded();
        let thread = std::thread::Builder::new()
            .name("blocked-file".into())
            .spawn(move || {
                let _enrolled = heartbeat::enroll("blocked-file", Kind::Loop);
                run(file, &rx);
            })?;
        Ok(BlockedFileWriter {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Has `records` written to `path`, replacing any list not written yet; with `wait`,
    /// returns once it was tried (written, or failed and logged).
    pub fn write(&self, path: PathBuf, records: Vec<BlockedLine>, wait: bool) {
        let Some(tx) = &self.tx else {
            return;
        };
        let (done, tried) = if wait {
            let (done, tried) = bounded(1);
            (Some(done), Some(tried))
        } else {
            (None, None)
        };
        let sent = tx.send(Snapshot {
            path,
            records,
            done,
        });
        if let (Ok(()), Some(tried)) = (sent, tried) {
            let _ = tried.recv();
        }
    }
}

impl Drop for BlockedFileWriter {
    /// The list handed over last is tried once more before the thread ends.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(mut file: BlockedFile, rx: &Receiver<Snapshot>) {
    let mut latest: Option<Snapshot> = None;
    loop {
        heartbeat::beat();
        let wait = if latest.is_some() {
            RETRY
        } else {
            heartbeat::INTERVAL
        };
        let ended = match rx.recv_timeout(wait) {
            Ok(s) => {
                latest = Some(s);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        // The newest list wins; whoever waited for an older one is answered with it.
        let mut waiting = Vec::new();
        while let Ok(s) = rx.try_recv() {
            waiting.extend(latest.replace(s).and_then(|old| old.done));
        }
        if let Some(s) = &mut latest {
            let written = file.write(&s.path, s.records.iter().copied());
            waiting.extend(s.done.take());
            if written {
                latest = None;
            }
        }
        for done in waiting {
            let _ = done.send(());
        }
        if ended {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_list_is_written_and_a_failed_write_is_retried() {
        let dir = tempfile::tempdir().unwrap();
        // A file where the list's directory should be: nothing can be written there yet.
        let blocker = dir.path().join("lib");
        std::fs::write(&blocker, "").unwrap();
        let path = blocker.join("portsentry.blocked");
        let writer = BlockedFileWriter::start(BlockedFile::new(&path)).unwrap();
        writer.write(path.clone(), Vec::new(), true);
        assert!(!path.exists());
        std::fs::remove_file(&blocker).unwrap();
        // The next retry (within a second or two) writes it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !path.exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(path.exists(), "retried once the directory could be made");
        let other = dir.path().join("other.blocked");
        writer.write(other.clone(), Vec::new(), false);
        drop(writer);
        assert!(
            other.exists(),
            "the last list is written before the thread ends"
        );
    }
}
