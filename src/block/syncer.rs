//! The journal's writes, off the block manager's thread.
//!
//! A journal commit ends in an `fdatasync`, and on a disk that other processes keep busy one
//! took 50 to 270 ms in the reaction benchmark (issue 19). While the manager thread sat in
//! it, the next scanner's block request waited in the queue: that wait was the whole tail of
//! the first-packet-to-route time. Here the journal travels to a thread of its own for each
//! batch and comes back when the batch is on disk; meanwhile the manager goes on deciding
//! and handing blocks to the responders. What a batch reports (log and history lines,
//! replies, events) travels with it and is given back only with the journal, so nothing is
//! reported before the journal holds it, as before.
//!
//! One batch at a time: entries decided while one is on its way wait on the manager for the
//! next, so the file keeps their order.

use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};

use super::journal::{Entry, Journal};
use crate::heartbeat::{self, Kind};

/// A batch on its way back: the journal, and the reports that waited for it.
pub struct Synced<R> {
    journal: Journal,
    reports: R,
}

/// What became of a batch handed to [`Syncer::send`].
pub enum Sent<R> {
    /// On its way; it comes back on [`Syncer::done`].
    Away,
    /// Another batch is on its way: this one is handed back whole, to be sent after it.
    Busy(Vec<Entry>, R),
    /// Written on the caller's thread (the writer thread is gone): report now.
    Written(R),
}

/// The journal, either at home (between batches) or with the writer thread.
pub struct Syncer<R> {
    home: Option<Journal>,
    path: PathBuf,
    to_writer: Option<Sender<(Journal, Vec<Entry>, R)>>,
    back: Receiver<Synced<R>>,
    thread: Option<JoinHandle<()>>,
}

impl<R: Send + 'static> Syncer<R> {
    /// Starts the writer thread; the journal stays at home until the first batch.
    pub fn start(journal: Journal) -> std::io::Result<Syncer<R>> {
        // One batch in flight at most: rendezvous-sized channels are enough.
        let (to_writer, batches) = bounded::<(Journal, Vec<Entry>, R)>(1);
        let (done, back) = bounded(1);
        let thread = std::thread::Builder::new()
            .name("journal".into())
            .spawn(move || {
                let _enrolled = heartbeat::enroll("journal", Kind::Loop);
                loop {
                    heartbeat::beat();
                    match batches.recv_timeout(heartbeat::INTERVAL) {
                        Ok((mut journal, entries, reports)) => {
                            journal.record(entries);
                            if done.send(Synced { journal, reports }).is_err() {
                                break;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                }
            })?;
        Ok(Syncer {
            path: journal.path().to_path_buf(),
            home: Some(journal),
            to_writer: Some(to_writer),
            back,
            thread: Some(thread),
        })
    }

    /// The journal's file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The journal when no batch is on its way (for retries and compaction).
    pub fn journal(&mut self) -> Option<&mut Journal> {
        self.home.as_mut()
    }

    /// Where a batch comes back, for the manager's `select`.
    pub fn done(&self) -> &Receiver<Synced<R>> {
        &self.back
    }

    /// Sends `entries` to be written, with the `reports` to give back once they are.
    pub fn send(&mut self, entries: Vec<Entry>, reports: R) -> Sent<R> {
        let Some(journal) = self.home.take() else {
            return Sent::Busy(entries, reports);
        };
        let failed = match &self.to_writer {
            Some(tx) => match tx.send((journal, entries, reports)) {
                Ok(()) => return Sent::Away,
                Err(crossbeam_channel::SendError(batch)) => batch,
            },
            None => (journal, entries, reports),
        };
        // The writer thread is gone: the batch is written here, as before this module.
        self.to_writer = None;
        let (mut journal, entries, reports) = failed;
        journal.record(entries);
        self.home = Some(journal);
        Sent::Written(reports)
    }

    /// Takes a batch back (from [`Syncer::done`]): the journal is home again; its reports
    /// may now be made.
    pub fn arrived(&mut self, synced: Synced<R>) -> R {
        self.home = Some(synced.journal);
        synced.reports
    }

    /// Waits for the batch on its way, if any, and gives back its reports.
    pub fn wait(&mut self) -> Option<R> {
        if self.home.is_some() {
            return None;
        }
        match self.back.recv() {
            Ok(synced) => Some(self.arrived(synced)),
            Err(_) => None,
        }
    }
}

impl<R> Drop for Syncer<R> {
    fn drop(&mut self) {
        self.to_writer = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offence(ip: &str) -> Entry {
        Entry::Offence {
            target: crate::record::host_target(ip.parse().unwrap()),
            offences: 1,
            last_duration_ms: None,
            ended: std::time::SystemTime::now(),
        }
    }

    #[test]
    fn a_batch_comes_back_with_its_reports_once_written_and_one_travels_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state");
        let (journal, _) = Journal::open(&path).unwrap();
        let mut s: Syncer<Vec<&str>> = Syncer::start(journal).unwrap();
        assert_eq!(s.path(), path);
        assert!(s.journal().is_some(), "home before the first batch");
        assert!(s.wait().is_none(), "nothing on its way");
        assert!(matches!(
            s.send(vec![offence("10.9.0.1")], vec!["one"]),
            Sent::Away
        ));
        assert!(s.journal().is_none(), "away with its batch");
        // A second batch waits for the first: refused, handed back whole.
        let Sent::Busy(entries, reports) = s.send(vec![offence("10.9.0.2")], vec!["two"]) else {
            panic!("a second batch must wait for the first");
        };
        assert_eq!((entries.len(), &reports), (1, &vec!["two"]));
        let synced = s.done().recv().unwrap();
        assert_eq!(s.arrived(synced), vec!["one"]);
        // Written (and synced) before it came back.
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("10.9.0.1"), "{text}");
        assert!(!text.contains("10.9.0.2"), "{text}");
        assert!(matches!(s.send(entries, reports), Sent::Away));
        assert_eq!(s.wait(), Some(vec!["two"]));
        assert!(std::fs::read_to_string(&path).unwrap().contains("10.9.0.2"));
        assert!(s.journal().is_some());
    }
}
