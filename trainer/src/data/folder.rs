//! A folder of class sub-folders holding PNG or JPEG images (the ImageFolder layout).
//!
//! Classes are the sub-folder names in sorted order, so the label mapping is stable across
//! restarts and machines. Images are converted to RGB and resized to a common square size.

use std::path::Path;

use image::imageops::FilterType;

use super::{DataError, Dataset};

fn is_image(p: &Path) -> bool {
    matches!(
        p.extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase)
            .as_deref(),
        Some("png" | "jpg" | "jpeg")
    )
}

fn class_dirs(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    dirs
}

/// Whether the folder has at least one class folder with an image in it.
pub fn present(dir: &Path) -> bool {
    class_dirs(dir).iter().any(|d| {
        std::fs::read_dir(d)
            .into_iter()
            .flatten()
            .flatten()
            .any(|e| is_image(&e.path()))
    })
}

/// Loads every image, resized to `size`×`size` (0: 32).
pub fn load(dir: &Path, size: usize) -> Result<Dataset, DataError> {
    let size = if size == 0 { 32 } else { size };
    let classes = class_dirs(dir);
    if classes.is_empty() {
        return Err(DataError::NotFound(dir.display().to_string()));
    }
    let mut images = Vec::new();
    let mut labels = Vec::new();
    for (label, class) in classes.iter().enumerate() {
        let mut files: Vec<_> = std::fs::read_dir(class)
            .map_err(|source| DataError::Io {
                path: class.display().to_string(),
                source,
            })?
            .flatten()
            .map(|e| e.path())
            .filter(|p| is_image(p))
            .collect();
        files.sort();
        for f in files {
            let img = image::open(&f).map_err(|e| DataError::Format {
                path: f.display().to_string(),
                why: e.to_string(),
            })?;
            let rgb = img
                .resize_exact(size as u32, size as u32, FilterType::Triangle)
                .to_rgb8();
            // HWC → CHW.
            let (w, h) = (size, size);
            let raw = rgb.as_raw();
            for c in 0..3 {
                for y in 0..h {
                    for x in 0..w {
                        images.push(raw[(y * w + x) * 3 + c]);
                    }
                }
            }
            labels.push(label as u32);
        }
    }
    Ok(Dataset {
        images,
        labels,
        channels: 3,
        height: size,
        width: size,
        classes: classes.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_class_folders_in_sorted_order() {
        let dir = tempfile::tempdir().unwrap();
        for (class, shade) in [("cat", 10u8), ("ant", 200u8)] {
            std::fs::create_dir(dir.path().join(class)).unwrap();
            let img = image::RgbImage::from_pixel(5, 7, image::Rgb([shade, shade, shade]));
            img.save(dir.path().join(class).join("a.png")).unwrap();
        }
        std::fs::write(dir.path().join("ant/notes.txt"), "x").unwrap();
        assert!(present(dir.path()));
        let ds = load(dir.path(), 4).unwrap();
        assert_eq!((ds.classes, ds.channels, ds.height, ds.len()), (2, 3, 4, 2));
        // "ant" sorts first, so it is class 0 and its pixels are the bright ones.
        assert_eq!(ds.labels, vec![0, 1]);
        assert_eq!(ds.images[0], 200);
        assert_eq!(ds.images[3 * 16], 10);
    }

    #[test]
    fn a_corrupt_image_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("a")).unwrap();
        std::fs::write(dir.path().join("a/broken.png"), b"not a png").unwrap();
        let err = load(dir.path(), 4).unwrap_err().to_string();
        assert!(err.contains("broken.png"), "{err}");
    }
}
