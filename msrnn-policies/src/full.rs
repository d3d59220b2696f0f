use msrnn_core::{
    BuiltinPolicy, Capacity, Decision, Error, Needs, Observation, Policy, PolicyContext, PolicySpec, Result,
};

/// `full`: never evicts — the unbounded multi-state RNN, i.e. the plain transformer's KV cache.
/// It only makes sense with an unbounded capacity, so a bounded one is refused.
#[derive(Debug, Default)]
pub struct Full;

impl Policy for Full {
    fn name(&self) -> &str {
        "full"
    }
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        if obs.live_count() > budget {
            return Err(Error::PolicyFailed {
                policy: "full".into(),
                layer: obs.layer,
                reason: format!(
                    "never evicts, but the layer holds {} tokens with a budget of {budget}",
                    obs.live_count()
                ),
            });
        }
        Ok(Decision::Keep)
    }
}

fn create(_: &PolicySpec, ctx: &PolicyContext) -> Result<Box<dyn Policy>> {
    if let Capacity::Bounded(c) = ctx.capacity {
        return Err(Error::InvalidParam {
            policy: "full".into(),
            reason: format!("keeps every token, so it takes no capacity (got {c}); use it unbounded"),
        });
    }
    Ok(Box::new(Full))
}

msrnn_core::inventory::submit! {
    BuiltinPolicy {
        name: "full",
        aliases: &["none"],
        description: "Never evicts: the unbounded cache of the plain transformer.",
        params: &[],
        create,
    }
}
