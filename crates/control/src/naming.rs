//! Deterministic names for relaunched jobs and continued EC2 runs.
//!
//! Owns the naming rule: `<base, sanitised and truncated>-r<attempt>-<8 hex of sha256(root,
//! attempt)>` for SageMaker relaunches and `<run>-c<generation>-<8 hex of sha256(run,
//! generation)>` for EC2 continuations, always matching SageMaker's
//! `^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$`. The same inputs always give the same name, so a
//! duplicate or redelivered event asks CreateTrainingJob for the same name, and its
//! `ResourceInUse` answer is a job to check (`spotcheck:parent`, `spotcheck:run`…) before it
//! counts as "already done". A continuation is named by the run and its generation, not by the
//! reclaimed instance, so the several instances of one run (or the replacements an Auto Scaling
//! group launched) continue it as one job. The hash is over the unsanitised input, so two roots
//! that sanitise or truncate alike still get different names. It does no I/O and knows nothing
//! of policy.

use sha2::{Digest, Sha256};

/// SageMaker's limit on training-job names.
pub const MAX_NAME_LEN: usize = 63;

/// The name of attempt `attempt` of the lineage rooted at `root`.
pub fn relaunch_name(root: &str, attempt: u32) -> String {
    let hash = short_hash(&[root, &attempt.to_string()]);
    bounded(root, &format!("-r{attempt}-{hash}"))
}

/// The name of generation `generation` of `run`: the job that continues it after the
/// instances of generation `generation - 1` were reclaimed.
pub fn continuation_name(run: &str, generation: u32) -> String {
    let hash = short_hash(&[run, &generation.to_string()]);
    bounded(run, &format!("-c{generation}-{hash}"))
}

/// Whether `name` is a valid SageMaker training-job name.
pub fn is_valid_job_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_NAME_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'-')
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// `base` reduced to `[A-Za-z0-9-]` (other characters become `-`), trimmed of leading and
/// trailing hyphens, truncated so that `base + suffix` fits, or `job` when nothing is left.
/// `suffix` starts with `-` and ends with an alphanumeric character.
fn bounded(base: &str, suffix: &str) -> String {
    let budget = MAX_NAME_LEN - suffix.len();
    let sanitised: String = base
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let mut stem = sanitised.trim_start_matches('-');
    // Only ASCII is left, so byte slicing is safe.
    stem = &stem[..stem.len().min(budget)];
    stem = stem.trim_end_matches('-');
    if stem.is_empty() {
        stem = "job";
    }
    format!("{stem}{suffix}")
}

/// First 8 hex digits of sha256 over the parts, NUL-separated so that ("ab","c") ≠ ("a","bc").
fn short_hash(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..4])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_inputs_same_name_and_distinct_otherwise() {
        assert_eq!(relaunch_name("train", 2), relaunch_name("train", 2));
        assert_ne!(relaunch_name("train", 2), relaunch_name("train", 3));
        assert_ne!(relaunch_name("a_b", 2), relaunch_name("a-b", 2));
        assert!(relaunch_name("train", 2).starts_with("train-r2-"));
        assert_eq!(relaunch_name("train", 2).len(), "train-r2-".len() + 8);
    }

    #[test]
    fn at_and_over_the_length_limit() {
        for len in [40, 53, 54, 55, 63, 64, 200] {
            let root = "x".repeat(len);
            let name = relaunch_name(&root, 4_294_967_295);
            assert!(is_valid_job_name(&name), "{name}");
            assert!(name.len() <= MAX_NAME_LEN);
            assert!(name.contains("-r4294967295-"), "{name}");
        }
        // The longest possible suffix still leaves room for a stem.
        let name = relaunch_name(&"y".repeat(63), u32::MAX);
        assert_eq!(name.len(), MAX_NAME_LEN);
        assert!(name.starts_with("yyyyyyyyyy"));
    }

    #[test]
    fn odd_characters_are_replaced_and_edges_trimmed() {
        let name = relaunch_name("--my_job.v2 (ü)--", 2);
        assert!(name.starts_with("my-job-v2-r2-"), "{name}");
        assert!(is_valid_job_name(&name));
        assert!(relaunch_name("", 2).starts_with("job-r2-"));
        assert!(relaunch_name("___", 2).starts_with("job-r2-"));
        let cont = continuation_name("run/one", 1);
        assert!(cont.starts_with("run-one-c1-"), "{cont}");
        assert!(is_valid_job_name(&cont));
        assert_ne!(continuation_name("run", 1), continuation_name("run", 2));
        assert_ne!(continuation_name("run", 1), continuation_name("run-c1", 1));
        let long = continuation_name(&"r".repeat(100), u32::MAX);
        assert!(is_valid_job_name(&long), "{long}");
    }

    #[test]
    fn validity_check_matches_the_pattern() {
        for ok in ["a", "a-b", "a--b", "A1", &"z".repeat(63)] {
            assert!(is_valid_job_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a_b", "a.b", &"z".repeat(64), "ü"] {
            assert!(!is_valid_job_name(bad), "{bad}");
        }
    }
}
