//! The policy registry as the CLI builds it (built-ins, MSRNN_PLUGINS, --plugin), parsing of policy
//! lists, and `msrnn policies`.

use anyhow::{Context, Result};
use msrnn_core::{
    new_state_from, Capacity, CausalLm, KvFormat, MsrnnState, Policy, PolicyRegistry, PolicySpec, Positions, Source,
    PLUGINS_ENV,
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

/// Whether the spec names the never-evicting baseline (`full`, alias `none`), which runs unbounded.
pub fn is_full(r: &PolicyRegistry, spec: &PolicySpec) -> bool {
    r.get(&spec.name).is_ok_and(|e| e.name == "full")
}

/// The capacity a spec runs at: `full` is unbounded, the rest take `c`.
pub fn capacity_for(r: &PolicyRegistry, spec: &PolicySpec, c: usize, flag: &str) -> Result<Capacity> {
    if is_full(r, spec) {
        Ok(Capacity::Unbounded)
    } else {
        Capacity::bounded(c).with_context(|| format!("{flag} {c}"))
    }
}

/// `--kv`, set once by `main` before any state is built (f32 until then).
pub static KV_FORMAT: std::sync::OnceLock<KvFormat> = std::sync::OnceLock::new();

/// A fresh state in the given position mode (`--positions`) and KV format (`--kv`), with errors
/// that say which policy and capacity were refused.
pub fn make_state_at(
    model: &dyn CausalLm,
    r: &PolicyRegistry,
    spec: &PolicySpec,
    capacity: Capacity,
    max_chunk: usize,
    positions: Positions,
) -> Result<MsrnnState> {
    let mut cfg = model.state_config(capacity, max_chunk);
    (cfg.positions, cfg.kv) = (positions, KV_FORMAT.get().copied().unwrap_or_default());
    new_state_from(model, r, spec, &cfg).with_context(|| format!("policy `{spec}` at capacity {capacity}"))
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
            out.push_str(&format!("{pad}{}={}  {}\n", p.name, p.default, p.help));
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
