//! The policy registry as the CLI builds it (built-ins, MSRNN_PLUGINS, --plugin), parsing of policy
//! lists, and `msrnn policies`.

use anyhow::{Context, Result};
use msrnn_core::{
    Capacity, CausalLm, MsrnnState, Policy, PolicyRegistry, PolicySpec, Source, StateRecipe, PLUGINS_ENV,
};

use crate::Ctx;

/// Built-ins, then the plugins in MSRNN_PLUGINS, then each --plugin.
pub fn registry(ctx: &Ctx) -> Result<PolicyRegistry> {
    let mut r = msrnn_policies::registry();
    r.load_plugins_from_env().with_context(|| format!("cannot load the plugins listed in {PLUGINS_ENV}"))?;
    for p in &ctx.global.plugins {
        r.load_plugin(p).with_context(|| format!("--plugin {}", p.display()))?;
    }
    Ok(r)
}

/// One spec, checked against the registry (unknown names get suggestions from the core).
pub fn parse_spec(r: &PolicyRegistry, s: &str, flag: &str) -> Result<PolicySpec> {
    let spec: PolicySpec = s.parse().with_context(|| format!("{flag} {s}"))?;
    r.check_params(&spec).with_context(|| format!("{flag} {s}"))?;
    Ok(spec)
}

/// A comma-separated list of specs. Parameters are comma-separated too, so a piece with `=` but no
/// `:` continues the previous spec: `window,h2o:recent=0.3,tova` and
/// `random:seed=1,foo=2,tova` both split as intended. `;` always separates.
pub fn parse_spec_list(r: &PolicyRegistry, s: &str, flag: &str) -> Result<Vec<PolicySpec>> {
    let mut items: Vec<String> = Vec::new();
    for group in s.split(';') {
        let mut in_params = false;
        for piece in group.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            if in_params && piece.contains('=') && !piece.contains(':') {
                let last = items.last_mut().expect("in_params implies an item");
                last.push(',');
                last.push_str(piece);
            } else {
                in_params = piece.contains(':');
                items.push(piece.to_string());
            }
        }
    }
    if items.is_empty() {
        anyhow::bail!("{flag} is empty: name at least one policy (see `msrnn policies`)");
    }
    let specs = items.iter().map(|i| parse_spec(r, i, flag)).collect::<Result<Vec<_>>>()?;
    for (i, a) in specs.iter().enumerate() {
        if specs[..i].contains(a) {
            anyhow::bail!("{flag}: `{a}` is listed twice");
        }
    }
    Ok(specs)
}

/// Whether the spec's policy declares itself unbounded (`full`): asked of the registry, never
/// decided by the name. (Kept for the eval and bench code; new code calls
/// [`PolicyRegistry::is_unbounded`].)
pub fn is_full(r: &PolicyRegistry, spec: &PolicySpec) -> bool {
    r.is_unbounded(spec).unwrap_or(false)
}

/// The capacity a spec runs at: an unbounded policy (`full`) runs unbounded, the rest take `c`.
pub fn capacity_for(r: &PolicyRegistry, spec: &PolicySpec, c: usize, flag: &str) -> Result<Capacity> {
    if r.is_unbounded(spec)? {
        Ok(Capacity::Unbounded)
    } else {
        Capacity::bounded(c).with_context(|| format!("{flag} {c}"))
    }
}

/// A fresh state as `recipe` says (from [`crate::context::Global::recipe`]: --positions, --kv),
/// with errors that say which policy and capacity were refused.
pub fn make_state(model: &dyn CausalLm, r: &PolicyRegistry, recipe: &StateRecipe) -> Result<MsrnnState> {
    r.build_state(model, recipe).with_context(|| format!("policy `{}` at capacity {}", recipe.policy, recipe.capacity))
}

/// A copy of `state` (prefilled, say) with its own fresh policy instances carrying the original's
/// bookkeeping: one sequence of a batch forked from one prompt.
pub fn fork(model: &dyn CausalLm, r: &PolicyRegistry, spec: &PolicySpec, state: &MsrnnState) -> Result<MsrnnState> {
    let i = model.info();
    let policies: Vec<Box<dyn Policy>> = r
        .create_layers(spec, i.num_layers, i.num_heads, i.num_kv_heads, i.head_dim, state.capacity())
        .with_context(|| format!("policy `{spec}`"))?;
    state.clone_with(policies).with_context(|| format!("cannot copy a `{spec}` state"))
}

/// `msrnn policies`.
pub fn list(ctx: &Ctx) -> Result<()> {
    let r = registry(ctx)?;
    let mut out = String::new();
    let entries: Vec<_> = r.entries().collect();
    let width = entries.iter().map(|e| e.name.len()).max().unwrap_or(4).max(6);
    out.push_str(&format!("{:width$}  {:10}  DESCRIPTION\n", "POLICY", "SOURCE"));
    for e in &entries {
        let source = match &e.source {
            Source::Builtin => "built-in".to_string(),
            Source::Plugin(_) => "plugin".to_string(),
        };
        out.push_str(&format!("{:width$}  {:10}  {}\n", e.name, source, e.description));
        let pad = " ".repeat(width + 14);
        if !e.aliases.is_empty() {
            out.push_str(&format!("{pad}alias: {}\n", e.aliases.join(", ")));
        }
        for p in &e.params {
            out.push_str(&format!("{pad}{p}\n"));
        }
        if !e.strict_params {
            out.push_str(&format!("{pad}(declares no parameter list: takes any key=value)\n"));
        }
        if let Source::Plugin(path) = &e.source {
            out.push_str(&format!("{pad}from {path}\n"));
        }
    }
    out.push_str(
        "\nSelect one with --policy NAME[:key=value,...], e.g. --policy window+i:sinks=4 or --policy h2o:recent=0.25.\n\
         `full` never evicts (the plain transformer) and so runs without a capacity.\n",
    );
    crate::report::print_stdout(&out)
}
