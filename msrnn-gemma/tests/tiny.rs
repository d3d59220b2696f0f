//! The adapter on a tiny random Gemma 3 the tests write themselves as GGUF: exactness against a
//! naive reference with the sliding window, chunked vs decode, the window's effect on the state,
//! policies, weight formats, the tokenizer, and clear errors on bad files and inputs. Nothing is
//! downloaded.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use msrnn_core::{new_state, Capacity, CausalLm, MsrnnState, PolicySpec};
use msrnn_gemma::Gemma;
use msrnn_modelkit::{Error, LoadOptions, Model, TokenStream, WeightFormat, WeightKinds};
use msrnn_tests::files::scratch;
use msrnn_tests::tiny_gemma::*;
use msrnn_tests::weights::set;
use msrnn_tests::{max_abs_diff, write_gguf, Rng};

struct Fixture {
    model: TinyGemma,
    path: PathBuf,
}

fn fixture(name: &str) -> Fixture {
    let dir = scratch(name);
    let model = TinyGemma::random(tiny_config(), 7);
    let path = dir.join("tiny-gemma.gguf");
    model.write_gguf(&path, GgmlDType::F32);
    Fixture { model, path }
}

fn load(path: &Path, weights: WeightFormat) -> Gemma {
    Gemma::load(path, &LoadOptions { weights, ..Default::default() }).unwrap_or_else(|e| panic!("{e}"))
}

fn state(model: &Gemma, policy: &str, capacity: Capacity, max_chunk: usize) -> MsrnnState {
    let reg = msrnn_policies::registry();
    new_state(model, &reg, &policy.parse::<PolicySpec>().unwrap(), capacity, max_chunk).unwrap()
}

fn rows(t: candle_core::Tensor) -> Vec<Vec<f32>> {
    t.to_vec2::<f32>().unwrap()
}

/// Logits for every token, fed `chunk` tokens at a time.
fn run(model: &Gemma, st: &mut MsrnnState, tokens: &[u32], chunk: usize) -> Vec<Vec<f32>> {
    tokens.chunks(chunk).flat_map(|c| rows(model.forward(c, st, true).unwrap())).collect()
}

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| (rng.next_u64() % vocab as u64) as u32).collect()
}

#[test]
fn model_info_declares_the_window_of_local_layers_only() {
    let fx = fixture("info");
    let m = load(&fx.path, WeightFormat::F32);
    let i = m.info();
    assert_eq!(i.family, "gemma3");
    assert_eq!(i.layer_windows, vec![Some(4), Some(4), None, Some(4)]);
    assert_eq!((i.num_layers, i.num_heads, i.num_kv_heads, i.head_dim), (4, 4, 2, 32));
    assert_eq!(i.bos_token, Some(2));
    assert_eq!(i.eos_tokens, vec![1, token_id("<end_of_turn>")]);
    assert!(m.config().is_global(2) && !m.config().is_global(0));
    assert_eq!(m.weight_kinds(), WeightKinds::new("f32", "f32"));
}

/// Decoding one token at a time (the state's window drop and mask) equals the naive reference
/// with the window; the reference without the window is far off, so the window is what matters.
#[test]
fn decode_matches_the_naive_reference_with_its_sliding_window() {
    let fx = fixture("decode-ref");
    let m = load(&fx.path, WeightFormat::F32);
    let toks = tokens(20, fx.model.cfg.vocab, 3);
    let got = run(&m, &mut state(&m, "full", Capacity::Unbounded, 1), &toks, 1);
    let want = fx.model.reference_logits(&toks, true);
    let no_window = fx.model.reference_logits(&toks, false);
    let d = max_abs_diff(&got, &want);
    assert!(d < 2e-3, "decode differs from the windowed reference by {d}");
    let w = max_abs_diff(&want, &no_window);
    assert!(w > 50.0 * d.max(1e-4), "the window must change the logits ({w}) for this test to mean anything");
    // Inside the window both references agree, and the model with them.
    assert!(max_abs_diff(&want[..4], &no_window[..4]) < 1e-9);
}

#[test]
fn chunked_prefill_equals_decode_including_chunks_wider_than_the_window() {
    let fx = fixture("chunked");
    let m = load(&fx.path, WeightFormat::F32);
    let toks = tokens(23, fx.model.cfg.vocab, 5);
    let decode = run(&m, &mut state(&m, "full", Capacity::Unbounded, 1), &toks, 1);
    for chunk in [23, 7, 3, 4, 5] {
        let chunked = run(&m, &mut state(&m, "full", Capacity::Unbounded, chunk), &toks, chunk);
        let d = max_abs_diff(&decode, &chunked);
        assert!(d < 1e-3, "chunk {chunk} differs from decode by {d}");
    }
    // The last-token-only path returns the same row.
    let mut st = state(&m, "full", Capacity::Unbounded, 23);
    let last = rows(m.forward(&toks, &mut st, false).unwrap());
    assert_eq!(last.len(), 1);
    assert!(max_abs_diff(&last, &decode[22..]) < 1e-3);
}

/// Local layers hold at most window - 1 tokens after a step (the next query's window); the global
/// layer holds everything unless the capacity bounds it.
#[test]
fn local_layers_are_bounded_by_the_window_and_global_ones_by_the_capacity() {
    let fx = fixture("bounded");
    let m = load(&fx.path, WeightFormat::F32);
    let toks = tokens(30, fx.model.cfg.vocab, 9);
    let live = |st: &MsrnnState| (0..4).map(|l| st.layer(l).live_count()).collect::<Vec<_>>();
    let mut st = state(&m, "full", Capacity::Unbounded, 1);
    for (i, &t) in toks.iter().enumerate() {
        m.forward(&[t], &mut st, false).unwrap();
        let n = i + 1;
        assert_eq!(live(&st), vec![n.min(3), n.min(3), n, n.min(3)], "after {n} tokens");
    }
    // Window positions: the local layers keep the newest 3.
    assert_eq!(st.layer(0).live_positions(), vec![27, 28, 29]);
    for (cap, local) in [(2, 2), (10, 3)] {
        let mut st = state(&m, "window", Capacity::bounded(cap).unwrap(), 8);
        run(&m, &mut st, &toks, 8);
        assert_eq!(live(&st), vec![local, local, cap, local], "capacity {cap}");
        assert_eq!(st.layer(2).live_positions(), (30 - cap as u64..30).collect::<Vec<_>>());
    }
}

/// With a capacity at or above the window, `window` evicts nothing on local layers that the model
/// would have kept: the logits equal the full cache's until the global layer starts evicting.
#[test]
fn a_capacity_above_the_window_changes_only_the_global_layers() {
    let fx = fixture("cap-window");
    let m = load(&fx.path, WeightFormat::F32);
    let toks = tokens(16, fx.model.cfg.vocab, 11);
    let full = run(&m, &mut state(&m, "full", Capacity::Unbounded, 1), &toks, 1);
    let win = run(&m, &mut state(&m, "window", Capacity::bounded(6).unwrap(), 1), &toks, 1);
    // Token 7 (index 6) still attends to all 7 keys: the policy evicts after attention.
    assert!(max_abs_diff(&full[..7], &win[..7]) < 1e-5, "no eviction yet");
    assert!(max_abs_diff(&full[7..], &win[7..]) > 1e-3, "the global layer evicted, so logits move");
}

#[test]
fn every_builtin_policy_keeps_the_state_bounded() {
    let fx = fixture("policies");
    let m = load(&fx.path, WeightFormat::F32);
    let toks = tokens(40, fx.model.cfg.vocab, 13);
    for policy in ["window", "window+i:sinks=1", "h2o", "tova", "random"] {
        for (chunk, cap) in [(1, 3), (6, 3), (5, 7)] {
            let mut st = state(&m, policy, Capacity::bounded(cap).unwrap(), chunk);
            for c in toks.chunks(chunk) {
                let l = rows(m.forward(c, &mut st, true).unwrap());
                assert!(l.iter().flatten().all(|x| x.is_finite()), "{policy}: non-finite logits");
                for layer in 0..4 {
                    let n = st.layer(layer).live_count();
                    let bound = if layer == 2 { cap } else { cap.min(3) };
                    assert!(n <= bound, "{policy} chunk {chunk} cap {cap}: layer {layer} holds {n} > {bound}");
                }
            }
            assert_eq!(st.layer(2).live_count(), cap, "{policy}: the global layer fills to capacity");
        }
    }
    // `full` takes no capacity: refused with an error, not a panic.
    let reg = msrnn_policies::registry();
    assert!(new_state(&m, &reg, &PolicySpec::new("full"), Capacity::bounded(3).unwrap(), 1).is_err());
}

#[test]
fn weight_formats_agree_with_f32() {
    let fx = fixture("formats");
    let toks = tokens(12, fx.model.cfg.vocab, 17);
    let f32m = load(&fx.path, WeightFormat::F32);
    let base = run(&f32m, &mut state(&f32m, "full", Capacity::Unbounded, 12), &toks, 12);
    for (fmt, tol) in [(WeightFormat::Native, 1e-4), (WeightFormat::F16, 0.1), (WeightFormat::Q8_0, 0.5)] {
        let m = load(&fx.path, fmt);
        let got = run(&m, &mut state(&m, "full", Capacity::Unbounded, 12), &toks, 12);
        let d = max_abs_diff(&base, &got);
        assert!(d < tol, "{fmt}: differs from f32 by {d}");
    }
    let q = load(&fx.path, WeightFormat::Q8_0);
    assert_eq!(q.weight_kinds(), WeightKinds::new("Q8_0", "Q8_0"));
    // On the CPU Q8_0 runs on msrnn's kernels, F32 on candle's.
    assert!(q.output_head().is_kernel() && !f32m.output_head().is_kernel());
    // A Q8_0 file keeps its blocks natively, embeddings included (read row by row).
    let dir = scratch("q8file");
    let path = dir.join("q8.gguf");
    fx.model.write_gguf(&path, GgmlDType::Q8_0);
    let m = load(&path, WeightFormat::Native);
    assert_eq!(m.weight_kinds().head, "Q8_0");
    let got = run(&m, &mut state(&m, "full", Capacity::Unbounded, 12), &toks, 12);
    assert!(max_abs_diff(&base, &got) < 0.5);
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let fx = fixture("inputs");
    let m = load(&fx.path, WeightFormat::F32);
    let mut st = state(&m, "full", Capacity::Unbounded, 4);
    assert!(m.forward(&[], &mut st, true).is_err());
    let err = m.forward(&[fx.model.cfg.vocab as u32], &mut st, true).unwrap_err().to_string();
    assert!(err.contains("outside the vocabulary"), "{err}");
    // A state built for another layout is refused.
    let cfg = msrnn_core::StateConfig { max_chunk: 4, ..msrnn_core::StateConfig::new(4, 2, 32, Capacity::Unbounded) };
    let reg = msrnn_policies::registry();
    let policies = reg.create_layers(&PolicySpec::new("full"), 4, 4, 2, 32, Capacity::Unbounded).unwrap();
    let mut wrong = MsrnnState::new(&cfg, policies).unwrap();
    let err = m.forward(&[5], &mut wrong, true).unwrap_err().to_string();
    assert!(err.contains("window"), "{err}");
}

fn write_variant(
    name: &str,
    edit: impl FnOnce(&mut Vec<(String, Value)>, &mut Vec<(String, candle_core::quantized::QTensor)>),
) -> PathBuf {
    let model = TinyGemma::random(tiny_config(), 7);
    let mut md = model.gguf_metadata();
    let mut ts = model.gguf_tensors(GgmlDType::F32);
    edit(&mut md, &mut ts);
    let path = scratch(name).join("bad.gguf");
    write_gguf(&path, &md, &ts);
    path
}

fn load_err(path: &Path) -> Error {
    match Gemma::load(path, &LoadOptions::default()) {
        Ok(_) => panic!("{} loaded", path.display()),
        Err(e) => e,
    }
}

#[test]
fn bad_files_are_named_errors() {
    let dir = scratch("badfiles");
    let missing = dir.join("nope.gguf");
    assert!(matches!(load_err(&missing), Error::NotFound(_)));
    let empty = dir.join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(load_err(&empty), Error::NotGguf { .. }));
    let text = dir.join("text.gguf");
    std::fs::write(&text, b"hello, not a model").unwrap();
    assert!(load_err(&text).to_string().contains("not the GGUF magic"));

    let llama = write_variant("arch", |md, _| set(md, "general.architecture", Value::String("llama".into())));
    let e = load_err(&llama);
    assert!(matches!(&e, Error::UnsupportedArchitecture { arch, .. } if arch == "llama"), "{e}");

    let no_tensor = write_variant("tensor", |_, ts| ts.retain(|(n, _)| n != "blk.2.attn_k_norm.weight"));
    let e = load_err(&no_tensor);
    assert!(e.to_string().contains("blk.2.attn_k_norm.weight"), "{e}");

    let no_window = write_variant("window", |md, _| md.retain(|(k, _)| k != "gemma3.attention.sliding_window"));
    let e = load_err(&no_window);
    assert!(matches!(&e, Error::MissingMetadata { key, .. } if key == "gemma3.attention.sliding_window"), "{e}");

    let scaled = write_variant("scaling", |md, _| {
        md.push(("gemma3.rope.scaling.type".into(), Value::String("linear".into())));
        md.push(("gemma3.rope.scaling.factor".into(), Value::F32(8.0)));
    });
    assert!(matches!(load_err(&scaled), Error::Unsupported { .. }));

    let capped = write_variant("softcap", |md, _| md.push(("gemma3.final_logit_softcapping".into(), Value::F32(30.0))));
    assert!(load_err(&capped).to_string().contains("soft-capping"));

    let pattern = write_variant("pattern", |md, _| {
        set(md, "gemma3.attention.sliding_window_pattern", Value::Array(vec![Value::Bool(true); 3]))
    });
    assert!(load_err(&pattern).to_string().contains("layer pattern"));

    let shape = write_variant("shape", |_, ts| {
        let t = candle_core::Tensor::zeros((8, 64), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let q = candle_core::quantized::QTensor::quantize(&t, GgmlDType::F32).unwrap();
        ts.iter_mut().find(|(n, _)| n == "blk.0.attn_q.weight").unwrap().1 = q;
    });
    assert!(matches!(load_err(&shape), Error::TensorShape { .. }));

    let unigram = write_variant("tokmodel", |md, _| set(md, "tokenizer.ggml.model", Value::String("gpt2".into())));
    assert!(load_err(&unigram).to_string().contains("tokenizer model `gpt2`"));

    // A truncated file names the first tensor that does not fit.
    let fx = fixture("trunc");
    let bytes = std::fs::read(&fx.path).unwrap();
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    assert!(matches!(load_err(&cut), Error::Truncated { .. }));
}

#[test]
fn tokenizer_follows_scores_bytes_and_user_defined_tokens() {
    let fx = fixture("tok");
    let m = load(&fx.path, WeightFormat::F32);
    let tok = m.tokenizer();
    let id = token_id;
    let enc = |s: &str| tok.encode(s, false).unwrap();
    // Merges by score: "he" (-2) before "ll", then "hell", "hello", "▁hello"; "the" is no token.
    assert_eq!(enc("the hello"), vec![id("t"), id("he"), id("▁hello")]);
    assert_eq!(enc(" the"), vec![id("▁the")]);
    // "bc" outranks "ab" although its id is higher.
    assert_eq!(enc("abc"), vec![id("a"), id("bc")]);
    // Characters outside the vocabulary fall back to bytes; "é" is a token, "ü" is not.
    assert_eq!(enc("éü"), vec![id("é"), byte_id(0xC3), byte_id(0xBC)]);
    assert_eq!(enc("z"), vec![byte_id(b'z')]);
    // User-defined tokens are matched in the raw text, longest first; a lone space is `▁`.
    assert_eq!(enc("a  b"), vec![id("a"), id("  "), id("b")]);
    assert_eq!(enc("a    b"), vec![id("a"), id("   "), id("▁"), id("b")]);
    assert_eq!(enc("\n\n\n<b>"), vec![id("\n\n"), id("\n"), id("<b>")]);
    // Control tokens in the text are parsed; BOS comes from encode.
    assert_eq!(tok.encode("<start_of_turn>a", true).unwrap(), vec![2, id("<start_of_turn>"), id("a")]);
    assert!(tok.wants_bos());
    for s in ["the hello", "a    b\n\n\nxyz éü!", "<start_of_turn>user\nhi<end_of_turn>", " leading space", "🤗"] {
        assert_eq!(tok.decode(&enc(s)).unwrap(), s, "round trip of {s:?}");
    }
    // The tiny file has no chat template: prompts stay raw.
    assert!(!tok.has_chat_template());
    assert_eq!(tok.chat_prompt("hi"), "hi");
    // Streaming holds back half a character and skips control tokens.
    let mut stream = TokenStream::new(tok);
    assert_eq!(stream.push(id("a")), Some("a".into()));
    assert_eq!(stream.push(id("<end_of_turn>")), None);
    assert_eq!(stream.push(byte_id(0xC3)), None);
    assert_eq!(stream.push(byte_id(0xBC)), Some("ü".into()));
    assert_eq!(stream.push(id("▁hello")), Some(" hello".into()));
}

#[test]
fn chat_template_in_the_file_turns_on_gemma_turns() {
    let path = write_variant("chat", |md, _| {
        md.push((
            "tokenizer.chat_template".into(),
            Value::String("{{ bos_token }}{% for m in messages %}<start_of_turn>{{ m.role }}\n{{ m.content }}<end_of_turn>\n{% endfor %}".into()),
        ))
    });
    let tok = Gemma::load_tokenizer(&path).unwrap();
    assert!(tok.has_chat_template());
    assert_eq!(tok.chat_prompt("hi"), "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n");
    assert_eq!(
        tok.chat_prompt_with_system(Some("be brief"), "hi"),
        "<start_of_turn>user\nbe brief\n\nhi<end_of_turn>\n<start_of_turn>model\n"
    );
}

/// The core's state files work for Gemma unchanged: save mid-sequence, load into a fresh state,
/// and the continuation equals the uninterrupted run (policy bookkeeping and windows included).
#[test]
fn state_files_resume_exactly() {
    let fx = fixture("resume");
    let m = load(&fx.path, WeightFormat::F32);
    let toks = tokens(20, fx.model.cfg.vocab, 19);
    let spec: PolicySpec = "h2o".parse().unwrap();
    let cap = Capacity::bounded(3).unwrap();
    let whole = run(&m, &mut state(&m, "h2o", cap, 1), &toks, 1);
    let mut st = state(&m, "h2o", cap, 1);
    run(&m, &mut st, &toks[..11], 1);
    let file = scratch("resume-file").join("state.safetensors");
    st.save(&file, "tiny-gemma", &spec).unwrap();
    let mut resumed = state(&m, "h2o", cap, 1);
    resumed.load(&file, "tiny-gemma", &spec).unwrap();
    assert_eq!(resumed.tokens_seen(), 11);
    let rest = run(&m, &mut resumed, &toks[11..], 1);
    assert!(max_abs_diff(&whole[11..], &rest) < 1e-6);
}
