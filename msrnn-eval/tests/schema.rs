//! The typed documents read and write schema 1 exactly: files written by `msrnn eval` before the
//! tasks became this library (a ppl grid, a passkey grid, a merged ppl grid with segments, on
//! SmolLM2-135M) parse into the typed structs and serialise back as the untyped JSON value does,
//! byte for byte: the same fields, order and number formatting.
//!
//! (Against the value as serde_json reads it, not the file's bytes: without its `float_roundtrip`
//! feature serde_json's float parser may land one ulp off, e.g. `382.40393903130445` reads back as
//! `382.4039390313045`, typed or not; the writer is exact, see `tasks.rs`.)

use msrnn_eval::AnyDocument;
use serde_json::Value;

fn round_trip(name: &str) -> AnyDocument {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    let text = std::fs::read_to_string(&path).unwrap();
    let value: Value = serde_json::from_str(&text).unwrap();
    let untyped = serde_json::to_string_pretty(&value).unwrap() + "\n";
    let doc = AnyDocument::read(&path).unwrap();
    assert_eq!(doc.to_json_string(), untyped, "{name}: the typed document writes back what it read");
    // Apart from floats the reader rounds, that is the file itself.
    assert!(text.len().abs_diff(untyped.len()) < 32, "{name}: {} vs {} bytes", text.len(), untyped.len());
    doc
}

#[test]
fn schema_1_files_round_trip_through_the_typed_documents() {
    let AnyDocument::Ppl(ppl) = round_trip("ppl-smollm2.json") else { panic!("a ppl document") };
    assert_eq!(ppl.results.len(), 5);
    assert_eq!(ppl.result("full").unwrap().policy.capacity, None);
    assert!(ppl.results.iter().all(|r| r.segments.is_none()));
    let AnyDocument::Passkey(pk) = round_trip("passkey-smollm2.json") else { panic!("a passkey document") };
    assert_eq!(pk.results.len(), 30);
    assert_eq!(pk.settings.haystack.kind, "filler");
    assert!(pk.results.iter().all(|r| r.answers.len() == 2));
    let AnyDocument::Ppl(merged) = round_trip("ppl-segments-merged-smollm2.json") else { panic!("a ppl document") };
    assert_eq!(merged.run.merged_from.as_ref().unwrap().len(), 2);
    assert!(merged.results.iter().all(|r| r.segments.as_ref().is_some_and(|s| s.len() == 4)));
}

#[test]
fn a_changed_field_is_a_different_document() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ppl-smollm2.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    v["results"][0]["scored"] = serde_json::json!("many");
    let e = AnyDocument::from_value(v, "f.json").unwrap_err().to_string();
    assert!(e.starts_with("f.json: not a valid result document"), "{e}");
}
