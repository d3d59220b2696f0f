//! A tiny random Gemma 3 written by the tests themselves as GGUF (candle's writer), a tiny
//! SentencePiece-style vocabulary, and a naive reference forward (f64, plain attention with the
//! sliding window applied per layer, no state) to check the adapter against. The generic helpers
//! (seeded weights, GGUF writing, scratch dirs, logit diffs) are msrnn-llama's.
#![allow(dead_code)]

#[path = "../../../msrnn-llama/tests/common/mod.rs"]
mod llama;
pub use llama::{max_abs_diff, reference_attention, scratch, write_gguf_raw, Rng, W};

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};

/// Token types as GGUF stores them.
pub const NORMAL: i32 = 1;
pub const CONTROL: i32 = 3;
pub const USER: i32 = 4;
pub const BYTE: i32 = 6;

/// The tiny vocabulary: (text, score, type). Control tokens first (as in Gemma: `<pad>`, `<eos>`,
/// `<bos>`, `<unk>`), then turn markers, user-defined whitespace runs and a tag, the 256 byte
/// tokens, then normal pieces whose scores fix the merge order.
pub fn tiny_vocab() -> Vec<(String, f32, i32)> {
    let mut v: Vec<(String, f32, i32)> = Vec::new();
    for s in ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"] {
        v.push((s.into(), -1000.0, CONTROL));
    }
    for s in ["\n", "\n\n", "  ", "   ", "<b>"] {
        v.push((s.into(), -1000.0, USER));
    }
    for b in 0..=255u8 {
        v.push((format!("<0x{b:02X}>"), 0.0, BYTE));
    }
    // "bc" outranks "ab" although it comes later: scores, not ids, order the merges.
    let normal: [(&str, f32); 21] = [
        ("▁", -100.0),
        ("t", -101.0),
        ("h", -102.0),
        ("e", -103.0),
        ("a", -104.0),
        ("b", -105.0),
        ("c", -106.0),
        ("o", -107.0),
        ("l", -108.0),
        ("▁t", -1.0),
        ("he", -2.0),
        ("▁the", -3.0),
        ("▁th", -4.0),
        ("ab", -6.0),
        ("bc", -5.0),
        ("ll", -8.0),
        ("hell", -9.0),
        ("hello", -10.0),
        ("▁hello", -11.0),
        ("é", -12.0),
        ("!", -13.0),
    ];
    for (s, sc) in normal {
        v.push((s.into(), sc, NORMAL));
    }
    v
}

pub fn token_id(s: &str) -> u32 {
    tiny_vocab().iter().position(|t| t.0 == s).unwrap_or_else(|| panic!("no token {s:?}")) as u32
}

pub fn byte_id(b: u8) -> u32 {
    token_id(&format!("<0x{b:02X}>"))
}

#[derive(Debug, Clone)]
pub struct TinyConfig {
    pub vocab: usize,
    pub hidden: usize,
    pub ffn: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub window: usize,
    /// Per layer: true = global.
    pub global: Vec<bool>,
    pub theta_global: f64,
    pub eps: f64,
}

/// Three local layers around one global one, window 4: short sequences already cross the window.
pub fn tiny_config() -> TinyConfig {
    TinyConfig {
        vocab: tiny_vocab().len(),
        hidden: 64,
        ffn: 96,
        heads: 4,
        kv_heads: 2,
        head_dim: 32,
        window: 4,
        global: vec![false, false, true, false],
        theta_global: 1_000_000.0,
        eps: 1e-6,
    }
}

/// The model's weights by GGUF name.
pub struct TinyGemma {
    pub cfg: TinyConfig,
    pub w: HashMap<String, W>,
}

impl TinyGemma {
    pub fn random(cfg: TinyConfig, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut w = HashMap::new();
        let (h, f, d) = (cfg.hidden, cfg.ffn, cfg.head_dim);
        let mut mat = |rng: &mut Rng, name: String, rows: usize, cols: usize, scale: f32| {
            let data = (0..rows * cols).map(|_| rng.sym() * scale).collect();
            w.insert(name, W { data, shape: vec![rows, cols] });
        };
        mat(&mut rng, "token_embd.weight".into(), cfg.vocab, h, 0.2);
        for l in 0..cfg.global.len() {
            let b = |s: &str| format!("blk.{l}.{s}.weight");
            mat(&mut rng, b("attn_q"), cfg.heads * d, h, 0.5);
            mat(&mut rng, b("attn_k"), cfg.kv_heads * d, h, 0.5);
            mat(&mut rng, b("attn_v"), cfg.kv_heads * d, h, 0.5);
            mat(&mut rng, b("attn_output"), h, cfg.heads * d, 0.3);
            mat(&mut rng, b("ffn_gate"), f, h, 0.4);
            mat(&mut rng, b("ffn_up"), f, h, 0.4);
            mat(&mut rng, b("ffn_down"), h, f, 0.3);
        }
        // Norm weights as the GGUF stores them (the `1 +` already folded in). Query/key norms are
        // large so that attention is sharp and the window visibly matters.
        let mut norm = |rng: &mut Rng, name: String, n: usize, centre: f32, spread: f32| {
            let data = (0..n).map(|_| centre + spread * rng.sym()).collect();
            w.insert(name, W { data, shape: vec![n] });
        };
        for l in 0..cfg.global.len() {
            let b = |s: &str| format!("blk.{l}.{s}.weight");
            norm(&mut rng, b("attn_norm"), h, 1.0, 0.2);
            norm(&mut rng, b("post_attention_norm"), h, 1.0, 0.2);
            norm(&mut rng, b("ffn_norm"), h, 1.0, 0.2);
            norm(&mut rng, b("post_ffw_norm"), h, 1.0, 0.2);
            norm(&mut rng, b("attn_q_norm"), d, 2.5, 0.5);
            norm(&mut rng, b("attn_k_norm"), d, 2.5, 0.5);
        }
        norm(&mut rng, "output_norm.weight".into(), h, 1.0, 0.2);
        Self { cfg, w }
    }

    pub fn get(&self, name: &str) -> &W {
        &self.w[name]
    }

    /// GGUF tensors: matrices in `dtype`, norms in f32 (as llama.cpp writes them).
    pub fn gguf_tensors(&self, dtype: GgmlDType) -> Vec<(String, QTensor)> {
        let mut names: Vec<&String> = self.w.keys().collect();
        names.sort();
        names
            .into_iter()
            .map(|n| {
                let w = &self.w[n];
                let dt = if w.shape.len() == 1 { GgmlDType::F32 } else { dtype };
                (n.clone(), QTensor::quantize(&w.tensor(), dt).unwrap())
            })
            .collect()
    }

    /// GGUF metadata: `gemma3.*` hyper-parameters and the tiny SentencePiece vocabulary.
    pub fn gguf_metadata(&self) -> Vec<(String, Value)> {
        let c = &self.cfg;
        let vocab = tiny_vocab();
        vec![
            ("general.architecture".into(), Value::String("gemma3".into())),
            ("general.name".into(), Value::String("tiny-gemma".into())),
            ("gemma3.context_length".into(), Value::U32(128)),
            ("gemma3.embedding_length".into(), Value::U32(c.hidden as u32)),
            ("gemma3.block_count".into(), Value::U32(c.global.len() as u32)),
            ("gemma3.feed_forward_length".into(), Value::U32(c.ffn as u32)),
            ("gemma3.attention.head_count".into(), Value::U32(c.heads as u32)),
            ("gemma3.attention.head_count_kv".into(), Value::U32(c.kv_heads as u32)),
            ("gemma3.attention.key_length".into(), Value::U32(c.head_dim as u32)),
            ("gemma3.attention.value_length".into(), Value::U32(c.head_dim as u32)),
            ("gemma3.attention.layer_norm_rms_epsilon".into(), Value::F32(c.eps as f32)),
            ("gemma3.rope.freq_base".into(), Value::F32(c.theta_global as f32)),
            ("gemma3.attention.sliding_window".into(), Value::U32(c.window as u32)),
            (
                "gemma3.attention.sliding_window_pattern".into(),
                Value::Array(c.global.iter().map(|g| Value::Bool(!g)).collect()),
            ),
            ("tokenizer.ggml.model".into(), Value::String("llama".into())),
            ("tokenizer.ggml.pre".into(), Value::String("default".into())),
            ("tokenizer.ggml.tokens".into(), Value::Array(vocab.iter().map(|t| Value::String(t.0.clone())).collect())),
            ("tokenizer.ggml.scores".into(), Value::Array(vocab.iter().map(|t| Value::F32(t.1)).collect())),
            ("tokenizer.ggml.token_type".into(), Value::Array(vocab.iter().map(|t| Value::I32(t.2)).collect())),
            ("tokenizer.ggml.bos_token_id".into(), Value::U32(2)),
            ("tokenizer.ggml.eos_token_id".into(), Value::U32(1)),
            ("tokenizer.ggml.unknown_token_id".into(), Value::U32(3)),
            ("tokenizer.ggml.padding_token_id".into(), Value::U32(0)),
            ("tokenizer.ggml.add_bos_token".into(), Value::Bool(true)),
            ("tokenizer.ggml.add_space_prefix".into(), Value::Bool(false)),
        ]
    }

    pub fn write_gguf(&self, path: &Path, dtype: GgmlDType) {
        write_gguf_raw(path, &self.gguf_metadata(), &self.gguf_tensors(dtype));
    }

    /// The naive reference: logits `[t][vocab]` for `tokens` at positions 0.., computed in f64.
    /// With `use_window = false` the local layers see the whole context (to show the window matters).
    pub fn reference_logits(&self, tokens: &[u32], use_window: bool) -> Vec<Vec<f32>> {
        let c = &self.cfg;
        let (h, d) = (c.hidden, c.head_dim);
        let t = tokens.len();
        let emb = self.get("token_embd.weight");
        let scale = (h as f32).sqrt() as f64;
        let mut x: Vec<Vec<f64>> =
            tokens.iter().map(|&id| emb.row(id as usize).iter().map(|&v| v as f64 * scale).collect()).collect();
        let rms = |v: &[f64], w: &W| -> Vec<f64> {
            let ms = v.iter().map(|a| a * a).sum::<f64>() / v.len() as f64;
            let s = 1.0 / (ms + c.eps).sqrt();
            v.iter().zip(&w.data).map(|(a, &g)| a * s * g as f64).collect()
        };
        let matvec = |w: &W, v: &[f64]| -> Vec<f64> {
            (0..w.shape[0]).map(|r| w.row(r).iter().zip(v).map(|(&a, b)| a as f64 * b).sum()).collect()
        };
        // NeoX / half-split RoPE: dims i and i + d/2 rotate together.
        let rope = |v: &mut [f64], pos: usize, theta: f64| {
            for i in 0..d / 2 {
                let a = pos as f64 / theta.powf(2.0 * i as f64 / d as f64);
                let (x1, x2) = (v[i], v[i + d / 2]);
                v[i] = x1 * a.cos() - x2 * a.sin();
                v[i + d / 2] = x2 * a.cos() + x1 * a.sin();
            }
        };
        let gelu_tanh =
            |a: f64| 0.5 * a * (1.0 + ((2.0 / std::f64::consts::PI).sqrt() * (a + 0.044715 * a * a * a)).tanh());
        let group = c.heads / c.kv_heads;
        for (l, &global) in c.global.iter().enumerate() {
            let g = |s: &str| self.get(&format!("blk.{l}.{s}.weight"));
            let theta = if global { c.theta_global } else { 10_000.0 };
            let hs: Vec<Vec<f64>> = x.iter().map(|v| rms(v, g("attn_norm"))).collect();
            let mut qs: Vec<Vec<f64>> = hs.iter().map(|v| matvec(g("attn_q"), v)).collect();
            let mut ks: Vec<Vec<f64>> = hs.iter().map(|v| matvec(g("attn_k"), v)).collect();
            let vs: Vec<Vec<f64>> = hs.iter().map(|v| matvec(g("attn_v"), v)).collect();
            for p in 0..t {
                for hh in 0..c.heads {
                    let n = rms(&qs[p][hh * d..(hh + 1) * d], g("attn_q_norm"));
                    qs[p][hh * d..(hh + 1) * d].copy_from_slice(&n);
                    rope(&mut qs[p][hh * d..(hh + 1) * d], p, theta);
                }
                for hh in 0..c.kv_heads {
                    let n = rms(&ks[p][hh * d..(hh + 1) * d], g("attn_k_norm"));
                    ks[p][hh * d..(hh + 1) * d].copy_from_slice(&n);
                    rope(&mut ks[p][hh * d..(hh + 1) * d], p, theta);
                }
            }
            for p in 0..t {
                // Local layers: keys at p - window + 1 ..= p.
                let first = if global || !use_window { 0 } else { (p + 1).saturating_sub(c.window) };
                let att = reference_attention(&qs[p], &ks[first..=p], &vs[first..=p], c.heads, group, d);
                let o = rms(&matvec(g("attn_output"), &att), g("post_attention_norm"));
                for k in 0..h {
                    x[p][k] += o[k];
                }
                let hn = rms(&x[p], g("ffn_norm"));
                let gate = matvec(g("ffn_gate"), &hn);
                let up = matvec(g("ffn_up"), &hn);
                let act: Vec<f64> = gate.iter().zip(&up).map(|(&a, b)| gelu_tanh(a) * b).collect();
                let down = rms(&matvec(g("ffn_down"), &act), g("post_ffw_norm"));
                for k in 0..h {
                    x[p][k] += down[k];
                }
            }
        }
        let head = |v: &Vec<f64>| matvec(emb, &rms(v, self.get("output_norm.weight")));
        x.iter().map(|v| head(v).into_iter().map(|l| l as f32).collect()).collect()
    }
}
