//! `pyramid` gives each layer its own capacity, falling linearly from the first layer to the last,
//! and lets any other policy (`base`) choose what each layer keeps within it. The schedule is
//! PyramidKV's (Cai et al. 2024, "PyramidKV: Dynamic KV Cache Compression based on Pyramidal
//! Information Funneling", reference code `PyramidKVCluster`): the last layer keeps `C / beta`, the
//! first `2C - C/beta`, the layers between fall in equal steps, so the layers together keep
//! `layers x C` (rounding down is made up one token at a time from the first layer on). PyramidKV
//! keeps a recent window outside the schedule; here the whole of C is scheduled and a base policy
//! with a window keeps it within its layer's capacity.
//!
//! The base is a policy spec, `pyramid:base=h2o` or with one parameter inline
//! `pyramid:base=h2o:recent=0.25` (write `base=` first in a comma-separated list); a base with
//! several parameters takes the JSON form `{"name":"pyramid","params":{"base":"snapkv:window=8,kernel=3"}}`.
//! The base is created through the registry, plugins included, with its layer's capacity as its C.

use msrnn_core::{BuiltinPolicy, PolicyRegistry, PolicySpec};
use msrnn_policy_api::{params, Context, Decision, Error, Needs, Observation, ParamSet, Params, Policy, Result};

/// `pyramid`: per-layer capacities around a base policy.
pub struct Pyramid {
    base: Box<dyn Policy>,
    capacity: Option<usize>,
}

/// Each layer's capacity for a run of capacity `c` over `layers` layers: linear from `2c - c/beta`
/// (layer 0) down to `c/beta` (the last layer, at least 1), summing to exactly `layers x c`.
pub fn pyramid_capacities(c: usize, layers: usize, beta: f64) -> Vec<usize> {
    if layers <= 1 {
        return vec![c; layers];
    }
    let min = ((c as f64 / beta).floor() as usize).clamp(1, c);
    let max = 2 * c - min;
    let steps = layers - 1;
    let mut caps: Vec<usize> = (0..layers).map(|l| (max * steps - l * (max - min)) / steps).collect();
    let deficit = c * layers - caps.iter().sum::<usize>();
    caps.iter_mut().take(deficit).for_each(|x| *x += 1);
    caps
}

params! {
    /// `pyramid`'s parameters.
    pub struct PyramidParams {
        base: String = "tova".to_string() => "tova",
            "the policy choosing within each layer's capacity, as a spec (e.g. h2o:recent=0.25)";
        beta: f64 = 20.0 => "20", range 1.., "the last layer keeps C/beta, the first 2C - C/beta";
    }
}

fn create(params: &Params, ctx: &Context, registry: &PolicyRegistry) -> msrnn_core::Result<Box<dyn Policy>> {
    let own = |e: Error| msrnn_core::Error::from_policy(e, "pyramid", ctx.layer);
    let PyramidParams { base, beta } = PyramidParams::from_params(params).map_err(own)?;
    let spec: PolicySpec = base.parse()?;
    if registry.get(&spec.name)?.name == "pyramid" {
        return Err(own(Error::Param("the base cannot be `pyramid` itself".into())));
    }
    let capacity = ctx.capacity.map(|c| pyramid_capacities(c, ctx.num_layers, beta)[ctx.layer]);
    let base = registry.create(&spec, &Context { capacity: capacity.or(ctx.capacity), ..*ctx })?;
    Ok(Box::new(Pyramid { base, capacity }))
}

msrnn_core::inventory::submit! {
    BuiltinPolicy {
        name: "pyramid",
        aliases: &["pyramidkv"],
        description: "Per-layer capacities falling from the first layer to the last (PyramidKV) around a base policy.",
        params: PyramidParams::SCHEMA,
        unbounded: false,
        create,
    }
}

impl Policy for Pyramid {
    fn name(&self) -> &str {
        "pyramid"
    }
    fn needs(&self) -> Needs {
        self.base.needs()
    }
    fn capacity(&self) -> Option<usize> {
        self.capacity
    }
    fn head_capacity(&self) -> Option<usize> {
        self.base.head_capacity()
    }
    fn step(&mut self, obs: &Observation<'_>, budget: usize) -> Result<Decision> {
        self.base.step(obs, budget)
    }
    fn reset(&mut self) {
        self.base.reset()
    }
    fn save_state(&self) -> Vec<f64> {
        self.base.save_state()
    }
    fn load_state(&mut self, data: &[f64]) -> Result<()> {
        self.base.load_state(data)
    }
}
