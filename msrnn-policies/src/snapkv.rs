//! `snapkv` as a decoding policy: the newest `window` entries are always kept (SnapKV's observation
//! window), and the others are scored by the attention the last `window` queries gave them, summed
//! over those queries and averaged over the layer's query heads, then average-pooled over
//! neighbouring entries (`kernel` wide, zero-padded at the ends, as `avg_pool1d(kernel, padding =
//! kernel/2, stride 1)`); the lowest pooled scores are evicted, ties evicting the older. Li et al.
//! 2024, "SnapKV: LLM Knows What You are Looking for Before Generation" (reference code: `avgpool`,
//! kernel 5, the window's own tokens kept), which compresses once after the prompt and per head;
//! here it runs at every step, per layer (a slot holds one token for all heads), and the pooling's
//! neighbours are the older entries in position order (gaps left by evictions are skipped). With
//! `C <= window` it keeps the newest C.

use std::collections::VecDeque;

use msrnn_policy_api::{lowest_scored, newest_first, params, Context, Decision, Declare, Error, Needs, Observation};
use msrnn_policy_api::{Policy, Result, Rows};

/// `snapkv`: a recent window plus the entries the window's queries pooled attention favours.
#[derive(Debug)]
pub struct SnapKv {
    window: usize,
    kernel: usize,
    /// Head-averaged attention of the last `window` queries, oldest first, one value per slot.
    recent_rows: VecDeque<Vec<f64>>,
}

impl SnapKv {
    /// `kernel` must be odd (1 pools nothing).
    pub fn new(window: usize, kernel: usize) -> Self {
        Self { window, kernel, recent_rows: VecDeque::new() }
    }
}

params! {
    /// `snapkv`'s parameters.
    pub struct SnapKvParams {
        window: usize = 16, range 1.., "newest tokens always kept; their queries' attention scores the rest";
        kernel: usize = 5, range 1.., "width of the average pooling over neighbouring tokens (odd; 1 = none)";
    }
}

impl Declare for SnapKv {
    const NAME: &'static str = "snapkv";
    const DESCRIPTION: &'static str =
        "Keeps a recent window plus the tokens its queries attend to most, pooled over neighbours (SnapKV).";
    type Params = SnapKvParams;

    fn create(SnapKvParams { window, kernel }: SnapKvParams, _: &Context) -> Result<Self> {
        if kernel.is_multiple_of(2) {
            return Err(Error::Param(format!("`kernel` must be odd, got {kernel}")));
        }
        Ok(SnapKv::new(window, kernel))
    }
}

impl Policy for SnapKv {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs { rows: Rows::All, every_step: true, ..Needs::default() }
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let n = obs.num_slots;
        // A rewritten slot holds a new token: the old one's attention no longer counts.
        for row in self.recent_rows.iter_mut() {
            row.resize(n, 0.0);
            for &s in obs.new_slots {
                row[s] = 0.0;
            }
        }
        for r in obs.rows.saturating_sub(self.window)..obs.rows {
            if self.recent_rows.len() == self.window {
                self.recent_rows.pop_front();
            }
            self.recent_rows.push_back(obs.head_mean(r));
        }
        let k = obs.excess(budget);
        if k == 0 {
            return Ok(Decision::Keep);
        }
        let newest = newest_first(obs);
        let kept = self.window.min(budget);
        let mut protected = vec![false; n];
        newest.iter().take(kept).for_each(|&s| protected[s] = true);
        // The older entries in position order, each with its summed attention, then pooled.
        let older: Vec<usize> = newest.iter().rev().copied().filter(|&s| !protected[s]).collect();
        let votes: Vec<f64> = older.iter().map(|&s| self.recent_rows.iter().map(|r| r[s]).sum()).collect();
        let half = self.kernel / 2;
        let mut pooled = vec![0f64; n];
        for (i, &s) in older.iter().enumerate() {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(older.len());
            pooled[s] = votes[lo..hi].iter().sum::<f64>() / self.kernel as f64;
        }
        Ok(Decision::Evict(lowest_scored(obs, &pooled, |s| protected[s], k)))
    }
    fn reset(&mut self) {
        self.recent_rows.clear();
    }
    fn save_state(&self) -> Vec<f64> {
        // [rows, slots per row, values...]
        let per = self.recent_rows.front().map_or(0, Vec::len);
        let mut out = vec![self.recent_rows.len() as f64, per as f64];
        self.recent_rows.iter().for_each(|r| out.extend(r));
        out
    }
    fn load_state(&mut self, data: &[f64]) -> Result<()> {
        self.recent_rows.clear();
        if data.is_empty() {
            return Ok(());
        }
        let bad = || Error::State(format!("expected [rows, slots, rows x slots values], got {} values", data.len()));
        let (rows, per) = match data {
            [r, p, ..] if *r >= 0.0 && *p >= 0.0 => (*r as usize, *p as usize),
            _ => return Err(bad()),
        };
        if data.len() != 2 + rows * per || rows > self.window {
            return Err(bad());
        }
        self.recent_rows.extend(data[2..].chunks(per.max(1)).take(rows).map(<[f64]>::to_vec));
        Ok(())
    }
}

msrnn_core::builtin_policy!(SnapKv);
