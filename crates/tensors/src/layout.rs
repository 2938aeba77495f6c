//! Where each tensor goes in a safetensors file, decided before any byte is copied.
//!
//! Owns the safetensors side of checkpoint format v1: tensors keep the caller's names (a
//! PyTorch `state_dict`'s keys), are ordered as the `safetensors` crate orders them (dtype
//! alignment descending, then name, so every tensor starts at a multiple of its element size)
//! and get the same header, padded to 8 bytes. A file written from a [`FileLayout`] is byte
//! for byte what `safetensors.torch.save_file` writes for the same tensors and metadata.
//! Reading goes through the crate's own validation ([`parse_header`]). No I/O here.

use std::cmp::Reverse;
use std::collections::{HashMap, HashSet};

use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensors};

/// safetensors' limit on the JSON header (`MAX_HEADER_SIZE` in the crate, not exported).
pub const MAX_HEADER_BYTES: usize = 100_000_000;

/// The header key safetensors reserves for free-form string metadata.
const METADATA_KEY: &str = "__metadata__";

/// One tensor to place: its name, safetensors dtype (`"F32"`, `"BF16"`, …) and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorSpec {
    /// The name stored in the file (e.g. `fc1.weight`).
    pub name: String,
    /// The safetensors dtype name.
    pub dtype: String,
    /// The shape; `[]` for a scalar.
    pub shape: Vec<usize>,
}

/// A planned safetensors file: its header and where each tensor's bytes go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLayout {
    /// The first bytes of the file: the 8-byte little-endian header length, then the JSON
    /// header padded with spaces to a multiple of 8.
    pub header: Vec<u8>,
    /// For each spec, in the order given, its byte range `[start, end)` in the data section
    /// (the bytes after `header`).
    pub offsets: Vec<(usize, usize)>,
    /// Length of the data section.
    pub data_len: usize,
}

impl FileLayout {
    /// Total file size.
    pub fn file_len(&self) -> usize {
        self.header.len() + self.data_len
    }
}

/// A tensor found in a safetensors file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorEntry {
    /// Its name.
    pub name: String,
    /// Its safetensors dtype name.
    pub dtype: String,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Byte range `[start, end)` in the whole file (header included).
    pub start: usize,
    /// End of the range.
    pub end: usize,
}

/// Why tensors cannot be laid out, or a file's header not read.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// A dtype safetensors does not know.
    #[error("tensor {name:?}: unknown safetensors dtype {dtype:?}")]
    UnknownDtype {
        /// The tensor.
        name: String,
        /// The dtype given.
        dtype: String,
    },
    /// A dtype narrower than a byte (F4, F6): a host buffer cannot address its elements.
    #[error("tensor {name:?}: dtype {dtype} packs several elements per byte; not supported")]
    SubByteDtype {
        /// The tensor.
        name: String,
        /// The dtype.
        dtype: String,
    },
    /// The same name twice in one file.
    #[error("tensor name {name:?} appears twice")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// A name safetensors reserves.
    #[error("tensor name {name:?} is reserved by safetensors")]
    ReservedName {
        /// The name.
        name: String,
    },
    /// Sizes that overflow the address space.
    #[error("tensor {name:?}: size overflows")]
    Overflow {
        /// The tensor.
        name: String,
    },
    /// The JSON header would exceed safetensors' 100 MB limit.
    #[error("safetensors header of {bytes} bytes is over the {MAX_HEADER_BYTES}-byte limit")]
    HeaderTooLarge {
        /// Its size.
        bytes: usize,
    },
    /// The safetensors crate rejected the header or file.
    #[error("safetensors: {0}")]
    Safetensors(#[from] safetensors::SafeTensorError),
    /// The header could not be serialised.
    #[error("safetensors header: {0}")]
    Json(#[from] serde_json::Error),
}

fn parse_dtype(name: &str, dtype: &str) -> Result<Dtype, LayoutError> {
    serde_json::from_value::<Dtype>(serde_json::Value::String(dtype.to_owned())).map_err(|_| {
        LayoutError::UnknownDtype {
            name: name.to_owned(),
            dtype: dtype.to_owned(),
        }
    })
}

/// Plans one safetensors file holding `specs`, with optional string `metadata` in the header
/// (`{"format": "pt"}` is what PyTorch users expect).
pub fn plan(
    specs: &[TensorSpec],
    metadata: Option<HashMap<String, String>>,
) -> Result<FileLayout, LayoutError> {
    let mut seen = HashSet::with_capacity(specs.len());
    let mut placed = Vec::with_capacity(specs.len());
    for (index, spec) in specs.iter().enumerate() {
        if spec.name == METADATA_KEY {
            return Err(LayoutError::ReservedName {
                name: spec.name.clone(),
            });
        }
        if !seen.insert(spec.name.as_str()) {
            return Err(LayoutError::DuplicateName {
                name: spec.name.clone(),
            });
        }
        let dtype = parse_dtype(&spec.name, &spec.dtype)?;
        let bits = dtype.bitsize();
        if bits % 8 != 0 {
            return Err(LayoutError::SubByteDtype {
                name: spec.name.clone(),
                dtype: spec.dtype.clone(),
            });
        }
        let overflow = || LayoutError::Overflow {
            name: spec.name.clone(),
        };
        let bytes = spec
            .shape
            .iter()
            .try_fold(bits / 8, |acc, &dim| acc.checked_mul(dim))
            .ok_or_else(overflow)?;
        placed.push((index, dtype, bytes));
    }
    // The safetensors crate's order: dtype descending (its enum is declared in increasing
    // alignment), then name. Every element size is a power of two, so each tensor then starts
    // at a multiple of its own element size.
    placed.sort_by(|a, b| (Reverse(a.1), &specs[a.0].name).cmp(&(Reverse(b.1), &specs[b.0].name)));
    let mut offsets = vec![(0, 0); specs.len()];
    let mut infos = Vec::with_capacity(specs.len());
    let mut offset = 0usize;
    for &(index, dtype, bytes) in &placed {
        let end = offset
            .checked_add(bytes)
            .ok_or_else(|| LayoutError::Overflow {
                name: specs[index].name.clone(),
            })?;
        offsets[index] = (offset, end);
        infos.push((
            specs[index].name.clone(),
            TensorInfo {
                dtype,
                shape: specs[index].shape.clone(),
                data_offsets: (offset, end),
            },
        ));
        offset = end;
    }
    let metadata = Metadata::new(metadata, infos)?;
    let mut json = serde_json::to_string(&metadata)?.into_bytes();
    json.resize(json.len().next_multiple_of(8), b' ');
    if json.len() > MAX_HEADER_BYTES {
        return Err(LayoutError::HeaderTooLarge { bytes: json.len() });
    }
    let mut header = Vec::with_capacity(8 + json.len());
    header.extend_from_slice(&(json.len() as u64).to_le_bytes());
    header.extend_from_slice(&json);
    Ok(FileLayout {
        header,
        offsets,
        data_len: offset,
    })
}

/// Reads the header of a whole safetensors file held in memory, with the safetensors crate's
/// validation (offsets contiguous and matching dtype × shape, the buffer exactly as long as
/// the header says). Entries come in file order.
pub fn parse_header(file: &[u8]) -> Result<Vec<TensorEntry>, LayoutError> {
    let (n, metadata) = SafeTensors::read_metadata(file)?;
    let data_start = 8 + n;
    let infos = metadata.tensors();
    let mut entries: Vec<TensorEntry> = metadata
        .offset_keys()
        .into_iter()
        .filter_map(|name| {
            let info = infos.get(&name)?;
            Some(TensorEntry {
                dtype: info.dtype.to_string(),
                shape: info.shape.clone(),
                start: data_start + info.data_offsets.0,
                end: data_start + info.data_offsets.1,
                name,
            })
        })
        .collect();
    entries.sort_by_key(|e| (e.start, e.end));
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    struct Bytes {
        dtype: Dtype,
        shape: Vec<usize>,
        data: Vec<u8>,
    }

    impl safetensors::View for &Bytes {
        fn dtype(&self) -> Dtype {
            self.dtype
        }
        fn shape(&self) -> &[usize] {
            &self.shape
        }
        fn data(&self) -> Cow<'_, [u8]> {
            Cow::Borrowed(&self.data)
        }
        fn data_len(&self) -> usize {
            self.data.len()
        }
    }

    fn spec(name: &str, dtype: &str, shape: &[usize]) -> TensorSpec {
        TensorSpec {
            name: name.into(),
            dtype: dtype.into(),
            shape: shape.to_vec(),
        }
    }

    /// Writes `specs` through a layout, with recognisable bytes per tensor.
    fn write_with_layout(specs: &[TensorSpec], layout: &FileLayout) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut file = layout.header.clone();
        let mut data = vec![0u8; layout.data_len];
        let mut contents = Vec::new();
        for (i, (start, end)) in layout.offsets.iter().enumerate() {
            let bytes: Vec<u8> = (0..end - start).map(|j| (i * 31 + j) as u8).collect();
            data[*start..*end].copy_from_slice(&bytes);
            contents.push(bytes);
        }
        file.extend_from_slice(&data);
        assert_eq!(file.len(), layout.file_len());
        let _ = specs;
        (file, contents)
    }

    #[test]
    fn a_planned_file_is_byte_identical_to_the_safetensors_crates_own() {
        let specs = vec![
            spec("fc2.bias", "F32", &[10]),
            spec("state.0.step", "F32", &[]),
            spec("mask", "BOOL", &[3, 5]),
            spec("fc1.weight", "F32", &[4, 3]),
            spec("counts", "I64", &[3]),
            spec("half", "BF16", &[7]),
            spec("empty", "F16", &[0, 4]),
            spec("bytes", "U8", &[5]),
        ];
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        let layout = plan(&specs, Some(meta.clone())).unwrap();
        let (ours, contents) = write_with_layout(&specs, &layout);
        let owned: Vec<(String, Bytes)> = specs
            .iter()
            .zip(&contents)
            .map(|(s, data)| {
                (
                    s.name.clone(),
                    Bytes {
                        dtype: parse_dtype(&s.name, &s.dtype).unwrap(),
                        shape: s.shape.clone(),
                        data: data.clone(),
                    },
                )
            })
            .collect();
        let theirs =
            safetensors::serialize(owned.iter().map(|(n, b)| (n.as_str(), b)), Some(meta)).unwrap();
        assert_eq!(ours, theirs);
    }

    #[test]
    fn every_tensor_starts_at_a_multiple_of_its_element_size() {
        let specs = vec![
            spec("a", "U8", &[3]),
            spec("b", "F64", &[2]),
            spec("c", "BF16", &[1]),
            spec("d", "I32", &[3]),
            spec("e", "BOOL", &[1]),
        ];
        let layout = plan(&specs, None).unwrap();
        let sizes = [1, 8, 2, 4, 1];
        for ((start, _), size) in layout.offsets.iter().zip(sizes) {
            assert_eq!(start % size, 0, "{layout:?}");
        }
        assert_eq!(layout.header.len() % 8, 0);
        assert_eq!(layout.data_len, 3 + 16 + 2 + 12 + 1);
    }

    #[test]
    fn parse_header_reads_back_names_dtypes_shapes_and_ranges() {
        let specs = vec![spec("w", "F32", &[2, 2]), spec("b", "I64", &[1])];
        let layout = plan(&specs, None).unwrap();
        let (file, _) = write_with_layout(&specs, &layout);
        let entries = parse_header(&file).unwrap();
        let h = layout.header.len();
        assert_eq!(
            entries,
            vec![
                TensorEntry {
                    name: "b".into(),
                    dtype: "I64".into(),
                    shape: vec![1],
                    start: h,
                    end: h + 8
                },
                TensorEntry {
                    name: "w".into(),
                    dtype: "F32".into(),
                    shape: vec![2, 2],
                    start: h + 8,
                    end: h + 24
                },
            ]
        );
    }

    #[test]
    fn truncated_or_garbage_files_are_refused_not_panicked_on() {
        let specs = vec![spec("w", "F32", &[4])];
        let layout = plan(&specs, None).unwrap();
        let (file, _) = write_with_layout(&specs, &layout);
        for cut in [0, 3, 8, file.len() - 1] {
            assert!(parse_header(&file[..cut]).is_err(), "cut at {cut}");
        }
        let mut huge = file.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(parse_header(&huge).is_err());
        let mut longer = file;
        longer.push(0);
        assert!(parse_header(&longer).is_err());
    }

    #[test]
    fn bad_specs_are_refused_with_the_tensor_named() {
        let cases = [
            (
                vec![spec("a", "F32", &[1]), spec("a", "F32", &[1])],
                "appears twice",
            ),
            (vec![spec("a", "F33", &[1])], "unknown safetensors dtype"),
            (vec![spec("a", "F4", &[2])], "several elements per byte"),
            (vec![spec("__metadata__", "F32", &[1])], "reserved"),
            (
                vec![spec("a", "F64", &[usize::MAX / 4, 3])],
                "size overflows",
            ),
        ];
        for (specs, want) in cases {
            let err = plan(&specs, None).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
    }
}
