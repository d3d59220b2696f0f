//! `msrnn eval` and `msrnn inspect` end to end: passkey and perplexity grids on a tiny random model
//! written here (instant, always run), their determinism, shards merged back into the unsharded
//! result, batched grids equal to one cell at a time, every error a user meets, and a lean check on
//! the real model (skipped when models/ lacks it) that the prompt format works and that the
//! real-model grid in one batch equals the sequential grid.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use candle_core::quantized::GgmlDType;
use msrnn_tests::files::scratch;
use msrnn_tests::tiny_llama::{tiny_config, TinyLlama};
use serde_json::Value;

mod common;
use common::{fails_with as fails, ok, stdout};

fn msrnn() -> Command {
    common::msrnn(300)
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// A tiny random LLaMA with a 512-token context (its byte-level vocabulary makes the passkey
/// instruction alone ~130 tokens), and a text for it.
fn tiny(dir: &Path) -> (PathBuf, PathBuf) {
    let mut cfg = tiny_config();
    cfg.max_context = 512;
    let model = dir.join("tiny.gguf");
    TinyLlama::random(cfg, 11).write_gguf(&model, GgmlDType::F32, true);
    let text = dir.join("text.txt");
    std::fs::write(&text, "hello the world, hello.\nthe world says hello; the 2020 world.\n".repeat(8)).unwrap();
    (model, text)
}

/// `eval passkey` on the tiny model with a small grid; extra arguments appended.
fn passkey(model: &Path, extra: &[&str]) -> Command {
    let mut c = msrnn();
    // Q8_0 on the CPU kernels: a sequence's logits do not depend on its batch (see the ppl test).
    c.arg("--model").arg(model).args([
        "--weights",
        "q8_0",
        "eval",
        "passkey",
        "--lengths",
        "300,340",
        "--depths",
        "0,0.5,1",
        "--trials",
        "2",
        "--policies",
        "full,window,tova",
        "--capacities",
        "16,32",
        "--chunk",
        "16",
    ]);
    c.args(extra);
    c
}

fn results(v: &Value) -> &Vec<Value> {
    v["results"].as_array().unwrap()
}

#[test]
fn a_tiny_passkey_grid_runs_end_to_end_and_is_deterministic() {
    let d = scratch("passkey-tiny");
    let (model, _) = tiny(&d);
    let (a, b, svg, png) = (d.join("a.json"), d.join("b.json"), d.join("acc.svg"), d.join("heat.png"));
    let o = ok(passkey(&model, &["--seed", "3", "--out"]).arg(&a).arg("--plot").arg(&svg).arg("--heatmap").arg(&png));
    let table = stdout(&o);
    for s in ["By prompt length", "By depth", "L=300", "L=340", "d=0.5", "tova", "window", "full"] {
        assert!(table.contains(s), "table lacks {s}:\n{table}");
    }
    let v = json(&a);
    assert_eq!(v["kind"], "msrnn-eval");
    assert_eq!(v["task"], "passkey");
    assert_eq!(v["shard"], Value::Null);
    let s = &v["settings"];
    assert_eq!(s["lengths"], serde_json::json!([300, 340]));
    assert_eq!(s["depths"], serde_json::json!([0.0, 0.5, 1.0]));
    assert_eq!(s["trials"], 2);
    assert_eq!(s["seed"], 3);
    assert_eq!(s["mode"], "chunked");
    assert_eq!(s["chunk"], 16);
    assert_eq!(s["positions"], "absolute");
    assert!(s["format"]["needle"].as_str().unwrap().contains("{key}"));
    assert!(s["model"]["id"].as_str().unwrap().contains("tiny.gguf"));
    assert!(s["model"].get("path").is_none(), "paths are run details, not settings");
    // (full + 2 policies x 2 capacities) x 2 lengths x 3 depths
    let cells = v["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 5 * 2 * 3);
    let rs = results(&v);
    assert_eq!(rs.len(), 30);
    for r in rs {
        assert_eq!(r["trials"], 2);
        let answers = r["answers"].as_array().unwrap();
        assert_eq!(answers.len(), 2);
        let correct = answers.iter().filter(|x| x["correct"] == true).count();
        assert_eq!(r["correct"], correct);
        for x in answers {
            assert_eq!(x["prompt_tokens"], r["length"], "{r}");
            let k = x["key"].as_u64().unwrap();
            assert!((10_000..100_000).contains(&k));
        }
    }
    // every policy meets the same prompts: the keys of a length, depth and trial agree
    let keys = |id: &str| -> Vec<u64> {
        rs.iter().find(|r| r["id"] == id).unwrap()["answers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["key"].as_u64().unwrap())
            .collect()
    };
    assert_eq!(keys("full L=300 d=0.5"), keys("tova C=16 L=300 d=0.5"));
    assert_ne!(keys("full L=300 d=0.5"), keys("full L=300 d=1"));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("share of keys answered") && svg.contains("tova"), "{svg:.300}");
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));

    // the same seed gives the same prompts and answers; another seed other keys
    ok(passkey(&model, &["--seed", "3", "--batch", "5", "--out"]).arg(&b));
    assert_eq!(results(&json(&b)), rs, "same seed, same results (whatever the batch size)");
    ok(passkey(&model, &["--seed", "4", "--out"]).arg(&b));
    let other = json(&b);
    let k4: Vec<&Value> =
        results(&other).iter().flat_map(|r| r["answers"].as_array().unwrap()).map(|x| &x["key"]).collect();
    let k3: Vec<&Value> = rs.iter().flat_map(|r| r["answers"].as_array().unwrap()).map(|x| &x["key"]).collect();
    assert_ne!(k3, k4);
}

#[test]
fn passkey_shards_merge_into_the_unsharded_result() {
    let d = scratch("passkey-shards");
    let (model, _) = tiny(&d);
    let whole = d.join("whole.json");
    ok(passkey(&model, &["--out"]).arg(&whole));
    let parts: Vec<PathBuf> = (0..3).map(|i| d.join(format!("part{i}.json"))).collect();
    for (i, p) in parts.iter().enumerate() {
        let o = ok(passkey(&model, &["--shard", &format!("{i}/3"), "--out"]).arg(p));
        assert!(stdout(&o).contains(&format!("shard {i}/3")), "{}", stdout(&o));
        assert_eq!(json(p)["shard"]["index"], i);
    }
    let merged = d.join("merged.json");
    let (svg, heat) = (d.join("m.svg"), d.join("m.svg.heat.svg"));
    let o = ok(msrnn()
        .args(["eval", "merge"])
        .args(&parts)
        .arg("--out")
        .arg(&merged)
        .arg("--plot")
        .arg(&svg)
        .arg("--heatmap")
        .arg(&heat));
    let w = json(&whole);
    let m = json(&merged);
    assert_eq!(m["settings"], w["settings"]);
    assert_eq!(m["cells"], w["cells"]);
    assert_eq!(m["shard"], Value::Null);
    assert_eq!(m["results"], w["results"], "the shards' cells, merged, are the unsharded run's");
    assert_eq!(m["run"]["merged_from"].as_array().unwrap().len(), 3);
    assert!(stdout(&o).contains("By prompt length"));
    assert!(svg.exists() && heat.exists());

    // a missing part, an overlap, and parts of different settings are refused
    fails(msrnn().args(["eval", "merge"]).arg(&parts[0]).arg(&parts[2]), 1, &["cells are missing", "--shard 1/3"]);
    fails(msrnn().args(["eval", "merge"]).args(&parts).arg(&parts[1]), 1, &["overlap"]);
    let other = d.join("other.json");
    ok(passkey(&model, &["--seed", "9", "--shard", "1/3", "--out"]).arg(&other));
    fails(
        msrnn().args(["eval", "merge"]).arg(&parts[0]).arg(&other).arg(&parts[2]),
        1,
        &["different settings", "settings.seed: 0 vs 9"],
    );
    let not_eval = d.join("x.json");
    std::fs::write(&not_eval, r#"{"kind": "msrnn-ppl"}"#).unwrap();
    fails(msrnn().args(["eval", "merge"]).arg(&not_eval), 1, &["not an msrnn eval result"]);
}

#[test]
fn a_tiny_ppl_grid_in_batches_and_shards_equals_one_cell_at_a_time() {
    let d = scratch("ppl-tiny");
    let (model, text) = tiny(&d);
    let run = |extra: &[&str], out: &Path| {
        let o = ok(msrnn()
            .arg("--model")
            .arg(&model)
            // The CPU kernels (Q8_0) give a row the same result whatever else is in the batch;
            // candle's f32 matmul does not promise that to the last bit.
            .args(["--weights", "q8_0", "eval", "ppl", "--text"])
            .arg(&text)
            .args([
                "--tokens",
                "120",
                "--policies",
                "full,window,h2o,tova",
                "--capacities",
                "8,16",
                "--mode",
                "chunked",
            ])
            .args(["--chunk", "4", "--segment", "50", "--out"])
            .arg(out)
            .args(extra));
        (json(out), stdout(&o))
    };
    let (all, table) = run(&[], &d.join("all.json"));
    let (one, _) = run(&["--batch", "1"], &d.join("one.json"));
    assert_eq!(results(&all), results(&one), "the whole grid in one batch gives each cell what it gets alone");
    assert_eq!(all["run"]["batch"], 7);
    assert_eq!(one["run"]["batches"].as_array().unwrap().len(), 7);
    for s in ["Perplexity per segment of 50 tokens", "[0, 50)", "[100, 120)", "tova C=8", "full (every token kept)"] {
        assert!(table.contains(s), "table lacks {s}:\n{table}");
    }
    for r in results(&all) {
        let segs = r["segments"].as_array().unwrap();
        assert_eq!(segs.len(), 3);
        let scored: u64 = segs.iter().map(|s| s["scored"].as_u64().unwrap()).sum();
        assert_eq!(scored, r["scored"].as_u64().unwrap());
        assert_eq!(segs[0]["scored"], 49, "the first token is never scored");
        let nll: f64 = segs.iter().map(|s| s["nll_sum"].as_f64().unwrap()).sum();
        assert!((nll - r["nll_sum"].as_f64().unwrap()).abs() < 1e-9 * nll.abs().max(1.0), "{r}");
    }
    let parts: Vec<PathBuf> = (0..2).map(|i| d.join(format!("p{i}.json"))).collect();
    for (i, p) in parts.iter().enumerate() {
        run(&["--shard", &format!("{i}/2")], p);
    }
    let merged = d.join("merged.json");
    let plot = d.join("seg.svg");
    ok(msrnn().args(["eval", "merge"]).args(&parts).arg("--out").arg(&merged).arg("--plot").arg(&plot));
    assert_eq!(results(&json(&merged)), results(&all));
    let svg = std::fs::read_to_string(&plot).unwrap();
    assert!(svg.contains("position in the stream"), "{svg:.300}");
    // a ppl document has no heatmap
    fails(msrnn().args(["eval", "merge"]).arg(&merged).arg("--heatmap").arg(d.join("h.svg")), 1, &["no heatmap"]);
    // `msrnn ppl` is the same command
    let alias = d.join("alias.json");
    ok(msrnn()
        .arg("--model")
        .arg(&model)
        .args(["--weights", "q8_0", "ppl", "--text"])
        .arg(&text)
        .args(["--tokens", "120", "--policies", "full,window,h2o,tova", "--capacities", "8,16", "--mode", "chunked"])
        .args(["--chunk", "4", "--segment", "50", "--out"])
        .arg(&alias));
    assert_eq!(results(&json(&alias)), results(&all));
}

#[test]
fn positions_cache_is_recorded_and_changes_bounded_runs_only() {
    let d = scratch("ppl-positions");
    let (model, text) = tiny(&d);
    let run = |mode: &str, out: &Path| {
        ok(msrnn()
            .arg("--model")
            .arg(&model)
            .args(["--positions", mode, "eval", "ppl", "--text"])
            .arg(&text)
            .args(["--tokens", "100", "--policies", "full,window", "--capacities", "8", "--mode", "chunked", "--out"])
            .arg(out));
        json(out)
    };
    let (abs, cache) = (run("absolute", &d.join("a.json")), run("cache", &d.join("c.json")));
    assert_eq!(cache["settings"]["positions"], "cache");
    let ppl = |v: &Value, id: &str| results(v).iter().find(|r| r["id"] == id).unwrap()["ppl"].as_f64().unwrap();
    assert_ne!(ppl(&abs, "window C=8"), ppl(&cache, "window C=8"));
    fails(msrnn().args(["--positions", "sideways", "policies"]), 2, &["sideways", "absolute or cache"]);
}

#[test]
fn inspect_reports_what_each_layer_keeps() {
    let d = scratch("inspect-tiny");
    let (model, text) = tiny(&d);
    let (out, png) = (d.join("i.json"), d.join("i.png"));
    let o = ok(msrnn()
        .arg("--model")
        .arg(&model)
        .args(["inspect", "--text"])
        .arg(&text)
        .args(["--tokens", "200", "--policy", "tova", "--capacity", "16", "--out"])
        .arg(&out)
        .arg("--plot")
        .arg(&png));
    let t = stdout(&o);
    for s in ["first token", "newline", "punctuation", "other", "kept at the end", "Layers that keep the first token"] {
        assert!(t.contains(s), "{s}:\n{t}");
    }
    let v = json(&out);
    assert_eq!(v["kind"], "msrnn-inspect");
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        let kept = l["kept"].as_array().unwrap();
        assert_eq!(kept.len(), 16);
        assert!(kept.iter().any(|p| p == 199), "the newest token is kept: {kept:?}");
        assert_eq!(l["last_seen"].as_array().unwrap().len(), 200);
        assert_eq!(l["last_seen"][199], 200);
    }
    for k in ["text", "kept_at_end", "kept_over_time"] {
        let sum: f64 = v["shares"][k].as_object().unwrap().values().map(|x| x.as_f64().unwrap()).sum();
        assert!((sum - 1.0).abs() < 1e-9, "{k}: {sum}");
    }
    assert!((v["shares"]["text"]["first token"].as_f64().unwrap() - 1.0 / 200.0).abs() < 1e-12);
    assert!(std::fs::read(&png).unwrap().starts_with(b"\x89PNG"));
}

#[test]
fn eval_errors_are_clear() {
    let d = scratch("eval-errors");
    let (model, _) = tiny(&d);
    let with = |args: &[&str]| {
        let mut c = msrnn();
        c.arg("--model").arg(&model).args(args);
        c
    };
    fails(&mut with(&["eval", "riddles"]), 1, &["unknown eval task `riddles`", "ppl, passkey, ruler, merge"]);
    fails(
        &mut with(&["eval", "passkey", "--lengths", "600", "--policies", "full,tova"]),
        1,
        &["--lengths 600", "context of 512 tokens", "drop `full`"],
    );
    fails(&mut with(&["eval", "passkey", "--depths", "0.5,1.5"]), 1, &["--depths 1.5", "from 0"]);
    fails(&mut with(&["eval", "passkey", "--depths", "-0.25"]), 1, &["--depths -0.25"]);
    fails(&mut with(&["eval", "passkey", "--depths", "half"]), 2, &["--depths"]);
    fails(&mut with(&["eval", "passkey", "--depths", "0.5,0.5"]), 1, &["listed twice"]);
    fails(&mut with(&["eval", "passkey", "--lengths", "100"]), 1, &["--lengths 100", "too short"]);
    fails(&mut with(&["eval", "passkey", "--trials", "0"]), 1, &["--trials"]);
    fails(&mut with(&["eval", "passkey", "--batch", "0", "--lengths", "300"]), 1, &["--batch must be at least 1"]);
    for bad in ["3/3", "1/0", "x/2", "2"] {
        fails(&mut with(&["eval", "ppl", "--shard", bad]), 2, &["--shard", "I/N"]);
    }
    fails(&mut with(&["eval", "passkey", "--heatmap", "h.txt"]), 1, &["--heatmap h.txt", ".svg or .png"]);
    fails(&mut with(&["eval", "ppl", "--segment", "0"]), 1, &["--segment"]);
    fails(&mut with(&["eval", "passkey", "--policies", "tova,nosuch"]), 1, &["nosuch"]);
    fails(msrnn().args(["eval", "merge", "/nonexistent/a.json"]), 1, &["/nonexistent/a.json"]);
    fails(msrnn().args(["eval", "merge"]), 2, &["FILES"]);
    fails(&mut with(&["inspect", "--capacity", "0"]), 1, &["--capacity"]);
    fails(&mut with(&["eval", "ruler", "--tasks", "niah_single_1,nosuch"]), 1, &["--tasks", "unknown task `nosuch`"]);
    fails(&mut with(&["eval", "ruler", "--tasks", "vt,vt"]), 1, &["--tasks", "listed twice"]);
    fails(&mut with(&["eval", "ruler", "--depths", "2"]), 1, &["--depths 2"]);
    for task in ["ppl", "passkey", "ruler"] {
        fails(&mut with(&["eval", task, "--ratios", "0.5", "--capacities", "64"]), 1, &["--ratios and --capacities"]);
        fails(&mut with(&["eval", task, "--ratios", "1"]), 1, &["--ratios 1", "0 <= R < 1"]);
        fails(&mut with(&["eval", task, "--ratios", "-0.5"]), 1, &["--ratios -0.5"]);
    }
}

#[test]
fn a_plugin_policy_is_evaluated_like_a_builtin() {
    let so = msrnn_tests::plugins::keynorm();
    let d = scratch("passkey-plugin");
    let (model, _) = tiny(&d);
    let out = d.join("p.json");
    let o = ok(msrnn()
        .arg("--plugin")
        .arg(&so)
        .arg("--model")
        .arg(&model)
        .args(["eval", "passkey", "--lengths", "300", "--depths", "0.5", "--trials", "1"])
        .args(["--policies", "keynorm,tova", "--capacities", "16", "--out"])
        .arg(&out));
    assert!(stdout(&o).lines().any(|l| l.starts_with("keynorm")), "{}", stdout(&o));
    let v = json(&out);
    assert!(v["settings"]["policy_sources"]["keynorm"].as_str().unwrap().starts_with("plugin "), "{}", v["settings"]);
    assert_eq!(results(&v).len(), 2);
}

// ---- with the real model (skipped without it) ----

fn real_model() -> Option<PathBuf> {
    msrnn_tests::files::needs(None, "models/SmolLM2-135M-Instruct.Q4_1.gguf", "./scripts/fetch-model.sh")
}

/// The prompt format works: the full cache answers short prompts' keys at both ends.
#[test]
fn the_full_cache_answers_the_passkey_on_the_real_model() {
    if real_model().is_none() {
        return;
    }
    let o = ok(msrnn().args([
        "eval",
        "passkey",
        "--lengths",
        "160",
        "--depths",
        "0,1",
        "--trials",
        "1",
        "--policies",
        "full",
    ]));
    let t = stdout(&o);
    let full = t.lines().find(|l| l.starts_with("full")).unwrap();
    assert!(full.contains("100% (2/2)"), "{t}");
}

/// The real-model grid in one batch equals the sequential grid, exactly.
#[test]
fn the_real_model_grid_in_one_batch_equals_the_sequential_grid() {
    if real_model().is_none() || msrnn_tests::files::hamlet().is_none() {
        return;
    }
    let d = scratch("ppl-real-batch");
    let run = |batch: &str, out: &Path| {
        ok(msrnn()
            .args(["eval", "ppl", "--tokens", "40", "--policies", "full,window+i,h2o,tova", "--capacities", "8,16"])
            .args(["--mode", "chunked", "--chunk", "8", "--batch", batch, "--out"])
            .arg(out));
        json(out)
    };
    let (one, all) = (run("1", &d.join("one.json")), run("7", &d.join("all.json")));
    assert_eq!(results(&one), results(&all));
}

/// `eval ruler` on the real model: shards merge into one table where the full cache finds the
/// needle and a 32-token window does not; the heatmap is drawn from the merged file.
#[test]
fn ruler_shards_merge_on_the_real_model() {
    if real_model().is_none() {
        return;
    }
    let d = scratch("ruler-real");
    let part = |i: usize| {
        let out = d.join(format!("part{i}.json"));
        ok(msrnn()
            .args(["eval", "ruler", "--tasks", "niah_single_1", "--lengths", "384", "--depths", "0.5", "--trials", "1"])
            .args(["--policies", "full,window", "--capacities", "32", "--shard", &format!("{i}/2"), "--out"])
            .arg(&out));
        out
    };
    let (a, b) = (part(0), part(1));
    let (merged, svg) = (d.join("merged.json"), d.join("ruler.svg"));
    let o = ok(msrnn().args(["eval", "merge"]).arg(&a).arg(&b).arg("--out").arg(&merged).arg("--plot").arg(&svg));
    let t = stdout(&o);
    let row = |p: &str| t.lines().find(|l| l.starts_with(p)).unwrap_or_else(|| panic!("no {p} row: {t}")).to_string();
    assert!(row("full").contains("100%"), "{t}");
    assert!(row("window").contains("0%") && !row("window").contains("100%"), "{t}");
    let v = json(&merged);
    assert_eq!(v["task"], "ruler");
    assert_eq!(results(&v).len(), 2);
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
}
