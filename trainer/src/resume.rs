//! Finding and loading the newest valid checkpoint of this host.
//!
//! Candidates are tried newest first; one that fails any check (manifest missing or malformed,
//! a file missing, a size or CRC-64/NVME mismatch, an undecodable tensor file) is logged and
//! skipped, never half-loaded. Each file is read once, straight into the buffers the tensors
//! will own, and its CRC is computed over those same bytes; SHA-256 is left to
//! `spotcheck validate`, since the CRC already catches torn and corrupted files.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use burn::tensor::TensorData;
use safetensors::tensor::TensorInfo;
use spotcheck_protocol::{
    crc64nvme_to_base64, parse_step_dir_name, Manifest, MANIFEST_FILE, MAX_MANIFEST_BYTES,
};

use crate::persist::{MODEL_FILE, OPTIMIZER_FILE, STATE_FILE};
use crate::snapshot::HostTensor;
use crate::state::TrainerState;

/// A loaded checkpoint.
pub struct Found {
    /// `<namespace>/step-…`.
    pub name: String,
    /// Model tensors.
    pub model: Vec<HostTensor>,
    /// Optimizer tensors.
    pub optimizer: Vec<HostTensor>,
    /// Trainer state.
    pub state: TrainerState,
    /// Newer checkpoints that were skipped, with the reason.
    pub skipped: Vec<(String, String)>,
}

/// Step directories under `root/namespace`, newest first.
pub fn candidates(root: &Path, namespace: &str) -> Vec<(u64, PathBuf)> {
    let dir = root.join(namespace);
    let mut out: Vec<(u64, PathBuf)> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let step = parse_step_dir_name(&name)?;
            e.file_type().ok()?.is_dir().then(|| (step, e.path()))
        })
        .collect();
    out.sort_by_key(|c| std::cmp::Reverse(c.0));
    out
}

/// Loads the newest checkpoint that passes every check, or `None` when there is none.
pub fn latest(root: &Path, namespace: &str) -> anyhow::Result<Option<Found>> {
    let mut skipped = Vec::new();
    for (step, dir) in candidates(root, namespace) {
        let name = format!(
            "{namespace}/{}",
            dir.file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        match load(&dir, step) {
            Ok((model, optimizer, state)) => {
                return Ok(Some(Found {
                    name,
                    model,
                    optimizer,
                    state,
                    skipped,
                }));
            }
            Err(reason) => {
                tracing::warn!(event = "checkpoint_skipped", checkpoint = %name, reason = %reason, "not usable; trying an older one");
                skipped.push((name, reason));
            }
        }
    }
    Ok(None)
}

fn read_manifest(dir: &Path) -> Result<Manifest, String> {
    let path = dir.join(MANIFEST_FILE);
    let f = File::open(&path).map_err(|e| format!("no manifest ({e})"))?;
    let mut bytes = Vec::new();
    f.take(MAX_MANIFEST_BYTES as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("reading manifest: {e}"))?;
    Manifest::parse(&bytes).map_err(|e| format!("bad manifest: {e}"))
}

/// Loads and checks one checkpoint directory.
pub fn load(
    dir: &Path,
    step: u64,
) -> Result<(Vec<HostTensor>, Vec<HostTensor>, TrainerState), String> {
    let manifest = read_manifest(dir)?;
    if manifest.step != step {
        return Err(format!(
            "manifest says step {}, directory says {step}",
            manifest.step
        ));
    }
    let entry = |name: &str| {
        manifest
            .file(name)
            .ok_or_else(|| format!("manifest does not list {name}"))
    };
    let (m, o) = (entry(MODEL_FILE)?, entry(OPTIMIZER_FILE)?);
    // Both files at once: two streams keep a network disk busier than one.
    let (model, optimizer) = std::thread::scope(|scope| {
        let model = scope.spawn(|| read_tensors(&dir.join(MODEL_FILE), m.size, &m.crc64nvme));
        let optimizer = read_tensors(&dir.join(OPTIMIZER_FILE), o.size, &o.crc64nvme);
        let model = model
            .join()
            .unwrap_or_else(|_| Err(format!("{MODEL_FILE}: reader panicked")));
        (model, optimizer)
    });
    let (model, optimizer) = (model?, optimizer?);
    let e = entry(STATE_FILE)?;
    let bytes =
        std::fs::read(dir.join(STATE_FILE)).map_err(|err| format!("{STATE_FILE}: {err}"))?;
    check(STATE_FILE, &bytes, e.size, &e.crc64nvme, crc(&bytes))?;
    let state: TrainerState =
        serde_json::from_slice(&bytes).map_err(|err| format!("{STATE_FILE}: {err}"))?;
    if state.step != step {
        return Err(format!(
            "{STATE_FILE} says step {}, directory says {step}",
            state.step
        ));
    }
    Ok((model, optimizer, state))
}

fn crc(bytes: &[u8]) -> u64 {
    let mut d = crc64fast_nvme::Digest::new();
    d.write(bytes);
    d.sum64()
}

fn check(name: &str, bytes: &[u8], size: u64, want_crc: &str, got_crc: u64) -> Result<(), String> {
    if bytes.len() as u64 != size {
        return Err(format!(
            "{name}: {} bytes, manifest says {size}",
            bytes.len()
        ));
    }
    if crc64nvme_to_base64(got_crc) != want_crc {
        return Err(format!("{name}: CRC-64/NVME mismatch (corrupt)"));
    }
    Ok(())
}

/// One tensor of a safetensors file: its name, shape and byte range in the data section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpan {
    /// The tensor's name.
    pub name: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// First byte in the data section (after the header).
    pub start: usize,
    /// One past its last byte.
    pub end: usize,
}

/// Reads a safetensors header — the JSON after the 8-byte length — against the length of the
/// data section that follows it, and returns the tensors in file order. Accepted only when
/// every tensor is F32 and exactly as long as its shape says (sizes computed without
/// overflow), and the tensors lie back to back from offset 0 to the end of the section.
/// `__metadata__` is skipped. Pure: the checkpoint file's bytes are untrusted input, and this
/// is what `trainer/tests/fuzz.rs` fuzzes.
pub fn tensor_layout(header: &[u8], body_len: u64) -> Result<Vec<TensorSpan>, String> {
    let raw: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(header).map_err(|e| format!("bad safetensors header: {e}"))?;
    let mut infos: Vec<(String, TensorInfo)> = Vec::new();
    for (k, v) in raw {
        if k == "__metadata__" {
            continue;
        }
        let info: TensorInfo = serde_json::from_value(v).map_err(|e| format!("tensor {k}: {e}"))?;
        infos.push((k, info));
    }
    infos.sort_by_key(|(_, i)| i.data_offsets.0);
    let mut at = 0usize;
    let mut spans = Vec::with_capacity(infos.len());
    for (k, info) in infos {
        if info.dtype != safetensors::Dtype::F32 {
            return Err(format!("tensor {k}: unsupported dtype {:?}", info.dtype));
        }
        let (start, end) = info.data_offsets;
        let bytes = info
            .shape
            .iter()
            .try_fold(4usize, |size, &dim| size.checked_mul(dim));
        if start != at || end < start || end as u64 > body_len || bytes != Some(end - start) {
            return Err(format!("tensor {k}: offsets {start}..{end} do not fit"));
        }
        at = end;
        spans.push(TensorSpan {
            name: k,
            shape: info.shape,
            start,
            end,
        });
    }
    if at as u64 != body_len {
        return Err("trailing bytes after the last tensor".into());
    }
    Ok(spans)
}

/// Bytes per read call and per CRC job.
const READ_CHUNK: usize = 8 << 20;

/// Reads a safetensors file tensor by tensor, straight into the buffers the tensors will own,
/// checking size and CRC. The CRC runs on a second thread over each chunk just read, so the
/// read never waits for it.
fn read_tensors(path: &Path, size: u64, want_crc: &str) -> Result<Vec<HostTensor>, String> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let err = |why: String| format!("{name}: {why}");
    let mut f = File::open(path).map_err(|e| err(e.to_string()))?;
    let actual = f.metadata().map_err(|e| err(e.to_string()))?.len();
    if actual != size {
        return Err(err(format!("{actual} bytes, manifest says {size}")));
    }
    let mut len_buf = [0u8; 8];
    f.read_exact(&mut len_buf).map_err(|e| err(e.to_string()))?;
    let header_len = u64::from_le_bytes(len_buf);
    if header_len > 100 << 20 || header_len + 8 > size {
        return Err(err("implausible safetensors header length".into()));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(|e| err(e.to_string()))?;
    let spans = tensor_layout(&header, size - 8 - header_len).map_err(err)?;
    let mut bufs: Vec<Vec<u8>> = spans.iter().map(|s| vec![0u8; s.end - s.start]).collect();
    let (read, crc) = std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<&[u8]>(2);
        let summer = scope.spawn(move || {
            let mut digest = crc64fast_nvme::Digest::new();
            digest.write(&len_buf);
            digest.write(&header);
            for chunk in rx {
                digest.write(chunk);
            }
            digest.sum64()
        });
        let read = bufs
            .iter_mut()
            .flat_map(|b| b.chunks_mut(READ_CHUNK))
            .try_for_each(|chunk| {
                f.read_exact(chunk)?;
                // A send fails only if the CRC thread is gone, which only a panic does.
                tx.send(chunk)
                    .map_err(|_| std::io::Error::other("CRC thread ended"))
            });
        drop(tx);
        (read, summer.join())
    });
    read.map_err(|e| err(e.to_string()))?;
    let crc = crc.map_err(|_| err("CRC thread panicked".into()))?;
    if crc64nvme_to_base64(crc) != want_crc {
        return Err(err("CRC-64/NVME mismatch (corrupt)".into()));
    }
    Ok(spans
        .into_iter()
        .zip(bufs)
        .map(|(span, buf)| HostTensor {
            name: span.name,
            data: TensorData::from_bytes_vec(buf, span.shape.clone(), burn::tensor::DType::F32),
            shape: span.shape,
        })
        .collect())
}
