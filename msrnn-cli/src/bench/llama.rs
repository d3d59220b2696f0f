//! `msrnn bench --llama-bench PATH`: runs llama.cpp's `llama-bench` on the same GGUF file with the
//! bench's settings (threads, decode steps, contexts as depths) and reads its JSON, so the
//! comparison with llama.cpp is one command. `scripts/build-llama-bench.sh` builds the binary.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use msrnn_core::KvFormat;
use serde::Serialize;

use super::args::BenchArgs;
use crate::context::Ctx;
use crate::model::LoadedModel;

/// Refuses a path that cannot be llama-bench before any work is done.
pub fn check_binary(path: &Path) -> Result<()> {
    let hint = "build it with ./scripts/build-llama-bench.sh (it lands in .peers/llama-bench)";
    let meta =
        std::fs::metadata(path).with_context(|| format!("--llama-bench {}: no such file; {hint}", path.display()))?;
    if !meta.is_file() {
        bail!("--llama-bench {}: not a file (give the llama-bench binary); {hint}", path.display());
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if meta.permissions().mode() & 0o111 == 0 {
            bail!("--llama-bench {}: not executable (chmod +x it, or {hint})", path.display());
        }
    }
    Ok(())
}

/// What llama-bench is asked to measure.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub binary: PathBuf,
    pub model: PathBuf,
    pub threads: usize,
    /// Prompt tokens of its prefill test (`-p`).
    pub prompt: usize,
    /// Tokens of its generation test (`-n`).
    pub gen: usize,
    /// Tokens already in the cache before each test (`-d`).
    pub depths: Vec<usize>,
    /// Repetitions of each test (`-r`).
    pub reps: usize,
    /// Its key/value cache type (`-ctk`, `-ctv`); `None`: its default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv: Option<KvFormat>,
}

impl Settings {
    pub fn args(&self) -> Vec<String> {
        let depths: Vec<String> = self.depths.iter().map(|d| d.to_string()).collect();
        let mut args: Vec<String> = vec![
            "-m".into(),
            self.model.display().to_string(),
            "-t".into(),
            self.threads.to_string(),
            "-p".into(),
            self.prompt.to_string(),
            "-n".into(),
            self.gen.to_string(),
            "-d".into(),
            depths.join(","),
            "-r".into(),
            self.reps.to_string(),
            "-o".into(),
            "json".into(),
        ];
        if let Some(kv) = &self.kv {
            args.extend(["-ctk".into(), kv.name().into(), "-ctv".into(), kv.name().into()]);
        }
        args
    }

    /// The command line, for notes and result files.
    pub fn command(&self) -> String {
        std::iter::once(self.binary.display().to_string()).chain(self.args()).collect::<Vec<_>>().join(" ")
    }
}

/// One of llama-bench's tests: a prefill (`pp`: n_prompt tokens) or a generation (`tg`: n_gen
/// tokens one by one), after n_depth tokens.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Test {
    pub n_prompt: usize,
    pub n_gen: usize,
    pub n_depth: usize,
    /// Mean tokens per second over the repetitions, and their standard deviation.
    pub avg_ts: f64,
    pub stddev_ts: f64,
}

/// What a run gave: the tests, the weight type it ran (`Q4_1`) and its build.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub command: String,
    pub model_type: String,
    pub build_commit: String,
    pub tests: Vec<Test>,
}

impl Report {
    /// The row name for tables: `llama.cpp (Q4_1)`.
    pub fn name(&self) -> String {
        match self.model_type.split_whitespace().last() {
            Some(w) => format!("llama.cpp ({w})"),
            None => "llama.cpp".into(),
        }
    }
    /// The prefill test after `depth` tokens.
    pub fn pp(&self, depth: usize) -> Option<&Test> {
        self.tests.iter().find(|t| t.n_depth == depth && t.n_gen == 0 && t.n_prompt > 0)
    }
    /// The generation test after `depth` tokens.
    pub fn tg(&self, depth: usize) -> Option<&Test> {
        self.tests.iter().find(|t| t.n_depth == depth && t.n_gen > 0 && t.n_prompt == 0)
    }
}

/// Runs llama-bench and reads its JSON; a failure is an error carrying its stderr.
pub fn run(s: &Settings) -> Result<Report> {
    let command = s.command();
    let out = Command::new(&s.binary)
        .args(s.args())
        .output()
        .with_context(|| format!("--llama-bench: cannot run `{command}`"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail = |text: &str| -> String {
        let lines: Vec<&str> = text.trim_end().lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    };
    if !out.status.success() {
        bail!("--llama-bench: `{command}` failed ({}):\n{}", out.status, tail(&stderr));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    parse(&stdout, command.clone()).with_context(|| {
        format!("--llama-bench: cannot read the JSON of `{command}`; its stderr ends with:\n{}", tail(&stderr))
    })
}

/// Reads llama-bench's `-o json` output (an array of test objects).
pub fn parse(json: &str, command: String) -> Result<Report> {
    let v: serde_json::Value = serde_json::from_str(json.trim()).context("not JSON")?;
    let items = v.as_array().context("expected a JSON array of tests")?;
    if items.is_empty() {
        bail!("it reported no test");
    }
    let mut tests = Vec::with_capacity(items.len());
    let field = |o: &serde_json::Value, k: &str| -> Result<f64> {
        o.get(k).and_then(serde_json::Value::as_f64).with_context(|| format!("a test without a numeric `{k}`: {o}"))
    };
    for o in items {
        tests.push(Test {
            n_prompt: field(o, "n_prompt")? as usize,
            n_gen: field(o, "n_gen")? as usize,
            n_depth: o.get("n_depth").and_then(serde_json::Value::as_f64).unwrap_or(0.0) as usize,
            avg_ts: field(o, "avg_ts")?,
            stddev_ts: o.get("stddev_ts").and_then(serde_json::Value::as_f64).unwrap_or(0.0),
        });
    }
    let text = |k: &str| items[0].get(k).and_then(serde_json::Value::as_str).unwrap_or("").to_string();
    Ok(Report { command, model_type: text("model_type"), build_commit: text("build_commit"), tests })
}

/// llama-bench's settings matching this bench: the same file and threads, the contexts as depths
/// (its `tg` at depth d is our decode at context d), the first context as its prompt (our first
/// prefill, from zero).
pub fn settings(binary: &Path, m: &LoadedModel, ctx: &Ctx, contexts: &[usize], a: &BenchArgs) -> Result<Settings> {
    if !(m.path.is_file() && m.path.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf"))) {
        bail!("--llama-bench runs GGUF files only; the model is {}", m.path.display());
    }
    Ok(Settings {
        binary: binary.to_path_buf(),
        model: m.path.clone(),
        threads: ctx.threads,
        prompt: contexts[0],
        gen: a.decode_steps,
        depths: contexts.to_vec(),
        reps: a.llama_reps,
        kv: a.llama_kv,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_llama_bench_json() {
        let json = r#"[
          {"build_commit": "0c1e570", "model_type": "llama 256M Q4_1", "n_prompt": 256, "n_gen": 0, "n_depth": 0,
           "avg_ts": 150.5, "stddev_ts": 1.5},
          {"build_commit": "0c1e570", "model_type": "llama 256M Q4_1", "n_prompt": 0, "n_gen": 16, "n_depth": 1024,
           "avg_ts": 60.0, "stddev_ts": 0.5}
        ]"#;
        let r = parse(json, "llama-bench ...".into()).unwrap();
        assert_eq!(r.name(), "llama.cpp (Q4_1)");
        assert_eq!(r.build_commit, "0c1e570");
        assert_eq!(r.pp(0).unwrap().avg_ts, 150.5);
        assert_eq!(r.tg(1024).unwrap().n_gen, 16);
        assert!(r.tg(0).is_none() && r.pp(1024).is_none());
        assert!(parse("[]", String::new()).is_err());
        assert!(parse("| model | size |", String::new()).is_err());
        assert!(parse(r#"[{"n_prompt": 1}]"#, String::new()).unwrap_err().to_string().contains("n_gen"));
    }

    #[test]
    fn passes_the_bench_settings() {
        let s = Settings {
            binary: "/x/llama-bench".into(),
            model: "m.gguf".into(),
            threads: 1,
            prompt: 256,
            gen: 16,
            depths: vec![256, 1024],
            reps: 3,
            kv: None,
        };
        assert_eq!(s.command(), "/x/llama-bench -m m.gguf -t 1 -p 256 -n 16 -d 256,1024 -r 3 -o json");
        let f16 = Settings { kv: Some(KvFormat::F16), ..s.clone() };
        assert!(f16.command().ends_with("-o json -ctk f16 -ctv f16"), "{}", f16.command());
        let q8 = Settings { kv: Some(KvFormat::Q8_0), ..s };
        assert!(q8.command().ends_with("-ctk q8_0 -ctv q8_0"), "{}", q8.command());
    }
}
