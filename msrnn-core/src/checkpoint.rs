//! Undoing a step that failed part-way. A policy's error leaves its own layer untouched, but the
//! layers before it already wrote the new tokens and evicted; a caller that wants the whole state as
//! it was (Python's `State.feed`, where the same state is fed again after the exception) takes a
//! [`Checkpoint`] before the step and rolls back to it on error.
//!
//! Cheap because a step never overwrites a live token: new keys and values go into slots that were
//! free, so restoring which slots are live (and the policies' bookkeeping) restores the state. The
//! one exception is a slot the model's own window dropped at the start of the step and the step
//! then reused: such a token is outside the window of the next query at that position, so the
//! retried step drops it again before anything reads it.

use crate::error::Result;
use crate::state::{LayerState, MsrnnState};

/// Where a state stood: per layer which slots were live at which positions, the policies'
/// bookkeeping, the tokens seen.
pub struct Checkpoint {
    layers: Vec<LayerMark>,
    policies: Vec<Vec<f64>>,
    tokens_seen: u64,
}

struct LayerMark {
    positions: Vec<u64>,
    live: Vec<bool>,
    order: Vec<usize>,
    high: usize,
    n_live: usize,
    /// A per-head layer's heads.
    heads: Vec<LayerMark>,
}

impl LayerMark {
    fn of(l: &LayerState) -> Self {
        LayerMark {
            positions: l.positions.clone(),
            live: l.live.clone(),
            order: l.order.clone(),
            high: l.high,
            n_live: l.n_live,
            heads: l.heads.iter().map(LayerMark::of).collect(),
        }
    }

    fn restore(self, l: &mut LayerState) {
        let n = l.live.len();
        l.positions = self.positions;
        l.positions.resize(n, 0);
        l.live = self.live;
        l.live.resize(n, false);
        l.free = (0..n).rev().filter(|&s| !l.live[s]).collect();
        l.order = self.order;
        l.high = self.high;
        l.n_live = self.n_live;
        for (h, m) in l.heads.iter_mut().zip(self.heads) {
            m.restore(h);
        }
    }
}

impl MsrnnState {
    /// The state's position now, for [`MsrnnState::rollback`] after a failed step.
    pub fn checkpoint(&self) -> Checkpoint {
        let layers = self.layers.iter().map(LayerMark::of).collect();
        Checkpoint {
            layers,
            policies: self.policies.iter().map(|p| p.save_state()).collect(),
            tokens_seen: self.tokens_seen(),
        }
    }

    /// Returns to `c`, taken from this state before the steps to undo (at most one step: a step
    /// may reuse slots an earlier one freed). Buffers that grew meanwhile keep their size.
    pub fn rollback(&mut self, c: Checkpoint) -> Result<()> {
        for (l, m) in self.layers.iter_mut().zip(c.layers) {
            m.restore(l);
        }
        for (i, (p, saved)) in self.policies.iter_mut().zip(c.policies).enumerate() {
            p.reset();
            p.load_state(&saved).map_err(|e| crate::Error::from_policy(e, p.name(), i))?;
        }
        self.set_tokens_seen(c.tokens_seen);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use msrnn_policy_api::{Decision, Error as PolicyErr, Needs, Observation, Policy};

    use crate::state::{Capacity, MsrnnState, StateConfig};

    /// Evicts the oldest entries; with `fail_at`, fails on the step that brings the tokens seen to it.
    struct Oldest {
        fail_at: Option<u64>,
        steps: u64,
    }

    impl Policy for Oldest {
        fn name(&self) -> &str {
            "oldest"
        }
        fn needs(&self) -> Needs {
            Needs { every_step: true, ..Needs::default() }
        }
        fn step(&mut self, obs: &Observation<'_>, budget: usize) -> msrnn_policy_api::Result<Decision> {
            if Some(obs.tokens_seen) == self.fail_at {
                return Err(PolicyErr::Failed("told to fail".into()));
            }
            self.steps += 1;
            let mut live: Vec<usize> = obs.live_slots().collect();
            live.sort_by_key(|&s| obs.positions[s]);
            live.truncate(obs.excess(budget));
            Ok(Decision::Evict(live))
        }
        fn save_state(&self) -> Vec<f64> {
            vec![self.steps as f64]
        }
        fn load_state(&mut self, data: &[f64]) -> msrnn_policy_api::Result<()> {
            self.steps = data.first().map_or(0, |&x| x as u64);
            Ok(())
        }
    }

    fn state(fail_at: Option<u64>) -> MsrnnState {
        let cfg = StateConfig::new(2, 1, 4, Capacity::Bounded(2));
        let policies: Vec<Box<dyn Policy>> =
            vec![Box::new(Oldest { fail_at: None, steps: 0 }), Box::new(Oldest { fail_at, steps: 0 })];
        MsrnnState::new(&cfg, policies).unwrap()
    }

    /// One token through both layers, as an adapter runs it.
    fn step(s: &mut MsrnnState, x: f32) -> crate::Result<()> {
        let t = Tensor::from_vec(vec![x, 1.0, -x, 0.5], (1, 1, 4), &Device::Cpu)?;
        let pos = s.next_positions(1);
        for layer in 0..2 {
            s.attend(layer, &t, &t, &t, &pos, 0.5)?;
        }
        s.advance(1);
        Ok(())
    }

    fn live(s: &MsrnnState) -> Vec<Vec<u64>> {
        (0..2)
            .map(|i| {
                let mut p = s.layer(i).live_positions();
                p.sort_unstable();
                p
            })
            .collect()
    }

    #[test]
    fn a_step_failing_on_a_later_layer_is_undone_on_every_layer() {
        let (mut a, mut b) = (state(Some(4)), state(None));
        for x in 0..3 {
            step(&mut a, x as f32).unwrap();
            step(&mut b, x as f32).unwrap();
        }
        let before = live(&a);
        let c = a.checkpoint();
        let e = step(&mut a, 3.0).unwrap_err().to_string();
        assert!(e.contains("failed on layer 1: told to fail"), "{e}");
        // Layer 0 evicted position 1 and took position 3: the step was half done.
        assert_ne!(live(&a), before);
        a.rollback(c).unwrap();
        assert_eq!((live(&a), a.tokens_seen()), (before, 3));
        assert_eq!(a.policies[0].save_state(), b.policies[0].save_state());
        // Undone exactly: the next steps match a state that never failed, bit for bit.
        a.policies[1] = Box::new(Oldest { fail_at: None, steps: 3 });
        for x in 3..6 {
            step(&mut a, x as f32).unwrap();
            step(&mut b, x as f32).unwrap();
        }
        assert_eq!(live(&a), live(&b));
        for i in 0..2 {
            let ((ka, va), (kb, vb)) = (a.layer(i).kv().unwrap(), b.layer(i).kv().unwrap());
            let v = |t: Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            assert_eq!((v(ka), v(va)), (v(kb), v(vb)), "layer {i}");
        }
    }
}
