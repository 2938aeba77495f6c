//! The background persister: turns host-memory snapshots into durable checkpoints.
//!
//! The training loop hands over a [`Handover`] and goes on; this thread copies what is still a
//! backend tensor, encodes, hashes, fsyncs and renames (through the shared protocol crate's
//! writer), then applies retention.
//! At most one persist is in flight: a checkpoint that comes due while one is in flight is not
//! taken (the loop's [`crate::interval::Planner`] asks again at the next step boundary, and
//! keeps a rebalance request until it is served), while a final checkpoint (end of training,
//! SIGTERM, spot notice) waits for the one in flight and then for itself.
//!
//! Where an uploader ships the checkpoint root to S3 — SageMaker's checkpoint sync, or the
//! trainer's own [`Mirror`] — a checkpoint only survives the instance once it is fully
//! uploaded (its files' `.sagemaker-uploaded` markers). The thread then watches the markers of
//! the checkpoints it wrote: retention counts only uploaded ones (the newest uploaded is never
//! deleted), and the loop learns how long uploads take, to checkpoint no faster than that.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use spotcheck_protocol::{
    dir_has_upload_markers, is_fully_uploaded, CheckpointWriter, ValidCheckpoint,
};

use crate::interval::Why;
use crate::s3sync::Mirror;
use crate::snapshot::{self, Handover, Snapshot};

/// File names inside a checkpoint directory.
pub const MODEL_FILE: &str = "model.safetensors";
/// Optimizer state file.
pub const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// Trainer state file.
pub const STATE_FILE: &str = "trainer_state.json";

/// How often the thread looks at the upload markers while idle.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long to wait for a first fully uploaded checkpoint before warning that none shows up.
const NO_MARKERS_WARNING: Duration = Duration::from_secs(600);

/// The outcome of one persist, reported back to the training loop.
#[derive(Debug)]
pub struct Persisted {
    /// The step the checkpoint holds.
    pub step: u64,
    /// Why it was taken.
    pub why: Why,
    /// Its directory.
    pub dir: PathBuf,
    /// Time from hand-over to durable.
    pub duration: Duration,
    /// Bytes written.
    pub bytes: u64,
    /// The committed checkpoint, or the reason the persist failed (the previous checkpoint
    /// stays the valid one).
    pub result: Result<ValidCheckpoint, String>,
}

/// What the persister tells the loop.
#[derive(Debug)]
pub enum PersistEvent {
    /// A persist finished (or failed).
    Persisted(Persisted),
    /// The uploader's pace: a checkpoint became fully uploaded this long after it was
    /// written, or the oldest one still on its way has waited this long.
    UploadPace(Duration),
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
    // Two files, hashed in parallel (SHA-256 is the slowest stage on a fast disk).
    let model_meta = meta.clone();
    pending
        .write_files(vec![
            (
                MODEL_FILE,
                Box::new(|w: &mut dyn std::io::Write| {
                    snapshot::write(w, &snap.model, Some(model_meta))
                }),
            ),
            (
                OPTIMIZER_FILE,
                Box::new(|w: &mut dyn std::io::Write| {
                    snapshot::write(w, &snap.optimizer, Some(meta))
                }),
            ),
        ])
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

/// Where checkpoints go and how they are kept.
#[derive(Clone, Debug)]
pub struct Destination {
    /// The checkpoint root.
    pub root: PathBuf,
    /// This host's namespace under it.
    pub namespace: String,
    /// Checkpoints kept (see `spotcheck_protocol::plan_retention`).
    pub keep: usize,
    /// Whether something uploads the root to S3 (SageMaker's sync or the mirror).
    pub synced: bool,
}

/// Checkpoints written by this process and not yet seen fully uploaded.
struct Pending {
    dir: PathBuf,
    ckpt: ValidCheckpoint,
    written: Instant,
}

/// Handle on the persister thread.
pub struct Persister {
    tx: Option<SyncSender<(Handover, Why)>>,
    rx: Receiver<PersistEvent>,
    in_flight: bool,
    mirror: Option<Mirror>,
    thread: Option<thread::JoinHandle<()>>,
}

/// What [`watch_uploads`] saw.
#[derive(Debug, Default, PartialEq)]
struct Watched {
    /// Steps now fully uploaded.
    uploaded: Vec<u64>,
    /// The uploader's pace to report, if any.
    pace: Option<Duration>,
    /// Whether the uploader has shown it writes markers (a complete upload, or any marker
    /// beside a pending checkpoint's files).
    markers: bool,
}

/// Watches upload markers. The wait of the oldest checkpoint still on its way counts toward
/// the pace: checkpoints written faster than the uploader ships them only queue (and at the
/// end of a SageMaker job all of them are uploaded before it completes, on the bill). Until
/// the uploader has shown it writes markers (`seen_any`, or now) the wait counts only up to
/// [`NO_MARKERS_WARNING`]: an uploader that writes none must not slow checkpointing down
/// further than that. Pure over the filesystem's answers and the clock reading it is given.
fn watch_uploads(pending: &mut Vec<Pending>, now: Instant, seen_any: bool) -> Watched {
    let mut uploaded = Vec::new();
    let mut pace = None;
    pending.retain(|p| {
        if !p.dir.exists() {
            return false;
        }
        if is_fully_uploaded(&p.dir, &p.ckpt.manifest) {
            uploaded.push(p.ckpt.manifest.step);
            pace = Some(now.saturating_duration_since(p.written));
            return false;
        }
        true
    });
    let markers =
        seen_any || !uploaded.is_empty() || pending.iter().any(|p| dir_has_upload_markers(&p.dir));
    let oldest_wait = pending
        .iter()
        .map(|p| now.saturating_duration_since(p.written))
        .max()
        .filter(|wait| markers || *wait <= NO_MARKERS_WARNING);
    if let Some(wait) = oldest_wait {
        if pace.is_none_or(|p| wait > p) {
            pace = Some(wait);
        }
    }
    Watched {
        uploaded,
        pace,
        markers,
    }
}

impl Persister {
    /// Starts the thread writing to `dest`, handing each committed checkpoint to `mirror`
    /// when given.
    pub fn start(dest: Destination, mirror: Option<Mirror>) -> std::io::Result<Self> {
        let (tx, work) = mpsc::sync_channel::<(Handover, Why)>(1);
        let (done, rx) = mpsc::channel();
        let pause = fault_pause();
        let mirror_tx = mirror.as_ref().map(Mirror::sender);
        let thread = thread::Builder::new()
            .name("persister".into())
            .spawn(move || {
                let mut pending: Vec<Pending> = Vec::new();
                let mut last_pace: Option<Duration> = None;
                let mut seen_any = false;
                let started = Instant::now();
                let mut warned_no_markers = false;
                loop {
                    let got = if dest.synced {
                        work.recv_timeout(WATCH_EVERY)
                    } else {
                        work.recv().map_err(|_| RecvTimeoutError::Disconnected)
                    };
                    match got {
                        Ok((snap, why)) => {
                            let outcome = persist_one(&dest, snap, why, pause);
                            if let Ok(ckpt) = &outcome.result {
                                if let Some(m) = &mirror_tx {
                                    m.submit(ckpt.clone());
                                }
                                if dest.synced {
                                    pending.push(Pending {
                                        dir: ckpt.dir.clone(),
                                        ckpt: ckpt.clone(),
                                        written: Instant::now(),
                                    });
                                }
                            }
                            if done.send(PersistEvent::Persisted(outcome)).is_err() {
                                return;
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                    if dest.synced && !pending.is_empty() {
                        let Watched {
                            uploaded,
                            pace,
                            markers,
                        } = watch_uploads(&mut pending, Instant::now(), seen_any);
                        seen_any |= markers;
                        if !uploaded.is_empty() {
                            tracing::info!(event = "checkpoint_uploaded", steps = ?uploaded);
                            apply_retention(&dest);
                        } else if !seen_any
                            && !warned_no_markers
                            && started.elapsed() > NO_MARKERS_WARNING
                        {
                            warned_no_markers = true;
                            tracing::warn!(event = "no_upload_markers", pending = pending.len(), "no checkpoint has been seen fully uploaded (no .sagemaker-uploaded markers): retention keeps every checkpoint until one is; check that the checkpoint sync runs");
                        }
                        if let Some(p) = pace.filter(|p| Some(*p) != last_pace) {
                            last_pace = Some(p);
                            if done.send(PersistEvent::UploadPace(p)).is_err() {
                                return;
                            }
                        }
                    }
                }
            })?;
        Ok(Self {
            tx: Some(tx),
            rx,
            in_flight: false,
            mirror,
            thread: Some(thread),
        })
    }

    /// Whether a persist is in flight.
    pub fn busy(&self) -> bool {
        self.in_flight
    }

    /// Hands a snapshot over. The caller must check [`Persister::busy`] first (or call
    /// [`Persister::wait`]).
    pub fn submit(&mut self, snap: Handover, why: Why) -> Result<(), String> {
        debug_assert!(!self.in_flight, "one persist at a time");
        let tx = self.tx.as_ref().ok_or("persister stopped")?;
        tx.send((snap, why))
            .map_err(|_| "persister thread ended".to_string())?;
        self.in_flight = true;
        Ok(())
    }

    /// What the thread reported since the last call, without waiting.
    pub fn poll(&mut self) -> Vec<PersistEvent> {
        let events: Vec<PersistEvent> = self.rx.try_iter().collect();
        if events
            .iter()
            .any(|e| matches!(e, PersistEvent::Persisted(_)))
        {
            self.in_flight = false;
        }
        events
    }

    /// Waits for the persist in flight, if any; returns everything reported meanwhile.
    pub fn wait(&mut self) -> Vec<PersistEvent> {
        let mut events = Vec::new();
        while self.in_flight {
            match self.rx.recv() {
                Ok(e) => {
                    if matches!(e, PersistEvent::Persisted(_)) {
                        self.in_flight = false;
                    }
                    events.push(e);
                }
                Err(_) => self.in_flight = false,
            }
        }
        events
    }

    /// Uploads the final checkpoint through the mirror before `deadline` (abandoning an
    /// upload in flight; pruning S3 after it when `prune`), stops the mirror, and applies local
    /// retention once more now that it is marked uploaded; `None` without a mirror.
    pub fn finish_upload(
        &mut self,
        dest: &Destination,
        ckpt: ValidCheckpoint,
        deadline: Instant,
        prune: bool,
    ) -> Option<Result<u64, String>> {
        let result = self
            .mirror
            .as_mut()
            .map(|m| m.finish(ckpt, deadline, prune));
        if matches!(result, Some(Ok(_))) {
            apply_retention(dest);
        }
        result
    }
}

fn persist_one(
    dest: &Destination,
    handed: Handover,
    why: Why,
    pause: Option<Duration>,
) -> Persisted {
    let started = Instant::now();
    let step = handed.state.step;
    let bytes = handed.tensor_bytes() as u64;
    tracing::info!(event = "persist_started", step, why = ?why);
    let snap = handed.materialise();
    let result = write_checkpoint(&dest.root, &dest.namespace, &snap, pause);
    drop(snap);
    match result {
        Ok((committed, written)) => {
            apply_retention(dest);
            Persisted {
                step,
                why,
                dir: committed.dir.clone(),
                duration: started.elapsed(),
                bytes: written,
                result: Ok(committed),
            }
        }
        Err(e) => Persisted {
            step,
            why,
            dir: dest.root.join(&dest.namespace),
            duration: started.elapsed(),
            bytes,
            result: Err(e),
        },
    }
}

fn apply_retention(dest: &Destination) {
    if let Err(e) = crate::retention::apply(&dest.root, &dest.namespace, dest.keep, dest.synced) {
        tracing::warn!(event = "retention_failed", error = %e, "could not prune old checkpoints");
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

#[cfg(test)]
mod tests {
    use super::*;
    use spotcheck_protocol::mark_uploaded;

    #[test]
    fn watching_reports_uploads_and_the_oldest_wait() {
        let root = tempfile::tempdir().unwrap();
        let mut pending = Vec::new();
        let t0 = Instant::now();
        for (i, step) in [10u64, 20].into_iter().enumerate() {
            let mut w = CheckpointWriter::begin(root.path(), "algo-1", step).unwrap();
            w.write_bytes("x.bin", b"abc").unwrap();
            let ckpt = w.commit(0, None).unwrap();
            pending.push(Pending {
                dir: ckpt.dir.clone(),
                ckpt,
                written: t0 + Duration::from_secs(i as u64 * 10),
            });
        }
        let watch = |pending: &mut Vec<Pending>, at: u64, seen_any: bool| {
            watch_uploads(pending, t0 + Duration::from_secs(at), seen_any)
        };
        // No marker seen yet: the oldest's wait still sets the pace, up to the no-markers limit.
        let w = watch(&mut pending, 15, false);
        assert!(!w.markers && w.uploaded.is_empty());
        assert_eq!(w.pace, Some(Duration::from_secs(15)));
        let limit = NO_MARKERS_WARNING.as_secs();
        assert_eq!(
            watch(&mut pending, limit, false).pace,
            Some(NO_MARKERS_WARNING)
        );
        assert_eq!(watch(&mut pending, limit + 1, false), Watched::default());
        let w = watch(&mut pending, 15, true);
        assert!(w.uploaded.is_empty());
        assert_eq!(
            w.pace,
            Some(Duration::from_secs(15)),
            "the oldest waits 15 s"
        );
        // A marker beside any file shows the uploader at work, though nothing is complete.
        let uploading = pending[1].dir.join("x.bin.sagemaker-uploading");
        std::fs::write(&uploading, b"").unwrap();
        let w = watch(&mut pending, 15, false);
        assert!(w.markers && w.uploaded.is_empty());
        assert_eq!(w.pace, Some(Duration::from_secs(15)));
        std::fs::remove_file(&uploading).unwrap();
        mark_uploaded(&pending[0].dir, &pending[0].ckpt.manifest).unwrap();
        let w = watch(&mut pending, 16, false);
        assert_eq!(w.uploaded, [10]);
        assert_eq!(w.pace, Some(Duration::from_secs(16)));
        assert_eq!(pending.len(), 1);
        // A checkpoint retention removed is no longer watched.
        std::fs::remove_dir_all(&pending[0].dir).unwrap();
        let Watched {
            uploaded: up, pace, ..
        } = watch(&mut pending, 30, true);
        assert!(up.is_empty() && pace.is_none() && pending.is_empty());
    }
}
