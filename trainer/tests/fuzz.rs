//! The safetensors header parser of resume (`spotcheck_trainer::resume::tensor_layout`) on
//! untrusted bytes: it answers without panicking, and whatever layout it accepts tiles the data
//! section exactly, each tensor as long as its shape says.
//!
//! Cases per property in `cargo test`: 512 (or `PROPTEST_CASES`, `spotcheck_fuzz::cases`).
//! `soak_safetensors_headers` (`#[ignore]`d; `scripts/fuzz-soak.sh`) soaks them.

use std::sync::LazyLock;

use proptest::prelude::*;
use serde_json::Value;
use spotcheck_fuzz::cases;
use spotcheck_fuzz::json::bytes::{arb_mutations, mutated, Mutation};
use spotcheck_fuzz::json::{arb_edits, arb_json, edited, Edit, Vocabulary};
use spotcheck_fuzz::soak::Soak;
use spotcheck_protocol::CheckpointWriter;
use spotcheck_trainer::persist::{MODEL_FILE, OPTIMIZER_FILE, STATE_FILE};
use spotcheck_trainer::resume::{candidates, load, tensor_layout};

/// Real safetensors files: the protocol's fixture checkpoint (written by PyTorch's safetensors).
const FILES: [&[u8]; 2] = [
    include_bytes!(
        "../../crates/protocol/tests/fixtures/checkpoints/algo-1/step-000000001200/model.safetensors"
    ),
    include_bytes!(
        "../../crates/protocol/tests/fixtures/checkpoints/algo-1/step-000000001200/optimizer.safetensors"
    ),
];

/// (header bytes, data section length) of each file.
fn split(file: &[u8]) -> (&[u8], u64) {
    let len = u64::from_le_bytes(file[..8].try_into().unwrap()) as usize;
    (&file[8..8 + len], (file.len() - 8 - len) as u64)
}

static HEADERS: LazyLock<Vec<Value>> = LazyLock::new(|| {
    FILES
        .iter()
        .map(|f| serde_json::from_slice(split(f).0).unwrap())
        .collect()
});

const VOCABULARY: Vocabulary = Vocabulary {
    keys: &[
        "__metadata__",
        "format",
        "dtype",
        "shape",
        "data_offsets",
        "fc.weight",
        "fc.bias",
        "state.0.exp_avg",
    ],
    strings: &[
        "F32", "F16", "BF16", "F64", "I64", "I32", "U8", "BOOL", "F8_E4M3", "pt", "",
    ],
};

/// The data-section length to check a header against: the file's own, one near it, or any.
fn arb_body_len() -> impl Strategy<Value = BodyLen> {
    prop_oneof![
        3 => Just(BodyLen::Own),
        1 => (-8i64..=8).prop_map(BodyLen::Off),
        1 => any::<u64>().prop_map(BodyLen::Any),
    ]
}

#[derive(Clone, Copy, Debug)]
enum BodyLen {
    Own,
    Off(i64),
    Any(u64),
}

impl BodyLen {
    fn resolve(self, own: u64) -> u64 {
        match self {
            BodyLen::Own => own,
            BodyLen::Off(d) => own.saturating_add_signed(d),
            BodyLen::Any(n) => n,
        }
    }
}

/// What `tensor_layout` promises for what it accepts.
fn layout(header: &[u8], body_len: u64) -> Result<(), TestCaseError> {
    let Ok(spans) = tensor_layout(header, body_len) else {
        return Ok(());
    };
    let mut at = 0usize;
    for s in &spans {
        prop_assert_eq!(s.start, at, "{:?}", spans);
        let elements = s
            .shape
            .iter()
            .try_fold(1u128, |n, &d| n.checked_mul(d as u128));
        prop_assert_eq!(
            elements.map(|n| n * 4),
            Some((s.end - s.start) as u128),
            "{:?}",
            s
        );
        at = s.end;
    }
    prop_assert_eq!(at as u64, body_len);
    prop_assert!(spans.iter().all(|s| s.name != "__metadata__"));
    Ok(())
}

type EditedHeader = (usize, Vec<(Vec<usize>, Edit)>, BodyLen);

fn header_edited((index, edits, body): &EditedHeader) -> Result<(), TestCaseError> {
    let own = split(FILES[index % FILES.len()]).1;
    let header = edited(&HEADERS, *index, edits).to_string();
    layout(header.as_bytes(), body.resolve(own))
}

fn header_mutated(
    (index, mutations, body): &(usize, Vec<Mutation>, BodyLen),
) -> Result<(), TestCaseError> {
    let (header, own) = split(FILES[index % FILES.len()]);
    layout(&mutated(header, mutations), body.resolve(own))
}

fn arb_edited() -> impl Strategy<Value = EditedHeader> {
    (any::<usize>(), arb_edits(VOCABULARY), arb_body_len())
}

fn arb_mutated() -> impl Strategy<Value = (usize, Vec<Mutation>, BodyLen)> {
    (any::<usize>(), arb_mutations(), arb_body_len())
}

fn arb_bytes() -> impl Strategy<Value = (Vec<u8>, u64)> {
    (prop::collection::vec(any::<u8>(), 0..512), 0u64..4096)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(512)))]

    #[test]
    fn header_parser_survives_arbitrary_bytes((bytes, body) in arb_bytes()) {
        layout(&bytes, body)?;
    }

    #[test]
    fn header_parser_survives_arbitrary_json((value, body) in (arb_json(VOCABULARY), 0u64..4096)) {
        layout(value.to_string().as_bytes(), body)?;
    }

    #[test]
    fn edited_headers_are_refused_or_tile_the_data_section(input in arb_edited()) {
        header_edited(&input)?;
    }

    #[test]
    fn byte_mutated_headers_never_panic(input in arb_mutated()) {
        header_mutated(&input)?;
    }
}

#[test]
fn the_real_headers_are_accepted_as_written() {
    for file in FILES {
        let (header, body) = split(file);
        let spans = tensor_layout(header, body).unwrap();
        assert_eq!(spans.last().map(|s| s.end as u64), Some(body));
        layout(header, body).unwrap();
    }
}

/// Regression: a shape whose byte size overflows `usize` (here 4 × (2⁶² + 1) = 2⁶⁴ + 4, which
/// wraps to 4 × 4 = 16 bytes, exactly its offsets) made resume panic on the multiplication in
/// a debug build and, in a release build, accept a 16-byte tensor as one of 2⁶⁴ + 4 bytes. A
/// checkpoint's files are untrusted input: this one is refused and resume moves on.
#[test]
fn a_tensor_shape_whose_size_overflows_is_refused_not_loaded() {
    let header = br#"{"w":{"dtype":"F32","shape":[4611686018427387905,4],"data_offsets":[0,16]}}"#;
    assert_eq!(
        tensor_layout(header, 16),
        Err("tensor w: offsets 0..16 do not fit".to_owned())
    );
    // The same bytes as a committed checkpoint's model file: resume refuses the checkpoint.
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(header);
    file.extend_from_slice(&[0u8; 16]);
    let root = tempfile::tempdir().unwrap();
    let mut pending = CheckpointWriter::begin(root.path(), "algo-1", 5).unwrap();
    pending.write_bytes(MODEL_FILE, &file).unwrap();
    pending.write_bytes(OPTIMIZER_FILE, FILES[1]).unwrap();
    pending.write_bytes(STATE_FILE, b"{}").unwrap();
    pending.commit(0, None).unwrap();
    let found = candidates(root.path(), "algo-1");
    assert_eq!(found.len(), 1);
    let (step, dir) = &found[0];
    match load(dir, *step) {
        Err(reason) => assert!(
            reason.contains("model.safetensors: tensor w: offsets 0..16 do not fit"),
            "{reason}"
        ),
        Ok(_) => panic!("a tensor of 2^64 + 4 bytes was loaded from 16"),
    }
}

#[test]
#[ignore = "soak: run by scripts/fuzz-soak.sh"]
fn soak_safetensors_headers() {
    Soak::new("safetensors headers")
        .property("arbitrary bytes", arb_bytes(), |(b, n)| layout(b, *n))
        .property(
            "arbitrary JSON",
            (arb_json(VOCABULARY), 0u64..4096),
            |(v, n)| layout(v.to_string().as_bytes(), *n),
        )
        .property("edited real headers", arb_edited(), header_edited)
        .property("byte-mutated real headers", arb_mutated(), header_mutated)
        .run_and_check();
}
