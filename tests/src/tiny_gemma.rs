//! A tiny random Gemma 3 written by the tests themselves as GGUF, with a tiny SentencePiece-style
//! vocabulary, and its naive f64 reference forward (the sliding window applied per layer).

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};

use crate::reference::{add, gated_mlp, gelu_tanh, matvec, rms, to_f32, SelfAttention};
use crate::rng::Rng;
use crate::weights::{metadata, write_gguf, Dims, W};

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

impl TinyConfig {
    pub fn dims(&self) -> Dims {
        Dims {
            hidden: self.hidden,
            ffn: self.ffn,
            layers: self.global.len(),
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            context: 128,
            eps: self.eps,
            theta: self.theta_global,
        }
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
        let (h, d) = (cfg.hidden, cfg.head_dim);
        w.insert("token_embd.weight".into(), W::random(&mut rng, cfg.vocab, h, 0.2));
        for l in 0..cfg.global.len() {
            for (name, m) in cfg.dims().random_block(&mut rng, [0.5, 0.5, 0.5, 0.3, 0.4, 0.4, 0.3]) {
                w.insert(format!("blk.{l}.{name}.weight"), m);
            }
        }
        // Norm weights as the GGUF stores them (the `1 +` already folded in). Query/key norms are
        // large so that attention is sharp and the window visibly matters.
        for l in 0..cfg.global.len() {
            let mut norm = |name: &str, n, centre, spread| {
                w.insert(format!("blk.{l}.{name}.weight"), W::norm(&mut rng, n, centre, spread));
            };
            for name in ["attn_norm", "post_attention_norm", "ffn_norm", "post_ffw_norm"] {
                norm(name, h, 1.0, 0.2);
            }
            norm("attn_q_norm", d, 2.5, 0.5);
            norm("attn_k_norm", d, 2.5, 0.5);
        }
        w.insert("output_norm.weight".into(), W::norm(&mut rng, h, 1.0, 0.2));
        Self { cfg, w }
    }

    pub fn get(&self, name: &str) -> &W {
        &self.w[name]
    }

    /// GGUF tensors: matrices in `dtype`, norms in f32 (as llama.cpp writes them).
    pub fn gguf_tensors(&self, dtype: GgmlDType) -> Vec<(String, QTensor)> {
        let mut names: Vec<&String> = self.w.keys().collect();
        names.sort();
        names.into_iter().map(|n| (n.clone(), self.w[n].quantize(dtype))).collect()
    }

    /// GGUF metadata: `gemma3.*` hyper-parameters and the tiny SentencePiece vocabulary.
    pub fn gguf_metadata(&self) -> Vec<(String, Value)> {
        let c = &self.cfg;
        let vocab = tiny_vocab();
        let mut md = metadata([
            ("general.architecture", Value::String("gemma3".into())),
            ("general.name", Value::String("tiny-gemma".into())),
            ("gemma3.attention.sliding_window", Value::U32(c.window as u32)),
            (
                "gemma3.attention.sliding_window_pattern",
                Value::Array(c.global.iter().map(|g| Value::Bool(!g)).collect()),
            ),
            ("tokenizer.ggml.model", Value::String("llama".into())),
            ("tokenizer.ggml.pre", Value::String("default".into())),
            ("tokenizer.ggml.tokens", Value::Array(vocab.iter().map(|t| Value::String(t.0.clone())).collect())),
            ("tokenizer.ggml.scores", Value::Array(vocab.iter().map(|t| Value::F32(t.1)).collect())),
            ("tokenizer.ggml.token_type", Value::Array(vocab.iter().map(|t| Value::I32(t.2)).collect())),
            ("tokenizer.ggml.bos_token_id", Value::U32(2)),
            ("tokenizer.ggml.eos_token_id", Value::U32(1)),
            ("tokenizer.ggml.unknown_token_id", Value::U32(3)),
            ("tokenizer.ggml.padding_token_id", Value::U32(0)),
            ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
            ("tokenizer.ggml.add_space_prefix", Value::Bool(false)),
        ]);
        md.extend(c.dims().gguf_metadata("gemma3"));
        md
    }

    pub fn write_gguf(&self, path: &Path, dtype: GgmlDType) {
        write_gguf(path, &self.gguf_metadata(), &self.gguf_tensors(dtype));
    }

    /// The naive reference: logits `[t][vocab]` for `tokens` at positions 0.., computed in f64.
    /// With `use_window = false` the local layers see the whole context (to show the window matters).
    pub fn reference_logits(&self, tokens: &[u32], use_window: bool) -> Vec<Vec<f32>> {
        let c = &self.cfg;
        let emb = self.get("token_embd.weight");
        let scale = (c.hidden as f32).sqrt() as f64;
        let mut x: Vec<Vec<f64>> =
            tokens.iter().map(|&id| emb.row(id as usize).iter().map(|&v| v as f64 * scale).collect()).collect();
        for (l, &global) in c.global.iter().enumerate() {
            let g = |s: &str| self.get(&format!("blk.{l}.{s}.weight"));
            let attn = SelfAttention {
                q: g("attn_q"),
                k: g("attn_k"),
                v: g("attn_v"),
                o: g("attn_output"),
                heads: c.heads,
                kv_heads: c.kv_heads,
                head_dim: c.head_dim,
                theta: if global { c.theta_global } else { 10_000.0 },
                // Local layers: keys at p - window + 1 ..= p.
                window: (!global && use_window).then_some(c.window),
                qk_norms: Some((g("attn_q_norm"), g("attn_k_norm"), c.eps)),
            };
            let hs: Vec<Vec<f64>> = x.iter().map(|v| rms(v, g("attn_norm"), c.eps)).collect();
            for (xp, o) in x.iter_mut().zip(attn.forward(&hs)) {
                add(xp, &rms(&o, g("post_attention_norm"), c.eps));
                let hn = rms(xp, g("ffn_norm"), c.eps);
                let mlp = gated_mlp(g("ffn_gate"), g("ffn_up"), g("ffn_down"), &hn, gelu_tanh);
                add(xp, &rms(&mlp, g("post_ffw_norm"), c.eps));
            }
        }
        to_f32(x.iter().map(|v| matvec(emb, &rms(v, self.get("output_norm.weight"), c.eps))).collect())
    }
}
