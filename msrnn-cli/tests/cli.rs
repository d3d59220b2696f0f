//! The `msrnn` binary end to end: every error a user meets (each a clear message, never a panic),
//! the listings, a tiny perplexity grid and bench that write JSON and pictures, deterministic
//! generation, and save/resume giving the same continuation as one uninterrupted run.
//!
//! Tests that need the real model (models/SmolLM2-135M-Instruct.Q4_1.gguf, fetched by
//! ./scripts/fetch-model.sh, as ./scripts/test.sh and CI do), Gemma 3 270M
//! (./scripts/fetch-gemma.sh) or the texts (./scripts/fetch-data.sh) print why and return when the
//! files are missing. The context-length and architecture tests write their own tiny models, so
//! they always run.

use std::path::PathBuf;
use std::process::Output;

use assert_cmd::Command;
use candle_core::quantized::GgmlDType;
use msrnn_tests::files::{scratch, workspace as root};
use msrnn_tests::tiny_llama::{tiny_config, TinyLlama};

/// The default model the binary finds in models/ (so not `MSRNN_MODEL`, which `msrnn()` unsets).
fn model() -> Option<PathBuf> {
    msrnn_tests::files::needs(None, "models/SmolLM2-135M-Instruct.Q4_1.gguf", "./scripts/fetch-model.sh")
}

/// Gemma 3 270M.
fn gemma() -> Option<PathBuf> {
    msrnn_tests::files::gemma3_270m()
}

fn hamlet() -> Option<PathBuf> {
    msrnn_tests::files::hamlet()
}

/// `msrnn` run from the repository root, with a clean environment and one thread.
fn msrnn() -> Command {
    let mut c = Command::cargo_bin("msrnn").unwrap();
    c.current_dir(root())
        .env_remove("MSRNN_MODEL")
        .env_remove("MSRNN_PLUGINS")
        .env_remove("RUST_LOG")
        .env("MSRNN_THREADS", "1")
        .timeout(std::time::Duration::from_secs(240));
    c
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Runs and expects success.
fn ok(c: &mut Command) -> Output {
    let o = c.output().unwrap();
    assert!(
        o.status.success(),
        "expected success, got {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    o
}

/// Runs, expects exit code 1 (an error, not a panic: a panic exits 101) and returns stderr, after
/// checking it contains every needle.
fn fails(c: &mut Command, needles: &[&str]) -> String {
    let o = c.output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "expected a clean error (exit 1)\nstdout:\n{}\nstderr:\n{err}", stdout(&o));
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.starts_with("error: ") || err.contains("\nerror: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}:\n{err}");
    }
    err
}

// ---- without a model ----

#[test]
fn help_names_every_subcommand_and_the_model_default() {
    let o = ok(msrnn().arg("--help"));
    let out = stdout(&o);
    for s in [
        "generate",
        "ppl",
        "bench",
        "policies",
        "state",
        "--model",
        "--weights",
        "--threads",
        "--plugin",
        "fetch-model.sh",
    ] {
        assert!(out.contains(s), "--help lacks {s}:\n{out}");
    }
    let o = ok(msrnn().args(["generate", "--help"]));
    for s in [
        "--policy",
        "--capacity",
        "--max-tokens",
        "--temperature",
        "--top-p",
        "--seed",
        "--raw",
        "--save-state",
        "--resume",
        "--prompt-file",
    ] {
        assert!(stdout(&o).contains(s), "generate --help lacks {s}");
    }
}

#[test]
fn policies_lists_every_builtin_with_parameters() {
    let o = ok(msrnn().arg("policies"));
    let out = stdout(&o);
    for name in ["full", "window", "window+i", "h2o", "tova", "random"] {
        assert!(out.lines().any(|l| l.starts_with(&format!("{name} "))), "no line for {name}:\n{out}");
    }
    for s in ["sinks=4", "recent=0.5", "seed=0", "alias: sinks", "built-in"] {
        assert!(out.contains(s), "lacks {s}:\n{out}");
    }
}

#[test]
fn a_missing_plugin_is_a_clear_error() {
    fails(
        msrnn().args(["--plugin", "/nonexistent/libnothing.so", "policies"]),
        &["--plugin /nonexistent/libnothing.so", "cannot open"],
    );
    let d = scratch("plugin-env");
    let bogus = d.join("libbogus.so");
    std::fs::write(&bogus, "not a library").unwrap();
    fails(msrnn().env("MSRNN_PLUGINS", &bogus).arg("policies"), &["MSRNN_PLUGINS", "libbogus.so"]);
}

#[test]
fn no_model_found_says_how_to_fetch_it() {
    // outside the repository (whose models/ the search would find)
    let d = std::env::temp_dir().join(format!("msrnn-cli-no-model-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    fails(
        msrnn().current_dir(&d).args(["generate", "hello"]),
        &["no model found", "./scripts/fetch-model.sh", "--model"],
    );
    // an empty models/ directory is no better
    std::fs::create_dir_all(d.join("models")).unwrap();
    fails(msrnn().current_dir(&d).args(["generate", "hello"]), &["no model found", "holds no .gguf file"]);
    let _ = std::fs::remove_dir_all(&d);
}

#[test]
fn unreadable_and_non_gguf_model_files_are_refused() {
    fails(
        msrnn().args(["--model", "/nonexistent/model.gguf", "generate", "hi"]),
        &["--model", "/nonexistent/model.gguf"],
    );
    let d = scratch("not-gguf");
    let text = d.join("model.gguf");
    std::fs::write(&text, "this is not a model\n").unwrap();
    fails(msrnn().args(["generate", "hi", "--model"]).arg(&text), &["not a GGUF model file", "model.gguf"]);
    let empty = d.join("empty.gguf");
    std::fs::write(&empty, "").unwrap();
    fails(msrnn().arg("--model").arg(&empty).args(["generate", "hi"]), &["empty.gguf", "empty"]);
    // a truncated GGUF header
    let trunc = d.join("trunc.gguf");
    std::fs::write(&trunc, b"GGUF\x03\x00\x00\x00\x10").unwrap();
    fails(msrnn().arg("--model").arg(&trunc).args(["generate", "hi"]), &["trunc.gguf"]);
}

/// A GGUF of a family the CLI has no adapter for names both that it knows.
#[test]
fn an_unsupported_gguf_architecture_lists_the_supported_families() {
    let d = scratch("arch");
    let path = d.join("mistral.gguf");
    let model = TinyLlama::random(tiny_config(), 7);
    let tensors = model.gguf_tensors(GgmlDType::F32, true);
    msrnn_tests::write_gguf(&path, &model.gguf_metadata("mistral"), &tensors);
    // The families the binary links, from the registry (so a family that failed to link shows).
    fails(
        msrnn().arg("--model").arg(&path).args(["generate", "hi"]),
        &["mistral.gguf", "GGUF architecture `mistral` is not supported", "(supported: gemma3, llama)"],
    );
}

#[test]
fn unknown_policy_suggests_the_closest_names() {
    fails(msrnn().args(["generate", "--policy", "tvoa", "hi"]), &["--policy tvoa", "unknown policy `tvoa`", "`tova`"]);
    fails(msrnn().args(["ppl", "--policies", "window,h2o0"]), &["unknown policy `h2o0`", "`h2o`"]);
    fails(msrnn().args(["generate", "--policy", "window+i:snks=3", "hi"]), &["unknown parameter `snks`", "sinks"]);
}

#[test]
fn capacity_zero_is_refused() {
    fails(msrnn().args(["generate", "--capacity", "0", "hi"]), &["--capacity 0", "at least 1"]);
    fails(msrnn().args(["ppl", "--capacities", "16,0"]), &["--capacities", "at least 1"]);
    fails(msrnn().args(["bench", "--capacity", "0"]), &["--capacity 0", "at least 1"]);
}

#[test]
fn bad_flags_fail_before_any_work() {
    fails(msrnn().args(["generate"]), &["no prompt"]);
    fails(msrnn().args(["generate", "   "]), &["the prompt is empty"]);
    fails(msrnn().args(["--threads", "0", "policies"]), &["--threads must be at least 1"]);
    fails(msrnn().args(["ppl", "--plot", "grid.pdf"]), &["--plot grid.pdf", ".svg or .png"]);
    fails(msrnn().args(["ppl", "--tokens", "1"]), &["--tokens 1", "at least 2"]);
    fails(msrnn().args(["generate", "--temperature", "0.7", "--top-p", "1.5", "hi"]), &["top-p must be in (0, 1]"]);
    let o = msrnn().args(["--weights", "q9", "policies"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "clap usage error");
    assert!(stderr(&o).contains("unknown weight format `q9`"), "{}", stderr(&o));
}

#[test]
fn a_file_that_is_not_a_state_is_refused() {
    let d = scratch("not-state");
    let f = d.join("state.st");
    std::fs::write(&f, "hello").unwrap();
    fails(msrnn().args(["generate", "--resume"]).arg(&f), &["--resume", "state.st", "not a state file"]);
    fails(msrnn().args(["state", "show"]).arg(&f), &["state.st", "not a state file"]);
    fails(msrnn().args(["state", "show", "/nonexistent/s.st"]), &["/nonexistent/s.st"]);
}

/// A prompt past the model's context: the full policy warns (and goes on), a bounded one just goes
/// on. A tiny model with a 64-token context, written here, makes it instant.
#[test]
fn a_prompt_longer_than_the_context_warns_with_the_full_policy_only() {
    let d = scratch("tiny");
    let path = d.join("tiny.gguf");
    TinyLlama::random(tiny_config(), 7).write_gguf(&path, GgmlDType::F32, true);
    let prompt = "hello the world ".repeat(20); // well over 64 tokens
    let o = ok(msrnn().arg("--model").arg(&path).args(["generate", "--raw", "--policy", "full", "-n", "4", &prompt]));
    let err = stderr(&o);
    assert!(err.contains("warning:") && err.contains("longer than the model's context of 64 tokens"), "{err}");
    assert!(err.contains("tokens seen"), "the run went on: {err}");
    let o = ok(msrnn().arg("--model").arg(&path).args([
        "generate",
        "--raw",
        "--policy",
        "window",
        "--capacity",
        "16",
        "-n",
        "4",
        &prompt,
    ]));
    let err = stderr(&o);
    assert!(!err.contains("warning"), "a bounded policy keeps going without a warning: {err}");
    assert!(err.contains("live cache 16 tokens per layer"), "{err}");
}

/// Builds the keynorm plugin (plugins/keynorm) into this test's target dir and profile.
fn keynorm_plugin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
        "debug" => "dev".to_string(),
        p => p.to_string(),
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let o = std::process::Command::new(cargo)
        .current_dir(root())
        .args(["build", "-p", "msrnn-plugin-keynorm", "--profile", &profile, "--target-dir"])
        .arg(profile_dir.parent().unwrap())
        .output()
        .unwrap();
    assert!(o.status.success(), "building the keynorm plugin failed:\n{}", String::from_utf8_lossy(&o.stderr));
    profile_dir.join(format!("{}msrnn_keynorm{}", std::env::consts::DLL_PREFIX, std::env::consts::DLL_SUFFIX))
}

#[test]
fn a_plugin_policy_is_listed_and_runs() {
    let so = keynorm_plugin();
    let o = ok(msrnn().arg("--plugin").arg(&so).arg("policies"));
    let out = stdout(&o);
    assert!(out.lines().any(|l| l.starts_with("keynorm ") && l.contains("plugin")), "{out}");
    assert!(out.contains(&format!("from {}", so.display())), "{out}");
    let o = ok(msrnn().env("MSRNN_PLUGINS", &so).arg("policies"));
    assert!(stdout(&o).lines().any(|l| l.starts_with("keynorm ")), "MSRNN_PLUGINS: {}", stdout(&o));
    // loading it twice clashes, clearly
    fails(msrnn().env("MSRNN_PLUGINS", &so).arg("--plugin").arg(&so).arg("policies"), &["--plugin", "clashes"]);
    // and it drives a model like a built-in (the tiny model: instant)
    let d = scratch("plugin-tiny");
    let tiny = d.join("tiny.gguf");
    TinyLlama::random(tiny_config(), 3).write_gguf(&tiny, GgmlDType::F32, true);
    let o = ok(msrnn().arg("--plugin").arg(&so).arg("--model").arg(&tiny).args([
        "generate",
        "--raw",
        "--policy",
        "keynorm",
        "--capacity",
        "8",
        "-n",
        "6",
        "hello the world hello the world",
    ]));
    let err = stderr(&o);
    assert!(err.contains("policy keynorm, capacity 8") && err.contains("live cache 8 tokens per layer"), "{err}");
}

// ---- with the real model ----

#[test]
fn capacity_below_a_policys_protected_tokens_is_refused() {
    if model().is_none() {
        return;
    }
    fails(
        msrnn().args(["generate", "--policy", "window+i:sinks=4", "--capacity", "4", "hi"]),
        &["window+i", "must exceed sinks=4"],
    );
    fails(msrnn().args(["generate", "--policy", "full", "--capacity", "64", "hi"]), &["full", "takes no capacity"]);
    if hamlet().is_some() {
        fails(
            msrnn().args(["ppl", "--policies", "window+i:sinks=8", "--capacities", "8,16"]),
            &["window+i:sinks=8", "capacity 8"],
        );
    }
}

#[test]
fn a_text_shorter_than_tokens_is_refused() {
    if model().is_none() {
        return;
    }
    let d = scratch("short-text");
    let t = d.join("short.txt");
    std::fs::write(&t, "To be, or not to be, that is the question.").unwrap();
    fails(msrnn().args(["ppl", "--tokens", "2048", "--text"]).arg(&t), &["short.txt", "fewer than --tokens 2048"]);
    fails(msrnn().args(["ppl", "--text", "/nonexistent/text.txt"]), &["--text /nonexistent/text.txt"]);
}

#[test]
fn greedy_generation_is_deterministic_and_reports_the_state() {
    if model().is_none() {
        return;
    }
    let args = ["generate", "--policy", "tova", "--capacity", "32", "-n", "40", "Write a short poem about the sea."];
    let a = ok(msrnn().args(args));
    let b = ok(msrnn().args(args));
    assert!(stdout(&a).split_whitespace().count() >= 5, "too little text: {:?}", stdout(&a));
    assert_eq!(stdout(&a), stdout(&b));
    let err = stderr(&a);
    for s in ["tokens/s", "tokens seen", "live cache 32 tokens per layer", "KV ", "policy tova, capacity 32"] {
        assert!(err.contains(s), "stats lack {s:?}: {err}");
    }
    // stdin and --prompt-file give the same prompt
    let c = ok(msrnn().args(&args[..7]).arg("-").write_stdin("Write a short poem about the sea."));
    assert_eq!(stdout(&a), stdout(&c));
    let d = scratch("prompt-file");
    std::fs::write(d.join("p.txt"), "Write a short poem about the sea.").unwrap();
    let e = ok(msrnn().args(&args[..7]).arg("--prompt-file").arg(d.join("p.txt")));
    assert_eq!(stdout(&a), stdout(&e));
}

/// The real test of resuming: N tokens, save, resume for N more gives the same text as 2N tokens
/// in one run, greedy and sampled; and a state from another policy or model is refused.
#[test]
fn save_then_resume_continues_exactly_like_one_run() {
    if model().is_none() {
        return;
    }
    let d = scratch("resume");
    let prompt = "Tell me a story about a lighthouse keeper.";
    // capacity 24 < prompt + 40 tokens: the policy evicts on both sides of the save
    for (name, sampling) in
        [("greedy", vec![]), ("sampled", vec!["--temperature", "0.8", "--top-p", "0.9", "--seed", "11"])]
    {
        let state = d.join(format!("{name}.st"));
        let base = ["generate", "--policy", "h2o", "--capacity", "24"];
        let whole = ok(msrnn().args(base).args(&sampling).args(["-n", "40", prompt]));
        let first = ok(msrnn().args(base).args(&sampling).args(["-n", "20", "--save-state"]).arg(&state).arg(prompt));
        assert!(stderr(&first).contains("saved the state"), "{}", stderr(&first));
        // policy, capacity and sampling come from the file
        let second = ok(msrnn().args(["generate", "-n", "20", "--resume"]).arg(&state));
        let (w, f, s) = (stdout(&whole), stdout(&first), stdout(&second));
        assert!(!s.is_empty(), "{name}: the resumed run generated nothing");
        assert_eq!(
            format!("{f}{s}"),
            w,
            "{name}: resumed text differs from one run\nfirst: {f:?}\nsecond: {s:?}\nwhole: {w:?}"
        );
        assert!(stderr(&second).contains("tokens seen"), "{}", stderr(&second));
    }
    let state = d.join("greedy.st");
    let shown = ok(msrnn().args(["state", "show"]).arg(&state));
    for s in [
        "policy       h2o",
        "capacity     24",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
        "weights q8_0",
        "greedy",
        "turns        1",
    ] {
        assert!(stdout(&shown).contains(s), "state show lacks {s:?}:\n{}", stdout(&shown));
    }
    fails(
        msrnn().args(["generate", "--policy", "tova", "-n", "2", "--resume"]).arg(&state),
        &["--resume", "saved with policy `h2o`, but this run uses `tova`"],
    );
    fails(
        msrnn().args(["generate", "--capacity", "32", "-n", "2", "--resume"]).arg(&state),
        &["saved with capacity `24`, but this run uses `32`"],
    );
    fails(
        msrnn().args(["--weights", "native", "generate", "-n", "2", "--resume"]).arg(&state),
        &["saved with model", "weights q8_0", "weights native"],
    );
    // a new turn on top of the saved conversation works
    let o = ok(msrnn().args(["generate", "-n", "8", "--resume"]).arg(&state).arg("And then?"));
    assert!(!stdout(&o).is_empty());
}

#[test]
fn a_tiny_ppl_grid_writes_json_svg_and_png() {
    if model().is_none() || hamlet().is_none() {
        return;
    }
    let d = scratch("ppl");
    let (json, svg, png) = (d.join("r/ppl.json"), d.join("ppl.svg"), d.join("ppl.png"));
    let o = ok(msrnn()
        .args([
            "ppl",
            "--tokens",
            "64",
            "--capacities",
            "16,32",
            "--policies",
            "full,window,tova",
            "--mode",
            "chunked",
            "--out",
        ])
        .arg(&json)
        .arg("--plot")
        .arg(&svg)
        .arg("--plot")
        .arg(&png));
    let table = stdout(&o);
    for s in ["C=16", "C=32", "window", "tova", "full (every token kept)"] {
        assert!(table.contains(s), "table lacks {s}:\n{table}");
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 5, "full once + 2 policies x 2 capacities: {results:?}");
    for r in results {
        let ppl = r["ppl"].as_f64().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0 && ppl < 10_000.0, "{r}");
        assert_eq!(r["scored"], 63);
    }
    let full = results.iter().find(|r| r["policy"] == "full").unwrap();
    assert!(full["capacity"].is_null());
    let tova16 = results.iter().find(|r| r["policy"] == "tova" && r["capacity"] == 16).unwrap();
    assert!(tova16["max_live"].as_u64().unwrap() <= 16 + 16, "C plus one chunk at most: {tova16}");
    assert_eq!(v["mode"], "chunked");
    assert_eq!(v["chunk"], 16);
    assert_eq!(v["text"]["tokens"], 64);
    assert!(v["model"]["id"].as_str().unwrap().contains("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(v["command"].as_array().unwrap().iter().any(|a| a == "--capacities"));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.starts_with("<svg") && svg.contains("<text") && svg.contains("tova") && svg.contains("perplexity"),
        "{svg:.300}"
    );
    assert!(svg.contains("<polyline") || svg.contains("<path"), "no lines drawn");
    let png = std::fs::read(&png).unwrap();
    assert!(png.starts_with(b"\x89PNG") && png.len() > 10_000, "PNG of {} bytes", png.len());
}

#[test]
fn a_tiny_bench_measures_every_policy_and_the_baselines() {
    if model().is_none() || hamlet().is_none() {
        return;
    }
    let d = scratch("bench");
    let (json, svg) = (d.join("bench.json"), d.join("bench.svg"));
    let o = ok(msrnn()
        .args([
            "bench",
            "--policies",
            "window,tova",
            "--capacity",
            "16",
            "--contexts",
            "32,64",
            "--decode-steps",
            "2",
            "--out",
        ])
        .arg(&json)
        .arg("--plot")
        .arg(&svg));
    let table = stdout(&o);
    for s in ["decode ms/tok", "prefill tok/s", "full", "window", "tova", "candle quantized_llama"] {
        assert!(table.contains(s), "table lacks {s}:\n{table}");
    }
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 8, "(full, window, tova, baseline) x 2 contexts: {rows:?}");
    for r in rows {
        assert!(
            r["decode_ms_per_token"].as_f64().unwrap() > 0.0 && r["prefill_tokens_per_s"].as_f64().unwrap() > 0.0,
            "{r}"
        );
    }
    let kv = |name: &str, ctx: u64| {
        rows.iter().find(|r| r["name"] == name && r["context"] == ctx).unwrap()["peak_live_kv_bytes"].as_u64().unwrap()
    };
    assert!(kv("full", 64) > kv("full", 32), "the full cache grows");
    assert_eq!(kv("tova", 64), kv("tova", 32), "a bounded cache does not");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("ms per token") && svg.contains("tokens per second"), "{svg:.300}");
}

/// A bounded state streamed past its capacity keeps its live KV bytes exactly constant and the
/// full cache is left out (it grows by design).
#[test]
fn a_stream_keeps_a_bounded_state_flat() {
    if model().is_none() || hamlet().is_none() {
        return;
    }
    let d = scratch("stream");
    let json = d.join("stream.json");
    let o = ok(msrnn()
        .args(["bench", "--stream", "200", "--chunk", "4", "--policies", "full,tova", "--capacity", "16", "--out"])
        .arg(&json));
    assert!(stdout(&o).contains("Stream:"), "{}", stdout(&o));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let cps = v["checkpoints"].as_array().unwrap();
    assert_eq!(cps.len(), 10, "{cps:?}");
    assert!(cps.iter().all(|c| c["policy"] == "tova"), "full must not stream: {cps:?}");
    // 30 layers x 2 x 3 KV heads x 64 x 4 bytes per token, 16 tokens per layer once full.
    let full_state = 16 * 30 * 2 * 3 * 64 * 4;
    for c in &cps[1..] {
        assert_eq!(c["live_kv_bytes"].as_u64().unwrap(), full_state, "{c}");
        assert_eq!(c["max_live"].as_u64().unwrap(), 16, "{c}");
    }
    assert_eq!(cps[9]["tokens"].as_u64().unwrap(), 200);
}

#[test]
fn a_device_this_build_cannot_use_is_refused() {
    fails(msrnn().args(["ppl", "--device", "tpu"]), &["--device tpu", "cpu, cuda or cuda:N"]);
    if !cfg!(feature = "cuda") {
        fails(msrnn().args(["generate", "--device", "cuda", "hi"]), &["--device cuda", "--features cuda"]);
    }
}

#[test]
fn bench_refuses_baselines_candle_cannot_run_and_short_streams() {
    fails(msrnn().args(["bench", "--stream", "5", "--policies", "tova"]), &["--stream 5"]);
    // The formats a baseline can run are the family's to say: this needs the model.
    if model().is_none() || hamlet().is_none() {
        return;
    }
    fails(
        msrnn().args(["bench", "--baseline-weights", "f16"]),
        &["--baseline-weights f16", "candle quantized_llama can run native, q8_0 or f32"],
    );
}

// ---- with Gemma 3 270M ----

/// The second family through the same subcommands: a policy x capacity table (BOS + text, as the
/// Gemma tokenizer wants), greedy generation, the listing. Kept short.
#[test]
fn gemma_runs_ppl_generate_and_policies_like_llama() {
    let Some(gemma) = gemma() else { return };
    let d = scratch("gemma");
    let text = d.join("soliloquy.txt");
    std::fs::write(
        &text,
        "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to suffer\n\
         The slings and arrows of outrageous fortune,\nOr to take arms against a sea of troubles\n\
         And by opposing end them. To die: to sleep;\nNo more; and by a sleep to say we end\n",
    )
    .unwrap();
    let json = d.join("ppl.json");
    let o = ok(msrnn()
        .arg("--model")
        .arg(&gemma)
        .args(["ppl", "--tokens", "40", "--policies", "full,tova", "--capacities", "16", "--text"])
        .arg(&text)
        .arg("--out")
        .arg(&json));
    let table = stdout(&o);
    assert!(table.contains("gemma-3-270m-q4_k_m"), "{table}");
    let row =
        |name: &str| table.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} row:\n{table}"));
    for name in ["tova", "full (every token kept)"] {
        let ppl: f64 = row(name).split_whitespace().last().unwrap().parse().unwrap();
        assert!(ppl.is_finite() && ppl > 1.0 && ppl < 1000.0, "{name}: {ppl}\n{table}");
    }
    assert!(table.contains("C=16"), "{table}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["model"]["family"], "gemma3");
    assert_eq!(v["text"]["bos"], true, "Gemma scores BOS + text");
    assert_eq!(v["text"]["first_tokens"][0], 2, "BOS first");

    let o = ok(msrnn().arg("--model").arg(&gemma).args([
        "generate",
        "--raw",
        "-n",
        "3",
        "To be, or not to be, that is the",
    ]));
    assert!(stdout(&o).starts_with(" question"), "greedy continuation: {:?}", stdout(&o));
    assert!(stderr(&o).contains("tokens seen"), "{}", stderr(&o));

    let o = ok(msrnn().arg("--model").arg(&gemma).arg("policies"));
    assert!(stdout(&o).lines().any(|l| l.starts_with("tova ")), "{}", stdout(&o));
}
