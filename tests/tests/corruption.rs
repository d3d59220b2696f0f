//! Corrupted inputs never crash a parser: thousands of random corruptions (bytes flipped, runs
//! overwritten with extreme values, cuts, insertions) of real inputs — a GGUF model file (the tiny
//! LLaMA the tests write, and the real SmolLM2 header when it was fetched), a saved state, policy
//! specs, a WebAssembly plugin's descriptor — each end in `Ok` or a clear error, never a panic, an
//! abort or an allocation the file did not pay for. The same parsers run under libFuzzer in
//! `fuzz/` for long campaigns; these cases are the quick version CI runs on every push.

use std::io::Read;
use std::path::PathBuf;
use std::sync::OnceLock;

use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use msrnn_core::plugin::{abi, decision_from, PluginInfo};
use msrnn_core::{Capacity, MsrnnState, Observation, Param, PolicySpec, StateConfig};
use msrnn_modelkit::gguf::{read_content_from_bytes, tensor_bytes, Metadata};
use msrnn_modelkit::{DecoderConfig, Tokenizer};
use msrnn_tests::tiny_llama::{tiny_config, TinyLlama};
use proptest::prelude::*;

/// One corruption of a byte string.
#[derive(Debug, Clone)]
enum Edit {
    /// XOR a byte at a position (taken modulo the length).
    Flip(usize, u8),
    /// Overwrite 8 bytes with a little-endian value (lengths, counts, offsets are u64s).
    Word(usize, u64),
    /// Cut the input at a position.
    Cut(usize),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
}

fn edit() -> impl Strategy<Value = Edit> {
    let extreme = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u32::MAX as u64),
        Just(u64::MAX),
        Just(1 << 40),
        Just(1 << 62),
        any::<u64>(),
        0u64..64,
    ];
    prop_oneof![
        4 => (any::<usize>(), 1u8..=255).prop_map(|(p, x)| Edit::Flip(p, x)),
        3 => (any::<usize>(), extreme).prop_map(|(p, v)| Edit::Word(p, v)),
        1 => any::<usize>().prop_map(Edit::Cut),
        1 => (any::<usize>(), prop::collection::vec(any::<u8>(), 1..16)).prop_map(|(p, b)| Edit::Insert(p, b)),
    ]
}

/// Applies edits; positions fall in `[0, focus)` (the header region) when `focus` is set.
fn corrupt(base: &[u8], edits: &[Edit], focus: usize) -> Vec<u8> {
    let mut b = base.to_vec();
    for e in edits {
        if b.is_empty() {
            break;
        }
        let at = |p: usize, b: &Vec<u8>| p % focus.min(b.len()).max(1);
        match e {
            Edit::Flip(p, x) => {
                let i = at(*p, &b);
                b[i] ^= x;
            }
            Edit::Word(p, v) => {
                let i = at(*p, &b);
                let end = (i + 8).min(b.len());
                b[i..end].copy_from_slice(&v.to_le_bytes()[..end - i]);
            }
            Edit::Cut(p) => {
                let i = at(*p, &b);
                b.truncate(i);
            }
            Edit::Insert(p, x) => {
                let i = at(*p, &b);
                b.splice(i..i, x.iter().copied());
            }
        }
    }
    b
}

// ---------------------------------------------------------------------------------------------
// GGUF
// ---------------------------------------------------------------------------------------------

/// The tiny LLaMA as a GGUF file (tokenizer metadata, tensor table, Q8_0 data).
fn tiny_gguf() -> &'static Vec<u8> {
    static B: OnceLock<Vec<u8>> = OnceLock::new();
    B.get_or_init(|| {
        let p = msrnn_tests::files::scratch("corrupt-gguf").join("tiny.gguf");
        TinyLlama::random(tiny_config(), 3).write_gguf(&p, GgmlDType::Q8_0, true);
        std::fs::read(&p).unwrap()
    })
}

/// The real SmolLM2 file's first 64 KiB (its header starts with the tokenizer's arrays), when it
/// was fetched.
fn real_header() -> Option<&'static Vec<u8>> {
    static B: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    B.get_or_init(|| {
        let p = msrnn_tests::files::smollm2()?;
        let mut v = Vec::new();
        std::fs::File::open(p).unwrap().take(64 << 10).read_to_end(&mut v).unwrap();
        Some(v)
    })
    .as_ref()
}

/// Reads a (possibly corrupt) GGUF the way a model load does; every tensor that the header
/// accepts lies inside the file, and reading it neither panics nor allocates beyond its bytes.
fn read_gguf(bytes: &[u8]) {
    let Ok(ct) = read_content_from_bytes(bytes) else { return };
    for ti in ct.tensor_infos.values() {
        let n = tensor_bytes(ti).expect("accepted tensors have a size");
        assert!(ct.tensor_data_offset + ti.offset + n <= bytes.len() as u64);
        let t = ti.read(&mut std::io::Cursor::new(bytes), ct.tensor_data_offset, &Device::Cpu);
        if let Ok(q) = t {
            let _ = q.dequantize(&Device::Cpu);
        }
    }
    let md = Metadata { path: std::path::Path::new("(corrupt)"), ct: &ct };
    let _ = DecoderConfig::from_gguf(&md, "llama", 2048, 1e-5);
    let _ = Tokenizer::from_gguf(&md);
}

#[test]
fn the_uncorrupted_inputs_parse() {
    let ct = read_content_from_bytes(tiny_gguf()).unwrap();
    assert!(!ct.tensor_infos.is_empty());
    let md = Metadata { path: std::path::Path::new("tiny"), ct: &ct };
    DecoderConfig::from_gguf(&md, "llama", 2048, 1e-5).unwrap();
    Tokenizer::from_gguf(&md).unwrap();
    if let Some(p) = msrnn_tests::files::smollm2() {
        // The reader accepts the real file (and reads its header only).
        let (_, ct) = msrnn_modelkit::gguf::open(&p, Some("llama")).unwrap();
        assert_eq!(ct.tensor_infos.len(), 272);
    }
}

#[test]
fn hand_made_gguf_lies_are_refused_with_clear_errors() {
    let base = tiny_gguf();
    // Header: magic, version u32, tensor count u64 (8..16), metadata count u64 (16..24), then the
    // first key's length u64 at 24.
    let with = |at: usize, v: u64| {
        let mut b = base.clone();
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        b
    };
    let cases = [
        (with(8, u64::MAX), "claims 18446744073709551615 tensors"),
        (with(16, 1 << 40), "metadata entries"),
        (with(24, 1 << 60), "claims 1152921504606846976 bytes"),
        (base[..base.len() - 100].to_vec(), "the file is truncated: tensor"),
        (base[..40].to_vec(), "but the file has 16 bytes after the counts"),
    ];
    for (bytes, needle) in cases {
        let e = read_content_from_bytes(&bytes).unwrap_err().to_string();
        assert!(e.contains(needle), "expected `{needle}` in: {e}");
    }
    // Found by the corruption test: an empty tensor made candle's reader abort (an empty buffer's
    // pointer cast to f32 blocks is misaligned).
    let empty = gguf_header(&[], &[("t".into(), vec![0, 4], 0, 0)]);
    let e = read_content_from_bytes(&empty).unwrap_err().to_string();
    assert!(e.contains("tensor `t` has a dimension of 0"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    /// Random corruptions of the whole tiny file (header and data).
    #[test]
    fn corrupt_gguf_files_never_crash_the_reader(edits in prop::collection::vec(edit(), 1..6)) {
        read_gguf(&corrupt(tiny_gguf(), &edits, usize::MAX));
    }

    /// Corruptions aimed at the header (the first 2 KiB: counts, lengths, types, shapes, offsets).
    #[test]
    fn corrupt_gguf_headers_never_crash_the_reader(edits in prop::collection::vec(edit(), 1..4)) {
        read_gguf(&corrupt(tiny_gguf(), &edits, 2048));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// The real file's header region (cut short, so it always ends early: the reader must say so).
    #[test]
    fn corrupt_real_gguf_headers_never_crash_the_reader(edits in prop::collection::vec(edit(), 0..4)) {
        let Some(h) = real_header() else { return Ok(()) };
        let b = corrupt(h, &edits, 4096);
        prop_assert!(read_content_from_bytes(&b).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// State files
// ---------------------------------------------------------------------------------------------

const SPEC: &str = "h2o:recent=0.25";

fn cfg() -> StateConfig {
    let mut c = StateConfig::new(2, 2, 4, Capacity::Bounded(6));
    c.max_chunk = 3;
    c
}

fn fresh() -> MsrnnState {
    let r = msrnn_policies::registry();
    MsrnnState::new(&cfg(), r.create_layers(&SPEC.parse().unwrap(), 2, 4, 2, 4, Capacity::Bounded(6)).unwrap()).unwrap()
}

/// A real state file: h2o (which saves per-slot scores) after 20 tokens.
fn saved_state() -> &'static (PathBuf, Vec<u8>) {
    static S: OnceLock<(PathBuf, Vec<u8>)> = OnceLock::new();
    S.get_or_init(|| {
        let mut s = fresh();
        let mut rng = msrnn_tests::Rng::new(5);
        for step in 0..10 {
            let t = 1 + step % 3;
            let pos = s.next_positions(t);
            for layer in 0..2 {
                let mk = |h: usize, rng: &mut msrnn_tests::Rng| {
                    Tensor::from_vec(rng.vec(h * t * 4, -2.0, 2.0), (h, t, 4), &Device::Cpu).unwrap()
                };
                let (q, k, v) = (mk(4, &mut rng), mk(2, &mut rng), mk(2, &mut rng));
                s.attend(layer, &q, &k, &v, &pos, 0.5).unwrap();
            }
            s.advance(t);
        }
        let dir = msrnn_tests::files::scratch("corrupt-state");
        let p = dir.join("s.safetensors");
        s.save(&p, "tiny-model", &SPEC.parse().unwrap()).unwrap();
        let bytes = std::fs::read(&p).unwrap();
        (dir, bytes)
    })
}

/// Loads corrupt state bytes into a fresh state: `Ok` (and then a state within its promises) or an
/// error; never a panic.
fn load_state(bytes: &[u8], name: &str) {
    let (dir, _) = saved_state();
    let p = dir.join(format!("{name}-{}.safetensors", std::process::id()));
    std::fs::write(&p, bytes).unwrap();
    let _ = MsrnnState::read_header(&p);
    let mut s = fresh();
    match s.load(&p, "tiny-model", &SPEC.parse().unwrap()) {
        Ok(h) => {
            for i in 0..s.num_layers() {
                let l = s.layer(i);
                assert!(l.live_count() <= 6, "layer {i} holds {} entries over capacity 6", l.live_count());
                assert!(l.live_positions().iter().all(|&p| p < h.tokens_seen));
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    std::fs::remove_file(&p).ok();
}

#[test]
fn a_saved_state_loads_and_hand_made_lies_are_refused() {
    let (dir, bytes) = saved_state();
    let p = dir.join("ok.safetensors");
    std::fs::write(&p, bytes).unwrap();
    fresh().load(&p, "tiny-model", &SPEC.parse().unwrap()).unwrap();
    // A state whose layer holds more live entries than its capacity.
    let mut s = fresh();
    s.load(&p, "tiny-model", &SPEC.parse().unwrap()).unwrap();
    let lie = dir.join("lie.safetensors");
    let mut t: Vec<(String, Tensor)> = Vec::new();
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    for (name, view) in st.tensors() {
        let mut x = candle_core::safetensors::Load::load(&view, &Device::Cpu).unwrap();
        if name == "layer.0.live" {
            x = Tensor::ones(x.dims(), DType::U8, &Device::Cpu).unwrap();
        }
        if name == "layer.0.positions" {
            let n = x.dims()[0];
            x = Tensor::from_vec((0..n as i64).collect::<Vec<_>>(), n, &Device::Cpu).unwrap();
        }
        t.push((name, x));
    }
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes).unwrap();
    safetensors::tensor::serialize_to_file(t.iter().map(|(n, x)| (n.as_str(), x)), meta.metadata().clone(), &lie)
        .unwrap();
    let e = fresh().load(&lie, "tiny-model", &SPEC.parse().unwrap()).unwrap_err().to_string();
    assert!(e.contains("layer 0:") && e.contains("live entries, more than its capacity 6"), "{e}");
    // A header that claims more bytes than the file has.
    let mut b = bytes.clone();
    b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let big = dir.join("big.safetensors");
    std::fs::write(&big, &b).unwrap();
    let e = MsrnnState::read_header(&big).unwrap_err().to_string();
    assert!(e.contains("its header claims 18446744073709551615 bytes"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    #[test]
    fn corrupt_state_files_never_crash_the_loader(edits in prop::collection::vec(edit(), 1..5)) {
        let (_, bytes) = saved_state();
        load_state(&corrupt(bytes, &edits, usize::MAX), "any");
    }

    /// Aimed at the safetensors header (JSON: shapes, dtypes, offsets, the msrnn header).
    #[test]
    fn corrupt_state_headers_never_crash_the_loader(edits in prop::collection::vec(edit(), 1..4)) {
        let (_, bytes) = saved_state();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        load_state(&corrupt(bytes, &edits, 8 + n), "head");
    }
}

// ---------------------------------------------------------------------------------------------
// Policy specs
// ---------------------------------------------------------------------------------------------

const REAL_SPECS: &[&str] = &[
    "tova",
    "window+i:sinks=4",
    "h2o:recent=0.25",
    "random:seed=7",
    "keynorm",
    "strided:sinks=4,stride=8,recent=1",
    r#"{"name":"h2o","params":{"recent":0.5}}"#,
    r#"{"name":"window+i","params":{"sinks":4,"note":"a,b"}}"#,
];

fn check_spec(text: &str) {
    let reg = msrnn_policies::registry();
    let Ok(spec) = text.parse::<PolicySpec>() else { return };
    let _ = spec.to_params(None);
    let _ = reg.check_params(&spec);
    // What a spec prints parses back to the same spec whenever its values print unambiguously.
    let shown = spec.to_string();
    if !spec.params.values().any(|v| matches!(v, msrnn_core::ParamValue::Str(_) | msrnn_core::ParamValue::Float(_))) {
        let again: PolicySpec =
            shown.parse().unwrap_or_else(|e| panic!("{shown:?} (from {text:?}) does not parse: {e}"));
        assert_eq!(again, spec, "{shown:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn any_text_parses_to_a_spec_or_a_clear_error(text in "\\PC{0,40}") {
        check_spec(&text);
    }

    #[test]
    fn corrupt_real_specs_parse_to_a_spec_or_a_clear_error(
        which in 0..REAL_SPECS.len(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let b = corrupt(REAL_SPECS[which].as_bytes(), &edits, usize::MAX);
        check_spec(&String::from_utf8_lossy(&b));
    }
}

// ---------------------------------------------------------------------------------------------
// Plugin descriptors and answers
// ---------------------------------------------------------------------------------------------

/// Where [`descriptor_image`] places the descriptor (0 would be a NULL pointer).
const DESC_AT: usize = 8;

/// A wasm32 memory image holding a well-formed descriptor at [`DESC_AT`] with its strings and one
/// parameter after it (what `export_policy!` builds inside a module).
fn descriptor_image() -> Vec<u8> {
    let mut m = vec![0u8; 512];
    let put32 = |m: &mut Vec<u8>, at: usize, v: u32| m[at..at + 4].copy_from_slice(&v.to_le_bytes());
    let put64 = |m: &mut Vec<u8>, at: usize, v: u64| m[at..at + 8].copy_from_slice(&v.to_le_bytes());
    let d = DESC_AT;
    put32(&mut m, d, abi::ABI_VERSION);
    put32(&mut m, d + 4, 200); // name
    put32(&mut m, d + 8, 220); // description
    put32(&mut m, d + 12, 100); // aliases
    put64(&mut m, d + 16, 1);
    put32(&mut m, d + 24, 120); // params
    put64(&mut m, d + 32, 1);
    for (at, f) in [(40, 1), (44, 2), (48, 3), (52, 4), (56, 5), (60, 6)] {
        put32(&mut m, d + at, f);
    }
    put32(&mut m, 100, 240); // alias -> "alias"
    put32(&mut m, 120, 260); // param name
    put32(&mut m, 124, 280); // default
    put32(&mut m, 128, 300); // help
    for (at, s) in [(200, "policy"), (220, "a description"), (240, "alias"), (260, "sinks"), (280, "4"), (300, "help")]
    {
        m[at..at + s.len()].copy_from_slice(s.as_bytes());
    }
    m
}

const ALL_EXPORTS: &[&str] = &["msrnn_reset", "msrnn_save_state", "msrnn_load_state"];

#[test]
fn a_well_formed_descriptor_image_reads_back() {
    let (info, d) = msrnn_wasm::read_descriptor(msrnn_wasm::Mem(&descriptor_image()), DESC_AT as u32, ALL_EXPORTS)
        .map_err(|e| e.to_string())
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(info.name, "policy");
    assert_eq!(info.aliases, ["alias"]);
    assert_eq!(info.params, Some(vec![Param::new("sinks", "4", "help")]));
    assert!(d.reset && d.state);
    let e = msrnn_wasm::read_descriptor(msrnn_wasm::Mem(&descriptor_image()), DESC_AT as u32, &[]).unwrap_err();
    assert!(e.contains("declares `reset` but does not export `msrnn_reset`"), "{e}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    /// A module's memory is the module's to write: any bytes where the descriptor should be give a
    /// checked declaration or an error.
    #[test]
    fn corrupt_descriptors_are_checked_or_refused(edits in prop::collection::vec(edit(), 1..6), at in 0u32..600) {
        let m = corrupt(&descriptor_image(), &edits, usize::MAX);
        if let Ok((info, _)) = msrnn_wasm::read_descriptor(msrnn_wasm::Mem(&m), at.checked_sub(500).unwrap_or(DESC_AT as u32), ALL_EXPORTS) {
            prop_assert!(info.check().is_ok());
        }
    }

    /// Declarations with arbitrary names are refused unless every name is valid and distinct.
    #[test]
    fn declarations_with_arbitrary_names_are_checked(
        name in "\\PC{0,70}",
        aliases in prop::collection::vec("[a-z:, ]{0,6}", 0..3),
        params in prop::collection::vec("[a-z=]{0,4}", 0..3),
    ) {
        let info = PluginInfo {
            name: name.clone(),
            aliases,
            description: String::new(),
            params: Some(params.iter().map(|p| Param::owned(p.clone(), String::new(), String::new())).collect()),
        };
        if info.check().is_ok() {
            prop_assert!(msrnn_policy_api::valid_name(&name));
        }
    }

    /// Any needs a plugin writes decode or are refused; any answer a plugin gives is checked.
    #[test]
    fn arbitrary_needs_and_answers_are_checked(
        rows in any::<u32>(), flags in any::<(u32, u32, u32)>(), capacity in any::<u64>(),
        answer in prop::collection::vec(any::<u64>(), 0..8), len in any::<u64>(), budget in 0usize..10,
        live_bits in any::<u8>(),
    ) {
        let raw = abi::RawNeeds { rows, key_norms: flags.0, keys: flags.1, every_step: flags.2, capacity, head_capacity: 0 };
        if raw.decode().is_ok() {
            prop_assert!(rows <= 2);
        }
        let positions: Vec<u64> = (0..8).collect();
        let live: Vec<bool> = (0..8).map(|s| live_bits >> s & 1 == 1).collect();
        let obs = Observation {
            layer: 0, tokens_seen: 8, num_slots: 8, positions: &positions, live: &live, new_slots: &[],
            num_heads: 1, num_kv_heads: 1, head_dim: 0, rows: 0, probs: &[], key_norms: &[], keys: &[],
            head_capacity: 0,
        };
        let n_live = live.iter().filter(|&&l| l).count();
        let mut buf = answer.clone();
        buf.resize(n_live, 0);
        if let Ok(d) = decision_from(&buf, len, &obs, budget, "/p") {
            prop_assert!(msrnn_core::policy::validate(d, &obs, budget).is_ok());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Seeds for the fuzz targets
// ---------------------------------------------------------------------------------------------

/// A GGUF header (no tensor data) with `metadata` and the tensor table `tensors`, as llama.cpp
/// writes one: what the real file's header looks like with its arrays cut short.
fn gguf_header(
    metadata: &[(String, candle_core::quantized::gguf_file::Value)],
    tensors: &[(String, Vec<usize>, u32, u64)],
) -> Vec<u8> {
    use candle_core::quantized::gguf_file::Value;
    fn s(out: &mut Vec<u8>, x: &str) {
        out.extend((x.len() as u64).to_le_bytes());
        out.extend(x.as_bytes());
    }
    fn v(out: &mut Vec<u8>, x: &Value) {
        match x {
            Value::U8(a) => out.push(*a),
            Value::I8(a) => out.push(*a as u8),
            Value::U16(a) => out.extend(a.to_le_bytes()),
            Value::I16(a) => out.extend(a.to_le_bytes()),
            Value::U32(a) => out.extend(a.to_le_bytes()),
            Value::I32(a) => out.extend(a.to_le_bytes()),
            Value::U64(a) => out.extend(a.to_le_bytes()),
            Value::I64(a) => out.extend(a.to_le_bytes()),
            Value::F32(a) => out.extend(a.to_le_bytes()),
            Value::F64(a) => out.extend(a.to_le_bytes()),
            Value::Bool(a) => out.push(*a as u8),
            Value::String(a) => s(out, a),
            Value::Array(a) => {
                out.extend(a.first().map_or(4u32, type_of).to_le_bytes());
                out.extend((a.len() as u64).to_le_bytes());
                a.iter().for_each(|e| v(out, e));
            }
        }
    }
    fn type_of(x: &Value) -> u32 {
        match x {
            Value::U8(_) => 0,
            Value::I8(_) => 1,
            Value::U16(_) => 2,
            Value::I16(_) => 3,
            Value::U32(_) => 4,
            Value::I32(_) => 5,
            Value::F32(_) => 6,
            Value::Bool(_) => 7,
            Value::String(_) => 8,
            Value::Array(_) => 9,
            Value::U64(_) => 10,
            Value::I64(_) => 11,
            Value::F64(_) => 12,
        }
    }
    let mut out = b"GGUF".to_vec();
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((metadata.len() as u64).to_le_bytes());
    for (k, x) in metadata {
        s(&mut out, k);
        out.extend(type_of(x).to_le_bytes());
        v(&mut out, x);
    }
    for (name, dims, t, off) in tensors {
        s(&mut out, name);
        out.extend((dims.len() as u32).to_le_bytes());
        dims.iter().rev().for_each(|d| out.extend((*d as u64).to_le_bytes()));
        out.extend(t.to_le_bytes());
        out.extend(off.to_le_bytes());
    }
    out.resize(out.len().next_multiple_of(32), 0);
    out
}

/// Writes the fuzz targets' seeds into `fuzz/seeds/<target>/`: the tiny model (a whole GGUF
/// file), the real SmolLM2 header with its tokenizer arrays cut to 256 entries and its whole tensor
/// table, the real file's first 4 KiB, a saved h2o state, the real specs, descriptor images.
/// `cargo test -p msrnn-tests --test corruption -- --ignored write_fuzz_seeds`.
#[test]
#[ignore = "writes fuzz/seeds; run by hand"]
fn write_fuzz_seeds() {
    use candle_core::quantized::gguf_file::Value;
    let root = msrnn_tests::files::workspace().join("fuzz/seeds");
    let dir = |t: &str| {
        let d = root.join(t);
        std::fs::create_dir_all(&d).unwrap();
        d
    };
    std::fs::write(dir("gguf").join("tiny-llama.gguf"), tiny_gguf()).unwrap();
    if let Some(p) = msrnn_tests::files::smollm2() {
        let (_, ct) = msrnn_modelkit::gguf::open(&p, None).unwrap();
        let mut md: Vec<(String, Value)> = ct
            .metadata
            .iter()
            .map(|(k, x)| {
                let x = match x {
                    Value::Array(a) => Value::Array(a.iter().take(256).cloned().collect()),
                    x => x.clone(),
                };
                (k.clone(), x)
            })
            .collect();
        md.sort_by(|a, b| a.0.cmp(&b.0));
        let code = |d: GgmlDType| match d {
            GgmlDType::F32 => 0,
            GgmlDType::F16 => 1,
            GgmlDType::Q4_0 => 2,
            GgmlDType::Q4_1 => 3,
            GgmlDType::Q8_0 => 8,
            GgmlDType::Q6K => 14,
            _ => 0,
        };
        let mut ts: Vec<(String, Vec<usize>, u32, u64)> = ct
            .tensor_infos
            .iter()
            .map(|(n, ti)| (n.clone(), ti.shape.dims().to_vec(), code(ti.ggml_dtype), ti.offset))
            .collect();
        ts.sort_by_key(|t| t.3);
        std::fs::write(dir("gguf").join("smollm2-header-trimmed.gguf"), gguf_header(&md, &ts)).unwrap();
        let mut head = Vec::new();
        std::fs::File::open(&p).unwrap().take(4096).read_to_end(&mut head).unwrap();
        std::fs::write(dir("gguf").join("smollm2-first-4k.gguf"), head).unwrap();
    }
    std::fs::write(dir("state").join("h2o.safetensors"), &saved_state().1).unwrap();
    for (i, s) in REAL_SPECS.iter().chain(&["full", "window", "h2o:recent=0.5,heavy=0.1"]).enumerate() {
        std::fs::write(dir("spec").join(format!("spec{i}")), s).unwrap();
    }
    let mut img = (DESC_AT as u32).to_le_bytes().to_vec();
    img.extend(descriptor_image());
    std::fs::write(dir("descriptor").join("full"), &img).unwrap();
    // keynorm's, as export_policy! builds it: no aliases, an empty schema, every function.
    let mut k = descriptor_image();
    k[DESC_AT + 12..DESC_AT + 24].fill(0);
    k[DESC_AT + 32..DESC_AT + 40].fill(0);
    k[200..207].copy_from_slice(b"keynorm");
    let mut img = (DESC_AT as u32).to_le_bytes().to_vec();
    img.extend(k);
    std::fs::write(dir("descriptor").join("keynorm-like"), img).unwrap();
}
