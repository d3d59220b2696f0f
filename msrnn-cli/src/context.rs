//! What every subcommand shares: the global flags, the context built from them (threads set,
//! logging started), and the device they name.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{ArgAction, Args};
use msrnn_core::{Capacity, KvFormat, PolicySpec, Positions, StateRecipe};
use msrnn_modelkit::WeightFormat;

/// Options every subcommand takes.
#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Model: a .gguf file, or a Hugging Face directory (config.json, *.safetensors,
    /// tokenizer.json). Default: the model in models/, looked for in the current directory and its
    /// parents (./scripts/fetch-model.sh puts SmolLM2-135M-Instruct there).
    #[arg(long, global = true, help_heading = "Global options", value_name = "PATH", env = "MSRNN_MODEL")]
    pub model: Option<PathBuf>,

    /// How the weight matrices are held in memory: auto (on the CPU, each matrix as stored when
    /// msrnn's kernels read its blocks: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K; other
    /// types re-quantized to Q8_0), native (as stored, always), q8_0 (re-quantized at load), f16 or
    /// f32 (dequantized: the exact reference).
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
    /// blocks of 32 with an f16 scale, 34 bytes per 32 values). Recorded in state files; a state
    /// saved in one format is refused by a run in another. [default: f32; with --resume: the
    /// saved one]
    #[arg(long, global = true, help_heading = "Global options", value_name = "FORMAT", env = "MSRNN_KV", value_parser = parse_kv)]
    pub kv: Option<KvFormat>,

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

pub(crate) fn parse_kv(s: &str) -> Result<KvFormat, String> {
    s.parse::<KvFormat>().map_err(|e| e.to_string())
}

impl Global {
    /// The position mode of new states: --positions, else absolute.
    pub fn positions(&self) -> Positions {
        self.positions.unwrap_or_default()
    }

    /// How new states store keys and values: --kv, else f32.
    pub fn kv(&self) -> KvFormat {
        self.kv.unwrap_or_default()
    }

    /// The recipe of a new state: `spec` at `capacity`, chunks of up to `max_chunk`, in
    /// --positions and --kv.
    pub fn recipe(&self, spec: &PolicySpec, capacity: Capacity, max_chunk: usize) -> StateRecipe {
        StateRecipe::new(spec.clone(), capacity).positions(self.positions()).max_chunk(max_chunk).kv(self.kv())
    }
}

pub(crate) fn parse_weights(s: &str) -> Result<WeightFormat, String> {
    s.parse::<WeightFormat>().map_err(|e| e.to_string())
}

/// What every subcommand gets.
pub struct Ctx {
    pub global: Global,
    pub threads: usize,
}

impl Ctx {
    /// Sets the thread count (before any candle operation) and builds the context.
    pub fn new(global: Global) -> Result<Self> {
        let threads = set_threads(global.threads)?;
        tracing::info!(threads, "candle CPU threads");
        Ok(Ctx { global, threads })
    }
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
        Some(n) => {
            // More threads than cores only queue behind each other (and 100,000 would not start).
            let cores = std::thread::available_parallelism().map_or(1, |c| c.get());
            if n > cores {
                tracing::warn!(requested = n, cores, "--threads is above this machine's cores; using {cores}");
            }
            n.min(cores)
        }
        None => default_threads(),
    };
    // Still single-threaded here: nothing else reads the environment concurrently.
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    // msrnn's own kernels (quantized matmuls, attention) run on their pool.
    let n = msrnn_kernels::pool::set_threads(n);
    msrnn_kernels::isa::from_env().context("MSRNN_ISA")?;
    Ok(n)
}

pub fn init_logging(verbose: u8) {
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
