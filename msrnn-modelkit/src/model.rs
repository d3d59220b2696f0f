//! The face of a loaded model, whatever its family: what the CLI and the tools use beyond
//! [`CausalLm`], and the input checks every `forward` starts with.

use std::fmt;

use candle_core::{DType, Tensor};
use msrnn_core::{CausalLm, ModelInfo, MsrnnState};

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
}

/// `Q8_0`, or `Q4_1 (head Q8_0)` when the head is held differently.
impl fmt::Display for WeightKinds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.matmul == self.head {
            f.write_str(&self.matmul)
        } else {
            write!(f, "{} (head {})", self.matmul, self.head)
        }
    }
}

/// The input checks every adapter's `forward` starts with: at least one token, ids inside the
/// vocabulary, a state built for this model (its layer count, and each layer's model window as
/// `info` declares it). Errors, never panics.
pub fn check_input(tokens: &[u32], info: &ModelInfo, state: &MsrnnState) -> msrnn_core::Result<()> {
    use msrnn_core::Error::Input;
    if tokens.is_empty() {
        return Err(Input("forward needs at least one token".into()));
    }
    let vocab = info.vocab_size;
    if let Some(&bad) = tokens.iter().find(|&&id| id as usize >= vocab) {
        return Err(Input(format!("token id {bad} is outside the vocabulary ({vocab})")));
    }
    if state.num_layers() != info.num_layers {
        return Err(Input(format!("the state has {} layers, the model {}", state.num_layers(), info.num_layers)));
    }
    for (l, &want) in info.layer_windows.iter().enumerate() {
        let got = state.layer(l).window();
        if got != want {
            return Err(Input(format!(
                "layer {l} of the state has window {got:?}, the model {want:?} (build the state with new_state)"
            )));
        }
    }
    Ok(())
}

/// What every adapter's `forward` returns: the final norm and the output head applied to the last
/// position of `x` (`[t, hidden]`), or to all of them with `all_logits`, as f32 logits.
pub fn logits(x: &Tensor, all_logits: bool, norm: &RmsNorm, head: &Linear) -> candle_core::Result<Tensor> {
    let t = x.dim(0)?;
    let x = if all_logits { x.clone() } else { x.narrow(0, t - 1, 1)? };
    head.forward(&norm.forward(&x)?)?.to_dtype(DType::F32)
}
