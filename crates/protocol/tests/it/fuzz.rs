//! Property tests of the trust boundary: the manifest parser and `judge` must never panic, and
//! whatever the parser accepts must obey the path rules.
//!
//! Cases per run: 4096 arbitrary byte strings, 4096 byte-mutated valid manifests, 2048
//! manifests with generated hostile paths, 2048 random `judge` observations, and 32 real
//! writer round trips (each fsyncs, so they are few) — about 12,300 cases in all.

use proptest::prelude::*;
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

#[derive(Debug, Clone)]
enum Mutation {
    Flip(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    // Bytes biased towards JSON structure so mutations reach past the tokenizer.
    let byte = prop_oneof![
        any::<u8>(),
        prop::sample::select(b"{}[]\",:.-/\\0123456789eE \n".to_vec()),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Flip(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<usize>().prop_map(Mutation::Remove),
        any::<usize>().prop_map(Mutation::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, m: &Mutation) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    match *m {
        Mutation::Flip(i, b) if !bytes.is_empty() => {
            let i = at(i, bytes.len());
            bytes[i] = b;
        }
        Mutation::Insert(i, b) => {
            let i = at(i, bytes.len() + 1);
            bytes.insert(i, b);
        }
        Mutation::Remove(i) if !bytes.is_empty() => {
            let i = at(i, bytes.len());
            bytes.remove(i);
        }
        Mutation::Truncate(i) => {
            let i = at(i, bytes.len() + 1);
            bytes.truncate(i);
        }
        _ => {}
    }
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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn parse_never_panics_on_arbitrary_bytes(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(m) = Manifest::parse(&bytes) {
            assert_accepted_is_sound(&m);
        }
    }

    #[test]
    fn parse_never_panics_on_mutated_manifests(mutations in prop::collection::vec(mutation(), 1..6)) {
        let mut bytes = VALID.to_vec();
        for m in &mutations {
            apply(&mut bytes, m);
        }
        if let Ok(m) = Manifest::parse(&bytes) {
            assert_accepted_is_sound(&m);
        }
        let _ = judge(Some(&bytes), &[]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn accepted_paths_never_escape(path in hostile_path(), size in any::<u64>()) {
        let mut doc: serde_json::Value = serde_json::from_slice(VALID).unwrap();
        doc["files"][0]["path"] = path.clone().into();
        doc["files"][0]["size"] = size.into();
        let bytes = serde_json::to_vec(&doc).unwrap();
        if let Ok(m) = Manifest::parse(&bytes) {
            assert_accepted_is_sound(&m);
            prop_assert!(!path.starts_with('/') && !path.contains('\\') && !path.contains('\0'));
        }
    }

    #[test]
    fn judge_is_valid_only_when_every_listed_file_matches(
        observed in prop::collection::vec(
            (
                prop::sample::select(vec![
                    "model.safetensors", "optimizer.safetensors", "trainer_state.json",
                    "model.safetensors.sagemaker-uploading", "other.bin", "manifest.json",
                ]),
                prop::sample::select(vec![0u64, 144, 248, 320, u64::MAX]),
                prop::option::of(prop::sample::select(vec![
                    "CGZMqHFh+HU=", "rR1DlOfArT0=", "LlPa5tYSbww=", "AAAAAAAAAAA=", "garbage", "",
                ])),
            ),
            0..8,
        )
    ) {
        let observed: Vec<ObservedFile> = observed
            .into_iter()
            .map(|(path, size, crc)| ObservedFile {
                path: path.into(),
                size,
                crc64nvme: crc.map(Into::into),
                sha256: None,
            })
            .collect();
        let verdict = judge(Some(VALID), &observed);
        let manifest = Manifest::parse(VALID).unwrap();
        let all_match = manifest.files.iter().all(|entry| {
            observed.iter().find(|o| o.path == entry.path).is_some_and(|o| {
                o.size == entry.size
                    && o.crc64nvme.as_ref().is_none_or(|crc| *crc == entry.crc64nvme)
            })
        });
        prop_assert_eq!(verdict == Verdict::Valid, all_match, "{:?}", verdict);
    }
}

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
