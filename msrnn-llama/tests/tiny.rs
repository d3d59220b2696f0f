//! The adapter on a tiny random LLaMA the tests write themselves (GGUF and safetensors): exactness
//! against a naive reference, chunked vs decode, the RoPE convention of each format, policies,
//! weight formats, the tokenizer, and clear errors on bad files. Nothing is downloaded.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use msrnn_core::{new_state, Capacity, CausalLm, MsrnnState, PolicySpec, RopeStyle};
use msrnn_llama::Llama;
use msrnn_modelkit::gguf::architecture as gguf_architecture;
use msrnn_modelkit::{Error, LoadOptions, Model, TokenStream, WeightFormat, WeightKinds};
use msrnn_tests::files::scratch;
use msrnn_tests::tiny_llama::*;
use msrnn_tests::{max_abs_diff, write_gguf, Rng};

/// The tiny model written as `model.gguf` (f32 tensors, Q/K permuted) and as a safetensors dir.
struct Fixture {
    model: TinyLlama,
    gguf: PathBuf,
    st_dir: PathBuf,
}

fn fixture_with(name: &str, cfg: TinyConfig) -> Fixture {
    let dir = scratch(name);
    let model = TinyLlama::random(cfg, 42);
    let gguf = dir.join("model.gguf");
    model.write_gguf(&gguf, GgmlDType::F32, true);
    let tok_json = load(&gguf, WeightFormat::F32).tokenizer().inner().to_string(false).unwrap();
    let st_dir = dir.join("hf");
    model.write_safetensors(&st_dir, Some(&tok_json));
    Fixture { model, gguf, st_dir }
}

fn fixture(name: &str) -> Fixture {
    fixture_with(name, tiny_config())
}

fn load(path: &Path, weights: WeightFormat) -> Llama {
    Llama::load(path, &LoadOptions { weights, ..Default::default() }).unwrap_or_else(|e| panic!("{e}"))
}

fn state(model: &Llama, policy: &str, capacity: Capacity, max_chunk: usize) -> MsrnnState {
    let reg = msrnn_policies::registry();
    new_state(model, &reg, &PolicySpec::new(policy), capacity, max_chunk).unwrap()
}

fn rows(t: candle_core::Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

/// Logits for every token, fed `chunk` tokens at a time.
fn run(model: &Llama, st: &mut MsrnnState, tokens: &[u32], chunk: usize) -> Vec<Vec<f32>> {
    tokens.chunks(chunk).flat_map(|c| rows(model.forward(c, st, true).unwrap())).collect()
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

#[test]
fn chunked_full_cache_equals_token_by_token_decode() {
    let fx = fixture("chunked");
    let toks = tokens(40, fx.model.cfg.vocab, 1);
    for path in [&fx.gguf, &fx.st_dir] {
        let m = load(path, WeightFormat::F32);
        let decode = run(&m, &mut state(&m, "full", Capacity::Unbounded, 1), &toks, 1);
        for chunk in [40, 7, 16] {
            let chunked = run(&m, &mut state(&m, "full", Capacity::Unbounded, chunk), &toks, chunk);
            let d = max_abs_diff(&decode, &chunked);
            assert!(d < 1e-4, "{}: chunk {chunk} differs from decode by {d}", path.display());
        }
        // The last-token-only path returns the same row.
        let mut st = state(&m, "full", Capacity::Unbounded, 40);
        let last = rows(m.forward(&toks, &mut st, false).unwrap());
        assert_eq!(last.len(), 1);
        assert!(max_abs_diff(&last, &decode[39..]) < 1e-4);
        assert_eq!(st.tokens_seen(), 40);
    }
}

#[test]
fn both_formats_match_the_naive_reference_forward() {
    let fx = fixture("reference");
    let toks = tokens(24, fx.model.cfg.vocab, 2);
    let want = fx.model.reference_logits(&toks);
    let scale = want.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
    assert!(scale > 1.0, "logits should not be trivially small ({scale})");
    for (path, style) in [(&fx.gguf, RopeStyle::Interleaved), (&fx.st_dir, RopeStyle::HalfSplit)] {
        let m = load(path, WeightFormat::F32);
        assert_eq!(m.rope_style(), style);
        for chunk in [1, 24] {
            let got = run(&m, &mut state(&m, "full", Capacity::Unbounded, chunk), &toks, chunk);
            let d = max_abs_diff(&got, &want);
            eprintln!("{}: chunk {chunk}: max |logit - reference| = {d:.2e} (max |logit| {scale:.2})", path.display());
            assert!(d < 1e-4, "{}: chunk {chunk}: {d}", path.display());
        }
    }
}

#[test]
fn untied_output_head_is_read_from_both_formats() {
    let cfg = TinyConfig { tied: false, ..tiny_config() };
    let fx = fixture_with("untied", cfg);
    let toks = tokens(12, fx.model.cfg.vocab, 3);
    let want = fx.model.reference_logits(&toks);
    for path in [&fx.gguf, &fx.st_dir] {
        let m = load(path, WeightFormat::F32);
        let got = run(&m, &mut state(&m, "full", Capacity::Unbounded, 12), &toks, 12);
        assert!(max_abs_diff(&got, &want) < 1e-4, "{}", path.display());
    }
}

/// The real test of the RoPE convention: GGUF's permuted Q/K rows with interleaved RoPE give the
/// same logits as the safetensors rows with half-split RoPE; the GGUF without the permutation
/// (i.e. the wrong convention for its rows) does not.
#[test]
fn rope_convention_matches_each_format() {
    let fx = fixture("rope");
    let toks = tokens(24, fx.model.cfg.vocab, 4);
    let g = load(&fx.gguf, WeightFormat::F32);
    let s = load(&fx.st_dir, WeightFormat::F32);
    let lg = run(&g, &mut state(&g, "full", Capacity::Unbounded, 24), &toks, 24);
    let ls = run(&s, &mut state(&s, "full", Capacity::Unbounded, 24), &toks, 24);
    let same = max_abs_diff(&lg, &ls);
    assert!(same < 1e-4, "GGUF and safetensors disagree: {same}");

    let wrong = fx.gguf.with_file_name("unpermuted.gguf");
    fx.model.write_gguf(&wrong, GgmlDType::F32, false);
    let w = load(&wrong, WeightFormat::F32);
    let lw = run(&w, &mut state(&w, "full", Capacity::Unbounded, 24), &toks, 24);
    let off = max_abs_diff(&lw, &ls);
    eprintln!("right convention: {same:.2e}; wrong convention: {off:.3}");
    assert!(off > 1e-2, "the convention must matter for this test to mean anything ({off})");
    // The first token sits at position 0 where RoPE is the identity: the conventions agree there.
    assert!(max_abs_diff(&lw[..1], &ls[..1]) < 1e-4);
}

#[test]
fn window_with_room_for_everything_is_exactly_full() {
    let fx = fixture("window");
    let toks = tokens(30, fx.model.cfg.vocab, 5);
    let m = load(&fx.gguf, WeightFormat::F32);
    for chunk in [1, 8] {
        let full = run(&m, &mut state(&m, "full", Capacity::Unbounded, chunk), &toks, chunk);
        for c in [30, 64] {
            let mut st = state(&m, "window", Capacity::bounded(c).unwrap(), chunk);
            let win = run(&m, &mut st, &toks, chunk);
            assert_eq!(win, full, "window C={c} (chunk {chunk}) must equal full exactly");
            assert_eq!(st.max_live(), 30);
        }
        // ... and a window that does evict changes the logits (the comparison can fail).
        let small = run(&m, &mut state(&m, "window", Capacity::bounded(4).unwrap(), chunk), &toks, chunk);
        assert!(max_abs_diff(&small, &full) > 1e-3);
    }
}

#[test]
fn every_builtin_policy_keeps_the_state_within_capacity() {
    let fx = fixture("policies");
    let m = load(&fx.gguf, WeightFormat::F32);
    let reg = msrnn_policies::registry();
    let names: Vec<String> = reg.entries().map(|e| e.name.clone()).collect();
    for want in ["full", "window", "window+i", "h2o", "tova", "random"] {
        assert!(names.iter().any(|n| n == want), "policy {want} is not registered: {names:?}");
    }
    let toks = tokens(50, fx.model.cfg.vocab, 6);
    let cap = 8;
    for name in reg.entries().filter(|e| !e.unbounded).map(|e| &e.name) {
        for chunk in [1, 5] {
            let mut st =
                new_state(&m, &reg, &PolicySpec::new(name.as_str()), Capacity::bounded(cap).unwrap(), chunk).unwrap();
            for c in toks.chunks(chunk) {
                let logits = rows(m.forward(c, &mut st, true).unwrap());
                assert!(logits.iter().flatten().all(|x| x.is_finite()), "{name}: non-finite logits");
                // Per-layer budgets (`pyramid`) may give a layer more than C, never the state more
                // than layers x C.
                let mut total = 0;
                for l in 0..st.num_layers() {
                    let (n, own) = (st.layer(l).live_count(), st.layer(l).capacity().budget());
                    assert!(n <= own, "{name} (chunk {chunk}): layer {l} holds {n} > its capacity {own}");
                    total += own;
                }
                assert!(total <= cap * st.num_layers(), "{name}: layer capacities sum to {total}");
            }
            for l in 0..st.num_layers() {
                let own = st.layer(l).capacity().budget();
                assert_eq!(st.layer(l).live_count(), own, "{name}: a full layer holds exactly its capacity");
            }
            assert_eq!(st.tokens_seen(), 50);
        }
    }
}

/// Positions beyond the trained context must not panic: a bounded policy keeps going.
#[test]
fn bounded_policy_runs_past_the_trained_context() {
    let fx = fixture("long");
    let m = load(&fx.gguf, WeightFormat::F32);
    assert_eq!(m.info().max_context, 64);
    let toks = tokens(200, fx.model.cfg.vocab, 7);
    let mut st = state(&m, "window+i", Capacity::bounded(16).unwrap(), 1);
    for &t in &toks {
        let l = rows(m.forward(&[t], &mut st, false).unwrap());
        assert!(l[0].iter().all(|x| x.is_finite()));
    }
    assert_eq!(st.tokens_seen(), 200);
    assert!(st.layer(0).live_positions().iter().any(|&p| p >= 190));
}

#[test]
fn weight_formats_are_applied_and_stay_close() {
    let fx = fixture("formats");
    let toks = tokens(20, fx.model.cfg.vocab, 8);
    let reference = {
        let m = load(&fx.gguf, WeightFormat::F32);
        assert_eq!(m.weight_kinds(), WeightKinds::new("f32", "f32"));
        run(&m, &mut state(&m, "full", Capacity::Unbounded, 20), &toks, 20)
    };
    let mut failures = Vec::new();
    for (path, fmt, kind, tol) in [
        (&fx.gguf, WeightFormat::Native, "f32", 1e-5),
        (&fx.gguf, WeightFormat::Q8_0, "Q8_0", 2.0),
        (&fx.gguf, WeightFormat::F16, "f16", 0.15),
        (&fx.gguf, WeightFormat::Auto, "f32", 1e-5),
        (&fx.st_dir, WeightFormat::Native, "f32", 1e-4),
        (&fx.st_dir, WeightFormat::Q8_0, "Q8_0", 2.0),
        (&fx.st_dir, WeightFormat::F16, "f16", 0.15),
    ] {
        let m = load(path, fmt);
        assert_eq!(m.weight_kinds().matmul, kind, "{} {fmt}", path.display());
        let got = run(&m, &mut state(&m, "full", Capacity::Unbounded, 20), &toks, 20);
        let d = max_abs_diff(&got, &reference);
        let scale = reference.iter().flatten().fold(0f32, |m, x| m.max(x.abs()));
        eprintln!("{} {fmt}: max |diff| vs f32 = {d:.2e} (max |logit| {scale:.2})", path.display());
        if d >= tol {
            failures.push(format!("{} {fmt}: {d} >= {tol}", path.display()));
        }
        if fmt == WeightFormat::Q8_0 {
            assert!(d > 0.0, "Q8_0 must actually quantize");
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // (This random model amplifies weight noise ~20x: f16's 1e-3 relative error shows up as ~0.06
    // on logits up to ~23, Q8_0's ~0.4% as ~1.3. The real model's perplexity check is the tight one.)
    // A file stored in Q8_0 keeps its blocks natively; the tied head uses the embedding's blocks.
    let q8 = fx.gguf.with_file_name("q8.gguf");
    fx.model.write_gguf(&q8, GgmlDType::Q8_0, true);
    for fmt in [WeightFormat::Native, WeightFormat::Auto] {
        let m = load(&q8, fmt);
        assert_eq!(m.weight_kinds(), WeightKinds::new("Q8_0", "Q8_0"));
        let got = run(&m, &mut state(&m, "full", Capacity::Unbounded, 20), &toks, 20);
        assert!(max_abs_diff(&got, &reference) < 2.0);
    }
}

#[test]
fn model_and_tokenizer_can_move_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Llama>();
    send_sync::<msrnn_modelkit::Tokenizer>();
}

#[test]
fn model_info_comes_from_the_file() {
    let fx = fixture("info");
    let c = &fx.model.cfg;
    for path in [&fx.gguf, &fx.st_dir] {
        let m = load(path, WeightFormat::Native);
        let i = m.info();
        assert_eq!(i.family, "llama");
        assert_eq!(
            (i.num_layers, i.num_heads, i.num_kv_heads, i.head_dim),
            (c.layers, c.heads, c.kv_heads, c.head_dim)
        );
        assert_eq!((i.vocab_size, i.max_context), (c.vocab, c.max_context));
        assert_eq!(i.bos_token, Some(1));
        assert_eq!(i.eos_tokens, vec![2]);
        assert_eq!(i.layer_windows, vec![None; c.layers]);
        assert_eq!(i.kv_dtype, candle_core::DType::F32);
        assert_eq!(i.kv_bytes_per_token(), c.layers * 2 * c.kv_heads * c.head_dim * 4);
    }
    assert_eq!(load(&fx.gguf, WeightFormat::Native).info().name, "tiny-llama");
    assert_eq!(gguf_architecture(&fx.gguf).unwrap(), "llama");
}

#[test]
fn forward_rejects_empty_input_and_unknown_tokens() {
    let fx = fixture("badtok");
    let m = load(&fx.gguf, WeightFormat::F32);
    let mut st = state(&m, "full", Capacity::Unbounded, 4);
    assert!(m.forward(&[], &mut st, true).is_err());
    let e = m.forward(&[fx.model.cfg.vocab as u32], &mut st, true).unwrap_err();
    assert!(e.to_string().contains("outside the vocabulary"), "{e}");
    assert_eq!(st.tokens_seen(), 0);
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

#[test]
fn gguf_tokenizer_is_byte_level_bpe_with_digit_split_and_specials() {
    let fx = fixture("tok");
    let m = load(&fx.gguf, WeightFormat::Native);
    let t = m.tokenizer();
    // " the" merges fully; "hello" too; " w" merges, "orld" stays bytes.
    let ids = t.encode("hello the world", false).unwrap();
    let expect: Vec<u32> = vec![token_id("hello"), token_id("Ġthe"), token_id("Ġw")]
        .into_iter()
        .chain("orld".bytes().map(byte_id))
        .collect();
    assert_eq!(ids, expect);
    // Digits are split one by one before the GPT-2 pattern (which would keep "2024" together).
    assert_eq!(t.encode("2024", false).unwrap(), "2024".bytes().map(byte_id).collect::<Vec<_>>());
    // Special tokens in the text become their ids; BOS is added only on request.
    let chat = t.chat_prompt("hi");
    assert_eq!(chat, "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n");
    let ids = t.encode(&chat, false).unwrap();
    assert_eq!(ids[0], 1);
    assert!(ids.contains(&2));
    assert_eq!(t.encode("hi", true).unwrap()[0], 1);
    assert!(t.has_chat_template());
    assert_eq!(t.eos_tokens(), &[2]);
    assert!(!t.wants_bos());
    // Round trips, including multi-byte characters and control tokens.
    for s in ["hello the world", "héllo wörld ✓ 12345", &chat, "  leading  spaces\n\ttabs"] {
        assert_eq!(t.decode(&t.encode(s, false).unwrap()).unwrap(), s);
    }
}

#[test]
fn safetensors_tokenizer_json_matches_the_gguf_one() {
    let fx = fixture("tokjson");
    let g = load(&fx.gguf, WeightFormat::Native);
    let s = load(&fx.st_dir, WeightFormat::Native);
    for text in ["hello the world 42", "<|im_start|>user\nx<|im_end|>"] {
        assert_eq!(g.tokenizer().encode(text, false).unwrap(), s.tokenizer().encode(text, false).unwrap());
    }
    assert_eq!(s.tokenizer().eos_tokens(), &[2]);
    assert_eq!(s.tokenizer().bos_token(), Some(1));
    assert!(s.tokenizer().has_chat_template());
}

#[test]
fn token_stream_waits_for_complete_characters_and_skips_control_tokens() {
    let fx = fixture("stream");
    let m = load(&fx.gguf, WeightFormat::Native);
    let t = m.tokenizer();
    let text = "hé ✓x";
    let ids = t.encode(text, false).unwrap();
    let mut stream = TokenStream::new(t);
    let mut out = String::new();
    let mut pieces = Vec::new();
    for &id in ids.iter().chain([2u32].iter()) {
        if let Some(s) = stream.push(id) {
            assert!(!s.contains('\u{FFFD}'), "incomplete character leaked: {s:?}");
            pieces.push(s.clone());
            out.push_str(&s);
        }
    }
    out.extend(stream.finish());
    assert_eq!(out, text);
    // 'é' is two byte tokens and '✓' three: the stream emitted nothing for the first halves.
    assert!(pieces.len() < ids.len(), "{pieces:?}");
    // A dangling half character comes out (lossily) at the end.
    let mut s = TokenStream::new(t);
    assert_eq!(s.push(byte_id(0xC3)), None);
    assert_eq!(s.finish().as_deref(), Some("\u{FFFD}"));
}

// ---------------------------------------------------------------------------------------------
// Bad input: every case is an error naming the file or tensor, never a panic.

fn load_err(path: &Path) -> Error {
    match Llama::load(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

#[test]
fn missing_file_and_non_gguf_files_are_clear_errors() {
    let dir = scratch("bad");
    let missing = dir.join("nope.gguf");
    let e = load_err(&missing);
    assert!(matches!(e, Error::NotFound(_)) && e.to_string().contains("nope.gguf"), "{e}");
    assert!(matches!(gguf_architecture(&missing), Err(Error::NotFound(_))));

    let random = dir.join("random.gguf");
    let mut rng = Rng::new(9);
    std::fs::write(&random, (0..4096).map(|_| rng.next_u64() as u8).collect::<Vec<_>>()).unwrap();
    let e = load_err(&random);
    assert!(matches!(e, Error::NotGguf { .. }) && e.to_string().contains("random.gguf"), "{e}");
    assert!(matches!(gguf_architecture(&random), Err(Error::NotGguf { .. })));

    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    let e = load_err(&empty);
    assert!(matches!(e, Error::NotGguf { .. }) && e.to_string().contains("empty"), "{e}");

    // The magic alone, then garbage: the header cannot be parsed.
    let bad_header = dir.join("header.gguf");
    std::fs::write(&bad_header, b"GGUF\x03\0\0\0\xff\xff\xff\xff\xff\xff\xff\x7f").unwrap();
    let e = load_err(&bad_header);
    assert!(matches!(e, Error::NotGguf { .. }), "{e}");
}

#[test]
fn truncated_gguf_names_the_tensor_that_does_not_fit() {
    let fx = fixture("trunc");
    let bytes = std::fs::read(&fx.gguf).unwrap();
    let cut = fx.gguf.with_file_name("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(&cut);
    match &e {
        Error::Truncated { tensor, needed, available, .. } => {
            assert!(!tensor.is_empty() && needed > available, "{e}");
        }
        _ => panic!("expected Truncated, got {e}"),
    }
    assert!(e.to_string().contains("cut.gguf"), "{e}");
    // Cut inside the metadata: the header itself fails.
    let cut2 = fx.gguf.with_file_name("cut2.gguf");
    std::fs::write(&cut2, &bytes[..200]).unwrap();
    assert!(matches!(load_err(&cut2), Error::NotGguf { .. }));
}

#[test]
fn unsupported_architecture_and_missing_pieces_are_named() {
    let fx = fixture("arch");
    let dir = fx.gguf.parent().unwrap().to_path_buf();
    let m = &fx.model;

    let gemma = dir.join("gemma.gguf");
    write_gguf(&gemma, &m.gguf_metadata("gemma3"), &m.gguf_tensors(GgmlDType::F32, true));
    let e = load_err(&gemma);
    assert!(matches!(&e, Error::UnsupportedArchitecture { arch, .. } if arch == "gemma3"), "{e}");
    assert_eq!(gguf_architecture(&gemma).unwrap(), "gemma3");

    let mut tensors = m.gguf_tensors(GgmlDType::F32, true);
    tensors.retain(|(n, _)| n != "blk.1.ffn_up.weight");
    let missing = dir.join("missing.gguf");
    write_gguf(&missing, &m.gguf_metadata("llama"), &tensors);
    let e = load_err(&missing);
    assert!(matches!(&e, Error::MissingTensor { tensor, .. } if tensor == "blk.1.ffn_up.weight"), "{e}");
    assert!(e.to_string().contains("missing.gguf") && e.to_string().contains("blk.1.ffn_up.weight"));

    let mut md = m.gguf_metadata("llama");
    md.retain(|(k, _)| k != "llama.block_count");
    let nometa = dir.join("nometa.gguf");
    write_gguf(&nometa, &md, &m.gguf_tensors(GgmlDType::F32, true));
    let e = load_err(&nometa);
    assert!(matches!(&e, Error::MissingMetadata { key, .. } if key == "llama.block_count"), "{e}");

    // Wrong shape: claim more heads than the Q matrix has rows for.
    let mut md = m.gguf_metadata("llama");
    for (k, v) in md.iter_mut() {
        if k == "llama.feed_forward_length" {
            *v = Value::U32(m.cfg.ffn as u32 * 2);
        }
    }
    let shape = dir.join("shape.gguf");
    write_gguf(&shape, &md, &m.gguf_tensors(GgmlDType::F32, true));
    let e = load_err(&shape);
    assert!(matches!(&e, Error::TensorShape { tensor, .. } if tensor == "blk.0.ffn_gate.weight"), "{e}");

    // No tokenizer metadata.
    let mut md = m.gguf_metadata("llama");
    md.retain(|(k, _)| !k.starts_with("tokenizer."));
    let notok = dir.join("notok.gguf");
    write_gguf(&notok, &md, &m.gguf_tensors(GgmlDType::F32, true));
    let e = load_err(&notok);
    assert!(matches!(e, Error::MissingTokenizer { .. }) && e.to_string().contains("notok.gguf"), "{e}");
}

#[test]
fn bad_safetensors_directories_are_named() {
    let fx = fixture("badst");
    let dir = fx.st_dir.clone();

    // No tokenizer.json.
    let notok = dir.with_file_name("notok");
    fx.model.write_safetensors(&notok, None);
    let e = load_err(&notok);
    assert!(matches!(e, Error::MissingTokenizer { .. }) && e.to_string().contains("tokenizer.json"), "{e}");

    // Another architecture.
    let mistral = dir.with_file_name("mistral");
    fx.model.write_safetensors(&mistral, Some("{}"));
    let cfg = std::fs::read_to_string(mistral.join("config.json")).unwrap().replace("\"llama\"", "\"mistral\"");
    std::fs::write(mistral.join("config.json"), cfg).unwrap();
    let e = load_err(&mistral);
    assert!(matches!(&e, Error::UnsupportedArchitecture { arch, .. } if arch == "mistral"), "{e}");

    // No config.json.
    let empty = dir.with_file_name("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = load_err(&empty);
    assert!(matches!(e, Error::NotFound(ref p) if p.ends_with("config.json")), "{e}");

    // A tensor missing from the safetensors file.
    let partial = dir.with_file_name("partial");
    let tok = std::fs::read_to_string(dir.join("tokenizer.json")).unwrap();
    let mut m2 = TinyLlama::random(tiny_config(), 42);
    m2.w.remove("model.layers.0.self_attn.k_proj.weight");
    m2.write_safetensors(&partial, Some(&tok));
    let e = load_err(&partial);
    assert!(
        matches!(&e, Error::MissingTensor { tensor, .. } if tensor == "model.layers.0.self_attn.k_proj.weight"),
        "{e}"
    );

    // A path to the .safetensors file itself loads its directory.
    let m = load(&dir.join("model.safetensors"), WeightFormat::F32);
    assert_eq!(m.rope_style(), RopeStyle::HalfSplit);
}
