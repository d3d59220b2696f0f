//! What an adapter's [`CausalLm::forward_batch`] is made of, so every family batches the same way:
//! check the batch, stack its tokens, run each layer's attention per sequence
//! ([`attend_batch`]), advance the states and hand each sequence its logits.
//!
//! A step's rows are the items' tokens in order: item 0's `t_0` rows, then item 1's, and so on.

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};
use crate::model::{CausalLm, Logits, ModelInfo, SeqStep};

/// Checks every item before anything runs, so a bad item leaves every state untouched: at least one
/// token, ids inside the vocabulary, a state with the model's layers and windows.
pub fn check_batch(batch: &[SeqStep<'_>], info: &ModelInfo) -> Result<()> {
    if batch.is_empty() {
        return Err(Error::Input("a batch needs at least one sequence".into()));
    }
    for (i, item) in batch.iter().enumerate() {
        let which = if batch.len() > 1 { format!("sequence {i}: ") } else { String::new() };
        if item.tokens.is_empty() {
            return Err(Error::Input(format!("{which}forward needs at least one token")));
        }
        if let Some(&bad) = item.tokens.iter().find(|&&id| id as usize >= info.vocab_size) {
            return Err(Error::Input(format!("{which}token id {bad} is outside the vocabulary ({})", info.vocab_size)));
        }
        let st = &item.state;
        if st.num_layers() != info.num_layers {
            return Err(Error::Input(format!(
                "{which}the state has {} layers, the model {}",
                st.num_layers(),
                info.num_layers
            )));
        }
        for (l, &want) in info.layer_windows.iter().enumerate() {
            if st.layer(l).window() != want {
                return Err(Error::Input(format!(
                    "{which}layer {l} of the state has window {:?}, the model {want:?} (build the state with new_state)",
                    st.layer(l).window()
                )));
            }
        }
        let l0 = st.layer(0);
        if l0.num_kv_heads() != info.num_kv_heads || l0.head_dim() != info.head_dim {
            return Err(Error::Input(format!(
                "{which}the state holds {} KV heads of {}, the model {} of {}",
                l0.num_kv_heads(),
                l0.head_dim(),
                info.num_kv_heads,
                info.head_dim
            )));
        }
    }
    Ok(())
}

/// Every item's tokens, stacked in row order.
pub fn stacked_tokens(batch: &[SeqStep<'_>]) -> Vec<u32> {
    batch.iter().flat_map(|s| s.tokens.iter().copied()).collect()
}

/// One layer's attention for a whole step: rows of `q` (`[rows, heads * head_dim]`) and `k`/`v`
/// (`[rows, kv_heads * head_dim]`), unrotated, belong to the items in order; each item's rows go
/// through its own state's layer `layer` (update, attention, its policy). Returns
/// `[rows, heads * head_dim]`.
pub fn attend_batch(
    layer: usize,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    batch: &mut [SeqStep<'_>],
    scale: f64,
) -> Result<Tensor> {
    let rows: usize = batch.iter().map(|s| s.tokens.len()).sum();
    let (qr, qw) = q.dims2()?;
    let (kr, kw) = k.dims2()?;
    if qr != rows || kr != rows || v.dims() != k.dims() {
        return Err(Error::Shape {
            op: "attend_batch",
            reason: format!("{rows} rows in the batch, q {:?}, k {:?}, v {:?}", q.dims(), k.dims(), v.dims()),
        });
    }
    let Some(first) = batch.first() else { return Err(Error::Input("empty batch".into())) };
    let d = first.state.layer(layer).head_dim();
    if d == 0 || qw % d != 0 || kw % d != 0 {
        return Err(Error::Shape { op: "attend_batch", reason: format!("widths {qw} and {kw} for head size {d}") });
    }
    let (heads, kv) = (qw / d, kw / d);
    if q.device().is_cpu() && batch.iter().all(|s| s.state.layer(layer).is_host()) {
        let host = |x: &Tensor| -> Result<Vec<f32>> { Ok(x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?) };
        let (q, k, v) = (host(q)?, host(k)?, host(v)?);
        let mut out = vec![0f32; rows * qw];
        // One task per sequence, each with its own rows: sequences run in parallel on the pool (a
        // single sequence parallelizes inside the kernel, over its KV heads).
        struct Task<'s, 'b> {
            item: &'s mut SeqStep<'b>,
            q: &'s [f32],
            k: &'s [f32],
            v: &'s [f32],
            out: &'s mut [f32],
            result: Result<()>,
        }
        let mut tasks = Vec::with_capacity(batch.len());
        let (mut start, mut rest) = (0, out.as_mut_slice());
        for item in batch.iter_mut() {
            let t = item.tokens.len();
            let (mine, tail) = std::mem::take(&mut rest).split_at_mut(t * qw);
            rest = tail;
            tasks.push(Task {
                q: &q[start * qw..(start + t) * qw],
                k: &k[start * kw..(start + t) * kw],
                v: &v[start * kw..(start + t) * kw],
                item,
                out: mine,
                result: Ok(()),
            });
            start += t;
        }
        let run = |_: usize, task: &mut Task<'_, '_>| {
            let positions = task.item.state.next_positions(task.item.tokens.len());
            let (l, policy) = task.item.state.layer_and_policy(layer);
            task.result =
                crate::attend::step_host(l, policy, task.q, task.k, task.v, &positions, heads, scale as f32, task.out);
        };
        if tasks.len() == 1 {
            run(0, &mut tasks[0]);
        } else {
            msrnn_kernels::pool::for_each_mut(&mut tasks, &run);
        }
        for task in tasks {
            task.result?;
        }
        return Ok(Tensor::from_vec(out, (rows, qw), &Device::Cpu)?);
    }
    let mut outs = Vec::with_capacity(batch.len());
    let mut start = 0;
    for item in batch.iter_mut() {
        let t = item.tokens.len();
        let head_major = |x: &Tensor, n: usize| -> Result<Tensor> {
            Ok(x.narrow(0, start, t)?.reshape((t, n, d))?.transpose(0, 1)?.contiguous()?)
        };
        let positions = item.state.next_positions(t);
        let y = item.state.attend(
            layer,
            &head_major(q, heads)?,
            &head_major(k, kv)?,
            &head_major(v, kv)?,
            &positions,
            scale,
        )?;
        outs.push(y.transpose(0, 1)?.reshape((t, qw))?);
        start += t;
    }
    Ok(Tensor::cat(&outs, 0)?)
}

/// The rows whose logits the items want, and how many belong to each item.
pub fn logit_rows(batch: &[SeqStep<'_>]) -> (Vec<u32>, Vec<usize>) {
    let (mut rows, mut counts) = (Vec::new(), Vec::with_capacity(batch.len()));
    let mut start = 0u32;
    for item in batch {
        let t = item.tokens.len() as u32;
        match item.logits {
            Logits::All => rows.extend(start..start + t),
            Logits::Last => rows.push(start + t - 1),
        }
        counts.push(match item.logits {
            Logits::All => t as usize,
            Logits::Last => 1,
        });
        start += t;
    }
    (rows, counts)
}

/// Ends a step once every layer has attended: advances each state past its tokens.
pub fn advance(batch: &mut [SeqStep<'_>]) {
    for item in batch.iter_mut() {
        item.state.advance(item.tokens.len());
    }
}

/// The hidden rows the head needs (`x` is `[rows, hidden]`), gathered only when some rows are
/// not wanted.
pub fn select_rows(x: &Tensor, rows: &[u32]) -> Result<Tensor> {
    if rows.len() == x.dim(0)? {
        return Ok(x.clone());
    }
    Ok(x.index_select(&Tensor::new(rows, x.device())?, 0)?)
}

/// Cuts the head's output (`[selected rows, vocab]`) into one f32 tensor per item.
pub fn split_logits(logits: &Tensor, counts: &[usize]) -> Result<Vec<Tensor>> {
    let logits = logits.to_dtype(DType::F32)?;
    if counts.len() == 1 {
        return Ok(vec![logits]);
    }
    let mut out = Vec::with_capacity(counts.len());
    let mut start = 0;
    for &n in counts {
        out.push(logits.narrow(0, start, n)?);
        start += n;
    }
    Ok(out)
}

/// Feeds the same `tokens` to every state in `states` as one batch and returns their logits (a
/// convenience for callers that run a grid of policies over one text).
pub fn forward_all(
    model: &dyn CausalLm,
    tokens: &[u32],
    states: &mut [&mut crate::MsrnnState],
    logits: Logits,
) -> Result<Vec<Tensor>> {
    let mut batch: Vec<SeqStep<'_>> = states.iter_mut().map(|s| SeqStep::new(tokens, s, logits)).collect();
    model.forward_batch(&mut batch)
}
