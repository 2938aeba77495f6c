//! `spotcheck._native`: the thin native layer of the `spotcheck` Python package.
//!
//! It exposes, over PyO3, what `spotcheck/torch.py` needs and nothing torch-specific: planning
//! a safetensors file ([`plan_tensor_file`]), a background [`Persister`] that writes checkpoint
//! format v1 from host buffers, listing and reading checkpoints with every byte checked
//! ([`candidates`], [`Checkpoint`]), and an IMDS notice watcher. File formats and I/O live in
//! `crates/tensors` and `crates/protocol`; this module converts arguments and releases the GIL
//! around every wait and read.
//!
//! Host memory is passed by address (`tensor.data_ptr()`) with the tensor that owns it: the
//! persister keeps a reference to each owner until its save has finished, and the Python layer
//! never writes a buffer while a save of it is in flight (one save at a time). This module is
//! private to the package; its functions trust those addresses.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use pyo3::create_exception;
use pyo3::exceptions::{PyException, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};

use spotcheck_notices::StopFlags;
use spotcheck_tensors::persister::Outcome;
use spotcheck_tensors::{
    parse_header, plan, FileLayout, FileSource, HostRegion, HostRegionMut, OpenCheckpoint,
    Persister as CorePersister, SaveJob, TensorSpec, Verify,
};

create_exception!(
    _native,
    CheckpointError,
    PyException,
    "A checkpoint could not be written, or is not valid; the message says why."
);

fn checkpoint_error(err: impl std::fmt::Display) -> PyErr {
    CheckpointError::new_err(err.to_string())
}

/// A planned safetensors file (`plan_tensor_file`).
#[pyclass(module = "spotcheck._native", frozen)]
struct TensorFileLayout {
    layout: FileLayout,
}

#[pymethods]
impl TensorFileLayout {
    /// Bytes of the data section (the host buffer's size).
    #[getter]
    fn data_len(&self) -> usize {
        self.layout.data_len
    }

    /// Header bytes before the data section.
    #[getter]
    fn header_len(&self) -> usize {
        self.layout.header.len()
    }

    /// `(start, end)` of each tensor in the data section, in the order given.
    #[getter]
    fn offsets(&self) -> Vec<(usize, usize)> {
        self.layout.offsets.clone()
    }
}

/// Plans a safetensors file for `specs` = `[(name, dtype, shape), …]` (safetensors dtype names).
#[pyfunction]
#[pyo3(signature = (specs, metadata=None))]
fn plan_tensor_file(
    specs: Vec<(String, String, Vec<usize>)>,
    metadata: Option<HashMap<String, String>>,
) -> PyResult<TensorFileLayout> {
    let specs: Vec<TensorSpec> = specs
        .into_iter()
        .map(|(name, dtype, shape)| TensorSpec { name, dtype, shape })
        .collect();
    let layout = plan(&specs, metadata).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(TensorFileLayout { layout })
}

/// The background writer (one save in flight).
#[pyclass(module = "spotcheck._native")]
struct Persister {
    core: Mutex<CorePersister>,
    /// The tensors whose memory the save in flight reads: referenced until it finishes.
    owners: Mutex<Vec<Py<PyAny>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn outcome_dict<'py>(py: Python<'py>, outcome: Outcome) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("step", outcome.step)?;
    d.set_item("seconds", outcome.seconds)?;
    match outcome.result {
        Ok(saved) => {
            d.set_item("ok", true)?;
            d.set_item("name", saved.name)?;
            d.set_item("dir", saved.dir.to_string_lossy().into_owned())?;
            d.set_item("bytes", saved.bytes)?;
            d.set_item("deleted", saved.deleted)?;
            d.set_item("retention_error", saved.retention_error)?;
        }
        Err(error) => {
            d.set_item("ok", false)?;
            d.set_item("error", error)?;
        }
    }
    Ok(d)
}

#[pymethods]
impl Persister {
    #[new]
    fn new() -> PyResult<Persister> {
        let core = CorePersister::start().map_err(checkpoint_error)?;
        Ok(Persister {
            core: Mutex::new(core),
            owners: Mutex::new(Vec::new()),
        })
    }

    /// Whether a save is in flight.
    fn busy(&self) -> bool {
        lock(&self.core).busy()
    }

    /// Hands a save to the thread; `False` (nothing done) while another is in flight. `synced`:
    /// an uploader mirrors `root` to S3 (SageMaker's checkpoint sync), so retention counts only
    /// fully uploaded checkpoints as kept.
    ///
    /// `files` = `[(name, bytes)]` for small files, or `[(name, (layout, address, owner))]`
    /// for a safetensors file whose data section is `layout.data_len` bytes at `address`,
    /// owned by `owner` (a tensor).
    #[pyo3(signature = (root, namespace, step, files, created_at_ms, meta_json, keep, synced, pause_ms=None, gate=None))]
    #[allow(clippy::too_many_arguments)]
    fn submit(
        &self,
        root: PathBuf,
        namespace: String,
        step: u64,
        files: Vec<(String, Bound<'_, PyAny>)>,
        created_at_ms: u64,
        meta_json: Option<String>,
        keep: usize,
        synced: bool,
        pause_ms: Option<u64>,
        gate: Option<PathBuf>,
    ) -> PyResult<bool> {
        let mut core = lock(&self.core);
        if core.busy() {
            return Ok(false);
        }
        let meta = meta_json
            .map(|m| serde_json::from_str(&m))
            .transpose()
            .map_err(|e| PyValueError::new_err(format!("meta is not JSON: {e}")))?;
        let mut owners = Vec::new();
        let mut sources = Vec::with_capacity(files.len());
        for (name, source) in files {
            if let Ok(bytes) = source.cast::<PyBytes>() {
                sources.push((name, FileSource::Bytes(bytes.as_bytes().to_vec())));
                continue;
            }
            let (layout, address, owner): (Bound<'_, TensorFileLayout>, usize, Bound<'_, PyAny>) =
                source.extract().map_err(|_| {
                    PyValueError::new_err(format!(
                        "file {name:?}: expected bytes or (layout, address, owner)"
                    ))
                })?;
            let layout = layout.get();
            // SAFETY: the package passes the address of a host tensor of `data_len` bytes; the
            // tensor is kept referenced in `owners` until the save is collected, and the
            // package writes no buffer while its save is in flight.
            let data = unsafe { HostRegion::new(address as *const u8, layout.layout.data_len) }
                .ok_or_else(|| PyValueError::new_err(format!("file {name:?}: null address")))?;
            owners.push(owner.unbind());
            sources.push((
                name,
                FileSource::Tensors {
                    header: layout.layout.header.clone(),
                    data,
                },
            ));
        }
        let job = SaveJob {
            root,
            namespace,
            step,
            files: sources,
            created_at_ms,
            meta,
            keep,
            synced,
            pause_before_manifest: pause_ms.map(Duration::from_millis),
            gate_before_manifest: gate,
        };
        match core.submit(job) {
            Ok(()) => {
                *lock(&self.owners) = owners;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// The finished save's outcome (a dict), or `None` while it runs or when none was submitted.
    fn poll<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let outcome = lock(&self.core).poll();
        self.collect(py, outcome)
    }

    /// Waits (without the GIL) for the save in flight; its outcome, or `None` if none.
    fn wait<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        let outcome = py.detach(|| lock(&self.core).wait());
        self.collect(py, outcome)
    }
}

impl Persister {
    fn collect<'py>(
        &self,
        py: Python<'py>,
        outcome: Option<Outcome>,
    ) -> PyResult<Option<Bound<'py, PyDict>>> {
        match outcome {
            Some(outcome) => {
                // The job and its borrowed memory are gone: release the owners.
                lock(&self.owners).clear();
                outcome_dict(py, outcome).map(Some)
            }
            None => Ok(None),
        }
    }
}

impl Drop for Persister {
    /// Joins the thread (finishing a save in flight) before the owners are released.
    fn drop(&mut self) {
        if let Ok(core) = self.core.get_mut() {
            let _ = core.wait();
        }
    }
}

/// One checkpoint as Python sees it: `(name, step, status, reason)`.
type Candidate = (String, u64, String, Option<String>);

/// The checkpoints of `namespace` under `root`, newest first.
#[pyfunction]
fn candidates(py: Python<'_>, root: PathBuf, namespace: String) -> PyResult<Vec<Candidate>> {
    let found = py
        .detach(|| spotcheck_tensors::candidates(&root, &namespace))
        .map_err(checkpoint_error)?;
    Ok(found
        .into_iter()
        .map(|c| (c.name, c.step, c.status.to_string(), c.reason))
        .collect())
}

/// Whether the checkpoint in `dir` is fully uploaded: every file its manifest lists, and the
/// manifest, carry SageMaker's `.sagemaker-uploaded` marker.
#[pyfunction]
fn fully_uploaded(py: Python<'_>, dir: PathBuf) -> bool {
    py.detach(|| spotcheck_protocol::dir_is_fully_uploaded(&dir))
}

/// In a job root (one with commit files), the steps complete for `namespace`, newest first,
/// judged by sizes (the caller checks its own bytes as it reads them); `None` without commits.
#[pyfunction]
fn complete_steps(py: Python<'_>, root: PathBuf, namespace: String) -> PyResult<Option<Vec<u64>>> {
    py.detach(|| spotcheck_protocol::complete_steps(&root, &namespace))
        .map_err(checkpoint_error)
}

/// SHA-256 of `<root>/<namespace>/step-N/manifest.json`, as a job commit names it; `None`
/// when there is no manifest.
#[pyfunction]
fn manifest_sha256(
    py: Python<'_>,
    root: PathBuf,
    namespace: String,
    step: u64,
) -> PyResult<Option<String>> {
    spotcheck_protocol::check_namespace(&namespace)
        .map_err(|problem| PyValueError::new_err(format!("namespace {namespace:?} {problem}")))?;
    let path = root
        .join(&namespace)
        .join(spotcheck_protocol::step_dir_name(step))
        .join(spotcheck_protocol::MANIFEST_FILE);
    match py.detach(|| std::fs::read(&path)) {
        Ok(bytes) => Ok(Some(spotcheck_protocol::manifest_digest(&bytes))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(checkpoint_error(format!("{}: {e}", path.display()))),
    }
}

/// Removes `namespace`'s checkpoints and the commits of steps after `step`, the timeline a job
/// abandoned when its ranks agreed to resume from `step`; returns the names removed.
#[pyfunction]
fn abandon_after(
    py: Python<'_>,
    root: PathBuf,
    namespace: String,
    step: u64,
) -> PyResult<Vec<String>> {
    py.detach(|| spotcheck_protocol::abandon_after(&root, &namespace, step))
        .map_err(|e| checkpoint_error(format!("{}: {e}", root.display())))
}

/// One participant of a job commit: `(rank, namespace, manifest_sha256)`.
type CommitParticipant = (u32, String, String);

/// Writes the job commit of `step` under `root` (checked before it is written: ranks
/// `0..world_size`, each once, legal namespaces, canonical digests); returns its path.
#[pyfunction]
#[pyo3(signature = (root, step, world_size, created_at_ms, participants, meta_json=None))]
fn write_commit(
    py: Python<'_>,
    root: PathBuf,
    step: u64,
    world_size: u32,
    created_at_ms: u64,
    participants: Vec<CommitParticipant>,
    meta_json: Option<String>,
) -> PyResult<PathBuf> {
    let meta = meta_json
        .map(|m| serde_json::from_str(&m))
        .transpose()
        .map_err(|e| PyValueError::new_err(format!("meta is not JSON: {e}")))?;
    let commit = spotcheck_protocol::JobCommit {
        format_version: spotcheck_protocol::COMMIT_FORMAT_VERSION,
        step,
        world_size,
        created_at_ms,
        meta,
        participants: participants
            .into_iter()
            .map(
                |(rank, namespace, manifest_sha256)| spotcheck_protocol::Participant {
                    rank,
                    namespace,
                    manifest_sha256,
                },
            )
            .collect(),
    };
    py.detach(|| spotcheck_protocol::write_commit(&root, &commit))
        .map_err(checkpoint_error)
}

/// An opened checkpoint: manifest read and checked against its location.
#[pyclass(module = "spotcheck._native", frozen)]
struct Checkpoint {
    open: OpenCheckpoint,
}

#[pymethods]
impl Checkpoint {
    /// Opens step `step` of `namespace` under `root`; raises `CheckpointError` with the reason.
    #[staticmethod]
    fn open(py: Python<'_>, root: PathBuf, namespace: String, step: u64) -> PyResult<Checkpoint> {
        let open = py
            .detach(|| OpenCheckpoint::open(&root, &namespace, step))
            .map_err(checkpoint_error)?;
        Ok(Checkpoint { open })
    }

    /// Its relative name.
    #[getter]
    fn name(&self) -> String {
        self.open.name().to_owned()
    }

    /// Its step.
    #[getter]
    fn step(&self) -> u64 {
        self.open.manifest().step
    }

    /// The manifest's `meta`, as JSON text (`None` when absent).
    #[getter]
    fn meta_json(&self) -> PyResult<Option<String>> {
        self.open
            .manifest()
            .meta
            .as_ref()
            .map(serde_json::to_string)
            .transpose()
            .map_err(checkpoint_error)
    }

    /// `[(path, size)]` of the listed files.
    #[getter]
    fn files(&self) -> Vec<(String, u64)> {
        self.open
            .files()
            .iter()
            .map(|f| (f.path.clone(), f.size))
            .collect()
    }

    /// Reads listed file `path` into `length` bytes at `address` (a host tensor the caller
    /// holds), without the GIL, checking size and CRC-64/NVME (`verify="crc"`) or also
    /// SHA-256 (`"full"`). With `safetensors=True` the bytes are then parsed as a safetensors
    /// file and `[(name, dtype, shape, start, end)]` returned (offsets in the file).
    #[pyo3(signature = (path, address, length, verify="crc", safetensors=false))]
    fn read_into<'py>(
        &self,
        py: Python<'py>,
        path: &str,
        address: usize,
        length: usize,
        verify: &str,
        safetensors: bool,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        let verify = match verify {
            "crc" => Verify::Crc,
            "full" => Verify::Full,
            other => {
                return Err(PyValueError::new_err(format!(
                    "verify must be \"crc\" or \"full\", not {other:?}"
                )))
            }
        };
        // SAFETY: the caller passes the address of a host tensor of `length` bytes it holds
        // for the duration of this call and does not touch meanwhile.
        let mut region = unsafe { HostRegionMut::new(address as *mut u8, length) }
            .ok_or_else(|| PyValueError::new_err("null address"))?;
        let entries = py.detach(|| {
            let bytes = region.as_mut_slice();
            self.open
                .read_into(path, bytes, verify)
                .map_err(checkpoint_error)?;
            if safetensors {
                parse_header(bytes)
                    .map(Some)
                    .map_err(|e| checkpoint_error(format!("{}: {path}: {e}", self.open.name())))
            } else {
                Ok(None)
            }
        })?;
        let Some(entries) = entries else {
            return Ok(None);
        };
        let rows: Vec<Bound<'py, PyTuple>> = entries
            .into_iter()
            .map(|e| (e.name, e.dtype, e.shape, e.start, e.end).into_pyobject(py))
            .collect::<Result<_, _>>()?;
        Ok(Some(rows.into_pyobject(py)?.into_any()))
    }
}

/// Where to poll IMDS, if anywhere (the shared rules of `spotcheck-notices`); `None` for
/// nowhere.
#[pyfunction]
#[pyo3(signature = (env_endpoint, dmi_vendor, mode))]
fn imds_endpoint(
    env_endpoint: Option<String>,
    dmi_vendor: Option<String>,
    mode: Option<String>,
) -> Option<String> {
    spotcheck_notices::imds_endpoint(env_endpoint, dmi_vendor, mode)
}

/// Polls IMDS on a Rust thread (`spotcheck-notices`' poller: backs off, never gives up);
/// `take()` returns what it saw since the last call.
#[pyclass(module = "spotcheck._native", frozen)]
struct NoticeWatcher {
    flags: StopFlags,
}

#[pymethods]
impl NoticeWatcher {
    #[new]
    fn new(endpoint: String, poll_seconds: f64) -> PyResult<NoticeWatcher> {
        let every = Duration::try_from_secs_f64(poll_seconds)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(spotcheck_notices::POLL_EVERY);
        let flags = StopFlags::default();
        spotcheck_notices::spawn_imds_poller(endpoint, flags.clone(), every)
            .map_err(checkpoint_error)?;
        Ok(NoticeWatcher { flags })
    }

    /// `(spot, rebalance)`: whether a spot interruption was announced (stays true), and
    /// whether a rebalance recommendation arrived since the last call.
    fn take(&self) -> (bool, bool) {
        (
            self.flags.spot_notice.load(Ordering::SeqCst),
            self.flags.take_rebalance(),
        )
    }

    /// Stops polling (after the poll in progress).
    fn stop(&self) {
        self.flags.signal.store(true, Ordering::SeqCst);
    }
}

impl Drop for NoticeWatcher {
    fn drop(&mut self) {
        self.flags.signal.store(true, Ordering::SeqCst);
    }
}

/// The module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("CheckpointError", m.py().get_type::<CheckpointError>())?;
    m.add("FORMAT_VERSION", spotcheck_protocol::FORMAT_VERSION)?;
    m.add("NOTICE_FILE_ENV", spotcheck_launcher::NOTICE_FILE_ENV)?;
    m.add_class::<TensorFileLayout>()?;
    m.add_class::<Persister>()?;
    m.add_class::<Checkpoint>()?;
    m.add_class::<NoticeWatcher>()?;
    m.add_function(wrap_pyfunction!(plan_tensor_file, m)?)?;
    m.add_function(wrap_pyfunction!(candidates, m)?)?;
    m.add_function(wrap_pyfunction!(fully_uploaded, m)?)?;
    m.add_function(wrap_pyfunction!(complete_steps, m)?)?;
    m.add_function(wrap_pyfunction!(manifest_sha256, m)?)?;
    m.add_function(wrap_pyfunction!(write_commit, m)?)?;
    m.add_function(wrap_pyfunction!(abandon_after, m)?)?;
    m.add_function(wrap_pyfunction!(imds_endpoint, m)?)?;
    Ok(())
}
