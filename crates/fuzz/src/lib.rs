//! The parsers' property tests at two depths: every CI run, and soaked.
//!
//! The fuzz tests of the parsers (`crates/control/tests/engine/fuzz.rs`: events,
//! DescribeTrainingJob, ledger records, price tables; `crates/protocol/tests/it/fuzz.rs`:
//! manifests; `crates/aws/tests/shell/fuzz.rs`: continuation templates;
//! `trainer/tests/fuzz.rs`: safetensors headers) write each property once, as a plain function
//! over a generated input, and run it two ways:
//!
//! - **In `cargo test`**, through proptest's runner, with [`cases`] per property: the count
//!   each test names (what CI runs), or `PROPTEST_CASES` when that is set. proptest itself
//!   only reads `PROPTEST_CASES` when a test fixes no count, and every one of these fixes one,
//!   so without [`cases`] the variable would change nothing.
//! - **Soaked** ([`soak::Soak`]), by `scripts/fuzz-soak.sh`: the same strategies and properties,
//!   a million cases per parser by default, within a time budget per parser, with the peak
//!   memory measured — see the [`soak`] module.
//!
//! [`json`] holds the input strategies the parsers share: arbitrary JSON over a parser's
//! vocabulary, edits of real documents, byte mutations.
//!
//! This crate depends on none of the crates it tests; they take it as a dev-dependency.

#![warn(missing_docs)]

pub mod json;
pub mod soak;

use std::ffi::OsString;

/// The environment variable that overrides every property's case count.
pub const CASES_VAR: &str = "PROPTEST_CASES";

/// Cases per property: `PROPTEST_CASES` when set, else `default`.
///
/// # Panics
///
/// When `PROPTEST_CASES` is set to anything but a positive integer: a typo must not quietly
/// run the default count (proptest's own reading warns and carries on), and 0 would make every
/// property pass without a single case.
pub fn cases(default: u32) -> u32 {
    match cases_from(std::env::var_os(CASES_VAR), default) {
        Ok(n) => n,
        Err(e) => panic!("{e}"),
    }
}

fn cases_from(value: Option<OsString>, default: u32) -> Result<u32, String> {
    let Some(value) = value else {
        return Ok(default);
    };
    let text = value.to_string_lossy();
    match text.trim().parse::<u32>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!(
            "{CASES_VAR}={text:?} is not a positive number of cases (unset it for the \
             per-test defaults)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_overrides_the_default_only_when_set() {
        assert_eq!(cases_from(None, 512), Ok(512));
        assert_eq!(cases_from(Some("100000".into()), 512), Ok(100_000));
        assert_eq!(cases_from(Some(" 7 ".into()), 512), Ok(7));
        for bad in ["", "0", "-1", "1e6", "many", "4294967296"] {
            let err = cases_from(Some(bad.into()), 512).unwrap_err();
            assert!(err.contains(CASES_VAR), "{bad}: {err}");
        }
    }
}
