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

use assert_cmd::Command;
use candle_core::quantized::GgmlDType;
use msrnn_tests::files::scratch;
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
mod common;
use common::{fails_with, ok, stderr, stdout};

fn msrnn() -> Command {
    common::msrnn(240)
}

/// Runs, expects exit code 1 (an error, not a panic: a panic exits 101) and returns stderr, after
/// checking it is an `error: ` line holding every needle.
fn fails(c: &mut Command, needles: &[&str]) -> String {
    let err = fails_with(c, 1, needles);
    assert!(err.starts_with("error: ") || err.contains("\nerror: "), "{err}");
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

#[test]
fn a_plugin_policy_is_listed_and_runs() {
    let so = msrnn_tests::plugins::keynorm();
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
        "weights auto",
        "positions    absolute",
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
        &["saved with model", "weights auto", "weights native"],
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
    // the eval document: settings decide results, run says how this run went
    assert_eq!(v["task"], "ppl");
    assert_eq!(v["settings"]["mode"], "chunked");
    assert_eq!(v["settings"]["chunk"], 16);
    assert_eq!(v["settings"]["text"]["tokens"], 64);
    assert!(v["settings"]["model"]["id"].as_str().unwrap().contains("SmolLM2-135M-Instruct.Q4_1.gguf"));
    assert!(v["run"]["command"].as_array().unwrap().iter().any(|a| a == "--capacities"));
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
    assert_eq!(v["settings"]["model"]["family"], "gemma3");
    assert_eq!(v["settings"]["text"]["bos"], true, "Gemma scores BOS + text");
    assert_eq!(v["settings"]["text"]["first_tokens"][0], 2, "BOS first");

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

// ---- batches, KV budgets, llama.cpp, several prompts, positions (a tiny model: instant) ----

/// A tiny random model and a text long enough for its contexts.
fn tiny_and_text(name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let d = scratch(name);
    let model = d.join("tiny.gguf");
    TinyLlama::random(tiny_config(), 5).write_gguf(&model, GgmlDType::F32, true);
    let text = d.join("text.txt");
    std::fs::write(&text, "the quick brown fox jumps over the lazy dog. ".repeat(8)).unwrap();
    (d, model, text)
}

/// Runs and expects clap's usage error (exit 2) naming every needle.
fn usage_error(c: &mut Command, needles: &[&str]) {
    let o = c.output().unwrap();
    assert_eq!(o.status.code(), Some(2), "expected a usage error\nstderr:\n{}", stderr(&o));
    for n in needles {
        assert!(stderr(&o).contains(n), "stderr lacks {n:?}:\n{}", stderr(&o));
    }
}

fn json_file(p: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn bench_batch_writes_a_row_per_batch_size() {
    let (d, model, text) = tiny_and_text("bench-batch");
    let (json, svg) = (d.join("batch.json"), d.join("batch.svg"));
    let o = ok(msrnn()
        .arg("--model")
        .arg(&model)
        .args([
            "bench",
            "--batch",
            "3,1,2",
            "--policies",
            "window",
            "--capacity",
            "8",
            "--contexts",
            "12,24",
            "--decode-steps",
            "3",
            "--tokens-file",
        ])
        .arg(&text)
        .arg("--out")
        .arg(&json)
        .arg("--plot")
        .arg(&svg));
    let table = stdout(&o);
    for s in ["Batched decode", "tok/s (all)", "ms/tok (each)", "x batch 1", "window", "full"] {
        assert!(table.contains(s), "table lacks {s}:\n{table}");
    }
    let v = json_file(&json);
    assert_eq!(v["kind"], "msrnn-bench-batch");
    assert_eq!(v["batch_sizes"], serde_json::json!([1, 2, 3]));
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 2 * 3, "(full, window) x 2 contexts x 3 batch sizes: {rows:?}");
    // 2 layers x (K, V) x 2 KV heads x 16 x 4 bytes per token
    let token = 2 * 2 * 2 * 16 * 4;
    for r in rows {
        assert_eq!(r["decode_steps"], 3, "{r}");
        let (b, tps, ms) =
            (r["batch"].as_f64().unwrap(), r["tokens_per_s"].as_f64().unwrap(), r["ms_per_token"].as_f64().unwrap());
        assert!(tps > 0.0 && (tps - b * 1000.0 / ms).abs() < 1e-6 * tps, "aggregate = batch / step time: {r}");
        if r["batch"] == 1 {
            assert_eq!(r["speedup"], 1.0, "{r}");
        }
        let live = r["live_kv_bytes_per_seq"].as_u64().unwrap();
        if r["name"] == "window" {
            assert_eq!(live, 8 * token, "C tokens per layer: {r}");
        } else {
            // the full cache: the context, the untimed step and the longest round (1 step)
            assert_eq!(live, (r["context"].as_u64().unwrap() + 2) * token, "{r}");
        }
    }
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("batch (sequences decoding together)") && svg.contains("window @ 24"), "{svg:.300}");
}

/// --kv-budget sizes each batch by one sequence's live KV bytes (allocated bytes reported beside),
/// caps it with --max-batch, and compares each bounded policy with the full cache.
#[test]
fn kv_budget_measures_the_largest_batch_that_fits() {
    let (d, model, text) = tiny_and_text("kv-budget");
    let json = d.join("budget.json");
    let token = 2 * 2 * 2 * 16 * 4u64;
    // The full cache at context 40 holds 40 + 1 + 1 tokens at most (4 steps in 4 rounds, each after
    // an untimed one): 21504 bytes; 3 fit in 70000.
    // window C=8 holds 4096 bytes: 17 fit, --max-batch 5 measures 5.
    let o = ok(msrnn()
        .arg("--model")
        .arg(&model)
        .args([
            "bench",
            "--kv-budget",
            "70000",
            "--max-batch",
            "5",
            "--policies",
            "window",
            "--capacity",
            "8",
            "--contexts",
            "40",
            "--decode-steps",
            "4",
            "--tokens-file",
        ])
        .arg(&text)
        .arg("--out")
        .arg(&json));
    let table = stdout(&o);
    for s in ["KV budget 68.4 KiB", "KV/seq live", "fit alloc", "5 (cap)", "x full", "the full cache's throughput"] {
        assert!(table.contains(s), "table lacks {s}:\n{table}");
    }
    assert!(stderr(&o).contains("17 sequences fit, --max-batch 5 measures 5"), "{}", stderr(&o));
    let v = json_file(&json);
    assert_eq!((v["kind"].as_str(), v["kv_budget_bytes"].as_u64()), (Some("msrnn-bench-kv-budget"), Some(70000)));
    assert_eq!(v["kv_budget_counts"], "live");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");
    let row = |name: &str| rows.iter().find(|r| r["name"] == name).unwrap();
    let (full, window) = (row("full"), row("window"));
    assert_eq!(full["live_kv_bytes_per_seq"].as_u64().unwrap(), 42 * token);
    assert_eq!(
        (full["fits_live"].as_u64(), full["batch"].as_u64(), full["capped"].as_bool()),
        (Some(3), Some(3), Some(false))
    );
    assert_eq!(window["live_kv_bytes_per_seq"].as_u64().unwrap(), 8 * token);
    assert_eq!(
        (window["fits_live"].as_u64(), window["batch"].as_u64(), window["capped"].as_bool()),
        (Some(17), Some(5), Some(true))
    );
    for r in [full, window] {
        let alloc = r["allocated_kv_bytes_per_seq"].as_u64().unwrap();
        assert!(alloc >= r["live_kv_bytes_per_seq"].as_u64().unwrap(), "{r}");
        assert_eq!(r["fits_allocated"].as_u64().unwrap(), 70000 / alloc, "{r}");
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
    }
    assert_eq!(full["speedup"], 1.0);
    let x = window["speedup"].as_f64().unwrap();
    assert!((x - window["tokens_per_s"].as_f64().unwrap() / full["tokens_per_s"].as_f64().unwrap()).abs() < 1e-9);
    // a budget too small for one sequence of the full cache says so and measures nothing for it
    let o = ok(msrnn()
        .arg("--model")
        .arg(&model)
        .args([
            "bench",
            "--kv-budget",
            "10KiB",
            "--policies",
            "window",
            "--capacity",
            "8",
            "--contexts",
            "40",
            "--decode-steps",
            "1",
            "--tokens-file",
        ])
        .arg(&text));
    assert!(stderr(&o).contains("does not fit in 10.0 KiB"), "{}", stderr(&o));
    usage_error(msrnn().args(["bench", "--kv-budget", "4 parsecs"]), &["--kv-budget", "unknown unit"]);
    usage_error(msrnn().args(["bench", "--kv-budget", "1GiB", "--batch", "4"]), &["--kv-budget", "--batch"]);
}

/// A stand-in for llama-bench: a shell script that records its arguments and prints `json`.
#[cfg(unix)]
fn fake_llama_bench(dir: &std::path::Path, body: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("llama-bench");
    std::fs::write(&p, format!("#!/bin/sh\necho \"$@\" > \"{}\"\n{body}\n", dir.join("args").display())).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

#[cfg(unix)]
#[test]
fn llama_bench_rows_join_the_table_and_failures_are_clear() {
    let (d, model, text) = tiny_and_text("llama-bench");
    let base = |c: &mut Command| {
        c.arg("--model").arg(&model).args([
            "bench",
            "--policies",
            "window",
            "--capacity",
            "8",
            "--contexts",
            "16,32",
            "--decode-steps",
            "2",
            "--tokens-file",
        ]);
        c.arg(&text);
    };
    // refused before any work: a missing path, a directory, a file that is not executable
    let mut c = msrnn();
    base(&mut c);
    fails(
        c.args(["--llama-bench", "/nonexistent/llama-bench"]),
        &["--llama-bench /nonexistent/llama-bench", "no such file", "build-llama-bench.sh"],
    );
    let mut c = msrnn();
    base(&mut c);
    fails(c.arg("--llama-bench").arg(&d), &["not a file"]);
    let mut c = msrnn();
    base(&mut c);
    fails(c.arg("--llama-bench").arg(&text), &["not executable"]);
    // a failing llama-bench: its stderr in the error
    let bad = fake_llama_bench(&d, "echo 'error: failed to load model' >&2\nexit 3");
    let mut c = msrnn();
    base(&mut c);
    fails(c.arg("--llama-bench").arg(&bad), &["--llama-bench", "failed", "failed to load model"]);
    // one that answers: its rows (pp and tg at each depth) join ours
    let test = |p: u32, n: u32, depth: u32, ts: f64| {
        format!(
            r#"{{"build_commit":"abc1234","model_type":"llama 1M Q4_1","n_prompt":{p},"n_gen":{n},"n_depth":{depth},"avg_ts":{ts},"stddev_ts":0.1}}"#
        )
    };
    let json = format!(
        "[{},{},{},{}]",
        test(16, 0, 16, 400.0),
        test(0, 2, 16, 50.0),
        test(16, 0, 32, 320.0),
        test(0, 2, 32, 40.0)
    );
    let good = fake_llama_bench(&d, &format!("cat <<'EOF'\n{json}\nEOF"));
    let out = d.join("bench.json");
    let mut c = msrnn();
    base(&mut c);
    let o = ok(c.args(["--no-baseline", "--llama-reps", "1", "--llama-bench"]).arg(&good).arg("--out").arg(&out));
    let args = std::fs::read_to_string(d.join("args")).unwrap();
    assert_eq!(args.trim(), format!("-m {} -t 1 -p 16 -n 2 -d 16,32 -r 1 -o json", model.display()));
    let table = stdout(&o);
    let llama: Vec<&str> = table.lines().filter(|l| l.starts_with("llama.cpp (Q4_1)")).collect();
    assert_eq!(llama.len(), 2, "{table}");
    assert!(llama[0].contains("400") && llama[0].contains("20.00"), "pp 400 tokens/s, tg 50 tokens/s: {table}");
    assert!(llama[1].contains("320") && llama[1].contains("25.00"), "{table}");
    let v = json_file(&out);
    assert_eq!(v["llama_bench"]["build_commit"], "abc1234");
    assert_eq!(v["llama_bench"]["tests"].as_array().unwrap().len(), 4);
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6, "(full, window, llama.cpp) x 2 contexts: {rows:?}");
    let l = rows.iter().find(|r| r["name"] == "llama.cpp (Q4_1)" && r["context"] == 32).unwrap();
    assert_eq!((l["decode_ms_per_token"].as_f64(), l["prefill_tokens_per_s"].as_f64()), (Some(25.0), Some(320.0)));
    assert!(l["peak_live_kv_bytes"].is_null());
    // and with --batch, its generation rows join as batch 1
    let mut c = msrnn();
    base(&mut c);
    let o = ok(c.args(["--batch", "1,2", "--llama-bench"]).arg(&good));
    assert_eq!(stdout(&o).lines().filter(|l| l.starts_with("llama.cpp (Q4_1)")).count(), 2, "{}", stdout(&o));
    usage_error(msrnn().args(["bench", "--stream", "100", "--llama-bench"]).arg(&good), &["--llama-bench", "--stream"]);
}

/// Several prompts in one batch: each answer is exactly the one the prompt gets alone (greedy),
/// streamed as JSON lines or to one file each; save/resume stays single-prompt.
#[test]
fn several_prompts_get_their_single_prompt_answers() {
    let (d, model, _) = tiny_and_text("multi-prompt");
    let prompts = ["hello the world", "the quick brown fox jumps over the lazy dog", "a"];
    let gen = |c: &mut Command| {
        c.arg("--model").arg(&model).args(["generate", "--raw", "--policy", "window", "--capacity", "12", "-n", "20"]);
    };
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            let mut c = msrnn();
            gen(&mut c);
            stdout(&ok(c.arg(p)))
        })
        .collect();
    assert!(alone.iter().all(|a| !a.is_empty()), "{alone:?}");
    // JSON lines: token events, then one summary per prompt with the whole answer
    let mut c = msrnn();
    gen(&mut c);
    let o = ok(c.arg("--jsonl").args(prompts));
    let lines: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, want) in alone.iter().enumerate() {
        let streamed: String = lines
            .iter()
            .filter(|l| l["prompt"] == i && l.get("done").is_none())
            .map(|l| l["text"].as_str().unwrap())
            .collect();
        assert_eq!(&streamed, want, "prompt {i}");
        let done: Vec<_> = lines.iter().filter(|l| l["prompt"] == i && l["done"] == true).collect();
        assert_eq!(done.len(), 1, "{lines:?}");
        assert_eq!(done[0]["text"].as_str().unwrap(), want);
        assert_eq!(done[0]["generated_tokens"], 20);
        assert_eq!(done[0]["stop"], "--max-tokens reached");
    }
    let err = stderr(&o);
    assert!(err.contains("3 prompts in one batch") && err.contains("prompt 2: 20 tokens"), "{err}");
    // one file per answer, prompts from a file, one per line
    let file = d.join("prompts.txt");
    std::fs::write(&file, format!("{}\n\n{}\n{}\n", prompts[0], prompts[1], prompts[2])).unwrap();
    let dir = d.join("answers");
    let mut c = msrnn();
    gen(&mut c);
    let o = ok(c.arg("--prompt-file").arg(&file).arg("--each-line").arg("--out-dir").arg(&dir));
    assert!(stdout(&o).is_empty(), "{}", stdout(&o));
    for (i, want) in alone.iter().enumerate() {
        assert_eq!(&std::fs::read_to_string(dir.join(format!("answer-{i}.txt"))).unwrap(), want, "answer {i}");
    }
    // printed one after another without either flag; --repeat answers each again
    let mut c = msrnn();
    gen(&mut c);
    let o = ok(c.args(["--repeat", "2", prompts[0], prompts[2]]));
    let want = format!(
        "--- answer 0 ---\n{a}\n--- answer 1 ---\n{b}\n--- answer 2 ---\n{a}\n--- answer 3 ---\n{b}\n",
        a = alone[0],
        b = alone[2]
    );
    assert_eq!(stdout(&o), want);
    let mut c = msrnn();
    gen(&mut c);
    fails(
        c.arg("--save-state").arg(d.join("s.st")).args(prompts),
        &["--save-state and --resume take one prompt", "3 prompts"],
    );
    let mut c = msrnn();
    gen(&mut c);
    fails(c.args(["--each-line", "hi"]), &["--each-line"]);
}

/// The summary says prefill and decode apart (the first generated token comes from the prefill).
#[test]
fn the_summary_line_says_prefill_and_decode_apart() {
    let (_, model, _) = tiny_and_text("summary");
    let o = ok(msrnn().arg("--model").arg(&model).args(["generate", "--raw", "-n", "9", "hello the world"]));
    let err = stderr(&o);
    let line = err.lines().find(|l| l.contains("prefill")).unwrap_or_else(|| panic!("{err}"));
    let words: Vec<&str> = line.split_whitespace().collect();
    // 9 tokens (--max-tokens reached): prefill N tokens in X s (Y tokens/s); decode 8 tokens in X s (Y tokens/s); model load X s
    assert_eq!(&words[..4], ["9", "tokens", "(--max-tokens", "reached):"], "{line}");
    assert_eq!(words[4], "prefill", "{line}");
    assert!(words[5].parse::<usize>().unwrap() > 0 && words[6] == "tokens" && words[7] == "in", "{line}");
    assert!(line.contains("tokens/s); decode 8 tokens in ") && line.contains("; model load "), "{line}");
}

/// --positions reaches the state and its file; a resumed run takes the saved mode, and refuses
/// another (ppl's use of it is tested in tests/eval.rs).
#[test]
fn positions_are_used_and_recorded_in_state_files() {
    let (d, model, _) = tiny_and_text("positions");
    let st = d.join("cache.st");
    let m = |c: &mut Command| {
        c.arg("--model").arg(&model);
    };
    let mut c = msrnn();
    m(&mut c);
    let o = ok(c
        .args([
            "--positions",
            "cache",
            "generate",
            "--raw",
            "--policy",
            "window",
            "--capacity",
            "8",
            "-n",
            "6",
            "--save-state",
        ])
        .arg(&st)
        .arg("hello the world"));
    assert!(stderr(&o).contains("cache positions"), "{}", stderr(&o));
    let o = ok(msrnn().args(["state", "show"]).arg(&st));
    assert!(stdout(&o).contains("positions    cache"), "{}", stdout(&o));
    let mut c = msrnn();
    m(&mut c);
    let o = ok(c.args(["generate", "-n", "4", "--resume"]).arg(&st));
    assert!(stderr(&o).contains("cache positions"), "the saved mode: {}", stderr(&o));
    let mut c = msrnn();
    m(&mut c);
    fails(
        c.args(["--positions", "absolute", "generate", "-n", "4", "--resume"]).arg(&st),
        &["saved with positions `cache`"],
    );
    // bench records the mode it ran in
    let (_, _, text) = tiny_and_text("positions-bench");
    let json = d.join("stream.json");
    let mut c = msrnn();
    m(&mut c);
    ok(c.args([
        "--positions",
        "cache",
        "bench",
        "--stream",
        "20",
        "--policies",
        "window",
        "--capacity",
        "8",
        "--tokens-file",
    ])
    .arg(&text)
    .arg("--out")
    .arg(&json));
    assert_eq!(json_file(&json)["positions"], "cache");
    usage_error(msrnn().args(["--positions", "sideways", "policies"]), &["--positions", "sideways"]);
}

/// --kv reaches the state and its file (and `state show`); a resumed run takes the saved format
/// and refuses another; a name that is no format is a usage error naming the choices.
#[test]
fn kv_format_is_used_and_recorded_in_state_files() {
    let (d, model, _) = tiny_and_text("kv");
    let st = d.join("q8.st");
    let run = |args: &[&str]| {
        let mut c = msrnn();
        c.arg("--model").arg(&model).args(args);
        c
    };
    let save = ["--kv", "q8_0", "generate", "--raw", "--policy", "tova", "--capacity", "8", "-n", "6", "--save-state"];
    let o = ok(run(&save).arg(&st).arg("hello the world"));
    assert!(stderr(&o).contains("KV (q8_0) "), "{}", stderr(&o));
    let o = ok(msrnn().args(["state", "show"]).arg(&st));
    assert!(stdout(&o).contains("KV format    q8_0"), "{}", stdout(&o));
    let o = ok(run(&["generate", "-n", "4", "--resume"]).arg(&st));
    assert!(stderr(&o).contains("KV (q8_0)"), "the saved format: {}", stderr(&o));
    fails(
        run(&["--kv", "f16", "generate", "-n", "4", "--resume"]).arg(&st),
        &["saved with KV format `q8_0`, but this run uses `f16`"],
    );
    usage_error(msrnn().args(["--kv", "bogus", "policies"]), &["--kv", "bogus", "f32, f16 or q8_0"]);
}

/// The same with the real model and the chat template: two prompts of different lengths together
/// give each the answer it gets alone (the batched engine's promise, end to end).
#[test]
fn real_model_prompts_in_one_batch_answer_as_alone() {
    if model().is_none() {
        return;
    }
    let prompts = ["What is the capital of France?", "Write one sentence about the sea and the wind at night."];
    let base = ["generate", "--policy", "tova", "--capacity", "16", "-n", "16"];
    let alone: Vec<String> = prompts.iter().map(|p| stdout(&ok(msrnn().args(base).arg(p)))).collect();
    let o = ok(msrnn().args(base).arg("--jsonl").args(prompts));
    for (i, want) in alone.iter().enumerate() {
        let done = stdout(&o)
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .find(|l| l["prompt"] == i && l["done"] == true)
            .unwrap();
        assert_eq!(done["text"].as_str().unwrap(), want, "prompt {i}");
    }
}
