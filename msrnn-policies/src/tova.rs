use msrnn_core::policy::lowest_scored;
use msrnn_core::{BuiltinPolicy, Decision, Needs, Observation, Policy, PolicyContext, PolicySpec, Result, Rows};

/// `tova` (Token Omission Via Attention, Oren et al. 2024, §4): averages the newest query's
/// attention probabilities over all query heads of the layer and keeps the C highest-scoring
/// entries — the newest token is a candidate too; ties keep the newer entry. After a chunk, the
/// chunk's last query row is the one scored.
#[derive(Debug, Default)]
pub struct Tova;

impl Policy for Tova {
    fn name(&self) -> &str {
        "tova"
    }
    fn needs(&self) -> Needs {
        Needs { rows: Rows::Last, ..Needs::default() }
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let scores = obs.head_mean(obs.rows - 1);
        Ok(Decision::Evict(lowest_scored(obs, &scores, |_| false, crate::excess(obs, budget))))
    }
}

fn create(_: &PolicySpec, _: &PolicyContext) -> Result<Box<dyn Policy>> {
    Ok(Box::new(Tova))
}

msrnn_core::inventory::submit! {
    BuiltinPolicy {
        name: "tova",
        aliases: &[],
        description: "Keeps the C tokens the newest query attends to most, averaged over heads (TOVA).",
        params: &[],
        create,
    }
}
