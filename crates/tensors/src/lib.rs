//! Checkpoint format v1 for tensors that sit in host memory: the I/O core under the `spotcheck`
//! Python package's native layer (`python/`), kept free of Python so it is tested with
//! `cargo test`.
//!
//! - [`layout`]: where each tensor goes in a safetensors file (PyTorch's names, safetensors'
//!   own ordering and header), planned before any byte is copied so that the caller can copy
//!   its tensors straight into one reused host buffer per file;
//! - [`save`] and [`persister`]: a checkpoint written through the protocol crate's writer
//!   (SHA-256 and CRC-64/NVME, manifest last) from those buffers on a background thread, then
//!   retention by the protocol crate's planner;
//! - [`restore`]: the newest valid checkpoint of a namespace, falling back past torn and
//!   corrupt ones with the reason, read into caller-provided memory with every byte checked.
//!
//! Nothing here reads a clock or the environment: times, pauses and paths come from callers.

#![warn(missing_docs)]

pub mod layout;
pub mod persister;
pub mod region;
pub mod restore;
pub mod save;

pub use layout::{parse_header, plan, FileLayout, LayoutError, TensorEntry, TensorSpec};
pub use persister::{Busy, Persister};
pub use region::{HostRegion, HostRegionMut};
pub use restore::{candidates, Candidate, OpenCheckpoint, RestoreError, Verify};
pub use save::{write_job, FileSource, SaveError, SaveJob, Saved};
