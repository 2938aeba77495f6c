//! Strategies for JSON inputs: arbitrary documents over a parser's own vocabulary, and edits of
//! real documents (fixtures) at generated paths.
//!
//! Owns [`Vocabulary`] (the keys and string values that reach past a parser's first checks),
//! [`arb_json`], [`Edit`] / [`arb_edits`] and [`apply`]. Byte-level mutation is in [`bytes`].

use proptest::prelude::*;
use serde_json::{Map, Value};

/// The words a parser reacts to: its field names and the string values it looks for.
#[derive(Clone, Copy, Debug)]
pub struct Vocabulary {
    /// Field names (also used as keys of inserted fields).
    pub keys: &'static [&'static str],
    /// String values worth trying (enumerations, formats, edge cases).
    pub strings: &'static [&'static str],
}

fn arb_key(v: Vocabulary) -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(v.keys).prop_map(str::to_owned),
        1 => "[a-zA-Z:_-]{0,12}",
    ]
}

fn arb_leaf(v: Vocabulary) -> impl Strategy<Value = Value> {
    prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        1 => ".{0,24}".prop_map(Value::String),
        3 => prop::sample::select(v.strings).prop_map(|s| Value::String(s.to_owned())),
    ]
}

/// Arbitrary JSON: up to 4 levels deep, about 48 nodes, keys and strings mostly from `v`.
pub fn arb_json(v: Vocabulary) -> impl Strategy<Value = Value> {
    arb_leaf(v).prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::vec((arb_key(v), inner), 0..6)
                .prop_map(|entries| Value::Object(entries.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// One edit at a path (indices taken modulo each container's size).
#[derive(Clone, Debug)]
pub enum Edit {
    /// Replace the value there.
    Replace(Value),
    /// Remove it.
    Remove,
    /// Insert a field next to it (in an array: replace the element).
    Insert(String, Value),
}

/// 1–3 edits, each at a path of 1–5 indices.
pub fn arb_edits(v: Vocabulary) -> impl Strategy<Value = Vec<(Vec<usize>, Edit)>> {
    let edit = (
        prop::collection::vec(any::<usize>(), 1..6),
        prop_oneof![
            arb_json(v).prop_map(Edit::Replace),
            Just(Edit::Remove),
            (arb_key(v), arb_json(v)).prop_map(|(k, e)| Edit::Insert(k, e)),
        ],
    );
    prop::collection::vec(edit, 1..4)
}

/// Applies `edit` at `path` in `value`.
pub fn apply(value: &mut Value, path: &[usize], edit: &Edit) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match value {
        Value::Object(map) if !map.is_empty() => {
            let Some(key) = map.keys().nth(first % map.len()).cloned() else {
                return;
            };
            let leaf = !matches!(map.get(&key), Some(Value::Object(_) | Value::Array(_)));
            if rest.is_empty() || leaf {
                match edit {
                    Edit::Replace(v) => {
                        map.insert(key, v.clone());
                    }
                    Edit::Remove => {
                        map.remove(&key);
                    }
                    Edit::Insert(k, v) => {
                        map.insert(k.clone(), v.clone());
                    }
                }
            } else if let Some(inner) = map.get_mut(&key) {
                apply(inner, rest, edit);
            }
        }
        Value::Array(items) if !items.is_empty() => {
            let i = first % items.len();
            if rest.is_empty() || !matches!(items[i], Value::Object(_) | Value::Array(_)) {
                match edit {
                    Edit::Replace(v) | Edit::Insert(_, v) => items[i] = v.clone(),
                    Edit::Remove => {
                        items.remove(i);
                    }
                }
            } else {
                apply(&mut items[i], rest, edit);
            }
        }
        other => {
            if let Edit::Replace(v) = edit {
                *other = v.clone();
            }
        }
    }
}

/// `fixtures[index % len]` with `edits` applied (an index and edits from [`arb_edits`]).
pub fn edited(fixtures: &[Value], index: usize, edits: &[(Vec<usize>, Edit)]) -> Value {
    let mut value = fixtures
        .get(index % fixtures.len().max(1))
        .cloned()
        .unwrap_or(Value::Null);
    for (path, edit) in edits {
        apply(&mut value, path, edit);
    }
    value
}

/// Byte-level mutation of documents: flips, insertions, removals, truncation.
pub mod bytes {
    use proptest::prelude::*;

    /// One byte-level change at a position (taken modulo the length).
    #[derive(Clone, Debug)]
    pub enum Mutation {
        /// Overwrite the byte there.
        Flip(usize, u8),
        /// Insert a byte there.
        Insert(usize, u8),
        /// Remove the byte there.
        Remove(usize),
        /// Cut the document there.
        Truncate(usize),
    }

    /// 1–7 mutations, the bytes biased towards JSON structure so they reach past the tokenizer.
    pub fn arb_mutations() -> impl Strategy<Value = Vec<Mutation>> {
        let byte = prop_oneof![
            any::<u8>(),
            prop::sample::select(b"{}[]\",:.-/\\0123456789eE \n".to_vec()),
        ];
        let m = prop_oneof![
            (any::<usize>(), byte.clone()).prop_map(|(i, b)| Mutation::Flip(i, b)),
            (any::<usize>(), byte).prop_map(|(i, b)| Mutation::Insert(i, b)),
            any::<usize>().prop_map(Mutation::Remove),
            any::<usize>().prop_map(Mutation::Truncate),
        ];
        prop::collection::vec(m, 1..8)
    }

    /// `doc` with `mutations` applied.
    pub fn mutated(doc: &[u8], mutations: &[Mutation]) -> Vec<u8> {
        let mut bytes = doc.to_vec();
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        for m in mutations {
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
        bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn edits_land_where_the_path_points() {
        let mut v = json!({"a": {"b": [1, 2, 3]}, "c": 4});
        apply(&mut v, &[0, 0, 1], &Edit::Replace(json!("x")));
        assert_eq!(v, json!({"a": {"b": [1, "x", 3]}, "c": 4}));
        apply(&mut v, &[1], &Edit::Remove);
        assert_eq!(v, json!({"a": {"b": [1, "x", 3]}}));
        apply(&mut v, &[0, 5], &Edit::Insert("k".into(), json!(null)));
        assert_eq!(v, json!({"a": {"b": [1, "x", 3], "k": null}}));
        assert_eq!(
            edited(&[json!(1), json!([true])], 3, &[(vec![0], Edit::Remove)]),
            json!([])
        );
    }

    #[test]
    fn byte_mutations_apply_in_order_and_never_index_out_of_range() {
        use bytes::{mutated, Mutation::*};
        assert_eq!(mutated(b"abc", &[Flip(4, b'x')]), b"axc");
        assert_eq!(mutated(b"abc", &[Insert(3, b'!'), Remove(0)]), b"bc!");
        assert_eq!(
            mutated(b"abc", &[Truncate(1), Remove(9), Flip(2, b'z')]),
            b""
        );
        assert_eq!(mutated(b"", &[Flip(1, 1), Remove(1), Truncate(5)]), b"");
    }
}
