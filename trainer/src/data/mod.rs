//! Training data: loading IDX files, class folders and synthetic images into memory.
//!
//! Images stay as bytes (`u8`, N×C×H×W) and are turned into floats one batch at a time, so a
//! dataset costs a quarter of its float size in memory. Loading never decides the data order:
//! that is the sampler's job.

mod folder;
mod idx;
mod synthetic;

use std::path::Path;

use crate::hyper::{DatasetKind, Hyperparameters};

pub use synthetic::synthetic;

/// Why a dataset could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading a file failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The bytes are not what the format promises.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: String,
        /// What is wrong.
        why: String,
    },
    /// Nothing in the folder looks like a dataset.
    #[error("no dataset found in {0}: expected IDX files (train-images-idx3-ubyte[.gz]) or one sub-folder of PNG/JPEG images per class")]
    NotFound(String),
}

/// An in-memory image-classification dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    /// Pixels, N×C×H×W, row-major.
    pub images: Vec<u8>,
    /// Class index of each image.
    pub labels: Vec<u32>,
    /// Channels per image.
    pub channels: usize,
    /// Image height.
    pub height: usize,
    /// Image width.
    pub width: usize,
    /// Number of classes.
    pub classes: usize,
}

impl Dataset {
    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Bytes per image.
    pub fn image_len(&self) -> usize {
        self.channels * self.height * self.width
    }

    /// Gathers the given images as normalised floats (N×C×H×W) and their labels.
    pub fn gather(&self, indices: &[usize]) -> (Vec<f32>, Vec<i64>) {
        let n = self.image_len();
        let mut pixels = Vec::with_capacity(indices.len() * n);
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            pixels.extend(
                self.images[i * n..(i + 1) * n]
                    .iter()
                    .map(|&p| p as f32 / 255.0),
            );
            labels.push(self.labels[i] as i64);
        }
        (pixels, labels)
    }

    fn check(self, origin: &str) -> Result<Self, DataError> {
        let bad = |why: String| DataError::Format {
            path: origin.to_string(),
            why,
        };
        if self.is_empty() {
            return Err(bad("no images".into()));
        }
        if self.images.len() != self.len() * self.image_len() {
            return Err(bad("image bytes do not match the image count".into()));
        }
        if let Some(l) = self.labels.iter().find(|&&l| l as usize >= self.classes) {
            return Err(bad(format!(
                "label {l} out of range for {} classes",
                self.classes
            )));
        }
        Ok(self)
    }
}

/// Which split of an IDX folder to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    /// `train-*` files.
    Train,
    /// `t10k-*` files.
    Test,
}

/// Loads the training (or evaluation) data the hyperparameters ask for.
pub fn load(dir: &Path, split: Split, hp: &Hyperparameters) -> Result<Dataset, DataError> {
    let origin = dir.display().to_string();
    let ds = match hp.dataset {
        DatasetKind::Synthetic => {
            let size = if hp.image_size == 0 {
                28
            } else {
                hp.image_size
            };
            if hp.num_classes == 0 {
                return Err(DataError::Format {
                    path: "synthetic".into(),
                    why: "num_classes is required for synthetic data".into(),
                });
            }
            let seed = hp.seed ^ if split == Split::Test { 0x7e57 } else { 0 };
            let n = if split == Split::Test {
                (hp.synthetic_samples / 8).max(1)
            } else {
                hp.synthetic_samples
            };
            synthetic(n, hp.synthetic_channels, size, hp.num_classes, seed)
        }
        DatasetKind::Idx => idx::load(dir, split)?,
        DatasetKind::Folder => folder::load(dir, hp.image_size)?,
        DatasetKind::Auto => {
            if idx::present(dir, split) {
                idx::load(dir, split)?
            } else if folder::present(dir) {
                folder::load(dir, hp.image_size)?
            } else {
                return Err(DataError::NotFound(origin));
            }
        }
    };
    let mut ds = ds.check(&origin)?;
    if hp.num_classes > 0 {
        if hp.num_classes < ds.classes {
            return Err(DataError::Format {
                path: origin,
                why: format!(
                    "num_classes {} is below the {} classes in the data",
                    hp.num_classes, ds.classes
                ),
            });
        }
        ds.classes = hp.num_classes;
    }
    Ok(ds)
}

/// Whether an evaluation split can be found in a folder.
pub fn has_test_split(dir: &Path) -> bool {
    idx::present(dir, Split::Test)
}
