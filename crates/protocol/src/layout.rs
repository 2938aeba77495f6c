//! Names and shapes on disk: where a checkpoint lives and which names are legal.
//!
//! Owns the directory layout (`<root>/<namespace>/step-<12 digits>/…`), the reserved names
//! (the manifest, SageMaker's uploader markers, our temporary suffix) and the rules a relative
//! file path must follow. Everything here is pure string work: it never touches the filesystem,
//! so the writer, the local validator and the S3 adapter all apply exactly the same rules.

use std::fmt;

/// File name of the manifest inside a step directory. Written last: its presence with matching
/// files is what makes a checkpoint exist.
pub const MANIFEST_FILE: &str = "manifest.json";

/// Suffix of our temporary files. SageMaker's checkpoint uploader skips files with this suffix,
/// so half-written data never reaches S3.
pub const TEMP_SUFFIX: &str = ".sagemaker-ignore";

/// Marker SageMaker's uploader leaves next to a file while uploading it.
pub const UPLOADING_SUFFIX: &str = ".sagemaker-uploading";

/// Marker SageMaker's uploader leaves next to a file once uploaded.
pub const UPLOADED_SUFFIX: &str = ".sagemaker-uploaded";

/// Prefix of a step directory's name.
pub const STEP_PREFIX: &str = "step-";

/// Digits a step number is zero-padded to, so that lexical order is step order.
pub const STEP_DIGITS: usize = 12;

/// Longest relative file path accepted: S3 keys are at most 1024 bytes.
pub const MAX_PATH_BYTES: usize = 1024;

/// Longest namespace accepted.
pub const MAX_NAMESPACE_BYTES: usize = 128;

/// The name of a step directory, e.g. `step-000000001200`.
pub fn step_dir_name(step: u64) -> String {
    format!("{STEP_PREFIX}{step:0width$}", width = STEP_DIGITS)
}

/// Parses a step directory name. Only the canonical spelling is accepted (exactly what
/// [`step_dir_name`] produces), so each step has one directory and markers such as
/// `step-000000001200.sagemaker-uploading` are not mistaken for checkpoints.
pub fn parse_step_dir_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(STEP_PREFIX)?;
    if digits.len() < STEP_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let step: u64 = digits.parse().ok()?;
    (step_dir_name(step) == name).then_some(step)
}

/// True for names that belong to the transport, not to a checkpoint: SageMaker's upload
/// markers and our temporary files. Validators skip them everywhere.
pub fn is_transport_name(name: &str) -> bool {
    [TEMP_SUFFIX, UPLOADING_SUFFIX, UPLOADED_SUFFIX]
        .iter()
        .any(|suffix| name.ends_with(suffix))
}

/// Where one checkpoint sits below a checkpoint root: an optional namespace directory and a
/// step. Its [`name`](Location::name) (`algo-1/step-000000001200`) is how reports, retention
/// and the S3 adapter refer to a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Location {
    /// The host/rank directory; `None` when the step directory sits directly in the root
    /// (the root is itself a namespace directory).
    pub namespace: Option<String>,
    /// The training step.
    pub step: u64,
}

impl Location {
    /// The relative name, `<namespace>/step-…` or `step-…`; '/'-separated on every platform.
    pub fn name(&self) -> String {
        match &self.namespace {
            Some(ns) => format!("{ns}/{}", step_dir_name(self.step)),
            None => step_dir_name(self.step),
        }
    }

    /// Parses a relative name produced by [`Location::name`]. Anything else (extra components,
    /// a bad namespace, a non-canonical step) is `None`, so a name can be joined onto a root
    /// without escaping it.
    pub fn parse(name: &str) -> Option<Location> {
        match name.split_once('/') {
            None => Some(Location {
                namespace: None,
                step: parse_step_dir_name(name)?,
            }),
            Some((ns, step)) => {
                check_namespace(ns).ok()?;
                Some(Location {
                    namespace: Some(ns.to_owned()),
                    step: parse_step_dir_name(step)?,
                })
            }
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Why a relative path or a namespace was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PathProblem {
    /// The path is empty.
    #[error("is empty")]
    Empty,
    /// The path is longer than [`MAX_PATH_BYTES`] (or a namespace than [`MAX_NAMESPACE_BYTES`]).
    #[error("is too long")]
    TooLong,
    /// The path starts with '/': it would leave the checkpoint directory.
    #[error("is absolute")]
    Absolute,
    /// A component is `..`: it would leave the checkpoint directory.
    #[error("contains a '..' component")]
    ParentDir,
    /// A component is `.`: two spellings would name one file.
    #[error("contains a '.' component")]
    CurrentDir,
    /// Two slashes in a row or a trailing slash: two spellings would name one file.
    #[error("contains an empty component")]
    EmptyComponent,
    /// A backslash: a separator on Windows, ambiguous everywhere.
    #[error("contains a backslash")]
    Backslash,
    /// A NUL byte: truncates the path in C APIs.
    #[error("contains a NUL byte")]
    Nul,
    /// The manifest itself or a transport name (marker or temporary suffix).
    #[error("uses a reserved name")]
    Reserved,
    /// A namespace with a character outside `[A-Za-z0-9._-]`, a leading '.', or the shape of a
    /// step directory.
    #[error("is not a valid namespace (use [A-Za-z0-9._-], not starting with '.' or 'step-')")]
    BadNamespace,
}

/// Checks a checkpoint-relative file path ('/'-separated). Legal paths stay inside the step
/// directory by construction, have one spelling, and never collide with reserved names.
pub fn check_rel_path(path: &str) -> Result<(), PathProblem> {
    if path.is_empty() {
        return Err(PathProblem::Empty);
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathProblem::TooLong);
    }
    if path.starts_with('/') {
        return Err(PathProblem::Absolute);
    }
    if path.contains('\\') {
        return Err(PathProblem::Backslash);
    }
    if path.contains('\0') {
        return Err(PathProblem::Nul);
    }
    for component in path.split('/') {
        match component {
            "" => return Err(PathProblem::EmptyComponent),
            "." => return Err(PathProblem::CurrentDir),
            ".." => return Err(PathProblem::ParentDir),
            c if is_transport_name(c) => return Err(PathProblem::Reserved),
            _ => {}
        }
    }
    if path == MANIFEST_FILE {
        return Err(PathProblem::Reserved);
    }
    Ok(())
}

/// Checks a namespace (one directory name per host/rank, e.g. `algo-1`). The character set is
/// narrow so a namespace is always a single safe path component and an S3-safe key part, and
/// it may not look like a step directory so the two levels never get confused.
pub fn check_namespace(namespace: &str) -> Result<(), PathProblem> {
    if namespace.is_empty() {
        return Err(PathProblem::Empty);
    }
    if namespace.len() > MAX_NAMESPACE_BYTES {
        return Err(PathProblem::TooLong);
    }
    let charset_ok = namespace
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !charset_ok || namespace.starts_with('.') || namespace.starts_with(STEP_PREFIX) {
        return Err(PathProblem::BadNamespace);
    }
    if is_transport_name(namespace) {
        return Err(PathProblem::Reserved);
    }
    Ok(())
}

/// Shortens untrusted text before it goes into an error message, so a hostile 1 MiB path does
/// not become a 1 MiB log line.
pub(crate) fn excerpt(text: &str) -> String {
    const LIMIT: usize = 120;
    if text.len() <= LIMIT {
        return text.to_owned();
    }
    let mut end = LIMIT;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_names_sort_like_steps() {
        assert_eq!(step_dir_name(1200), "step-000000001200");
        assert!(step_dir_name(999) < step_dir_name(1000));
        assert_eq!(parse_step_dir_name("step-000000001200"), Some(1200));
        assert_eq!(
            parse_step_dir_name(&step_dir_name(u64::MAX)),
            Some(u64::MAX)
        );
    }

    #[test]
    fn non_canonical_step_names_are_not_checkpoints() {
        for name in [
            "step-1200",
            "step-0000000001200",
            "step-00000000120a",
            "step-+00000001200",
            "step-000000001200.sagemaker-uploading",
            "Step-000000001200",
            "step-",
            "step-99999999999999999999999",
        ] {
            assert_eq!(parse_step_dir_name(name), None, "{name}");
        }
    }

    #[test]
    fn path_rules() {
        let cases: &[(&str, Result<(), PathProblem>)] = &[
            ("model.safetensors", Ok(())),
            ("shards/rank-0/model.safetensors", Ok(())),
            ("sub/manifest.json", Ok(())),
            ("", Err(PathProblem::Empty)),
            ("/etc/passwd", Err(PathProblem::Absolute)),
            (
                "../step-000000000001/model.safetensors",
                Err(PathProblem::ParentDir),
            ),
            ("a/../../b", Err(PathProblem::ParentDir)),
            ("./model.safetensors", Err(PathProblem::CurrentDir)),
            ("a//b", Err(PathProblem::EmptyComponent)),
            ("a/", Err(PathProblem::EmptyComponent)),
            ("a\\b", Err(PathProblem::Backslash)),
            ("a\0b", Err(PathProblem::Nul)),
            ("manifest.json", Err(PathProblem::Reserved)),
            (
                "model.safetensors.sagemaker-ignore",
                Err(PathProblem::Reserved),
            ),
            ("x.sagemaker-uploading/y", Err(PathProblem::Reserved)),
            ("y.sagemaker-uploaded", Err(PathProblem::Reserved)),
        ];
        for (path, want) in cases {
            assert_eq!(check_rel_path(path), *want, "{path:?}");
        }
        assert_eq!(
            check_rel_path(&"a".repeat(MAX_PATH_BYTES + 1)),
            Err(PathProblem::TooLong)
        );
    }

    #[test]
    fn namespace_rules() {
        for ok in ["algo-1", "rank_0", "host.a-B9"] {
            assert_eq!(check_namespace(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "lost+found",
            "step-000000000001",
        ] {
            assert!(check_namespace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn location_names_round_trip_and_refuse_escapes() {
        for name in ["algo-1/step-000000001200", "step-000000000000"] {
            let loc = Location::parse(name);
            assert_eq!(loc.as_ref().map(Location::name).as_deref(), Some(name));
        }
        for bad in [
            "../step-000000001200",
            "algo-1/../step-000000001200",
            "algo-1/step-000000001200/model.safetensors",
            "/algo-1/step-000000001200",
            "algo-1/step-1200",
        ] {
            assert_eq!(Location::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn excerpt_cuts_on_char_boundaries() {
        let long = "é".repeat(200);
        let short = excerpt(&long);
        assert!(short.len() < long.len());
        assert!(short.ends_with('…'));
    }
}
