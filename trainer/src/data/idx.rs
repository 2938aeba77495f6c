//! IDX files (the MNIST family, Fashion-MNIST among them), plain or gzip-compressed.

use std::io::Read;
use std::path::{Path, PathBuf};

use super::{DataError, Dataset, Split};

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;
/// Refuse absurd headers instead of allocating them.
const MAX_ITEMS: usize = 50_000_000;

fn prefix(split: Split) -> &'static str {
    match split {
        Split::Train => "train",
        Split::Test => "t10k",
    }
}

fn find(dir: &Path, stem: &str) -> Option<PathBuf> {
    [stem.to_string(), format!("{stem}.gz")]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

/// Whether the split's image and label files are in the folder.
pub fn present(dir: &Path, split: Split) -> bool {
    let p = prefix(split);
    find(dir, &format!("{p}-images-idx3-ubyte")).is_some()
        && find(dir, &format!("{p}-labels-idx1-ubyte")).is_some()
}

fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let io = |source| DataError::Io {
        path: path.display().to_string(),
        source,
    };
    let raw = std::fs::read(path).map_err(io)?;
    if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .map_err(io)?;
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn be_u32(b: &[u8], at: usize) -> Option<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses an IDX image file into (count, rows, cols, pixels).
pub fn parse_images(b: &[u8], origin: &str) -> Result<(usize, usize, usize, Vec<u8>), DataError> {
    let bad = |why: &str| DataError::Format {
        path: origin.to_string(),
        why: why.to_string(),
    };
    if be_u32(b, 0) != Some(IMAGES_MAGIC) {
        return Err(bad("not an IDX image file (magic 0x00000803)"));
    }
    let (n, rows, cols) = match (be_u32(b, 4), be_u32(b, 8), be_u32(b, 12)) {
        (Some(n), Some(r), Some(c)) => (n as usize, r as usize, c as usize),
        _ => return Err(bad("truncated header")),
    };
    if n > MAX_ITEMS || rows == 0 || cols == 0 || rows > 4096 || cols > 4096 {
        return Err(bad("implausible dimensions"));
    }
    let len = n * rows * cols;
    let body = b
        .get(16..16 + len)
        .ok_or_else(|| bad("fewer pixels than the header says"))?;
    Ok((n, rows, cols, body.to_vec()))
}

/// Parses an IDX label file.
pub fn parse_labels(b: &[u8], origin: &str) -> Result<Vec<u32>, DataError> {
    let bad = |why: &str| DataError::Format {
        path: origin.to_string(),
        why: why.to_string(),
    };
    if be_u32(b, 0) != Some(LABELS_MAGIC) {
        return Err(bad("not an IDX label file (magic 0x00000801)"));
    }
    let n = be_u32(b, 4).ok_or_else(|| bad("truncated header"))? as usize;
    if n > MAX_ITEMS {
        return Err(bad("implausible count"));
    }
    let body = b
        .get(8..8 + n)
        .ok_or_else(|| bad("fewer labels than the header says"))?;
    Ok(body.iter().map(|&l| l as u32).collect())
}

/// Loads one split.
pub fn load(dir: &Path, split: Split) -> Result<Dataset, DataError> {
    let p = prefix(split);
    let missing = || DataError::NotFound(dir.display().to_string());
    let ip = find(dir, &format!("{p}-images-idx3-ubyte")).ok_or_else(missing)?;
    let lp = find(dir, &format!("{p}-labels-idx1-ubyte")).ok_or_else(missing)?;
    let (n, rows, cols, images) = parse_images(&read_maybe_gz(&ip)?, &ip.display().to_string())?;
    let labels = parse_labels(&read_maybe_gz(&lp)?, &lp.display().to_string())?;
    if labels.len() != n {
        return Err(DataError::Format {
            path: lp.display().to_string(),
            why: format!("{} labels for {n} images", labels.len()),
        });
    }
    let classes = labels.iter().max().map_or(0, |&m| m as usize + 1);
    Ok(Dataset {
        images,
        labels,
        channels: 1,
        height: rows,
        width: cols,
        classes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn images(n: u32, r: u32, c: u32, body: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [IMAGES_MAGIC, n, r, c] {
            v.extend(x.to_be_bytes());
        }
        v.extend(body);
        v
    }

    #[test]
    fn parses_a_tiny_image_file() {
        let (n, r, c, px) = parse_images(&images(2, 1, 2, &[1, 2, 3, 4]), "t").unwrap();
        assert_eq!((n, r, c, px), (2, 1, 2, vec![1, 2, 3, 4]));
    }

    #[test]
    fn truncated_and_hostile_headers_are_errors() {
        assert!(parse_images(&images(3, 1, 2, &[1, 2, 3, 4]), "t").is_err());
        assert!(parse_images(&images(u32::MAX, 4096, 4096, &[]), "t").is_err());
        assert!(parse_images(&[0, 0, 8], "t").is_err());
        assert!(parse_labels(&[0, 0, 8, 1, 0, 0, 0, 9, 1], "t").is_err());
    }
}
