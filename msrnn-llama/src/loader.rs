//! Opening a model: a `.gguf` file, or a Hugging Face directory (or one of its `.safetensors`
//! files) with `config.json`, `*.safetensors` and `tokenizer.json`; and the family's entry in the
//! registry the CLI loads through.

use std::path::Path;

use msrnn_modelkit::gguf::{self, Metadata};
use msrnn_modelkit::{hf_dir, Error, Family, LoadOptions, Model, NameMap, Result, Tokenizer, Weights};

use crate::config::LlamaConfig;
use crate::model::Llama;

/// The family's name and GGUF architecture.
pub const FAMILY: &str = "llama";

/// The Hugging Face names of the tensors the model asks for by GGUF name.
pub const HF_NAMES: NameMap = &[
    ("token_embd", "model.embed_tokens"),
    ("output_norm", "model.norm"),
    ("output", "lm_head"),
    ("blk.#.attn_norm", "model.layers.#.input_layernorm"),
    ("blk.#.attn_q", "model.layers.#.self_attn.q_proj"),
    ("blk.#.attn_k", "model.layers.#.self_attn.k_proj"),
    ("blk.#.attn_v", "model.layers.#.self_attn.v_proj"),
    ("blk.#.attn_output", "model.layers.#.self_attn.o_proj"),
    ("blk.#.ffn_norm", "model.layers.#.post_attention_layernorm"),
    ("blk.#.ffn_gate", "model.layers.#.mlp.gate_proj"),
    ("blk.#.ffn_up", "model.layers.#.mlp.up_proj"),
    ("blk.#.ffn_down", "model.layers.#.mlp.down_proj"),
];

msrnn_modelkit::inventory::submit! {
    Family {
        name: FAMILY,
        architectures: &[FAMILY],
        model_types: &[FAMILY],
        load: load_boxed,
        baseline: BASELINE,
    }
}

#[cfg(feature = "candle-baseline")]
const BASELINE: Option<&'static dyn msrnn_modelkit::Baseline> = Some(&crate::baseline::CandleLlama);
#[cfg(not(feature = "candle-baseline"))]
const BASELINE: Option<&'static dyn msrnn_modelkit::Baseline> = None;

fn load_boxed(path: &Path, opts: &LoadOptions) -> Result<Box<dyn Model>> {
    Ok(Box::new(load(path, opts)?))
}

pub(crate) fn load(path: &Path, opts: &LoadOptions) -> Result<Llama> {
    let _span = tracing::info_span!("load", path = %path.display(), weights = %opts.weights).entered();
    if let Some(dir) = hf_dir(path)? {
        let config_path = dir.join("config.json");
        let json = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
        let cfg = LlamaConfig::from_hf_json(&config_path, &json)?;
        let weights = Weights::safetensors(&dir, HF_NAMES, opts)?;
        let tokenizer = Tokenizer::from_hf_dir(&dir)?;
        return Llama::from_weights(&weights, cfg, tokenizer);
    }
    let (file, content) = gguf::open(path, Some(FAMILY))?;
    let cfg = LlamaConfig::from_gguf(path, &content)?;
    let tokenizer = Tokenizer::from_gguf(&Metadata { path, ct: &content })?;
    Llama::from_weights(&Weights::gguf(path, content, file, opts)?, cfg, tokenizer)
}
