//! Host-memory snapshots of the training state and their safetensors encoding.
//!
//! Handing a checkpoint over is the only part of it the training loop waits for. Where the
//! tensors live in host memory the loop hands over tensor handles ([`Handover`]) and the
//! persister copies them: burn's tensors are copy-on-write, so while the persister holds a
//! handle the next optimizer step writes new buffers instead of updating in place, and the
//! handed-over values stay as they were. On a GPU the loop copies to host memory at once (a
//! deferred copy would hold a second copy of the state in scarcer device memory). The price on
//! the CPU: while the persister copies a tensor the step may already write its successor, so
//! host memory briefly holds up to three versions of a tensor where a copy at hand-over needed
//! two. Encoding streams the safetensors header (built by the `safetensors` crate) and then
//! each tensor's bytes straight into the checkpoint writer, so a multi-GiB state is never
//! copied twice.

use std::collections::HashMap;
use std::io::{self, Write};

use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor, TensorData};
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

use crate::state::TrainerState;

/// One named tensor in host memory.
#[derive(Debug, Clone)]
pub struct HostTensor {
    /// Dotted parameter name (optimizer slots add `.exp_avg` and the like).
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Element bytes (little-endian) and dtype.
    pub data: TensorData,
}

/// Everything a checkpoint holds, in host memory.
pub struct Snapshot {
    /// Model parameters.
    pub model: Vec<HostTensor>,
    /// Optimizer state.
    pub optimizer: Vec<HostTensor>,
    /// Step, data position, RNG and schedule state.
    pub state: TrainerState,
}

impl Snapshot {
    /// Bytes of tensor data held.
    pub fn tensor_bytes(&self) -> usize {
        self.model
            .iter()
            .chain(&self.optimizer)
            .map(|t| t.data.as_bytes().len())
            .sum()
    }
}

/// A tensor handed over by the training loop: already in host memory, or a backend handle the
/// persister copies from.
pub struct PendingTensor {
    name: String,
    shape: Vec<usize>,
    bytes: usize,
    read: Box<dyn FnOnce() -> TensorData + Send>,
}

impl PendingTensor {
    /// Takes `tensor` as `name` with `shape` (same element count; optimizer slots are stored
    /// flat and saved with their parameter's shape). `copy_now` copies to host memory here;
    /// otherwise the copy happens in [`Handover::materialise`].
    pub fn of<B: Backend, const D: usize>(
        name: String,
        shape: Vec<usize>,
        tensor: Tensor<B, D>,
        copy_now: bool,
    ) -> Self {
        let bytes = tensor.shape().num_elements() * tensor.dtype().size();
        let read: Box<dyn FnOnce() -> TensorData + Send> = if copy_now {
            let data = tensor.into_data();
            Box::new(move || data)
        } else {
            Box::new(move || tensor.into_data())
        };
        Self {
            name,
            shape,
            bytes,
            read,
        }
    }

    /// The tensor in host memory, copied now if it was not yet.
    pub fn into_host(self) -> HostTensor {
        let mut data = (self.read)();
        data.shape = self.shape.clone().into();
        HostTensor {
            name: self.name,
            shape: self.shape,
            data,
        }
    }
}

/// What the training loop hands to the persister for one checkpoint.
pub struct Handover {
    /// Model parameters.
    pub model: Vec<PendingTensor>,
    /// Optimizer state.
    pub optimizer: Vec<PendingTensor>,
    /// Step, data position, RNG and schedule state.
    pub state: TrainerState,
}

impl Handover {
    /// Bytes of tensor data handed over.
    pub fn tensor_bytes(&self) -> usize {
        self.model
            .iter()
            .chain(&self.optimizer)
            .map(|t| t.bytes)
            .sum()
    }

    /// Copies whatever is still a backend tensor to host memory.
    pub fn materialise(self) -> Snapshot {
        Snapshot {
            model: self
                .model
                .into_iter()
                .map(PendingTensor::into_host)
                .collect(),
            optimizer: self
                .optimizer
                .into_iter()
                .map(PendingTensor::into_host)
                .collect(),
            state: self.state,
        }
    }
}

/// Why a safetensors file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum TensorFileError {
    /// The header could not be built or parsed.
    #[error("safetensors: {0}")]
    Format(String),
    /// A dtype this trainer does not store.
    #[error("tensor `{0}` has unsupported dtype {1}")]
    Dtype(String, String),
}

fn to_st_dtype(name: &str, d: DType) -> Result<Dtype, TensorFileError> {
    match d {
        DType::F32 => Ok(Dtype::F32),
        DType::F64 => Ok(Dtype::F64),
        DType::F16 => Ok(Dtype::F16),
        DType::BF16 => Ok(Dtype::BF16),
        other => Err(TensorFileError::Dtype(
            name.to_string(),
            format!("{other:?}"),
        )),
    }
}

fn from_st_dtype(name: &str, d: Dtype) -> Result<DType, TensorFileError> {
    match d {
        Dtype::F32 => Ok(DType::F32),
        Dtype::F64 => Ok(DType::F64),
        Dtype::F16 => Ok(DType::F16),
        Dtype::BF16 => Ok(DType::BF16),
        other => Err(TensorFileError::Dtype(
            name.to_string(),
            format!("{other:?}"),
        )),
    }
}

/// The safetensors header (length prefix included) for `tensors` in the given order.
pub fn header(
    tensors: &[HostTensor],
    metadata: Option<HashMap<String, String>>,
) -> Result<Vec<u8>, TensorFileError> {
    let mut offset = 0;
    let mut infos = Vec::with_capacity(tensors.len());
    for t in tensors {
        let n = t.data.as_bytes().len();
        infos.push((
            t.name.clone(),
            TensorInfo {
                dtype: to_st_dtype(&t.name, t.data.dtype)?,
                shape: t.shape.clone(),
                data_offsets: (offset, offset + n),
            },
        ));
        offset += n;
    }
    let meta =
        Metadata::new(metadata, infos).map_err(|e| TensorFileError::Format(e.to_string()))?;
    let mut json = serde_json::to_vec(&meta).map_err(|e| TensorFileError::Format(e.to_string()))?;
    // The format pads the header with spaces to a multiple of 8 bytes.
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut out = Vec::with_capacity(8 + json.len());
    out.extend((json.len() as u64).to_le_bytes());
    out.extend(json);
    Ok(out)
}

/// Streams a safetensors file: header, then each tensor's bytes in order.
pub fn write(
    w: &mut dyn Write,
    tensors: &[HostTensor],
    metadata: Option<HashMap<String, String>>,
) -> io::Result<()> {
    let h = header(tensors, metadata).map_err(io::Error::other)?;
    w.write_all(&h)?;
    for t in tensors {
        w.write_all(t.data.as_bytes())?;
    }
    Ok(())
}

/// Reads every tensor of a safetensors file, in file order.
pub fn read(bytes: &[u8]) -> Result<Vec<HostTensor>, TensorFileError> {
    let st = SafeTensors::deserialize(bytes).map_err(|e| TensorFileError::Format(e.to_string()))?;
    let mut out = Vec::new();
    let mut tensors = st.tensors();
    tensors.sort_by_key(|(_, v)| v.data().as_ptr() as usize);
    for (name, view) in tensors {
        let dtype = from_st_dtype(&name, view.dtype())?;
        out.push(HostTensor {
            shape: view.shape().to_vec(),
            data: TensorData::from_bytes_vec(view.data().to_vec(), view.shape().to_vec(), dtype),
            name,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(name: &str, v: Vec<f32>, shape: Vec<usize>) -> HostTensor {
        HostTensor {
            name: name.into(),
            data: TensorData::new(v, shape.clone()),
            shape,
        }
    }

    #[test]
    fn streamed_files_are_what_the_safetensors_crate_reads() {
        let ts = vec![
            t("b.weight", vec![1.0, 2.0, 3.0], vec![3]),
            t("a", vec![4.0; 4], vec![2, 2]),
        ];
        let mut buf = Vec::new();
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        write(&mut buf, &ts, Some(meta)).unwrap();
        let st = SafeTensors::deserialize(&buf).unwrap();
        assert_eq!(st.tensor("a").unwrap().shape(), &[2, 2]);
        let back = read(&buf).unwrap();
        assert_eq!(back[0].name, "b.weight");
        assert_eq!(back[0].data.as_bytes(), ts[0].data.as_bytes());
        assert_eq!(back[1].data.as_bytes(), ts[1].data.as_bytes());
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(read(b"").is_err());
        assert!(read(&[255; 16]).is_err());
        let mut huge = (u64::MAX).to_le_bytes().to_vec();
        huge.extend(b"{}");
        assert!(read(&huge).is_err());
    }
}
