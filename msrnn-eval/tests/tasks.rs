//! The tasks end to end on a tiny random LLaMA (written here, instant): results that do not depend
//! on the batch size, shards that merge into the unsharded document, documents that round-trip
//! through JSON, cancellation, and settings refused before anything runs.

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use msrnn_core::{KvFormat, PolicyRegistry, PolicySpec, Positions};
use msrnn_eval::passkey::{PasskeyConfig, PasskeyDocument, Prompts};
use msrnn_eval::ppl::{PplConfig, Text};
use msrnn_eval::{AnyDocument, Error, EvalModel, Event, Feed, GridConfig, Observer, OnEvent, Shard};
use msrnn_llama as _;
use msrnn_modelkit::{LoadOptions, Model, WeightFormat};
use msrnn_tests::files::scratch;
use msrnn_tests::tiny_llama::{tiny_config, TinyLlama};

/// A tiny random model with a 512-token context (Q8_0 on the CPU kernels: a sequence's logits do
/// not depend on its batch), and a text for it.
fn tiny(dir: &Path) -> (Arc<dyn Model>, PathBuf) {
    let mut cfg = tiny_config();
    cfg.max_context = 512;
    let path = dir.join("tiny.gguf");
    TinyLlama::random(cfg, 11).write_gguf(&path, GgmlDType::F32, true);
    let lm =
        msrnn_modelkit::load_model(&path, &LoadOptions { weights: WeightFormat::Q8_0, ..Default::default() }).unwrap();
    let text = dir.join("text.txt");
    std::fs::write(&text, "hello the world, hello.\nthe world says hello; the 2020 world.\n".repeat(8)).unwrap();
    (lm.into(), text)
}

fn specs(list: &str) -> Vec<PolicySpec> {
    list.split(',').map(|s| s.parse().unwrap()).collect()
}

fn model(lm: &Arc<dyn Model>) -> EvalModel {
    EvalModel { lm: lm.clone(), id: "tiny.gguf [test]".into(), name: "tiny".into() }
}

fn ppl_config() -> PplConfig {
    let mut c = PplConfig { segment: Some(50), ..PplConfig::new(120) };
    c.grid.policies = specs("full,window,h2o,tova");
    c.grid.capacities = vec![16, 8];
    c.grid.feed = Feed::Chunked(4);
    c
}

/// [`ppl_config`] changed by `f`.
fn ppl_with(f: impl FnOnce(&mut PplConfig)) -> PplConfig {
    let mut c = ppl_config();
    f(&mut c);
    c
}

/// Parses a document's text back as any task's document and serialises it again: the same text
/// as its JSON value gives (serde_json's float parser may land an ulp off; see `schema.rs`).
fn round_trip(text: &str) -> AnyDocument {
    let value: serde_json::Value = serde_json::from_str(text).unwrap();
    let back = AnyDocument::from_value(value.clone(), "doc").unwrap();
    assert_eq!(back.to_json_string(), serde_json::to_string_pretty(&value).unwrap() + "\n");
    back
}

#[test]
fn a_ppl_grid_in_batches_and_shards_equals_one_cell_at_a_time() {
    let d = scratch("eval-ppl");
    let (lm, path) = tiny(&d);
    let r = msrnn_policies::registry();
    let m = model(&lm);
    let text = Text::read(lm.tokenizer(), &[path], 120).unwrap();
    let mut events = Vec::new();
    let all = msrnn_eval::ppl::run(&m, &r, &text, &ppl_config(), &mut OnEvent(|e| events.push(e))).unwrap();
    assert!(matches!(events[0], Event::Start { cells: 7, total_cells: 7, batch: 7, .. }), "{:?}", events[0]);
    assert_eq!(events.iter().filter(|e| matches!(e, Event::Progress(_))).count(), 30, "one per chunk");
    let ids: Vec<&str> = all.results.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(ids, ["full", "window C=8", "window C=16", "h2o C=8", "h2o C=16", "tova C=8", "tova C=16"]);
    for c in &all.results {
        let segs = c.segments.as_ref().unwrap();
        assert_eq!(segs.iter().map(|s| (s.start, s.end)).collect::<Vec<_>>(), [(0, 50), (50, 100), (100, 120)]);
        assert_eq!(segs.iter().map(|s| s.scored).sum::<usize>(), c.scored);
        assert_eq!(segs[0].scored, 49, "the first token is never scored");
        assert!(c.ppl.is_finite() && c.ppl > 1.0, "{c:?}");
        assert_eq!(c.policy.capacity.is_none(), c.id == "full");
    }
    assert!(all.result("full").unwrap().max_live == 119 && all.result("tova C=8").unwrap().max_live <= 8 + 4);
    assert_eq!(all.settings.text.tokens, 120);
    assert_eq!(all.settings.grid.mode, "chunked");
    assert_eq!(all.run.batches.as_ref().unwrap().len(), 1);

    let one = msrnn_eval::ppl::run(&m, &r, &text, &ppl_with(|c| c.grid.batch = Some(1)), &mut ()).unwrap();
    assert_eq!(one.results, all.results, "the whole grid in one batch gives each cell what it gets alone");
    assert_eq!(one.run.batches.as_ref().unwrap().len(), 7);

    let parts: Vec<(String, AnyDocument)> = (0..3)
        .map(|i| {
            let cfg = ppl_with(|c| c.grid.shard = Some(Shard::new(i, 3).unwrap()));
            let doc = msrnn_eval::ppl::run(&m, &r, &text, &cfg, &mut ()).unwrap();
            assert_eq!(doc.cells.len(), 7);
            assert_eq!(doc.results.len(), [3, 2, 2][i]);
            (format!("part{i}"), round_trip(&doc.to_json_string()))
        })
        .collect();
    let AnyDocument::Ppl(merged) = msrnn_eval::merge(&parts).unwrap() else { panic!("a ppl document") };
    // The parts went through JSON: compare with the whole as it reads back.
    let AnyDocument::Ppl(back) = round_trip(&all.to_json_string()) else { panic!("a ppl document") };
    assert_eq!(merged.results, back.results);
    assert_eq!(merged.settings, all.settings);
    assert_eq!(merged.cells, all.cells);
    assert_eq!(merged.run.merged_from.as_ref().unwrap().len(), 3);
}

fn passkey_config() -> PasskeyConfig {
    let prompts = Prompts { lengths: vec![340, 300], depths: vec![0.0, 0.5, 1.0], trials: 2, seed: 3 };
    let mut c = PasskeyConfig { prompts, ..PasskeyConfig::default() };
    c.grid.policies = specs("full,window,tova");
    c.grid.capacities = vec![16, 32];
    c.grid.feed = Feed::Chunked(16);
    c
}

/// [`passkey_config`] changed by `f`.
fn passkey_with(f: impl FnOnce(&mut PasskeyConfig)) -> PasskeyConfig {
    let mut c = passkey_config();
    f(&mut c);
    c
}

#[test]
fn a_passkey_grid_is_deterministic_and_its_shards_merge() {
    let d = scratch("eval-passkey");
    let (lm, _) = tiny(&d);
    let r = msrnn_policies::registry();
    let m = model(&lm);
    let whole = msrnn_eval::passkey::run(&m, &r, &passkey_config(), &mut ()).unwrap();
    assert_eq!(whole.cells.len(), 5 * 2 * 3);
    assert_eq!(whole.settings.lengths, [300, 340]);
    for c in &whole.results {
        assert_eq!(c.answers.len(), 2);
        assert_eq!(c.correct, c.answers.iter().filter(|a| a.correct).count());
        for a in &c.answers {
            assert_eq!(a.prompt_tokens, c.length);
            assert!((10_000..100_000).contains(&a.key));
            assert_eq!(a.correct, msrnn_eval::passkey::score(&a.answer, a.key));
        }
    }
    let keys = |doc: &PasskeyDocument, id: &str| -> Vec<u32> {
        doc.result(id).unwrap().answers.iter().map(|a| a.key).collect()
    };
    assert_eq!(keys(&whole, "full L=300 d=0.5"), keys(&whole, "tova C=16 L=300 d=0.5"), "paired prompts");
    assert_ne!(keys(&whole, "full L=300 d=0.5"), keys(&whole, "full L=300 d=1"));

    let small = msrnn_eval::passkey::run(&m, &r, &passkey_with(|c| c.grid.batch = Some(5)), &mut ());
    assert_eq!(small.unwrap().results, whole.results, "same results whatever the batch size");

    let parts: Vec<(String, AnyDocument)> = (0..2)
        .map(|i| {
            let cfg = passkey_with(|c| c.grid.shard = Some(Shard::new(i, 2).unwrap()));
            let doc = msrnn_eval::passkey::run(&m, &r, &cfg, &mut ()).unwrap();
            (format!("part{i}"), round_trip(&doc.to_json_string()))
        })
        .collect();
    let AnyDocument::Passkey(merged) = msrnn_eval::merge(&parts).unwrap() else { panic!("a passkey document") };
    assert_eq!(merged.results, whole.results);
    let e = msrnn_eval::merge(&parts[..1]).unwrap_err().to_string();
    assert!(e.contains("15 of 30 cells are missing"), "{e}");
    round_trip(&whole.to_json_string());
}

/// Stops after `after` progress events.
struct StopAfter {
    seen: Cell<usize>,
    after: usize,
}

impl Observer for StopAfter {
    fn event(&mut self, e: Event) {
        if matches!(e, Event::Progress(_) | Event::Batch(_)) {
            self.seen.set(self.seen.get() + 1);
        }
    }
    fn cancelled(&self) -> bool {
        self.seen.get() >= self.after
    }
}

#[test]
fn a_cancelled_run_stops_between_steps() {
    let d = scratch("eval-cancel");
    let (lm, path) = tiny(&d);
    let r = msrnn_policies::registry();
    let m = model(&lm);
    let text = Text::read(lm.tokenizer(), &[path], 120).unwrap();
    let mut stop = StopAfter { seen: Cell::new(0), after: 1 };
    let cfg = ppl_with(|c| c.grid.batch = Some(2));
    assert!(matches!(msrnn_eval::ppl::run(&m, &r, &text, &cfg, &mut stop), Err(Error::Cancelled)));
    let mut stop = StopAfter { seen: Cell::new(0), after: 1 };
    assert!(matches!(msrnn_eval::passkey::run(&m, &r, &passkey_config(), &mut stop), Err(Error::Cancelled)));
}

#[test]
fn bad_settings_are_refused_by_name() {
    let d = scratch("eval-errors");
    let (lm, path) = tiny(&d);
    let r: PolicyRegistry = msrnn_policies::registry();
    let m = model(&lm);
    let err = |cfg: PasskeyConfig| msrnn_eval::passkey::run(&m, &r, &cfg, &mut ()).unwrap_err().to_string();
    let e = err(passkey_with(|c| c.prompts.lengths = vec![600]));
    assert!(e.starts_with("lengths 600") && e.contains("context of 512 tokens") && e.contains("drop `full`"), "{e}");
    assert!(err(passkey_with(|c| c.prompts.lengths = vec![100])).contains("too short"));
    assert!(err(passkey_with(|c| c.prompts.depths = vec![0.5, 1.5])).starts_with("depths 1.5"));
    assert!(err(passkey_with(|c| c.prompts.depths = vec![0.5, 0.5])).contains("listed twice"));
    assert!(err(passkey_with(|c| c.prompts.trials = 0)).starts_with("trials"));
    assert!(err(PasskeyConfig { answer_tokens: 4, ..passkey_config() }).starts_with("answer_tokens 4"));
    assert!(err(passkey_with(|c| c.grid.batch = Some(0))).starts_with("batch must be at least 1"));
    let plays = msrnn_eval::passkey::Haystack::Plays(d.join("nowhere"));
    assert!(err(PasskeyConfig { haystack: plays, ..passkey_config() }).starts_with("plays "));

    let text = Text::read(lm.tokenizer(), &[path], 4000).unwrap();
    let ppl = |cfg: PplConfig| msrnn_eval::ppl::run(&m, &r, &text, &cfg, &mut ()).unwrap_err();
    let e = ppl(PplConfig { tokens: 4000, ..ppl_config() });
    let flag = |s: &str| format!("--{s}");
    assert!(e.render(&flag).contains("fewer than --tokens 4000"), "{}", e.render(&flag));
    assert!(ppl(PplConfig { tokens: 1, ..ppl_config() }).to_string().contains("at least 2 tokens"));
    assert!(ppl(PplConfig { segment: Some(0), ..ppl_config() }).to_string().starts_with("segment"));
    assert!(ppl(ppl_with(|c| c.grid.feed = Feed::Chunked(0))).to_string().starts_with("chunk"));
    assert!(ppl(ppl_with(|c| c.grid.capacities = vec![16, 0])).to_string().starts_with("capacities: 0"));
}

#[test]
fn every_cell_state_is_the_grid_template_with_the_cells_policy_and_capacity() {
    let d = scratch("eval-template");
    let (lm, _) = tiny(&d);
    let r = msrnn_policies::registry();
    let mut c = GridConfig::new("full,tova", Feed::Chunked(4));
    c.capacities = vec![16, 32];
    c.kv = KvFormat::F16;
    c.positions = Positions::Cache;
    let g = c.validate(&r, 1).unwrap();
    let recipe = c.recipe();
    assert_eq!(recipe.max_chunk, 4, "the feed's chunk");
    assert_eq!(g.cells.len(), 3);
    for cell in &g.cells {
        let st = cell.state(&*lm, &r, &recipe).unwrap();
        assert_eq!((st.policy_name(), st.capacity()), (cell.spec.name.as_str(), cell.capacity));
        assert_eq!((st.kv_format(), st.positions_mode()), (KvFormat::F16, Positions::Cache));
    }
}

#[test]
fn answers_through_the_engine_are_what_generate_batch_gives_each_job_alone() {
    use msrnn_core::{generate_batch, Capacity, GenItem, GenerateOptions, Sampling};
    use msrnn_eval::grid::{answer, Job};
    use msrnn_eval::PolicyCell;
    let d = scratch("eval-answer");
    let (lm, _) = tiny(&d);
    let r = msrnn_policies::registry();
    let tok = lm.tokenizer();
    let recipe = GridConfig::new("full", Feed::Chunked(4)).recipe();
    let cell = |p: &str, c: Capacity| PolicyCell { spec: p.parse().unwrap(), capacity: c, ratio: None };
    let cells =
        [cell("full", Capacity::Unbounded), cell("window", Capacity::Bounded(8)), cell("tova", Capacity::Bounded(16))];
    let prompts: Vec<Vec<u32>> =
        (0..6).map(|i| tok.encode(&"the world says hello; ".repeat(2 + 3 * i), false).unwrap()).collect();
    let jobs: Vec<Job<'_>> = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| Job { prompt: p, cell: cells[i % 3].clone(), max_tokens: 4 + 3 * (i % 2) })
        .collect();
    // Odd jobs settle once their answer has 2 characters.
    let settled = |job: usize, text: &str| job % 2 == 1 && text.chars().count() >= 2;
    let alone: Vec<String> = jobs
        .iter()
        .enumerate()
        .map(|(k, j)| {
            let mut state = j.cell.state(&*lm, &r, &recipe).unwrap();
            let opts = GenerateOptions {
                max_tokens: j.max_tokens,
                sampling: Sampling::Greedy,
                stop_tokens: tok.eos_tokens().to_vec(),
                prefill_chunk: recipe.max_chunk,
            };
            let mut out = Vec::new();
            let mut items = [GenItem { state: &mut state, prompt: j.prompt }];
            generate_batch(&*lm, &mut items, &opts, &mut |_, t| {
                out.push(t);
                !settled(k, &tok.decode(&out).unwrap())
            })
            .unwrap();
            tok.decode(&out).unwrap()
        })
        .collect();
    assert!(alone.iter().any(|a| a.chars().count() > 2), "some answers run past the settled length: {alone:?}");
    for batch in [1, 4, 6] {
        let got = answer(&lm, &r, &recipe, &jobs, batch, &mut (), &settled).unwrap();
        assert_eq!(got, alone, "batch {batch}");
    }
}
