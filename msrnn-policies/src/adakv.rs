//! `adakv` shares a layer's budget of C x kv_heads entries *unevenly* between its KV heads (Ada-KV,
//! Feng et al. 2024, "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget Allocation"). Every
//! entry is scored by the newest query's attention averaged over its KV head's query heads
//! (`tova-head`'s score: each head's scores sum to 1, so heads compare), and the lowest-scored
//! entries of the whole layer go, so a head whose attention is spread keeps more than one whose
//! attention is peaked. Two bounds: no head drops below `floor` x C entries (the paper's safeguard,
//! alpha = 0.2), and none keeps more than `max_share` x C, for which its slots are sized (so the
//! layer allocates `max_share` x the bytes of a per-layer C; the entries kept stay C x kv_heads).
//! Entries a head holds above `max_share` x C go first (its lowest); ties evict the older entry,
//! then the lower head.

use msrnn_policy_api::{lowest_among, params, Context, Decision, Declare, Needs, Observation, Policy, Result, Rows};

use crate::tova_head::run_capacity;

/// `adakv`: the layer's lowest-scored entries over all KV heads, within a floor and a cap per head.
#[derive(Debug)]
pub struct AdaKv {
    floor: usize,
    head_capacity: usize,
}

params! {
    /// `adakv`'s parameters.
    pub struct AdaKvParams {
        floor: f64 = 0.2, range 0.0..=1.0, "share of C every KV head keeps at least (the safeguard alpha)";
        max_share: f64 = 2.0, range 1.0.., "most entries one KV head may keep, as a multiple of C (sizes its slots)";
    }
}

impl Declare for AdaKv {
    const NAME: &'static str = "adakv";
    const DESCRIPTION: &'static str =
        "Shares a layer's C x kv_heads entries unevenly between KV heads by attention (Ada-KV over TOVA scores).";

    type Params = AdaKvParams;

    fn create(AdaKvParams { floor, max_share }: AdaKvParams, ctx: &Context) -> Result<Self> {
        let c = run_capacity(Self::NAME, ctx)?;
        let most = c.saturating_mul(ctx.num_kv_heads.max(1));
        let head_capacity = ((max_share * c as f64).ceil() as usize).clamp(c, most);
        Ok(AdaKv { floor: (floor * c as f64).ceil() as usize, head_capacity })
    }
}

/// The entries `adakv` evicts from a per-head observation, given every entry's score: first each
/// head's lowest entries above `head_capacity`, then the layer's lowest (score, then position, then
/// head) among heads still above `floor`, until [`Observation::excess`] entries go.
pub fn share_budget(obs: &Observation<'_>, score: &[f64], budget: usize, floor: usize) -> Vec<usize> {
    let want = obs.excess(budget);
    let mut left: Vec<usize> = (0..obs.num_kv_heads).map(|h| obs.head_live_count(h)).collect();
    let mut out = Vec::with_capacity(want);
    let mut gone = vec![false; obs.live.len()];
    for (h, n) in left.iter_mut().enumerate() {
        let over = n.saturating_sub(obs.head_capacity);
        for e in lowest_among(obs, score, obs.head_entries(h), over) {
            gone[e] = true;
            out.push(e);
        }
        *n -= over;
    }
    let key = |e: usize| if score[e].is_nan() { f64::NEG_INFINITY } else { score[e] };
    let order = |a: &usize, b: &usize| {
        key(*a).total_cmp(&key(*b)).then(obs.positions[*a].cmp(&obs.positions[*b])).then(a.cmp(b))
    };
    let mut rest: Vec<usize> = obs.live_slots().filter(|&e| !gone[e]).collect();
    // A decode step evicts a few entries of a layer's C x kv_heads: order only the lowest few
    // (enough unless the floor skips many of them; then the rest too), not the whole layer.
    let few = (4 * want.saturating_sub(out.len())).max(16);
    if few < rest.len() {
        rest.select_nth_unstable_by(few - 1, order);
        rest[..few].sort_by(order);
        if !take_lowest(obs, &rest[..few], &mut left, floor, want, &mut out) {
            rest[few..].sort_by(order);
            take_lowest(obs, &rest[few..], &mut left, floor, want, &mut out);
        }
        return out;
    }
    rest.sort_by(order);
    take_lowest(obs, &rest, &mut left, floor, want, &mut out);
    out
}

/// Takes entries of `sorted` in order while their head stays above `floor`, until `out` holds
/// `want`; whether it got there.
fn take_lowest(
    obs: &Observation<'_>,
    sorted: &[usize],
    left: &mut [usize],
    floor: usize,
    want: usize,
    out: &mut Vec<usize>,
) -> bool {
    for &e in sorted {
        if out.len() >= want {
            break;
        }
        let h = obs.head_of(e);
        if left[h] > floor {
            left[h] -= 1;
            out.push(e);
        }
    }
    out.len() >= want
}

impl Policy for AdaKv {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs { rows: Rows::Last, ..Needs::default() }
    }
    fn head_capacity(&self) -> Option<usize> {
        Some(self.head_capacity)
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let scores = obs.kv_head_mean(obs.rows - 1);
        Ok(Decision::Evict(share_budget(obs, &scores, budget, self.floor)))
    }
}

msrnn_core::builtin_policy!(AdaKv);
