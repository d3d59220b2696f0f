//! A tiny random LLaMA written by the tests themselves, as GGUF and as safetensors, plus a naive
//! reference forward (plain causal attention with repeat_kv, f64, no state) to check the adapter.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};

pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Merges of the tiny vocabulary, in rank order (byte-level strings: `Ġ` is a space).
/// `2 0` is there so that the digit split shows: without it "2024" would start with the token "20".
pub const MERGES: [(&str, &str); 8] =
    [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("2", "0")];

#[derive(Debug, Clone)]
pub struct TinyConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub max_context: usize,
    pub theta: f64,
    pub eps: f64,
    pub tied: bool,
}

/// GPT-2's byte -> printable character map.
pub fn byte_chars() -> Vec<char> {
    let mut bs: Vec<u32> = (b'!' as u32..=b'~' as u32).chain(0xA1..=0xAC).chain(0xAE..=0xFF).collect();
    let mut cs = bs.clone();
    let mut n = 0;
    for b in 0..256u32 {
        if !bs.contains(&b) {
            bs.push(b);
            cs.push(256 + n);
            n += 1;
        }
    }
    let mut out = vec!['\0'; 256];
    for (b, c) in bs.into_iter().zip(cs) {
        out[b as usize] = char::from_u32(c).unwrap();
    }
    out
}

/// Specials, then the 256 byte tokens, then one token per merge.
pub fn tiny_vocab() -> Vec<String> {
    let mut v: Vec<String> = SPECIALS.iter().map(|s| s.to_string()).collect();
    v.extend(byte_chars().into_iter().map(|c| c.to_string()));
    v.extend(MERGES.iter().map(|(a, b)| format!("{a}{b}")));
    v
}

/// Id of a byte token.
pub fn byte_id(b: u8) -> u32 {
    SPECIALS.len() as u32 + b as u32
}

/// Id of the token `s` in the tiny vocabulary.
pub fn token_id(s: &str) -> u32 {
    tiny_vocab().iter().position(|t| t == s).unwrap() as u32
}

pub fn tiny_config() -> TinyConfig {
    TinyConfig {
        vocab: tiny_vocab().len(),
        hidden: 64,
        ffn: 96,
        layers: 2,
        heads: 4,
        kv_heads: 2,
        head_dim: 16,
        max_context: 64,
        theta: 10_000.0,
        eps: 1e-5,
        tied: true,
    }
}

/// SplitMix64, so the weights are the same on every run and platform.
pub struct Rng(u64);
impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    /// Uniform in [-1, 1).
    pub fn sym(&mut self) -> f32 {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0) as f32
    }
}

/// A weight: row-major data and its `[rows, cols]` (or `[n]`) shape, in Hugging Face layout.
#[derive(Debug, Clone)]
pub struct W {
    pub data: Vec<f32>,
    pub shape: Vec<usize>,
}

impl W {
    pub fn row(&self, r: usize) -> &[f32] {
        let c = self.shape[1];
        &self.data[r * c..(r + 1) * c]
    }
    pub fn tensor(&self) -> Tensor {
        Tensor::from_vec(self.data.clone(), self.shape.clone(), &Device::Cpu).unwrap()
    }
}

/// The model's weights by Hugging Face name.
pub struct TinyModel {
    pub cfg: TinyConfig,
    pub w: HashMap<String, W>,
}

impl TinyModel {
    pub fn random(cfg: TinyConfig, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut w = HashMap::new();
        let mut mat = |rng: &mut Rng, name: String, rows: usize, cols: usize, scale: f32| {
            let data = (0..rows * cols).map(|_| rng.sym() * scale).collect();
            w.insert(name, W { data, shape: vec![rows, cols] });
        };
        let (h, f, d) = (cfg.hidden, cfg.ffn, cfg.head_dim);
        mat(&mut rng, "model.embed_tokens.weight".into(), cfg.vocab, h, 1.0);
        if !cfg.tied {
            mat(&mut rng, "lm_head.weight".into(), cfg.vocab, h, 0.3);
        }
        for l in 0..cfg.layers {
            let p = format!("model.layers.{l}");
            // Large enough Q/K scales that attention is far from uniform and positions matter.
            mat(&mut rng, format!("{p}.self_attn.q_proj.weight"), cfg.heads * d, h, 0.5);
            mat(&mut rng, format!("{p}.self_attn.k_proj.weight"), cfg.kv_heads * d, h, 0.5);
            mat(&mut rng, format!("{p}.self_attn.v_proj.weight"), cfg.kv_heads * d, h, 0.3);
            mat(&mut rng, format!("{p}.self_attn.o_proj.weight"), h, cfg.heads * d, 0.3);
            mat(&mut rng, format!("{p}.mlp.gate_proj.weight"), f, h, 0.3);
            mat(&mut rng, format!("{p}.mlp.up_proj.weight"), f, h, 0.3);
            mat(&mut rng, format!("{p}.mlp.down_proj.weight"), h, f, 0.3);
        }
        let mut norm = |rng: &mut Rng, name: String| {
            let data = (0..h).map(|_| 1.0 + 0.2 * rng.sym()).collect();
            w.insert(name, W { data, shape: vec![h] });
        };
        for l in 0..cfg.layers {
            norm(&mut rng, format!("model.layers.{l}.input_layernorm.weight"));
            norm(&mut rng, format!("model.layers.{l}.post_attention_layernorm.weight"));
        }
        norm(&mut rng, "model.norm.weight".into());
        Self { cfg, w }
    }

    pub fn get(&self, name: &str) -> &W {
        &self.w[name]
    }

    /// `config.json` + `model.safetensors` + `tokenizer.json` (copied from the GGUF-built tokenizer).
    pub fn write_safetensors(&self, dir: &Path, tokenizer_json: Option<&str>) {
        std::fs::create_dir_all(dir).unwrap();
        let c = &self.cfg;
        let config = serde_json::json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": c.hidden,
            "intermediate_size": c.ffn,
            "num_hidden_layers": c.layers,
            "num_attention_heads": c.heads,
            "num_key_value_heads": c.kv_heads,
            "vocab_size": c.vocab,
            "max_position_embeddings": c.max_context,
            "rope_theta": c.theta,
            "rms_norm_eps": c.eps,
            "tie_word_embeddings": c.tied,
            "hidden_act": "silu",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "rope_scaling": null,
            "torch_dtype": "float32",
        });
        std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
        let tensors: HashMap<String, Tensor> = self.w.iter().map(|(k, v)| (k.clone(), v.tensor())).collect();
        candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
        if let Some(t) = tokenizer_json {
            std::fs::write(dir.join("tokenizer.json"), t).unwrap();
        }
    }

    /// The GGUF tensors: llama.cpp names, Q/K rows permuted to the interleaved RoPE layout (as
    /// `convert_hf_to_gguf.py` does) unless `permute_qk` is false.
    pub fn gguf_tensors(&self, dtype: GgmlDType, permute_qk: bool) -> Vec<(String, QTensor)> {
        let c = &self.cfg;
        let q = |w: &W, dt: GgmlDType| QTensor::quantize(&w.tensor(), dt).unwrap();
        let mut out = vec![
            ("token_embd.weight".to_string(), q(self.get("model.embed_tokens.weight"), dtype)),
            ("output_norm.weight".to_string(), q(self.get("model.norm.weight"), GgmlDType::F32)),
        ];
        if !c.tied {
            out.push(("output.weight".into(), q(self.get("lm_head.weight"), dtype)));
        }
        for l in 0..c.layers {
            let hf = |s: &str| format!("model.layers.{l}.{s}.weight");
            let mut wq = self.get(&hf("self_attn.q_proj")).clone();
            let mut wk = self.get(&hf("self_attn.k_proj")).clone();
            if permute_qk {
                wq = permute_rows(&wq, c.heads, c.head_dim);
                wk = permute_rows(&wk, c.kv_heads, c.head_dim);
            }
            let b = |s: &str| format!("blk.{l}.{s}.weight");
            out.push((b("attn_q"), q(&wq, dtype)));
            out.push((b("attn_k"), q(&wk, dtype)));
            out.push((b("attn_v"), q(self.get(&hf("self_attn.v_proj")), dtype)));
            out.push((b("attn_output"), q(self.get(&hf("self_attn.o_proj")), dtype)));
            out.push((b("ffn_gate"), q(self.get(&hf("mlp.gate_proj")), dtype)));
            out.push((b("ffn_up"), q(self.get(&hf("mlp.up_proj")), dtype)));
            out.push((b("ffn_down"), q(self.get(&hf("mlp.down_proj")), dtype)));
            out.push((b("attn_norm"), q(self.get(&hf("input_layernorm")), GgmlDType::F32)));
            out.push((b("ffn_norm"), q(self.get(&hf("post_attention_layernorm")), GgmlDType::F32)));
        }
        out
    }

    /// GGUF metadata: `llama.*` hyper-parameters and a byte-level BPE tokenizer.
    pub fn gguf_metadata(&self, arch: &str) -> Vec<(String, Value)> {
        let c = &self.cfg;
        let vocab = tiny_vocab();
        let types: Vec<Value> = (0..vocab.len()).map(|i| Value::I32(if i < SPECIALS.len() { 3 } else { 1 })).collect();
        vec![
            ("general.architecture".into(), Value::String(arch.into())),
            ("general.name".into(), Value::String("tiny-llama".into())),
            ("llama.block_count".into(), Value::U32(c.layers as u32)),
            ("llama.context_length".into(), Value::U32(c.max_context as u32)),
            ("llama.embedding_length".into(), Value::U32(c.hidden as u32)),
            ("llama.feed_forward_length".into(), Value::U32(c.ffn as u32)),
            ("llama.attention.head_count".into(), Value::U32(c.heads as u32)),
            ("llama.attention.head_count_kv".into(), Value::U32(c.kv_heads as u32)),
            ("llama.rope.freq_base".into(), Value::F32(c.theta as f32)),
            ("llama.attention.layer_norm_rms_epsilon".into(), Value::F32(c.eps as f32)),
            ("llama.rope.dimension_count".into(), Value::U32(c.head_dim as u32)),
            ("llama.vocab_size".into(), Value::U32(c.vocab as u32)),
            ("tokenizer.ggml.model".into(), Value::String("gpt2".into())),
            ("tokenizer.ggml.pre".into(), Value::String("smollm".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(vocab.into_iter().map(Value::String).collect())),
            ("tokenizer.ggml.token_type".into(), Value::Array(types)),
            (
                "tokenizer.ggml.merges".into(),
                Value::Array(MERGES.iter().map(|(a, b)| Value::String(format!("{a} {b}"))).collect()),
            ),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(false)),
        ]
    }

    pub fn write_gguf(&self, path: &Path, dtype: GgmlDType, permute_qk: bool) {
        write_gguf_raw(path, &self.gguf_metadata("llama"), &self.gguf_tensors(dtype, permute_qk));
    }

    /// The naive reference: logits `[t][vocab]` for `tokens` at positions 0.., in f64.
    pub fn reference_logits(&self, tokens: &[u32]) -> Vec<Vec<f64>> {
        let c = &self.cfg;
        let (h, d) = (c.hidden, c.head_dim);
        let t = tokens.len();
        let emb = self.get("model.embed_tokens.weight");
        let mut x: Vec<Vec<f64>> =
            tokens.iter().map(|&id| emb.row(id as usize).iter().map(|&v| v as f64).collect()).collect();
        let rms = |v: &[f64], w: &W| -> Vec<f64> {
            let ms = v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64;
            let s = 1.0 / (ms + c.eps).sqrt();
            v.iter().zip(&w.data).map(|(a, &g)| a * s * g as f64).collect()
        };
        let matvec = |w: &W, v: &[f64]| -> Vec<f64> {
            (0..w.shape[0]).map(|r| w.row(r).iter().zip(v).map(|(&a, b)| a as f64 * b).sum()).collect()
        };
        // Half-split RoPE (Hugging Face layout): dims i and i + d/2 rotate together.
        let rope = |v: &mut [f64], pos: usize| {
            for i in 0..d / 2 {
                let a = pos as f64 / c.theta.powf(2.0 * i as f64 / d as f64);
                let (x1, x2) = (v[i], v[i + d / 2]);
                v[i] = x1 * a.cos() - x2 * a.sin();
                v[i + d / 2] = x2 * a.cos() + x1 * a.sin();
            }
        };
        let group = c.heads / c.kv_heads;
        for l in 0..c.layers {
            let g = |s: &str| self.get(&format!("model.layers.{l}.{s}.weight"));
            let hs: Vec<Vec<f64>> = x.iter().map(|v| rms(v, g("input_layernorm"))).collect();
            let mut qs: Vec<Vec<f64>> = hs.iter().map(|v| matvec(g("self_attn.q_proj"), v)).collect();
            let mut ks: Vec<Vec<f64>> = hs.iter().map(|v| matvec(g("self_attn.k_proj"), v)).collect();
            let vs: Vec<Vec<f64>> = hs.iter().map(|v| matvec(g("self_attn.v_proj"), v)).collect();
            for p in 0..t {
                for hh in 0..c.heads {
                    rope(&mut qs[p][hh * d..(hh + 1) * d], p);
                }
                for hh in 0..c.kv_heads {
                    rope(&mut ks[p][hh * d..(hh + 1) * d], p);
                }
            }
            for p in 0..t {
                let att = reference_attention(&qs[p], &ks[..=p], &vs[..=p], c.heads, group, d);
                let o = matvec(g("self_attn.o_proj"), &att);
                for k in 0..h {
                    x[p][k] += o[k];
                }
                let hn = rms(&x[p], g("post_attention_layernorm"));
                let gate = matvec(g("mlp.gate_proj"), &hn);
                let up = matvec(g("mlp.up_proj"), &hn);
                let act: Vec<f64> = gate.iter().zip(&up).map(|(a, b)| a / (1.0 + (-a).exp()) * b).collect();
                let down = matvec(g("mlp.down_proj"), &act);
                for k in 0..h {
                    x[p][k] += down[k];
                }
            }
        }
        let head = if c.tied { emb } else { self.get("lm_head.weight") };
        x.iter().map(|v| matvec(head, &rms(v, self.get("model.norm.weight")))).collect()
    }
}

/// HF Q/K rows -> the interleaved layout: within each head, row 2i takes row i and row 2i+1 takes
/// row i + d/2.
/// Naive softmax attention of one query position (all `heads`, `[heads * d]`) over the given
/// keys/values (`[kv_heads * d]` each), query head `h` reading KV head `h / group` (repeat_kv), in
/// f64: the reference both families' forward passes are checked against.
pub fn reference_attention(
    q: &[f64],
    ks: &[Vec<f64>],
    vs: &[Vec<f64>],
    heads: usize,
    group: usize,
    d: usize,
) -> Vec<f64> {
    let mut att = vec![0f64; heads * d];
    for hh in 0..heads {
        let kv = hh / group;
        let q = &q[hh * d..(hh + 1) * d];
        let scores: Vec<f64> = ks
            .iter()
            .map(|k| q.iter().zip(&k[kv * d..(kv + 1) * d]).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt())
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = scores.iter().map(|s| (s - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for (j, w) in e.iter().enumerate() {
            for k in 0..d {
                att[hh * d + k] += w / z * vs[j][kv * d + k];
            }
        }
    }
    att
}

pub fn permute_rows(w: &W, heads: usize, d: usize) -> W {
    let cols = w.shape[1];
    let mut data = vec![0f32; w.data.len()];
    for h in 0..heads {
        for i in 0..d / 2 {
            for (dst, src) in [(2 * i, i), (2 * i + 1, i + d / 2)] {
                let (dr, sr) = (h * d + dst, h * d + src);
                data[dr * cols..(dr + 1) * cols].copy_from_slice(&w.data[sr * cols..(sr + 1) * cols]);
            }
        }
    }
    W { data, shape: w.shape.clone() }
}

pub fn write_gguf_raw(path: &Path, metadata: &[(String, Value)], tensors: &[(String, QTensor)]) {
    let mut f = std::fs::File::create(path).unwrap();
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &md, &ts).unwrap();
}

/// A fresh directory under cargo's per-target temp dir.
pub fn scratch(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "msrnn-llama-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Largest |a - b| over two logit matrices.
pub fn max_abs_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).map(|(p, q)| (p - q).abs())
        })
        .fold(0f32, f32::max)
}
