//! One layer's step of the multi-state RNN: update, attend, compress.

use candle_core::{DType, Tensor, D};

use crate::error::{Error, Result};
use crate::policy::{validate, Observation, Policy, Rows};
use crate::state::LayerState;

/// Runs one layer's step, following the paper's reference order:
///
/// 1. **update**: write the new keys/values (already rotated at `positions`) into free slots;
/// 2. **attend**: `softmax(q K^T * scale + mask) V` over every live slot, so over at most `C + t`
///    entries, with a causal mask inside the chunk and the layer's own sliding window if it has one;
///    grouped-query attention runs per KV head without repeating K/V;
/// 3. **compress**: if more than `C` slots are live (or the policy wants every step), the policy sees
///    the probability rows it asked for and its decision, once validated, frees slots.
///
/// Shapes: `q` is `[num_heads, t, head_dim]`, `k`/`v` are `[num_kv_heads, t, head_dim]`, query head
/// `h` reads KV head `h / (num_heads / num_kv_heads)` (LLaMA's layout). Returns `[num_heads, t, head_dim]`.
/// On error nothing is evicted; the new tokens stay written.
pub fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    positions: &[u64],
    layer: &mut LayerState,
    policy: &mut dyn Policy,
    scale: f64,
) -> Result<Tensor> {
    let (n_heads, t, hd) = q.dims3()?;
    let (n_kv, tk, hdk) = k.dims3()?;
    let (s_kv, _, _) = layer.k.dims3()?;
    if tk != t || hdk != hd || v.dims() != k.dims() || positions.len() != t || t == 0 {
        return Err(Error::Shape {
            op: "attend",
            reason: format!("q {:?}, k {:?}, v {:?}, {} positions", q.dims(), k.dims(), v.dims(), positions.len()),
        });
    }
    if n_kv != s_kv || n_kv == 0 || n_heads % n_kv != 0 {
        return Err(Error::Shape {
            op: "attend",
            reason: format!("{n_heads} query heads cannot share {n_kv} KV heads (state has {s_kv})"),
        });
    }
    let group = n_heads / n_kv;

    // 1. update
    layer.drop_outside_window(positions[0]);
    let new_slots = layer.write(&k.to_dtype(layer.k.dtype())?, &v.to_dtype(layer.k.dtype())?, positions)?;
    let hi = layer.high;

    // 2. attend
    let keys = layer.k.narrow(1, 0, hi)?;
    let vals = layer.v.narrow(1, 0, hi)?;
    let qg = q.to_dtype(keys.dtype())?.contiguous()?.reshape((n_kv, group * t, hd))?;
    let scores = (qg.matmul(&keys.t()?)? * scale)?.reshape((n_heads, t, hi))?;
    let scores = match attention_mask(layer, positions, hi) {
        Some(mask) => scores.broadcast_add(&Tensor::from_vec(mask, (t, hi), q.device())?.to_dtype(scores.dtype())?)?,
        None => scores,
    };
    let probs = candle_nn::ops::softmax_last_dim(&scores.to_dtype(DType::F32)?)?;
    let out = probs
        .to_dtype(vals.dtype())?
        .reshape((n_kv, group * t, hi))?
        .matmul(&vals)?
        .reshape((n_heads, t, hd))?
        .to_dtype(q.dtype())?;
    // What the next query cannot see through the model's window is gone for good: drop it before
    // the policy spends budget on it.
    layer.drop_outside_window(positions[t - 1] + 1);

    // 3. compress
    let budget = layer.capacity.budget();
    let needs = policy.needs();
    if layer.n_live <= budget && !needs.every_step {
        return Ok(out);
    }
    let hi = layer.high;
    let (rows, probs_host) = match needs.rows {
        Rows::None => (0, Vec::new()),
        Rows::Last => (1, probs.narrow(1, t - 1, 1)?.narrow(2, 0, hi)?.flatten_all()?.to_vec1::<f32>()?),
        Rows::All => (t, probs.narrow(2, 0, hi)?.transpose(0, 1)?.flatten_all()?.to_vec1::<f32>()?),
    };
    let keys = if needs.keys {
        layer.k.narrow(1, 0, hi)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?
    } else {
        Vec::new()
    };
    let norms = if needs.key_norms {
        layer
            .k
            .narrow(1, 0, hi)?
            .to_dtype(DType::F32)?
            .sqr()?
            .sum(D::Minus1)?
            .sqrt()?
            .flatten_all()?
            .to_vec1::<f32>()?
    } else {
        Vec::new()
    };
    // A 1-token model window can drop a new token already; keep the list to live slots.
    let new_live: Vec<usize> = new_slots.into_iter().filter(|&s| layer.live[s]).collect();
    let obs = Observation {
        layer: layer.index,
        tokens_seen: positions[t - 1] + 1,
        num_slots: hi,
        positions: &layer.positions[..hi],
        live: &layer.live[..hi],
        new_slots: &new_live,
        num_heads: n_heads,
        num_kv_heads: n_kv,
        head_dim: hd,
        rows,
        probs: &probs_host,
        key_norms: &norms,
        keys: &keys,
    };
    let decision = policy.step(&obs, budget).map_err(|e| Error::from_policy(e, policy.name(), obs.layer))?;
    let evict = validate(decision, &obs, budget).map_err(|e| Error::from_policy(e, policy.name(), obs.layer))?;
    if !evict.is_empty() {
        layer.evict(&evict);
    }
    Ok(out)
}

/// Additive mask `[t, hi]` (0 or -inf), or `None` when every slot in range is visible to the single
/// query (the common decode step: no mask to build or add).
fn attention_mask(layer: &LayerState, positions: &[u64], hi: usize) -> Option<Vec<f32>> {
    let t = positions.len();
    let all_live = layer.n_live == hi;
    if t == 1 && all_live {
        // The window drop before the write guarantees every live key is visible to this query.
        return None;
    }
    let mut mask = vec![f32::NEG_INFINITY; t * hi];
    for (r, &p) in positions.iter().enumerate() {
        let row = &mut mask[r * hi..(r + 1) * hi];
        for ((m, &ps), &live) in row.iter_mut().zip(&layer.positions[..hi]).zip(&layer.live[..hi]) {
            if live && ps <= p && layer.window.is_none_or(|w| p - ps < w as u64) {
                *m = 0.0;
            }
        }
    }
    Some(mask)
}
