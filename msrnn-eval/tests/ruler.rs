//! The RULER-style suite on the real SmolLM2 (skipped without it): prompts that are deterministic,
//! of the asked length, with needles at their depths and every expected string in them; and a
//! small grid where the full cache finds the needle and a short window cannot.

use std::path::PathBuf;

use msrnn_core::PolicySpec;
use msrnn_eval::passkey::Prompts;
use msrnn_eval::ruler::{make_sample, task, Env, RulerConfig, Texts, TASKS};
use msrnn_eval::{AnyDocument, EvalModel, Feed, Shard};
use msrnn_llama as _;
use msrnn_modelkit::{LoadOptions, Model};

fn smollm2() -> Option<(Box<dyn Model>, PathBuf)> {
    let path = msrnn_tests::files::smollm2()?;
    let prose = msrnn_tests::files::needs(None, "data/prose", "./scripts/fetch-data.sh")?;
    Some((msrnn_modelkit::load_model(&path, &LoadOptions::default()).unwrap(), prose))
}

#[test]
fn prompts_are_deterministic_exact_and_hold_their_needles() {
    let Some((lm, prose)) = smollm2() else { return };
    let tok = lm.tokenizer();
    let texts = Texts::read(&[prose]).unwrap();
    let env = Env { tok, text: Some(&texts), chat: true };
    for t in TASKS {
        for length in [512, 1024] {
            let depth = t.depths.then_some(0.25);
            let a = make_sample(&env, t, 7, length, depth, 0).unwrap();
            let b = make_sample(&env, t, 7, length, depth, 0).unwrap();
            assert_eq!(a.tokens, b.tokens, "{}: the seed decides the prompt", t.name);
            let other = make_sample(&env, t, 8, length, depth, 0).unwrap();
            assert_ne!(a.expected, other.expected, "{}: another seed, other answers", t.name);
            let text = tok.decode(&a.tokens).unwrap();
            assert!(text.starts_with("<|im_start|>"), "{}: through the chat template", t.name);
            assert!(text.ends_with(" are") || text.ends_with(':'), "{}: ends in the answer's start: {text}", t.name);
            for e in &a.expected {
                assert!(text.contains(e.as_str()), "{}: `{e}` is in the prompt", t.name);
            }
            match t.family {
                "niah" | "vt" => assert_eq!(a.tokens.len(), length, "{}", t.name),
                // lists end a whole item early: a few tokens short at most
                _ => {
                    assert!(a.tokens.len() <= length && a.tokens.len() + 16 >= length, "{}: {}", t.name, a.tokens.len())
                }
            }
        }
    }
    // The first needle sits at its depth of the context.
    let t = task("niah_single_2").unwrap();
    for depth in [0.0, 0.5, 1.0] {
        let s = make_sample(&env, t, 1, 1024, Some(depth), 0).unwrap();
        let at = s.needles[0] as f64 / 1024.0;
        // the frame takes ~80 of the 1024 tokens; a line of text is ~20
        assert!((at - depth).abs() < 0.12, "depth {depth}: needle at {at}");
    }
    let s = make_sample(&env, task("vt").unwrap(), 1, 1024, None, 0).unwrap();
    assert!(s.needles.windows(2).all(|w| w[0] < w[1]), "the chain in order: {:?}", s.needles);
    assert_eq!(s.expected.len(), 5);
}

#[test]
fn the_full_cache_finds_the_needle_and_a_short_window_cannot() {
    let Some((lm, prose)) = smollm2() else { return };
    let r = msrnn_policies::registry();
    let model = EvalModel { lm: lm.into(), id: "smollm2 [test]".into(), name: "SmolLM2".into() };
    let policies: Vec<PolicySpec> = ["full", "window"].iter().map(|s| s.parse().unwrap()).collect();
    let mut cfg = RulerConfig {
        tasks: vec!["niah_single_1".into(), "niah_multikey_2".into()],
        prompts: Prompts { lengths: vec![384], depths: vec![0.5], trials: 1, seed: 0 },
        text: vec![prose],
        ..RulerConfig::default()
    };
    cfg.grid.policies = policies;
    cfg.grid.capacities = vec![32];
    cfg.grid.feed = Feed::Chunked(64);
    let doc = msrnn_eval::ruler::run(&model, &r, &cfg, &mut ()).unwrap();
    let ids: Vec<&str> = doc.results.iter().map(|c| c.id.as_str()).collect();
    assert_eq!(
        ids,
        [
            "full niah_single_1 L=384 d=0.5",
            "full niah_multikey_2 L=384 d=0.5",
            "window C=32 niah_single_1 L=384 d=0.5",
            "window C=32 niah_multikey_2 L=384 d=0.5"
        ]
    );
    let score = |id: &str| doc.result(id).unwrap().score;
    assert_eq!(score("full niah_single_1 L=384 d=0.5"), 1.0, "{:?}", doc.results[0].answers);
    assert_eq!(score("window C=32 niah_single_1 L=384 d=0.5"), 0.0, "{:?}", doc.results[2].answers);
    assert_eq!(score("window C=32 niah_multikey_2 L=384 d=0.5"), 0.0, "{:?}", doc.results[3].answers);
    for c in &doc.results {
        assert_eq!(c.answers[0].prompt_tokens, 384);
    }
    // Too hard: a task the full cache fails at the shortest length.
    let full_mk2 = score("full niah_multikey_2 L=384 d=0.5");
    assert_eq!(doc.too_hard().contains(&"niah_multikey_2".to_string()), full_mk2 < 0.5);
    // Shards merge into the whole; the document round-trips.
    let parts: Vec<(String, AnyDocument)> = (0..2)
        .map(|i| {
            let mut c = cfg.clone();
            c.grid.shard = Some(Shard::new(i, 2).unwrap());
            (format!("part{i}"), AnyDocument::Ruler(msrnn_eval::ruler::run(&model, &r, &c, &mut ()).unwrap()))
        })
        .collect();
    let AnyDocument::Ruler(merged) = msrnn_eval::merge(&parts).unwrap() else { panic!("a ruler document") };
    assert_eq!(merged.results, doc.results);
    let v: serde_json::Value = serde_json::from_str(&doc.to_json_string()).unwrap();
    let AnyDocument::Ruler(back) = AnyDocument::from_value(v, "doc").unwrap() else { panic!("a ruler document") };
    assert_eq!(back.results, doc.results);
}
