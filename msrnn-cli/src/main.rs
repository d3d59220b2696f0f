//! `msrnn`: run a pretrained decoder-only transformer as a finite multi-state RNN (its KV cache
//! capped at C tokens per layer, a compression policy choosing what to drop), and measure what that
//! costs in perplexity and buys in speed and memory.

mod bench;
mod context;
mod eval;
mod generate;
mod inspect;
mod model;
mod plot;
mod policy;
mod report;
mod serve;
mod state;

use anyhow::Result;
use clap::{Parser, Subcommand};
// The context as the files that name it at the crate root (generate, state, model, policy) see it.
pub(crate) use context::{device, Ctx, Global};
// The model families: each registers itself in the model kit's registry, which is how the
// subcommands find them. Adding a family is one line here and one in Cargo.toml.
use msrnn_gemma as _;
use msrnn_llama as _;
// WebAssembly policy plugins, run in a sandbox: registers the kind, so `--plugin x.wasm` works.
use msrnn_wasm as _;

const LONG_ABOUT: &str = "\
Run a pretrained decoder-only transformer as a finite multi-state RNN.

A transformer's key/value cache is a multi-state that grows with every token. msrnn caps it at C
tokens per layer and lets a compression policy (window, window+i, h2o, tova, random, or a plugin)
choose which tokens to drop, so memory and per-token cost stop growing. `full` keeps everything:
the plain transformer, the baseline every table includes.

With no --model, the model in models/ is used (found in the current directory or a parent);
./scripts/fetch-model.sh fetches SmolLM2-135M-Instruct there. Results go to stdout, progress and
statistics to stderr.";

const AFTER_HELP: &str = "\
Examples:
  msrnn generate \"What is the capital of France?\"
  msrnn generate --policy window+i:sinks=4 --capacity 128 --max-tokens 200 --prompt-file story.txt
  msrnn eval ppl --tokens 1024 --capacities 32,64,128 --out results/ppl.json --plot results/ppl.svg
  msrnn eval passkey --lengths 1024,2048 --policies full,tova --capacities 128,512 --plot acc.svg --heatmap depth.svg
  msrnn eval passkey --shard 0/4 --out part0.json && msrnn eval merge part*.json --out all.json
  msrnn inspect --policy tova --capacity 128 --tokens 2048 --plot kept.png
  msrnn bench --contexts 256,1024,4096 --out results/bench.json --plot results/bench.svg
  msrnn bench --batch 1,4,16,64 --policies tova --capacity 512 --contexts 1024
  msrnn bench --kv-budget 4GiB --policies tova --capacity 512 --contexts 8192
  msrnn bench --llama-bench .peers/llama-bench --contexts 1024 --decode-steps 32
  msrnn generate --jsonl \"Name a river.\" \"Name a mountain.\"
  msrnn policies
  msrnn generate --save-state chat.st \"Hello!\" && msrnn generate --resume chat.st \"Tell me more.\"";

#[derive(Parser)]
#[command(name = "msrnn", version, about = "Run a pretrained transformer as a finite multi-state RNN", long_about = LONG_ABOUT, after_help = AFTER_HELP)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate text, streaming tokens as they come; optionally save or resume the state.
    Generate(generate::GenerateArgs),
    /// Perplexity of a text for a grid of policies x cache capacities (table, JSON, plot); the
    /// same as `msrnn eval ppl`.
    Ppl(eval::ppl::PplArgs),
    /// Evaluation tasks over grids of policies x capacities: perplexity, passkey retrieval, and the
    /// merge of shards run apart (`--shard I/N`).
    Eval(eval::EvalArgs),
    /// Which tokens each layer keeps, at the end of a text and over time, by kind of token.
    Inspect(inspect::InspectArgs),
    /// Decode and prefill speed, KV bytes and peak memory per policy vs. context length.
    Bench(bench::BenchArgs),
    /// List the compression policies: built-ins and loaded plugins, with their parameters.
    Policies,
    /// Inspect a state file written by `generate --save-state`.
    State(state::StateArgs),
    /// An OpenAI-compatible HTTP server: every conversation a finite state, stored between turns.
    Serve(serve::ServeArgs),
}

fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::new(cli.global)?;
    match cli.command {
        Command::Generate(a) => generate::run(&ctx, a),
        Command::Ppl(a) => eval::ppl::run(&ctx, a),
        Command::Eval(a) => eval::run(&ctx, a),
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Bench(a) => bench::run(&ctx, a),
        Command::Policies => policy::list(&ctx),
        Command::State(a) => state::run(&ctx, a),
        Command::Serve(a) => serve::run(&ctx, a),
    }
}

fn main() {
    let cli = Cli::parse();
    context::init_logging(cli.global.verbose);
    let result = run(cli);
    tracing::debug!(stats = ?msrnn_kernels::pool::stats(), "thread pool");
    if let Err(e) = result {
        // A closed pipe (`msrnn generate ... | head`) is the reader's choice, not an error.
        if e.chain()
            .any(|c| c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe))
        {
            std::process::exit(0);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
