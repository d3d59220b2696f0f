//! The face of a loaded model, whatever its family: what the CLI and the tools use beyond
//! [`CausalLm`], and the input checks every `forward` starts with.

use std::fmt;

use candle_core::{DType, Tensor};
use msrnn_core::{CausalLm, ModelInfo, SeqStep};

use crate::linear::Linear;
use crate::norm::RmsNorm;
use crate::tokenizer::Tokenizer;
use crate::weights::WeightFormat;

/// A loaded model: [`CausalLm`] plus its tokenizer and how its weights are held.
pub trait Model: CausalLm + Send + Sync {
    fn tokenizer(&self) -> &Tokenizer;
    /// The format asked for at load ([`crate::LoadOptions::weights`]).
    fn weight_format(&self) -> WeightFormat;
    /// How the matrices are actually held (a format can leave some matrices as they were).
    fn weight_kinds(&self) -> WeightKinds;
}

/// How a model's block matrices and its output head are held (`Q8_0`, `Q4_1`, `f32`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WeightKinds {
    pub matmul: String,
    pub head: String,
}

impl WeightKinds {
    pub fn new(matmul: impl Into<String>, head: impl Into<String>) -> Self {
        Self { matmul: matmul.into(), head: head.into() }
    }

    /// From the kind of every matrix of the layers: the distinct ones in order of appearance, joined by `+`
    /// (`Q5_0+Q8_0+Q4_K+Q6_K` for a Q4_K_M file).
    pub fn of(matmuls: impl IntoIterator<Item = String>, head: impl Into<String>) -> Self {
        let mut seen: Vec<String> = Vec::new();
        for k in matmuls {
            if !seen.contains(&k) {
                seen.push(k);
            }
        }
        Self::new(seen.join("+"), head)
    }
}

/// `Q8_0`, or `Q4_1 (head Q8_0)` when the head is held differently, or `Q5_0+Q4_K+Q6_K (head Q8_0)` for a mix.
impl fmt::Display for WeightKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.matmul == self.head {
            f.write_str(&self.matmul)
        } else {
            write!(f, "{} (head {})", self.matmul, self.head)
        }
    }
}

/// What every adapter's `forward_batch` starts with: checks every sequence (tokens, vocabulary, a
/// state built for this model, its layers' model windows) before anything runs, and returns all
/// tokens stacked in row order.
pub fn batch_tokens(batch: &[SeqStep<'_>], info: &ModelInfo) -> msrnn_core::Result<Vec<u32>> {
    msrnn_core::batch::check_batch(batch, info)?;
    Ok(msrnn_core::batch::stacked_tokens(batch))
}

/// What every adapter's `forward_batch` ends with once all layers ran on `x` (`[rows, hidden]`):
/// advances the states, applies the final norm and the head to the rows whose logits the sequences
/// asked for (only those), and cuts the f32 logits per sequence.
pub fn finish_batch(
    x: &Tensor,
    batch: &mut [SeqStep<'_>],
    norm: &RmsNorm,
    head: &Linear,
) -> msrnn_core::Result<Vec<Tensor>> {
    use msrnn_core::batch;
    batch::advance(batch);
    let (rows, counts) = batch::logit_rows(batch);
    let logits = head.forward(&norm.forward(&batch::select_rows(x, &rows)?)?)?.to_dtype(DType::F32)?;
    batch::split_logits(&logits, &counts)
}
