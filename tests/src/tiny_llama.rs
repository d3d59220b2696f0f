//! A tiny random LLaMA written by the tests themselves, as GGUF and as safetensors, with a
//! byte-level BPE vocabulary, and its naive f64 reference forward.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::Tensor;

use crate::reference::{add, gated_mlp, matvec, rms, silu, to_f32, SelfAttention};
use crate::rng::Rng;
use crate::weights::{metadata, write_gguf, Dims, W};

pub const SPECIALS: [&str; 3] = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"];
/// Merges of the tiny vocabulary, in rank order (byte-level strings: `Ġ` is a space).
/// `2 0` is there so that the digit split shows: without it "2024" would start with the token "20".
pub const MERGES: [(&str, &str); 8] =
    [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("l", "l"), ("he", "ll"), ("hell", "o"), ("Ġ", "w"), ("2", "0")];

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
    tiny_vocab().iter().position(|t| t == s).unwrap_or_else(|| panic!("no token {s:?}")) as u32
}

/// The `tokenizer.ggml.*` metadata of the tiny byte-level BPE vocabulary (SmolLM2's pre-tokenizer;
/// BOS `<|im_start|>` = 1, EOS `<|im_end|>` = 2, no BOS added).
pub fn bpe_tokenizer_metadata() -> Vec<(String, Value)> {
    let vocab = tiny_vocab();
    let types: Vec<Value> = (0..vocab.len()).map(|i| Value::I32(if i < SPECIALS.len() { 3 } else { 1 })).collect();
    metadata([
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", Value::Array(vocab.into_iter().map(Value::String).collect())),
        ("tokenizer.ggml.token_type", Value::Array(types)),
        (
            "tokenizer.ggml.merges",
            Value::Array(MERGES.iter().map(|(a, b)| Value::String(format!("{a} {b}"))).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
    ])
}

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

impl TinyConfig {
    pub fn dims(&self) -> Dims {
        Dims {
            hidden: self.hidden,
            ffn: self.ffn,
            layers: self.layers,
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            context: self.max_context,
            eps: self.eps,
            theta: self.theta,
        }
    }
}

/// The model's weights by Hugging Face name.
pub struct TinyLlama {
    pub cfg: TinyConfig,
    pub w: HashMap<String, W>,
}

/// GGUF name -> Hugging Face name of each block tensor.
const BLOCK_NAMES: [(&str, &str); 9] = [
    ("attn_q", "self_attn.q_proj"),
    ("attn_k", "self_attn.k_proj"),
    ("attn_v", "self_attn.v_proj"),
    ("attn_output", "self_attn.o_proj"),
    ("ffn_gate", "mlp.gate_proj"),
    ("ffn_up", "mlp.up_proj"),
    ("ffn_down", "mlp.down_proj"),
    ("attn_norm", "input_layernorm"),
    ("ffn_norm", "post_attention_layernorm"),
];

/// The Hugging Face name of block `l`'s tensor `gguf`.
fn hf_name(l: usize, gguf: &str) -> String {
    let hf = BLOCK_NAMES.iter().find(|(g, _)| *g == gguf).expect("a block tensor").1;
    format!("model.layers.{l}.{hf}.weight")
}

impl TinyLlama {
    pub fn random(cfg: TinyConfig, seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut w = HashMap::new();
        let h = cfg.hidden;
        w.insert("model.embed_tokens.weight".into(), W::random(&mut rng, cfg.vocab, h, 1.0));
        if !cfg.tied {
            w.insert("lm_head.weight".into(), W::random(&mut rng, cfg.vocab, h, 0.3));
        }
        for l in 0..cfg.layers {
            // Large enough Q/K scales that attention is far from uniform and positions matter.
            for (gguf, m) in cfg.dims().random_block(&mut rng, [0.5, 0.5, 0.3, 0.3, 0.3, 0.3, 0.3]) {
                w.insert(hf_name(l, gguf), m);
            }
        }
        for l in 0..cfg.layers {
            for name in ["input_layernorm", "post_attention_layernorm"] {
                w.insert(format!("model.layers.{l}.{name}.weight"), W::norm(&mut rng, h, 1.0, 0.2));
            }
        }
        w.insert("model.norm.weight".into(), W::norm(&mut rng, h, 1.0, 0.2));
        Self { cfg, w }
    }

    pub fn get(&self, name: &str) -> &W {
        &self.w[name]
    }

    /// `config.json` + `model.safetensors` (+ `tokenizer.json` when given).
    pub fn write_safetensors(&self, dir: &Path, tokenizer_json: Option<&str>) {
        std::fs::create_dir_all(dir).unwrap();
        let c = &self.cfg;
        let config = format!(
            r#"{{
  "architectures": ["LlamaForCausalLM"],
  "model_type": "llama",
  "hidden_size": {},
  "intermediate_size": {},
  "num_hidden_layers": {},
  "num_attention_heads": {},
  "num_key_value_heads": {},
  "vocab_size": {},
  "max_position_embeddings": {},
  "rope_theta": {:?},
  "rms_norm_eps": {:e},
  "tie_word_embeddings": {},
  "hidden_act": "silu",
  "bos_token_id": 1,
  "eos_token_id": 2,
  "rope_scaling": null,
  "torch_dtype": "float32"
}}"#,
            c.hidden, c.ffn, c.layers, c.heads, c.kv_heads, c.vocab, c.max_context, c.theta, c.eps, c.tied
        );
        std::fs::write(dir.join("config.json"), config).unwrap();
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
        let mut out = vec![
            ("token_embd.weight".to_string(), self.get("model.embed_tokens.weight").quantize(dtype)),
            ("output_norm.weight".to_string(), self.get("model.norm.weight").quantize(dtype)),
        ];
        if !c.tied {
            out.push(("output.weight".into(), self.get("lm_head.weight").quantize(dtype)));
        }
        for l in 0..c.layers {
            for (gguf, _) in BLOCK_NAMES {
                let mut w = self.get(&hf_name(l, gguf)).clone();
                if permute_qk && gguf == "attn_q" {
                    w = w.permute_rows(c.heads, c.head_dim);
                } else if permute_qk && gguf == "attn_k" {
                    w = w.permute_rows(c.kv_heads, c.head_dim);
                }
                out.push((format!("blk.{l}.{gguf}.weight"), w.quantize(dtype)));
            }
        }
        out
    }

    /// GGUF metadata: `{arch}.*` hyper-parameters (as LLaMA names them) and the tiny byte-level
    /// BPE tokenizer.
    pub fn gguf_metadata(&self, arch: &str) -> Vec<(String, Value)> {
        let c = &self.cfg;
        let mut md = metadata([
            ("general.architecture", Value::String(arch.into())),
            ("general.name", Value::String("tiny-llama".into())),
            ("llama.rope.dimension_count", Value::U32(c.head_dim as u32)),
            ("llama.vocab_size", Value::U32(c.vocab as u32)),
        ]);
        md.extend(c.dims().gguf_metadata("llama"));
        md.extend(bpe_tokenizer_metadata());
        md
    }

    pub fn write_gguf(&self, path: &Path, dtype: GgmlDType, permute_qk: bool) {
        write_gguf(path, &self.gguf_metadata("llama"), &self.gguf_tensors(dtype, permute_qk));
    }

    /// The naive reference: logits `[t][vocab]` for `tokens` at positions 0.., computed in f64.
    pub fn reference_logits(&self, tokens: &[u32]) -> Vec<Vec<f32>> {
        let c = &self.cfg;
        let emb = self.get("model.embed_tokens.weight");
        let mut x: Vec<Vec<f64>> =
            tokens.iter().map(|&id| emb.row(id as usize).iter().map(|&v| v as f64).collect()).collect();
        for l in 0..c.layers {
            let g = |s: &str| self.get(&format!("model.layers.{l}.{s}.weight"));
            let attn = SelfAttention {
                q: g("self_attn.q_proj"),
                k: g("self_attn.k_proj"),
                v: g("self_attn.v_proj"),
                o: g("self_attn.o_proj"),
                heads: c.heads,
                kv_heads: c.kv_heads,
                head_dim: c.head_dim,
                theta: c.theta,
                window: None,
                qk_norms: None,
            };
            let hs: Vec<Vec<f64>> = x.iter().map(|v| rms(v, g("input_layernorm"), c.eps)).collect();
            for (xp, o) in x.iter_mut().zip(attn.forward(&hs)) {
                add(xp, &o);
                let hn = rms(xp, g("post_attention_layernorm"), c.eps);
                add(xp, &gated_mlp(g("mlp.gate_proj"), g("mlp.up_proj"), g("mlp.down_proj"), &hn, silu));
            }
        }
        let head = if c.tied { emb } else { self.get("lm_head.weight") };
        to_f32(x.iter().map(|v| matvec(head, &rms(v, self.get("model.norm.weight"), c.eps))).collect())
    }
}
