//! The event corpus: `tests/fixtures/events/*.json` (real EventBridge shapes, malformed ones
//! included) and `tests/fixtures/jobs/*.json` (DescribeTrainingJob outputs).

use std::path::PathBuf;

/// `tests/fixtures/events`.
pub fn events_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/events")
}

/// Every event fixture as (file stem, bytes), sorted by name.
pub fn events() -> Vec<(String, Vec<u8>)> {
    let dir = events_dir();
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .map(|p| {
            let stem = p
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default()
                .to_owned();
            let bytes =
                std::fs::read(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()));
            (stem, bytes)
        })
        .collect();
    out.sort();
    out
}

/// One event fixture by file stem.
pub fn event(stem: &str) -> Vec<u8> {
    let path = events_dir().join(format!("{stem}.json"));
    std::fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}
