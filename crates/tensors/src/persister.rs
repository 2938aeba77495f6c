//! The background thread that turns a [`SaveJob`] into a durable checkpoint.
//!
//! One save in flight at a time: [`Persister::submit`] hands a job over and returns at once,
//! or gives it back ([`Busy`]) while another is in flight, so the caller decides whether to
//! wait or skip. The thread never touches Python; the native layer releases the GIL while it
//! waits here.

use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread;
use std::time::Instant;

use crate::save::{write_job, SaveJob, Saved};

/// How one save ended.
#[derive(Debug)]
pub struct Outcome {
    /// The step the job was for.
    pub step: u64,
    /// Seconds from hand-over to durable (or to failure).
    pub seconds: f64,
    /// The checkpoint, or why it failed (the previous checkpoint stays the newest valid one).
    pub result: Result<Saved, String>,
}

/// A save was refused because another is in flight; the job comes back untouched.
#[derive(Debug)]
pub struct Busy(pub Box<SaveJob>);

/// Handle on the persister thread.
#[derive(Debug)]
pub struct Persister {
    tx: Option<SyncSender<(SaveJob, Instant)>>,
    rx: Receiver<Outcome>,
    in_flight: bool,
    thread: Option<thread::JoinHandle<()>>,
}

impl Persister {
    /// Starts the thread.
    pub fn start() -> std::io::Result<Persister> {
        let (tx, jobs) = mpsc::sync_channel::<(SaveJob, Instant)>(1);
        let (done, rx) = mpsc::channel();
        let thread = thread::Builder::new()
            .name("spotcheck-persist".into())
            .spawn(move || {
                for (job, handed_over) in jobs {
                    let result = write_job(&job).map_err(|e| e.to_string());
                    let outcome = Outcome {
                        step: job.step,
                        seconds: handed_over.elapsed().as_secs_f64(),
                        result,
                    };
                    // The job (and the host memory it borrows) is dropped before the outcome
                    // is reported, so the caller may reuse its buffers as soon as it sees it.
                    drop(job);
                    if done.send(outcome).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Persister {
            tx: Some(tx),
            rx,
            in_flight: false,
            thread: Some(thread),
        })
    }

    /// Whether a save is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight
    }

    /// Hands `job` to the thread, or gives it back while another save is in flight.
    pub fn submit(&mut self, job: SaveJob) -> Result<(), Busy> {
        if self.in_flight {
            return Err(Busy(Box::new(job)));
        }
        let Some(tx) = &self.tx else {
            return Err(Busy(Box::new(job)));
        };
        match tx.send((job, Instant::now())) {
            Ok(()) => {
                self.in_flight = true;
                Ok(())
            }
            Err(mpsc::SendError((job, _))) => Err(Busy(Box::new(job))),
        }
    }

    /// The outcome of the save in flight, if it has finished.
    pub fn poll(&mut self) -> Option<Outcome> {
        if !self.in_flight {
            return None;
        }
        match self.rx.try_recv() {
            Ok(outcome) => {
                self.in_flight = false;
                Some(outcome)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(self.lost()),
        }
    }

    /// Blocks until the save in flight has finished; `None` when none was in flight.
    pub fn wait(&mut self) -> Option<Outcome> {
        if !self.in_flight {
            return None;
        }
        let outcome = self.rx.recv().unwrap_or_else(|_| self.lost());
        self.in_flight = false;
        Some(outcome)
    }

    /// The thread died mid-save (it panicked): report the save as failed.
    fn lost(&mut self) -> Outcome {
        self.in_flight = false;
        Outcome {
            step: 0,
            seconds: 0.0,
            result: Err("the persister thread stopped unexpectedly".into()),
        }
    }
}

impl Drop for Persister {
    /// Finishes the save in flight (its buffers must stay valid until then) and stops the
    /// thread.
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::save::FileSource;

    fn job(root: &std::path::Path, step: u64) -> SaveJob {
        SaveJob {
            root: root.to_path_buf(),
            namespace: "algo-1".into(),
            step,
            files: vec![("state.json".into(), FileSource::Bytes(b"{}".to_vec()))],
            created_at_ms: 0,
            meta: None,
            keep: 2,
            synced: false,
            pause_before_manifest: None,
            gate_before_manifest: None,
        }
    }

    #[test]
    fn one_save_in_flight_a_second_is_handed_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut p = Persister::start().unwrap();
        assert!(!p.busy());
        assert!(p.wait().is_none());
        p.submit(job(dir.path(), 1)).unwrap();
        assert!(p.busy());
        let Busy(back) = p.submit(job(dir.path(), 2)).unwrap_err();
        assert_eq!(back.step, 2);
        let outcome = p.wait().unwrap();
        assert_eq!(outcome.step, 1);
        assert_eq!(
            outcome.result.unwrap().name,
            "algo-1/step-000000000001".to_string()
        );
        assert!(!p.busy());
        p.submit(*back).unwrap();
        let outcome = p.wait().unwrap();
        assert!(outcome.result.is_ok());
    }

    #[test]
    fn a_failed_save_is_reported_not_raised() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let mut p = Persister::start().unwrap();
        p.submit(job(&file, 1)).unwrap();
        let outcome = p.wait().unwrap();
        assert!(outcome.result.is_err(), "{outcome:?}");
    }
}
