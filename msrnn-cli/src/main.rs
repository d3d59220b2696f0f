//! `msrnn`: run a pretrained decoder-only transformer as a finite multi-state RNN (its KV cache
//! capped at C tokens per layer, a compression policy choosing what to drop), and measure what that
//! costs in perplexity and buys in speed and memory.

mod bench;
mod bench_batch;
mod eval;
mod generate;
mod inspect;
mod llama_bench;
mod model;
mod plot;
mod policy;
mod report;
mod state;
mod stream;

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Args, Parser, Subcommand};
use msrnn_core::Positions;
use msrnn_modelkit::WeightFormat;
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

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Model: a .gguf file, or a Hugging Face directory (config.json, *.safetensors,
    /// tokenizer.json). Default: the model in models/, looked for in the current directory and its
    /// parents (./scripts/fetch-model.sh puts SmolLM2-135M-Instruct there).
    #[arg(long, global = true, help_heading = "Global options", value_name = "PATH", env = "MSRNN_MODEL")]
    pub model: Option<PathBuf>,

    /// How the weight matrices are held in memory: auto (on the CPU, each matrix as stored when
    /// msrnn's kernels read its blocks, Q4_1 and Q8_0, else re-quantized to Q8_0), native (as
    /// stored, always), q8_0 (re-quantized at load), f16 or f32 (dequantized: the exact reference).
    /// docs/performance.md compares them.
    #[arg(long, global = true, help_heading = "Global options", value_name = "FORMAT", default_value = "auto", value_parser = parse_weights)]
    pub weights: WeightFormat,

    /// Where the model runs: `cpu`, or `cuda` / `cuda:N` in a build with `--features cuda`.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "DEVICE",
        default_value = "cpu",
        env = "MSRNN_DEVICE"
    )]
    pub device: String,

    /// Threads for the CPU: msrnn's kernel pool (matrices split by output tiles, a batch's
    /// attention by sequence) and candle's ops. Default: half the available cores, at most 4.
    /// Threads that wait spin briefly, so oversubscribed cores (other processes, or more threads
    /// than cores) make steps slower rather than faster; on a machine of your own try the physical
    /// core count.
    #[arg(long, global = true, help_heading = "Global options", value_name = "N", env = "MSRNN_THREADS")]
    pub threads: Option<usize>,

    /// Where rotary embeddings place queries and keys: `absolute` (each token at its position in
    /// the stream, as the model was trained) or `cache` (at its rank among the tokens a layer
    /// keeps, as StreamingLLM does: distances stay below C however long the run). Used by every
    /// state a subcommand builds and recorded in state files. [default: absolute; with --resume:
    /// the saved one]
    #[arg(long, global = true, help_heading = "Global options", value_name = "MODE", env = "MSRNN_POSITIONS", value_parser = parse_positions)]
    pub positions: Option<Positions>,

    /// How every state stores keys and values: f32 (exact), f16 (half the bytes) or q8_0 (8-bit
    /// blocks of 32 with an f16 scale, 34 bytes per 32 values). Recorded in state files.
    #[arg(
        long,
        global = true,
        help_heading = "Global options",
        value_name = "FORMAT",
        default_value = "f32",
        env = "MSRNN_KV"
    )]
    pub kv: msrnn_core::KvFormat,

    /// Load a compression-policy plugin so its policy can be named like a built-in: a shared
    /// library (trusted code, run in the process) or a WebAssembly module (.wasm, run in a sandbox
    /// with a memory cap and an instruction limit per call: MSRNN_WASM_MEMORY_MB,
    /// MSRNN_WASM_FUEL); repeatable. Paths in MSRNN_PLUGINS (colon-separated) are loaded too.
    #[arg(long = "plugin", global = true, help_heading = "Global options", value_name = "PATH")]
    pub plugins: Vec<PathBuf>,

    /// More logs on stderr: -v info, -vv debug, -vvv trace (RUST_LOG, if set, takes precedence).
    #[arg(short, long, global = true, help_heading = "Global options", action = ArgAction::Count)]
    pub verbose: u8,
}

pub(crate) fn parse_positions(s: &str) -> Result<Positions, String> {
    s.parse::<Positions>().map_err(|e| e.to_string())
}

impl Global {
    /// The position mode of new states: --positions, else absolute.
    pub fn positions(&self) -> Positions {
        self.positions.unwrap_or_default()
    }
}

pub(crate) fn parse_weights(s: &str) -> Result<WeightFormat, String> {
    s.parse::<WeightFormat>().map_err(|e| e.to_string())
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
}

/// The candle device named by `--device`.
pub(crate) fn device(name: &str) -> Result<candle_core::Device> {
    let ordinal = match name.trim().to_ascii_lowercase().as_str() {
        "cpu" => return Ok(candle_core::Device::Cpu),
        "cuda" => 0,
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => n,
            _ => bail!("--device {name}: expected cpu, cuda or cuda:N"),
        },
    };
    if !cfg!(feature = "cuda") {
        bail!("--device {name}: this msrnn was built without CUDA; rebuild with `cargo build --release -p msrnn-cli --features cuda`");
    }
    candle_core::Device::new_cuda(ordinal).with_context(|| format!("--device {name}: cannot open the GPU"))
}

/// The thread count used when --threads is not given: half the cores, between 1 and 4.
fn default_threads() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 2).clamp(1, 4)
}

/// Tells candle how many threads to use. Must run before any candle operation: candle reads
/// RAYON_NUM_THREADS / CANDLE_NUM_THREADS once, when it builds its thread pools.
fn set_threads(requested: Option<usize>) -> Result<usize> {
    let n = match requested {
        Some(0) => bail!("--threads must be at least 1"),
        Some(n) => n,
        None => default_threads(),
    };
    // Still single-threaded here: nothing else reads the environment concurrently.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    // msrnn's own kernels (quantized matmuls, attention) run on their pool.
    msrnn_kernels::pool::set_threads(n);
    msrnn_kernels::isa::from_env().context("MSRNN_ISA")?;
    Ok(n)
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let level = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn run(cli: Cli) -> Result<()> {
    let threads = set_threads(cli.global.threads)?;
    tracing::info!(threads, "candle CPU threads");
    policy::KV_FORMAT.set(cli.global.kv).expect("set once");
    let ctx = Ctx { global: cli.global, threads };
    match cli.command {
        Command::Generate(a) => generate::run(&ctx, a),
        Command::Ppl(a) => eval::ppl::run(&ctx, a),
        Command::Eval(a) => eval::run(&ctx, a),
        Command::Inspect(a) => inspect::run(&ctx, a),
        Command::Bench(a) => bench::run(&ctx, a),
        Command::Policies => policy::list(&ctx),
        Command::State(a) => state::run(&ctx, a),
    }
}

/// What every subcommand gets.
pub struct Ctx {
    pub global: Global,
    pub threads: usize,
}

fn main() {
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
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
