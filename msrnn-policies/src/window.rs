use msrnn_core::policy::newest_first;
use msrnn_core::{BuiltinPolicy, Decision, Needs, Observation, Policy, PolicyContext, PolicySpec, Result};

/// `window`: keeps the C newest tokens (by absolute position) and evicts the rest — the sliding
/// window baseline of Oren et al. (2024), §3.
#[derive(Debug, Default)]
pub struct Window;

impl Policy for Window {
    fn name(&self) -> &str {
        "window"
    }
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let order = newest_first(obs);
        Ok(Decision::Evict(order.into_iter().skip(budget).collect()))
    }
}

fn create(_: &PolicySpec, _: &PolicyContext) -> Result<Box<dyn Policy>> {
    Ok(Box::new(Window))
}

msrnn_core::inventory::submit! {
    BuiltinPolicy {
        name: "window",
        aliases: &[],
        description: "Keeps the C newest tokens.",
        params: &[],
        create,
    }
}
