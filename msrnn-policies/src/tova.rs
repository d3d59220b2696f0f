//! `tova` keeps the C entries the newest query attends to most, averaged over the layer's query
//! heads; the newest token is a candidate too and ties keep the newer entry (Token Omission Via
//! Attention, Oren et al. 2024, §4). After a chunk, the chunk's last query row is the one scored.

use msrnn_policy_api::{lowest_scored, Context, Decision, Declare, Needs, Observation, Policy, Result, Rows};

/// `tova`: the top-C of the newest query's head-averaged attention.
#[derive(Debug, Default)]
pub struct Tova;

impl Declare for Tova {
    const NAME: &'static str = "tova";
    const DESCRIPTION: &'static str =
        "Keeps the C tokens the newest query attends to most, averaged over heads (TOVA).";

    type Params = ();

    fn create(_: (), _: &Context) -> Result<Self> {
        Ok(Tova)
    }
}

impl Policy for Tova {
    fn name(&self) -> &str {
        Self::NAME
    }
    fn needs(&self) -> Needs {
        Needs { rows: Rows::Last, ..Needs::default() }
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let scores = obs.head_mean(obs.rows - 1);
        Ok(Decision::Evict(lowest_scored(obs, &scores, |_| false, obs.excess(budget))))
    }
}

msrnn_core::builtin_policy!(Tova);
