//! One layer's step of the multi-state RNN: update, attend, compress.
//!
//! Two paths share the update and compress logic: host buffers go through `msrnn-kernels`' fused
//! CPU attention (grouped-query attention without repeating K/V, the mask from slot positions, the
//! probability rows the policy asked for written straight into its buffer); candle tensors on other
//! devices go through candle's ops.

use candle_core::{DType, Tensor};
use msrnn_kernels::attention::{attention_with, KeyAngles, Sink, Step};
use msrnn_kernels::rope::{block_angles, rotate_row};

use crate::error::{Error, Result};
use crate::policy::{validate, Needs, Observation, Policy, Rows};
use crate::positions::Positions;
use crate::state::{Kv, LayerState};

/// Runs one layer's step, following the paper's reference order:
///
/// 1. **update**: write the new keys/values into free slots (keys rotated at their positions first
///    in [`Positions::Absolute`] mode, kept unrotated in [`Positions::Cache`] mode);
/// 2. **attend**: `softmax(q K^T * scale + mask) V` over every live slot, so over at most `C + t`
///    entries, with a causal mask inside the chunk and the layer's own sliding window if it has one;
///    grouped-query attention runs per KV head without repeating K/V;
/// 3. **compress**: if more than `C` slots are live (or the policy wants every step), the policy sees
///    the probability rows it asked for and its decision, once validated, frees slots.
///
/// Shapes: `q` is `[num_heads, t, head_dim]`, `k`/`v` are `[num_kv_heads, t, head_dim]`, query head
/// `h` reads KV head `h / (num_heads / num_kv_heads)` (LLaMA's layout); queries and keys unrotated
/// when the layer has a rotary embedding. Returns `[num_heads, t, head_dim]`. On error nothing is
/// evicted; the new tokens stay written.
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
    if tk != t || hdk != hd || v.dims() != k.dims() || positions.len() != t || t == 0 {
        return Err(Error::Shape {
            op: "attend",
            reason: format!("q {:?}, k {:?}, v {:?}, {} positions", q.dims(), k.dims(), v.dims(), positions.len()),
        });
    }
    check_heads(layer, n_heads, n_kv, hd)?;
    check_policy_fits(layer, policy)?;
    if !layer.is_host() {
        return step_device(layer, policy, q, k, v, positions, scale);
    }
    let rows = |x: &Tensor| -> Result<Vec<f32>> {
        Ok(x.to_dtype(DType::F32)?.transpose(0, 1)?.contiguous()?.flatten_all()?.to_vec1::<f32>()?)
    };
    let mut out = vec![0f32; t * n_heads * hd];
    step_host(layer, policy, &rows(q)?, &rows(k)?, &rows(v)?, positions, n_heads, scale as f32, &mut out)?;
    Ok(Tensor::from_vec(out, (t, n_heads, hd), q.device())?.transpose(0, 1)?.contiguous()?.to_dtype(q.dtype())?)
}

/// A per-head policy needs a per-head layer and a per-layer policy a shared one: the observation's
/// layout and the decision's meaning differ.
fn check_policy_fits(layer: &LayerState, policy: &dyn Policy) -> Result<()> {
    if policy.head_capacity().is_some() == layer.is_per_head() {
        return Ok(());
    }
    let (policy_kind, layer_kind) = if layer.is_per_head() {
        ("keeps one set of tokens for all KV heads", "per-head")
    } else {
        ("decides per KV head", "shared by its KV heads (build it with LayerState::per_head)")
    };
    Err(Error::Input(format!("policy `{}` {policy_kind}, but layer {} is {layer_kind}", policy.name(), layer.index)))
}

fn check_heads(layer: &LayerState, n_heads: usize, n_kv: usize, hd: usize) -> Result<()> {
    if n_kv != layer.num_kv_heads || hd != layer.head_dim || n_kv == 0 || !n_heads.is_multiple_of(n_kv) {
        return Err(Error::Shape {
            op: "attend",
            reason: format!(
                "{n_heads} query heads cannot share {n_kv} KV heads of size {hd} in a state of {} KV heads of size {}",
                layer.num_kv_heads, layer.head_dim
            ),
        });
    }
    Ok(())
}

/// The host path on token-major rows: `q` `[t, num_heads * head_dim]`, `k`/`v` `[t, kv_heads *
/// head_dim]`, `out` `[t, num_heads * head_dim]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_host(
    layer: &mut LayerState,
    policy: &mut dyn Policy,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    positions: &[u64],
    n_heads: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let t = positions.len();
    let (g, d) = (layer.num_kv_heads, layer.head_dim);
    let (qw, kw) = (n_heads * d, g * d);
    if t == 0 || q.len() != t * qw || k.len() != t * kw || v.len() != t * kw || out.len() != t * qw {
        return Err(Error::Shape {
            op: "attend",
            reason: format!(
                "{t} tokens: {} query, {} key, {} value, {} output values",
                q.len(),
                k.len(),
                v.len(),
                out.len()
            ),
        });
    }
    check_heads(layer, n_heads, g, d)?;
    check_policy_fits(layer, policy)?;
    if layer.is_per_head() {
        return step_heads(layer, policy, q, k, v, positions, n_heads, scale, out);
    }
    let needs = policy.needs();
    let rows_for = |l: &LayerState| if asked(l, &needs, 0) { rows_of(needs.rows, positions.len()) } else { 0 };
    let (new_slots, probs, prob_rows, hi) = update_attend(layer, q, k, v, positions, n_heads, scale, out, &rows_for)?;

    // 3. compress
    compress(layer, policy, probs, prob_rows, hi, &new_slots, positions[t - 1] + 1, n_heads)
}

/// Whether the policy is called after this step: the layer is over budget (with `extra` tokens not
/// yet written), or the policy asked for every step.
fn asked(layer: &LayerState, needs: &Needs, extra: usize) -> bool {
    needs.every_step || layer.over_budget(extra)
}

/// Query rows of probabilities a policy's [`Rows`] asks for, for a chunk of `t` tokens.
fn rows_of(rows: Rows, t: usize) -> usize {
    match rows {
        Rows::None => 0,
        Rows::Last => 1,
        Rows::All => t,
    }
}

/// Steps 1 and 2 of [`attend`] on a layer's own slots (token-major rows as [`step_host`] takes
/// them): writes the new tokens, attends, and drops what the model's window hides. Returns the new
/// tokens' slots, the probability rows `[rows, num_heads, hi]` that `rows_for` asked for (decided
/// once the new tokens are in), their count and `hi`.
#[allow(clippy::too_many_arguments)]
fn update_attend(
    layer: &mut LayerState,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    positions: &[u64],
    n_heads: usize,
    scale: f32,
    out: &mut [f32],
    rows_for: &dyn Fn(&LayerState) -> usize,
) -> Result<(Vec<usize>, Vec<f32>, usize, usize)> {
    let t = positions.len();
    let (g, d) = (layer.num_kv_heads, layer.head_dim);
    let (qw, kw) = (n_heads * d, g * d);

    // 1. update
    layer.drop_outside_window(positions[0]);
    let new_slots = layer.alloc(positions)?;
    let mut qr = q.to_vec();
    let rotated_keys = match (&layer.rope, layer.mode) {
        (Some(rope), Positions::Absolute) => {
            let (cos, sin) = rope.angles(positions);
            let mut kr = k.to_vec();
            rope.rotate_rows(&mut kr, kw, g, &cos, &sin);
            rope.rotate_rows(&mut qr, qw, n_heads, &cos, &sin);
            Some(kr)
        }
        _ => None,
    };
    let keys_in = rotated_keys.as_deref().unwrap_or(k);
    for (i, &s) in new_slots.iter().enumerate() {
        layer.write_host(s, &keys_in[i * kw..][..kw], &v[i * kw..][..kw]);
    }
    let angles = match (&layer.rope, layer.mode) {
        (Some(_), Positions::Cache) => Some(rank_angles(layer, &new_slots, &mut qr, n_heads)),
        _ => None,
    };

    // 2. attend
    let hi = layer.high;
    let prob_rows = rows_for(layer);
    let mut probs = vec![0f32; prob_rows * n_heads * hi];
    {
        let Kv::Host { k: keys, v: vals } = &layer.kv else { unreachable!("host step on a device state") };
        let style = layer.rope.as_ref().map(|r| r.style());
        let key_angles = match (&angles, style) {
            (Some((cos, sin)), Some(style)) => Some(KeyAngles { cos, sin, style }),
            _ => None,
        };
        let step = Step {
            q: &qr,
            q_stride: qw,
            q_pos: positions,
            k: keys.view(),
            v: vals.view(),
            slots: layer.num_slots(),
            hi,
            slot_pos: &layer.positions,
            live: &layer.live,
            window: layer.window.map(|w| w as u64),
            num_heads: n_heads,
            num_kv_heads: g,
            head_dim: d,
            scale,
            key_angles,
        };
        let sink = Sink { out, out_stride: qw, probs: &mut probs, prob_rows };
        attention_with(msrnn_kernels::isa::active(), &step, sink, &|n, f| msrnn_kernels::pool::for_each(n, f))
            .map_err(|reason| Error::Shape { op: "attend", reason })?;
    }
    if let Some(buf) = angles {
        ANGLES.set(buf);
    }
    // What the next query cannot see through the model's window is gone for good: drop it before
    // the policy spends budget on it.
    layer.drop_outside_window(positions[t - 1] + 1);
    Ok((new_slots, probs, prob_rows, hi))
}

/// A per-head layer's step: each KV head's single-head layer updates and attends for its own
/// query heads (their query columns gathered, their outputs scattered back), then the policy sees
/// every head's entries at once, so it can share the budget between heads, and its decision frees
/// each head's own slots.
#[allow(clippy::too_many_arguments)]
fn step_heads(
    layer: &mut LayerState,
    policy: &mut dyn Policy,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    positions: &[u64],
    n_heads: usize,
    scale: f32,
    out: &mut [f32],
) -> Result<()> {
    let t = positions.len();
    let (g, d) = (layer.num_kv_heads, layer.head_dim);
    let group = n_heads / g;
    let (qw, kw, gw) = (n_heads * d, g * d, group * d);
    let needs = policy.needs();
    // Whether the policy will be asked, decided before attention from the counts after the write
    // (a window drop can only lower them: at worst rows are computed that are not needed).
    let prob_rows = if asked(layer, &needs, t) { rows_of(needs.rows, t) } else { 0 };
    let (mut qg, mut kg, mut vg, mut og) =
        (vec![0f32; t * gw], vec![0f32; t * d], vec![0f32; t * d], vec![0f32; t * gw]);
    let mut parts = Vec::with_capacity(g);
    for (h, head) in layer.heads.iter_mut().enumerate() {
        for r in 0..t {
            qg[r * gw..][..gw].copy_from_slice(&q[r * qw + h * gw..][..gw]);
            kg[r * d..][..d].copy_from_slice(&k[r * kw + h * d..][..d]);
            vg[r * d..][..d].copy_from_slice(&v[r * kw + h * d..][..d]);
        }
        let (new_slots, probs, _, hi) =
            update_attend(head, &qg, &kg, &vg, positions, group, scale, &mut og, &|_| prob_rows)?;
        for r in 0..t {
            out[r * qw + h * gw..][..gw].copy_from_slice(&og[r * gw..][..gw]);
        }
        parts.push((new_slots, probs, hi));
    }
    compress_heads(layer, policy, parts, prob_rows, positions[t - 1] + 1, n_heads)
}

/// The policy's turn on a per-head layer: entries `head * n + slot` with `n` the heads' allocated
/// slots (stable from step to step, so per-entry bookkeeping stays valid), each head's probability
/// rows (`parts[h]`: new slots, `[rows, group, hi]`, `hi`) placed under its query heads.
fn compress_heads(
    layer: &mut LayerState,
    policy: &mut dyn Policy,
    parts: Vec<(Vec<usize>, Vec<f32>, usize)>,
    rows: usize,
    tokens_seen: u64,
    n_heads: usize,
) -> Result<()> {
    let (g, d) = (layer.num_kv_heads, layer.head_dim);
    let group = n_heads / g;
    let (budget, cap) = (layer.capacity.budget(), layer.head_capacity);
    let needs = policy.needs();
    if !asked(layer, &needs, 0) {
        return Ok(());
    }
    let n = layer.num_slots();
    let mut positions = vec![0u64; g * n];
    let mut live = vec![false; g * n];
    let mut new_entries = Vec::new();
    let mut probs = vec![0f32; rows * n_heads * n];
    let want_keys = needs.keys || needs.key_norms;
    let mut keys = vec![0f32; if want_keys { g * n * d } else { 0 }];
    for (h, (head, (new_slots, p, phi))) in layer.heads.iter().zip(&parts).enumerate() {
        let hi = head.high;
        positions[h * n..][..hi].copy_from_slice(&head.positions[..hi]);
        live[h * n..][..hi].copy_from_slice(&head.live[..hi]);
        new_entries.extend(new_slots.iter().filter(|&&s| head.live[s]).map(|&s| h * n + s));
        // The window drop after attention can lower a head's live range: its rows keep `hi`.
        let keep = hi.min(*phi);
        for r in 0..rows {
            for j in 0..group {
                let src = &p[(r * group + j) * phi..][..keep];
                probs[(r * n_heads + h * group + j) * n..][..keep].copy_from_slice(src);
            }
        }
        if want_keys {
            keys[h * n * d..][..hi * d].copy_from_slice(&layer_keys(head, hi)?);
        }
    }
    let norms = if needs.key_norms { key_norms(&keys, d) } else { Vec::new() };
    let obs = Observation {
        layer: layer.index,
        tokens_seen,
        num_slots: n,
        positions: &positions,
        live: &live,
        new_slots: &new_entries,
        num_heads: n_heads,
        num_kv_heads: g,
        head_dim: d,
        rows,
        probs: &probs,
        key_norms: &norms,
        keys: if needs.keys { &keys } else { &[] },
        head_capacity: cap,
    };
    let evict = decide(policy, &obs, budget)?;
    for (h, head) in layer.heads.iter_mut().enumerate() {
        let mine: Vec<usize> = evict.iter().filter(|&&e| e / n == h).map(|&e| e % n).collect();
        head.evict(&mine);
    }
    Ok(())
}

thread_local! {
    /// Cache mode's per-block key angles ([`block_angles`]), reused from step to step by the thread
    /// that runs the step (a fresh buffer per layer and token would be zeroed and faulted in).
    static ANGLES: std::cell::Cell<(Vec<f32>, Vec<f32>)> = const { std::cell::Cell::new((Vec::new(), Vec::new())) };
}

/// Cache mode: rotates the queries (in place) at their token's rank among the layer's live tokens,
/// and lays out every live key's angles by rank for the attention kernel, which rotates each key
/// block as it scores it (into this thread's reused buffers, returned; the caller puts them back).
fn rank_angles(layer: &mut LayerState, new_slots: &[usize], q: &mut [f32], n_heads: usize) -> (Vec<f32>, Vec<f32>) {
    let hi = layer.high;
    let mut rank = vec![0u32; hi];
    for (r, &s) in layer.order.iter().enumerate() {
        rank[s] = r as u32;
    }
    let d = layer.head_dim;
    let rope = layer.rope.as_mut().expect("cache mode needs a rotary embedding");
    let (style, half) = (rope.style(), rope.half());
    let (cos, sin) = rope.table(layer.order.len());
    let (mut ct, mut st) = ANGLES.take();
    block_angles(msrnn_kernels::isa::active(), &rank, hi, half, cos, sin, &mut ct, &mut st);
    for (row, &s) in q.chunks_mut(n_heads * d).zip(new_slots) {
        let r = rank[s] as usize * half;
        rotate_row(row, n_heads, d, &cos[r..r + half], &sin[r..r + half], style);
    }
    (ct, st)
}

/// The device path: candle ops on head-major tensors.
fn step_device(
    layer: &mut LayerState,
    policy: &mut dyn Policy,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    positions: &[u64],
    scale: f64,
) -> Result<Tensor> {
    let (n_heads, t, hd) = q.dims3()?;
    let n_kv = layer.num_kv_heads;
    let group = n_heads / n_kv;

    // 1. update
    layer.drop_outside_window(positions[0]);
    let new_slots = layer.alloc(positions)?;
    let (mut q, k) = match (&layer.rope, layer.mode) {
        (Some(rope), Positions::Absolute) => {
            let (cos, sin) = rope.angles(positions);
            (
                rope.rotate_tensor(&q.to_dtype(DType::F32)?, &cos, &sin)?,
                rope.rotate_tensor(&k.to_dtype(DType::F32)?, &cos, &sin)?,
            )
        }
        _ => (q.clone(), k.clone()),
    };
    layer.write_device(&new_slots, &k, v)?;
    let hi = layer.high;

    // 2. attend
    let Kv::Device { k: kbuf, v: vbuf } = &layer.kv else { unreachable!("device step on a host state") };
    let mut keys = kbuf.narrow(1, 0, hi)?;
    let vals = vbuf.narrow(1, 0, hi)?;
    if let (Some(rope), Positions::Cache) = (&layer.rope, layer.mode) {
        let mut rank = vec![0u64; hi];
        for (r, &s) in layer.order.iter().enumerate() {
            rank[s] = r as u64;
        }
        let (kc, ks) = rope.angles(&rank);
        keys = rope.rotate_tensor(&keys.to_dtype(DType::F32)?, &kc, &ks)?.to_dtype(kbuf.dtype())?;
        let q_ranks: Vec<u64> = new_slots.iter().map(|&s| rank[s]).collect();
        let (qc, qs) = rope.angles(&q_ranks);
        q = rope.rotate_tensor(&q.to_dtype(DType::F32)?, &qc, &qs)?;
    }
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
    layer.drop_outside_window(positions[t - 1] + 1);

    // 3. compress
    let needs = policy.needs();
    let (rows, host) = match needs.rows {
        _ if !asked(layer, &needs, 0) => (0, Vec::new()),
        Rows::None => (0, Vec::new()),
        Rows::Last => (1, probs.narrow(1, t - 1, 1)?.flatten_all()?.to_vec1::<f32>()?),
        Rows::All => (t, probs.transpose(0, 1)?.flatten_all()?.to_vec1::<f32>()?),
    };
    compress(layer, policy, host, rows, hi, &new_slots, positions[t - 1] + 1, n_heads)?;
    Ok(out)
}

/// The policy's turn: when over budget (or every step if it asked), it sees the probability rows
/// (`[rows, num_heads, probs_hi]`, re-cut to the current live range) and whatever else it asked
/// for, and its validated decision frees slots.
#[allow(clippy::too_many_arguments)]
fn compress(
    layer: &mut LayerState,
    policy: &mut dyn Policy,
    mut probs: Vec<f32>,
    rows: usize,
    probs_hi: usize,
    new_slots: &[usize],
    tokens_seen: u64,
    n_heads: usize,
) -> Result<()> {
    let budget = layer.capacity.budget();
    let needs = policy.needs();
    if !asked(layer, &needs, 0) {
        return Ok(());
    }
    let hi = layer.high;
    if hi != probs_hi && rows > 0 {
        // The window drop after attention lowered the live range: keep each row's first `hi`.
        probs = probs.chunks(probs_hi).flat_map(|r| r[..hi].iter().copied()).collect();
    }
    let keys = if needs.keys || needs.key_norms { layer_keys(layer, hi)? } else { Vec::new() };
    let d = layer.head_dim;
    let norms = if needs.key_norms { key_norms(&keys, d) } else { Vec::new() };
    // A 1-token model window can drop a new token already; keep the list to live slots.
    let new_live: Vec<usize> = new_slots.iter().copied().filter(|&s| layer.live[s]).collect();
    let obs = Observation {
        layer: layer.index,
        tokens_seen,
        num_slots: hi,
        positions: &layer.positions[..hi],
        live: &layer.live[..hi],
        new_slots: &new_live,
        num_heads: n_heads,
        num_kv_heads: layer.num_kv_heads,
        head_dim: d,
        rows,
        probs: &probs,
        key_norms: &norms,
        keys: if needs.keys { &keys } else { &[] },
        head_capacity: 0,
    };
    let evict = decide(policy, &obs, budget)?;
    layer.evict(&evict);
    Ok(())
}

/// The L2 norm of every `d`-value key in `keys`.
fn key_norms(keys: &[f32], d: usize) -> Vec<f32> {
    keys.chunks(d).map(|k| k.iter().map(|x| x * x).sum::<f32>().sqrt()).collect()
}

/// The policy's decision on `obs`, checked by the host: the slots (entries) to evict, or the
/// policy's error naming it and the layer.
fn decide(policy: &mut dyn Policy, obs: &Observation<'_>, budget: usize) -> Result<Vec<usize>> {
    let decision = policy.step(obs, budget);
    let name_it = |e| Error::from_policy(e, policy.name(), obs.layer);
    validate(decision.map_err(name_it)?, obs, budget).map_err(name_it)
}

/// Every key of slots `[0, hi)` as stored (rotated in absolute mode, unrotated in cache mode),
/// `[kv_heads, hi, head_dim]` f32.
fn layer_keys(layer: &LayerState, hi: usize) -> Result<Vec<f32>> {
    match &layer.kv {
        Kv::Device { k, .. } => Ok(k.narrow(1, 0, hi)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
        Kv::Host { .. } => {
            let (slots, d) = (layer.num_slots(), layer.head_dim);
            let all = layer.keys_host();
            Ok((0..layer.num_kv_heads).flat_map(|g| all[g * slots * d..][..hi * d].iter().copied()).collect())
        }
    }
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
