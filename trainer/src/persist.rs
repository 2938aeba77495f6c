//! The background persister: turns host-memory snapshots into durable checkpoints.
//!
//! The training loop hands over a [`Snapshot`] and goes on; this thread encodes, hashes,
//! fsyncs and renames (through the shared protocol crate's writer), then applies retention.
//! At most one persist is in flight: a periodic checkpoint that comes due while one is in
//! flight is skipped, not queued (the loop evaluates its triggers again at the next step
//! boundary: a time trigger is then still due, the step trigger only at its next multiple),
//! while a final checkpoint (end of training, SIGTERM, spot notice) waits for the one in flight
//! and then for itself.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spotcheck_protocol::{CheckpointWriter, ValidCheckpoint};

use crate::s3sync::S3Sync;

use crate::snapshot::{self, Snapshot};

/// File names inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// Optimizer state file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Trainer state file.
pub const STATE_FILE: &str = "trainer_state.json";

/// The outcome of one persist, reported back to the training loop.
#[derive(Debug)]
pub struct Persisted {
    /// The step the checkpoint holds.
    pub step: u64,
    /// Its directory.
    pub dir: PathBuf,
    /// Time from hand-over to durable.
    pub duration: Duration,
    /// Bytes written.
    pub bytes: u64,
    /// `Err` holds the reason a persist failed; the previous checkpoint stays the valid one.
    pub result: Result<(), String>,
}

/// Testing hook: pause this long between the data files and the manifest, to let tests kill
/// the process while a persist is in flight. Read once at start from
/// `SPOTCHECK_FAULT_PERSIST_PAUSE_MS`; unset in production.
fn fault_pause() -> Option<Duration> {
    std::env::var("SPOTCHECK_FAULT_PERSIST_PAUSE_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_millis)
}

/// Handle on the persister thread.
pub struct Persister {
    tx: Option<SyncSender<Snapshot>>,
    rx: Receiver<Persisted>,
    in_flight: bool,
    thread: Option<thread::JoinHandle<()>>,
}

/// Writes one checkpoint; returns it as committed and its size.
pub fn write_checkpoint(
    root: &Path,
    namespace: &str,
    snap: &Snapshot,
    pause: Option<Duration>,
) -> Result<(ValidCheckpoint, u64), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let mut pending =
        CheckpointWriter::begin(root, namespace, snap.state.step).map_err(|e| err(&e))?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    pending
        .write_file(MODEL_FILE, |w| {
            snapshot::write(w, &snap.model, Some(meta.clone()))
        })
        .map_err(|e| err(&e))?;
    pending
        .write_file(OPTIMIZER_FILE, |w| {
            snapshot::write(w, &snap.optimizer, Some(meta.clone()))
        })
        .map_err(|e| err(&e))?;
    let state = serde_json::to_vec_pretty(&snap.state).map_err(|e| err(&e))?;
    pending
        .write_bytes(STATE_FILE, &state)
        .map_err(|e| err(&e))?;
    if let Some(p) = pause {
        tracing::debug!(event = "fault_pause", ms = p.as_millis() as u64);
        thread::sleep(p);
    }
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    // `finished` lets the control plane tell "training done" from the manifest alone.
    let meta = serde_json::json!({
        "epoch": snap.state.epoch,
        "position": snap.state.position,
        "total_steps": snap.state.total_steps,
        "finished": snap.state.step >= snap.state.total_steps,
    });
    let committed = pending.commit(now_ms, Some(meta)).map_err(|e| err(&e))?;
    let bytes = committed.manifest.files.iter().map(|f| f.size).sum();
    Ok((committed, bytes))
}

impl Persister {
    /// Starts the thread writing under `root/namespace`, keeping `keep` valid checkpoints, and
    /// uploading each one to S3 when `s3` is given.
    pub fn start(root: PathBuf, namespace: String, keep: usize, s3: Option<S3Sync>) -> Self {
        let (tx, work) = mpsc::sync_channel::<Snapshot>(1);
        let (done, rx) = mpsc::channel();
        let pause = fault_pause();
        let thread = thread::Builder::new()
            .name("persister".into())
            .spawn(move || {
                for snap in work {
                    let started = Instant::now();
                    let step = snap.state.step;
                    let bytes = snap.tensor_bytes() as u64;
                    tracing::info!(event = "persist_started", step);
                    let result = write_checkpoint(&root, &namespace, &snap, pause);
                    drop(snap);
                    let outcome = match result {
                        Ok((committed, written)) => {
                            if let Some(s3) = &s3 {
                                let t = Instant::now();
                                match s3.upload(&root, &committed) {
                                    Ok(n) => {
                                        tracing::info!(event = "s3_uploaded", step, bytes = n, seconds = t.elapsed().as_secs_f64());
                                        match s3.prune(&namespace, keep) {
                                            Ok(0) => {}
                                            Ok(deleted) => tracing::info!(event = "s3_pruned", step, deleted),
                                            Err(e) => tracing::warn!(event = "s3_prune_failed", error = %e, "could not prune old checkpoints in S3; the next checkpoint retries"),
                                        }
                                    }
                                    Err(e) => tracing::error!(event = "s3_upload_failed", step, error = %e, "checkpoint is durable locally but not in S3; the next checkpoint retries"),
                                }
                            }
                            let dir = committed.dir;
                            if let Err(e) = crate::retention::apply(&root, &namespace, keep) {
                                tracing::warn!(event = "retention_failed", error = %e, "could not prune old checkpoints");
                            }
                            Persisted { step, dir, duration: started.elapsed(), bytes: written, result: Ok(()) }
                        }
                        Err(e) => Persisted {
                            step,
                            dir: root.join(&namespace),
                            duration: started.elapsed(),
                            bytes,
                            result: Err(e),
                        },
                    };
                    if done.send(outcome).is_err() {
                        return;
                    }
                }
            })
            .expect("spawning the persister thread at start-up");
        Self {
            tx: Some(tx),
            rx,
            in_flight: false,
            thread: Some(thread),
        }
    }

    /// Whether a persist is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight
    }

    /// Hands a snapshot over. The caller must check [`Persister::busy`] first (or call
    /// [`Persister::wait`]).
    pub fn submit(&mut self, snap: Snapshot) -> Result<(), String> {
        debug_assert!(!self.in_flight, "one persist at a time");
        let tx = self.tx.as_ref().ok_or("persister stopped")?;
        tx.send(snap)
            .map_err(|_| "persister thread ended".to_string())?;
        self.in_flight = true;
        Ok(())
    }

    /// The outcome of the persist in flight, if it has finished.
    pub fn poll(&mut self) -> Option<Persisted> {
        if !self.in_flight {
            return None;
        }
        match self.rx.try_recv() {
            Ok(p) => {
                self.in_flight = false;
                Some(p)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.in_flight = false;
                None
            }
        }
    }

    /// Waits for the persist in flight, if any.
    pub fn wait(&mut self) -> Option<Persisted> {
        if !self.in_flight {
            return None;
        }
        self.in_flight = false;
        self.rx.recv().ok()
    }
}

impl Drop for Persister {
    fn drop(&mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
