//! `msrnn serve`: the OpenAI-compatible server (msrnn-server) with the model and policies this
//! binary loads. Flags only; the server is the library's.

use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use crate::Ctx;

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,

    /// Port to listen on (0: any free port; the bound address is printed on stdout).
    #[arg(long, default_value_t = 8080)]
    port: u16,

    /// Default compression policy of new conversations (a request may name another under
    /// `"msrnn": {"policy": ...}`).
    #[arg(long, short = 'p', value_name = "SPEC", default_value = "tova")]
    policy: String,

    /// Default cache capacity C (tokens kept per layer) of new conversations.
    #[arg(long, short = 'c', value_name = "C", default_value_t = 512)]
    capacity: usize,

    /// KV cache bytes the running conversations may hold together (e.g. 4GiB, 512MiB); requests
    /// beyond it wait in the queue.
    #[arg(long, value_name = "SIZE", default_value = "4GiB", value_parser = crate::bench::parse_size)]
    kv_budget: u64,

    /// Where conversations are stored between turns: sqlite:PATH (one file, the default) or
    /// redis://HOST:PORT (shared by several server processes).
    #[arg(long, value_name = "STORE", default_value = "sqlite:msrnn-sessions.db")]
    sessions: String,

    /// Delete a stored session after this long without a turn (e.g. 30m, 12h, 7d; 0: never).
    #[arg(long, value_name = "TIME", default_value = "7d", value_parser = parse_duration)]
    session_ttl: Duration,

    /// Requests that may wait for KV budget; beyond it they get 429 with Retry-After.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_queue: usize,

    /// How long a request may wait in the queue before it gets 429.
    #[arg(long, value_name = "TIME", default_value = "30s", value_parser = parse_duration)]
    queue_timeout: Duration,

    /// Require `Authorization: Bearer KEY` on /v1/ (also read from MSRNN_API_KEY).
    #[arg(long, value_name = "KEY", env = "MSRNN_API_KEY", hide_env_values = true)]
    api_key: Option<String>,

    /// The largest max_tokens a request may ask for.
    #[arg(long, value_name = "N", default_value_t = 4096)]
    max_tokens_limit: usize,

    /// max_tokens of a chat request that gives none.
    #[arg(long, value_name = "N", default_value_t = 256)]
    default_max_tokens: usize,

    /// The longest prompt (a turn's new tokens) a request may send. [default: the model's context]
    #[arg(long, value_name = "N")]
    max_prompt_tokens: Option<usize>,

    /// The largest request body (e.g. 4MiB).
    #[arg(long, value_name = "SIZE", default_value = "4MiB", value_parser = crate::bench::parse_size)]
    max_body: u64,

    /// Open connections at most; more wait to be accepted.
    #[arg(long, value_name = "N", default_value_t = 256)]
    max_connections: usize,

    /// Close a connection that sends no complete request headers for this long (idle
    /// keep-alive connections too).
    #[arg(long, value_name = "TIME", default_value = "30s", value_parser = parse_duration)]
    header_timeout: Duration,

    /// Prompt tokens per prefill chunk (the policy runs after each).
    #[arg(long, value_name = "N", default_value_t = 64)]
    prefill_chunk: usize,

    /// Prompt tokens fed per engine step over all sequences, so long prompts do not stall the
    /// others' decoding.
    #[arg(long, value_name = "N", default_value_t = 512)]
    prefill_budget: usize,

    /// On SIGTERM, how long running turns may take to finish before the server exits anyway.
    #[arg(long, value_name = "TIME", default_value = "60s", value_parser = parse_duration)]
    drain_timeout: Duration,

    /// The model name /v1/models lists. [default: the model file's name]
    #[arg(long, value_name = "NAME")]
    served_model_name: Option<String>,
}

/// `90`, `90s`, `30m`, `12h`, `7d`.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}`: expected a time such as 30s, 10m, 12h or 7d"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        u => return Err(format!("`{s}`: unknown unit `{u}` (s, m, h, d)")),
    };
    n.checked_mul(mult).map(Duration::from_secs).ok_or_else(|| format!("`{s}`: too long"))
}

pub fn run(ctx: &Ctx, a: ServeArgs) -> Result<()> {
    let registry = crate::policy::registry(ctx)?;
    let device = crate::context::device(&ctx.global.device)?;
    let (path, _) = crate::model::resolve(&ctx.global)?;
    let model = msrnn_engine::load(&path, ctx.global.weights, &device)
        .with_context(|| format!("cannot load {}", path.display()))?;
    let context = model.info().max_context;
    let limits = msrnn_server::Limits {
        max_tokens: a.max_tokens_limit.max(1),
        default_max_tokens: a.default_max_tokens.clamp(1, a.max_tokens_limit.max(1)),
        max_prompt_tokens: a.max_prompt_tokens.unwrap_or(if context > 0 { context } else { 8192 }),
        max_body: usize::try_from(a.max_body).context("--max-body is too large")?,
    };
    let cfg = msrnn_server::ServerConfig {
        host: a.host,
        port: a.port,
        policy: a.policy,
        capacity: a.capacity,
        positions: ctx.global.positions(),
        kv: ctx.global.kv(),
        prefill_chunk: a.prefill_chunk,
        prefill_budget: a.prefill_budget,
        kv_budget: usize::try_from(a.kv_budget).context("--kv-budget is too large")?,
        sessions: a.sessions,
        session_ttl: (!a.session_ttl.is_zero()).then_some(a.session_ttl),
        max_queue: a.max_queue,
        queue_timeout: a.queue_timeout,
        api_key: a.api_key.filter(|k| !k.is_empty()),
        limits,
        max_connections: a.max_connections,
        header_timeout: a.header_timeout,
        drain_timeout: a.drain_timeout,
        model_name: a.served_model_name,
    };
    eprintln!(
        "msrnn serve: {} (threads: {}), model load {:.2} s",
        model.describe(),
        ctx.threads,
        model.load_time.as_secs_f64()
    );
    msrnn_server::run(cfg, std::sync::Arc::new(model), std::sync::Arc::new(registry)).context("msrnn serve")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("7d").unwrap(), Duration::from_secs(7 * 86400));
        assert!(parse_duration("5w").is_err());
        assert!(parse_duration("m").is_err());
    }
}
