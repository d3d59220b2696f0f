use msrnn_core::policy::newest_first;
use msrnn_core::{
    BuiltinPolicy, Decision, Error, Needs, Observation, ParamInfo, Policy, PolicyContext, PolicySpec, Result,
};

/// `window+i` (alias `sinks`): keeps the tokens at positions `0..sinks` forever plus the newest
/// `C - sinks` — attention sinks, after Xiao et al. (2024), "Efficient Streaming Language Models
/// with Attention Sinks" (StreamingLLM), without its position re-indexing.
#[derive(Debug)]
pub struct WindowSinks {
    sinks: u64,
}

impl WindowSinks {
    pub fn new(sinks: usize) -> Self {
        Self { sinks: sinks as u64 }
    }
}

impl Policy for WindowSinks {
    fn name(&self) -> &str {
        "window+i"
    }
    fn needs(&self) -> Needs {
        Needs::default()
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        let k = crate::excess(obs, budget);
        // Oldest non-sink entries go first.
        let mut order: Vec<usize> = newest_first(obs).into_iter().filter(|&s| obs.positions[s] >= self.sinks).collect();
        order.reverse();
        order.truncate(k);
        Ok(Decision::Evict(order))
    }
}

fn create(spec: &PolicySpec, ctx: &PolicyContext) -> Result<Box<dyn Policy>> {
    let sinks = spec.get_usize("sinks", 4)?;
    if let Some(c) = ctx.capacity.get() {
        if c <= sinks {
            return Err(Error::InvalidParam {
                policy: "window+i".into(),
                reason: format!("capacity {c} must exceed sinks={sinks}, leaving room for at least one recent token"),
            });
        }
    }
    Ok(Box::new(WindowSinks::new(sinks)))
}

msrnn_core::inventory::submit! {
    BuiltinPolicy {
        name: "window+i",
        aliases: &["sinks"],
        description: "Keeps the first `sinks` tokens forever plus the newest (attention sinks).",
        params: &[ParamInfo { name: "sinks", default: "4", help: "number of initial positions never evicted" }],
        create,
    }
}
