//! The family registry end to end: a third family (msrnn-toyfamily, registered from a test crate)
//! is found by its GGUF architecture through `msrnn_modelkit::load_model`, the lookup the CLI
//! uses, and runs through the multi-state; the real families are found by architecture and by
//! `model_type`; files no family claims are refused naming what is supported.

use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use msrnn_core::{new_state, Capacity, CausalLm, MsrnnState, PolicySpec};
use msrnn_modelkit::{families, family, family_of, load_model, Error, LoadOptions, Model, WeightFormat};
use msrnn_tests::files::scratch;
use msrnn_tests::reference::{add, gated_mlp, gelu_tanh, matvec, rms, to_f32, SelfAttention};
use msrnn_tests::tiny_llama::{bpe_tokenizer_metadata, tiny_vocab, TinyLlama};
use msrnn_tests::weights::metadata;
use msrnn_tests::{max_abs_diff, write_gguf, Dims, Rng, W};
// Linked for their registrations.
use msrnn_gemma as _;
use msrnn_llama as _;
use msrnn_toyfamily as _;

/// A toy model: two blocks, weights by GGUF name.
struct ToyModel {
    w: Vec<(String, W)>,
    dims: Dims,
}

impl ToyModel {
    fn random(seed: u64) -> Self {
        let dims = Dims {
            hidden: 32,
            ffn: 48,
            layers: 2,
            heads: 4,
            kv_heads: 2,
            head_dim: 8,
            context: 64,
            eps: 1e-5,
            theta: 1e4,
        };
        let mut rng = Rng::new(seed);
        let mut w = vec![("token_embd.weight".to_string(), W::random(&mut rng, tiny_vocab().len(), dims.hidden, 1.0))];
        for l in 0..dims.layers {
            w.push((format!("blk.{l}.attn_norm.weight"), W::norm(&mut rng, dims.hidden, 1.0, 0.2)));
            for (name, m) in dims.random_block(&mut rng, [0.5; 7]) {
                w.push((format!("blk.{l}.{name}.weight"), m));
            }
        }
        w.push(("output_norm.weight".to_string(), W::norm(&mut rng, dims.hidden, 1.0, 0.2)));
        Self { w, dims }
    }

    fn get(&self, name: &str) -> &W {
        &self.w.iter().find(|(n, _)| n == name).unwrap().1
    }

    fn metadata(&self, arch: &str) -> Vec<(String, Value)> {
        let mut md = metadata([
            ("general.architecture", Value::String(arch.into())),
            ("general.name", Value::String("tiny-toy".into())),
        ]);
        md.extend(self.dims.gguf_metadata("toy"));
        md.extend(bpe_tokenizer_metadata());
        md
    }

    fn write(&self, path: &Path, arch: &str) {
        let tensors: Vec<_> = self.w.iter().map(|(n, w)| (n.clone(), w.quantize(GgmlDType::F32))).collect();
        write_gguf(path, &self.metadata(arch), &tensors);
    }

    /// The f64 reference: logits for `tokens` at positions 0...
    fn reference_logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let emb = self.get("token_embd.weight");
        let mut x: Vec<Vec<f64>> =
            tokens.iter().map(|&id| emb.row(id as usize).iter().map(|&v| v as f64).collect()).collect();
        let d = &self.dims;
        for l in 0..d.layers {
            let g = |s: &str| self.get(&format!("blk.{l}.{s}.weight"));
            let attn = SelfAttention {
                q: g("attn_q"),
                k: g("attn_k"),
                v: g("attn_v"),
                o: g("attn_output"),
                heads: d.heads,
                kv_heads: d.kv_heads,
                head_dim: d.head_dim,
                theta: d.theta,
                window: None,
                qk_norms: None,
            };
            let hs: Vec<Vec<f64>> = x.iter().map(|v| rms(v, g("attn_norm"), d.eps)).collect();
            for (xp, o) in x.iter_mut().zip(attn.forward(&hs)) {
                add(xp, &o);
                let hn = rms(xp, g("attn_norm"), d.eps);
                add(xp, &gated_mlp(g("ffn_gate"), g("ffn_up"), g("ffn_down"), &hn, gelu_tanh));
            }
        }
        let norm = self.get("output_norm.weight");
        to_f32(x.iter().map(|v| matvec(emb, &rms(v, norm, d.eps))).collect())
    }
}

fn toy_file(name: &str) -> (ToyModel, PathBuf) {
    let model = ToyModel::random(5);
    let path = scratch(name).join("toy.gguf");
    model.write(&path, "toy");
    (model, path)
}

fn state(model: &dyn CausalLm, policy: &str, capacity: Capacity, chunk: usize) -> MsrnnState {
    new_state(model, &msrnn_policies::registry(), &policy.parse::<PolicySpec>().unwrap(), capacity, chunk).unwrap()
}

/// Logits for every token, fed `chunk` tokens at a time.
fn run(model: &dyn Model, st: &mut MsrnnState, tokens: &[u32], chunk: usize) -> Vec<Vec<f32>> {
    tokens.chunks(chunk).flat_map(|c| model.forward(c, st, true).unwrap().to_vec2::<f32>().unwrap()).collect()
}

#[test]
fn every_linked_family_is_registered_once() {
    let names: Vec<&str> = families().iter().map(|f| f.name).collect();
    assert_eq!(names, ["gemma3", "llama", "toy"]);
    let mut archs: Vec<&str> = families().iter().flat_map(|f| f.architectures.iter().copied()).collect();
    let n = archs.len();
    archs.sort_unstable();
    archs.dedup();
    assert_eq!(archs.len(), n, "two families claim one architecture: {archs:?}");
    assert!(family("llama").unwrap().baseline.is_some(), "llama has candle's quantized_llama");
    assert!(family("gemma3").unwrap().baseline.is_none());
    assert_eq!(family("llama").unwrap().model_types, ["llama"]);
}

/// The toy family loads through the registry by its architecture name and runs through the state:
/// it equals its f64 reference, chunked equals decode, and a bounded policy keeps it bounded.
#[test]
fn a_family_registered_from_a_test_crate_loads_and_runs_through_the_state() {
    let (toy, path) = toy_file("toy");
    assert_eq!(family_of(&path).unwrap().name, "toy");
    let m = load_model(&path, &LoadOptions { weights: WeightFormat::F32, ..Default::default() }).unwrap();
    let info = m.info();
    assert_eq!((info.family.as_str(), info.name.as_str()), ("toy", "tiny-toy"));
    assert_eq!((info.num_layers, info.num_heads, info.num_kv_heads, info.head_dim), (2, 4, 2, 8));
    assert_eq!(family(&info.family).unwrap().name, "toy", "ModelInfo::family names the registry entry");
    assert_eq!(m.weight_kinds().to_string(), "f32");
    let tok = m.tokenizer();
    assert_eq!(tok.decode(&tok.encode("hello the world", false).unwrap()).unwrap(), "hello the world");

    let ids: Vec<u32> = tok.encode("hello the world, hello 2024", false).unwrap();
    let want = toy.reference_logits(&ids);
    let decode = run(&*m, &mut state(&*m, "full", Capacity::Unbounded, 1), &ids, 1);
    let chunked = run(&*m, &mut state(&*m, "full", Capacity::Unbounded, 8), &ids, 8);
    let (d, c) = (max_abs_diff(&decode, &want), max_abs_diff(&chunked, &decode));
    assert!(d < 1e-4 && c < 1e-4, "reference {d}, chunked {c}");

    let mut st = state(&*m, "tova", Capacity::bounded(4).unwrap(), 3);
    let bounded = run(&*m, &mut st, &ids, 3);
    assert!(bounded.iter().flatten().all(|x| x.is_finite()));
    assert_eq!(st.max_live(), 4);
    assert!(max_abs_diff(&bounded, &decode) > 1e-3, "evicting changes the logits");
    // Input checks come with the kit.
    assert!(m.forward(&[], &mut st, true).is_err());
}

#[test]
fn real_families_are_found_by_architecture_and_by_model_type() {
    let dir = scratch("real");
    let tiny = TinyLlama::random(msrnn_tests::tiny_llama::tiny_config(), 3);
    let gguf = dir.join("llama.gguf");
    tiny.write_gguf(&gguf, GgmlDType::F32, true);
    assert_eq!(family_of(&gguf).unwrap().name, "llama");
    let m = load_model(&gguf, &LoadOptions::default()).unwrap();
    assert_eq!(m.info().family, "llama");
    let tok_json = m.tokenizer().inner().to_string(false).unwrap();

    let hf = dir.join("hf");
    tiny.write_safetensors(&hf, Some(&tok_json));
    assert_eq!(family_of(&hf).unwrap().name, "llama");
    assert_eq!(family_of(&hf.join("model.safetensors")).unwrap().name, "llama");
    assert_eq!(load_model(&hf, &LoadOptions::default()).unwrap().info().family, "llama");

    let gemma = dir.join("gemma.gguf");
    msrnn_tests::tiny_gemma::TinyGemma::random(msrnn_tests::tiny_gemma::tiny_config(), 1)
        .write_gguf(&gemma, GgmlDType::F32);
    assert_eq!(load_model(&gemma, &LoadOptions::default()).unwrap().info().family, "gemma3");
}

#[test]
fn files_no_family_claims_are_refused_with_what_is_supported() {
    let dir = scratch("unknown");
    let path = dir.join("mistral.gguf");
    ToyModel::random(1).write(&path, "mistral");
    let e = load_model(&path, &LoadOptions::default()).err().unwrap();
    assert!(matches!(&e, Error::UnknownFamily { found, .. } if found == "mistral"), "{e}");
    let msg = e.to_string();
    assert!(msg.contains("mistral.gguf") && msg.contains("GGUF architecture `mistral` is not supported"), "{msg}");
    assert!(msg.contains("(supported: gemma3, llama, toy)"), "{msg}");

    let hf = dir.join("hf");
    std::fs::create_dir_all(&hf).unwrap();
    std::fs::write(hf.join("config.json"), r#"{"model_type": "mistral"}"#).unwrap();
    let msg = family_of(&hf).unwrap_err().to_string();
    assert!(msg.contains("config.json") && msg.contains("model_type `mistral`") && msg.contains("(supported: llama)"));
    std::fs::write(hf.join("config.json"), "{}").unwrap();
    assert!(matches!(family_of(&hf), Err(Error::MissingMetadata { key, .. }) if key == "model_type"));
    std::fs::remove_file(hf.join("config.json")).unwrap();
    assert!(matches!(family_of(&hf), Err(Error::NotFound(p)) if p.ends_with("config.json")));

    assert!(matches!(family_of(&dir.join("absent.gguf")), Err(Error::NotFound(_))));
    let text = dir.join("notes.txt");
    std::fs::write(&text, "not a model").unwrap();
    assert!(matches!(family_of(&text), Err(Error::NotGguf { .. })));
}
