//! Property tests of the trust boundary: the manifest parser and `judge` must never panic, and
//! whatever the parser accepts must obey the path rules.
//!
//! Cases per `cargo test`: 4096 arbitrary byte strings, 4096 byte-mutated valid manifests, 2048
//! manifests with generated hostile paths, 2048 random `judge` observations — each count
//! replaced by `PROPTEST_CASES` when that is set (`spotcheck_fuzz::cases`) — and 32 real
//! writer round trips, always 32 (each fsyncs; it is a test of the writer, not a parser).
//! `soak_manifests` (`#[ignore]`d, run by `scripts/fuzz-soak.sh`) soaks the parser properties.

use proptest::prelude::*;
use spotcheck_fuzz::cases;
use spotcheck_fuzz::json::bytes::{arb_mutations, mutated, Mutation};
use spotcheck_fuzz::soak::Soak;
use spotcheck_protocol::{
    check_rel_path, judge, validate_root, CheckpointWriter, Manifest, ObservedFile, Status, Verdict,
};

const VALID: &[u8] =
    include_bytes!("../fixtures/checkpoints/algo-1/step-000000001200/manifest.json");

/// Anything `parse` accepts re-serialises to something it accepts again, unchanged, and has
/// only legal paths.
fn assert_accepted_is_sound(manifest: &Manifest) {
    for entry in &manifest.files {
        assert_eq!(check_rel_path(&entry.path), Ok(()), "{:?}", entry.path);
        assert!(!entry.path.split('/').any(|c| c == ".."));
    }
    let again = Manifest::parse(&manifest.to_json_bytes().unwrap()).unwrap();
    assert_eq!(&again, manifest);
}

/// Paths built from the pieces that make paths dangerous.
fn hostile_path() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(vec![
        "..",
        ".",
        "",
        "/",
        "\\",
        "\0",
        "a",
        "model.safetensors",
        "manifest.json",
        ".sagemaker-ignore",
        ".sagemaker-uploading",
        "C:",
        "~",
        "%2e%2e",
        "\u{2215}",
    ]);
    prop::collection::vec(piece, 1..8).prop_map(|pieces| pieces.concat())
}

fn arb_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 0..2048)
}

fn manifest_bytes(bytes: &[u8]) -> Result<(), TestCaseError> {
    if let Ok(m) = Manifest::parse(bytes) {
        assert_accepted_is_sound(&m);
    }
    Ok(())
}

fn manifest_mutated(mutations: &[Mutation]) -> Result<(), TestCaseError> {
    let bytes = mutated(VALID, mutations);
    manifest_bytes(&bytes)?;
    let _ = judge(Some(&bytes), &[]);
    Ok(())
}

fn manifest_with_path((path, size): &(String, u64)) -> Result<(), TestCaseError> {
    let mut doc: serde_json::Value = serde_json::from_slice(VALID).unwrap();
    doc["files"][0]["path"] = path.clone().into();
    doc["files"][0]["size"] = (*size).into();
    let bytes = serde_json::to_vec(&doc).unwrap();
    if let Ok(m) = Manifest::parse(&bytes) {
        assert_accepted_is_sound(&m);
        prop_assert!(!path.starts_with('/') && !path.contains('\\') && !path.contains('\0'));
    }
    Ok(())
}

type Observation = (&'static str, u64, Option<&'static str>);

fn arb_observations() -> impl Strategy<Value = Vec<Observation>> {
    prop::collection::vec(
        (
            prop::sample::select(vec![
                "model.safetensors",
                "optimizer.safetensors",
                "trainer_state.json",
                "model.safetensors.sagemaker-uploading",
                "other.bin",
                "manifest.json",
            ]),
            prop::sample::select(vec![0u64, 144, 248, 320, u64::MAX]),
            prop::option::of(prop::sample::select(vec![
                "CGZMqHFh+HU=",
                "rR1DlOfArT0=",
                "LlPa5tYSbww=",
                "AAAAAAAAAAA=",
                "garbage",
                "",
            ])),
        ),
        0..8,
    )
}

fn judge_matches_the_manifest(observed: &[Observation]) -> Result<(), TestCaseError> {
    let observed: Vec<ObservedFile> = observed
        .iter()
        .map(|(path, size, crc)| ObservedFile {
            path: (*path).into(),
            size: *size,
            crc64nvme: crc.map(Into::into),
            sha256: None,
        })
        .collect();
    let verdict = judge(Some(VALID), &observed);
    let manifest = Manifest::parse(VALID).unwrap();
    let all_match = manifest.files.iter().all(|entry| {
        observed
            .iter()
            .find(|o| o.path == entry.path)
            .is_some_and(|o| {
                o.size == entry.size
                    && o.crc64nvme
                        .as_ref()
                        .is_none_or(|crc| *crc == entry.crc64nvme)
            })
    });
    prop_assert_eq!(verdict == Verdict::Valid, all_match, "{:?}", verdict);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(4096)))]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in arb_bytes()) {
        manifest_bytes(&bytes)?;
    }

    #[test]
    fn parse_never_panics_on_mutated_manifests(mutations in arb_mutations()) {
        manifest_mutated(&mutations)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(2048)))]

    #[test]
    fn accepted_paths_never_escape(input in (hostile_path(), any::<u64>())) {
        manifest_with_path(&input)?;
    }

    #[test]
    fn judge_is_valid_only_when_every_listed_file_matches(observed in arb_observations()) {
        judge_matches_the_manifest(&observed)?;
    }
}

// The writer round trip is not a parser property and each case fsyncs: always 32 cases.
proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn whatever_the_writer_commits_validates(
        files in prop::collection::btree_map(
            "[a-z0-9_]{1,8}(/[a-z0-9_.-]{1,8}){0,2}",
            prop::collection::vec(any::<u8>(), 0..3000),
            1..5,
        ),
        step in 0u64..1_000_000_000_000,
    ) {
        // Generated names may nest under another generated name ("a" and "a/b"): skip those.
        let names: Vec<&String> = files.keys().collect();
        prop_assume!(!names.iter().any(|a| names.iter().any(|b| b.starts_with(&format!("{a}/")))));
        prop_assume!(names.iter().all(|n| check_rel_path(n).is_ok()));
        let root = tempfile::tempdir().unwrap();
        let mut pending = CheckpointWriter::begin(root.path(), "rank-0", step).unwrap();
        for (name, bytes) in &files {
            pending.write_bytes(name, bytes).unwrap();
        }
        let committed = pending.commit(step, None).unwrap();
        let report = validate_root(root.path()).unwrap();
        prop_assert_eq!(report.latest_valid.as_deref(), Some(committed.name.as_str()));
        prop_assert_eq!(report.checkpoints[0].status, Status::Valid);
        for (name, bytes) in &files {
            prop_assert_eq!(&committed.read_verified(name).unwrap(), bytes);
        }
    }
}

#[test]
#[ignore = "soak: run by scripts/fuzz-soak.sh"]
fn soak_manifests() {
    Soak::new("manifests")
        .property("arbitrary bytes", arb_bytes(), |b| manifest_bytes(b))
        .property("byte-mutated manifest", arb_mutations(), |m| {
            manifest_mutated(m)
        })
        .property(
            "hostile paths",
            (hostile_path(), any::<u64>()),
            manifest_with_path,
        )
        .property("judge", arb_observations(), |o| {
            judge_matches_the_manifest(o)
        })
        .run_and_check();
}
