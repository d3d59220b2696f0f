//! The batched engine gives every sequence of a batch exactly what it gets alone: mixed policies,
//! capacities, position modes, positions and chunk lengths in one step, sequences joining late and
//! leaving early, on tiny random LLaMA and Gemma models (f32 weights and the CPU kernels' Q8_0), and
//! a perplexity grid on the real model in one batch equal to the grid run one by one.

use candle_core::quantized::GgmlDType;
use msrnn_core::{
    new_state_positioned, perplexity, perplexity_batch, Capacity, EvalMode, Logits, MsrnnState, PolicySpec, Positions,
    SeqStep,
};
use msrnn_modelkit::{load_model, LoadOptions, Model, WeightFormat};
use msrnn_tests::files::scratch;
use msrnn_tests::{tiny_gemma, tiny_llama, Rng};
use proptest::prelude::*;

// Link the families so `load_model` finds them.
use msrnn_gemma as _;
use msrnn_llama as _;

/// One sequence of a test batch: how its state is built and how its tokens are fed.
#[derive(Debug, Clone)]
struct Seq {
    policy: &'static str,
    capacity: Capacity,
    positions: Positions,
    tokens: Vec<u32>,
    /// Tokens fed per step; 0 sits the step out (the sequence keeps its place in the batch).
    schedule: Vec<usize>,
}

fn tiny_models(weights: WeightFormat) -> Vec<(&'static str, Box<dyn Model>)> {
    let dir = scratch("batch-models");
    let llama = dir.join("llama.gguf");
    tiny_llama::TinyLlama::random(tiny_llama::tiny_config(), 7).write_gguf(&llama, GgmlDType::F32, true);
    let gemma = dir.join("gemma.gguf");
    tiny_gemma::TinyGemma::random(tiny_gemma::tiny_config(), 8).write_gguf(&gemma, GgmlDType::F32);
    let opts = LoadOptions { weights, ..Default::default() };
    vec![("llama", load_model(&llama, &opts).unwrap()), ("gemma", load_model(&gemma, &opts).unwrap())]
}

fn new_state(model: &dyn Model, s: &Seq) -> MsrnnState {
    let reg = msrnn_policies::registry();
    let max_chunk = s.schedule.iter().copied().max().unwrap_or(1).max(1);
    let spec: PolicySpec = s.policy.parse().unwrap();
    new_state_positioned(model, &reg, &spec, s.capacity, max_chunk, s.positions).unwrap()
}

/// Each sequence alone: logits of every token it is fed, step by step.
fn alone(model: &dyn Model, s: &Seq) -> Vec<Vec<f32>> {
    let mut st = new_state(model, s);
    let mut fed = 0;
    let mut out = Vec::new();
    for &n in &s.schedule {
        if n == 0 {
            continue;
        }
        out.extend(model.forward(&s.tokens[fed..fed + n], &mut st, true).unwrap().to_vec2::<f32>().unwrap());
        fed += n;
    }
    out
}

/// All sequences together: one `forward_batch` per step with every sequence that feeds in it.
fn together(model: &dyn Model, seqs: &[Seq]) -> Vec<Vec<Vec<f32>>> {
    let mut states: Vec<MsrnnState> = seqs.iter().map(|s| new_state(model, s)).collect();
    let mut fed = vec![0usize; seqs.len()];
    let mut out = vec![Vec::new(); seqs.len()];
    let steps = seqs.iter().map(|s| s.schedule.len()).max().unwrap_or(0);
    for step in 0..steps {
        let mut who = Vec::new();
        let mut batch = Vec::new();
        for (i, (s, st)) in seqs.iter().zip(states.iter_mut()).enumerate() {
            let n = s.schedule.get(step).copied().unwrap_or(0);
            if n > 0 {
                batch.push(SeqStep::new(&s.tokens[fed[i]..fed[i] + n], st, Logits::All));
                who.push((i, n));
            }
        }
        if batch.is_empty() {
            continue;
        }
        let logits = model.forward_batch(&mut batch).unwrap();
        for ((i, n), l) in who.into_iter().zip(logits) {
            out[i].extend(l.to_vec2::<f32>().unwrap());
            fed[i] += n;
        }
    }
    out
}

/// Largest |a - b| relative to the largest |logit|.
fn rel_diff(a: &[Vec<f32>], b: &[Vec<f32>]) -> f32 {
    assert_eq!(a.len(), b.len(), "row counts differ");
    let scale = a.iter().flatten().fold(1e-6f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).flat_map(|(x, y)| x.iter().zip(y).map(|(p, q)| (p - q).abs())).fold(0f32, f32::max) / scale
}

fn check(model: &dyn Model, name: &str, seqs: &[Seq], tol: f32) {
    let batched = together(model, seqs);
    for (i, (s, got)) in seqs.iter().zip(&batched).enumerate() {
        let want = alone(model, s);
        let d = rel_diff(&want, got);
        assert!(d <= tol, "{name}: sequence {i} ({s:?}): batched logits differ from alone by {d} (relative)");
    }
}

fn toks(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

fn mixed(vocab: usize) -> Vec<Seq> {
    let b = |n| Capacity::Bounded(n);
    vec![
        // A long prompt in chunks, then decode.
        Seq {
            policy: "tova",
            capacity: b(6),
            positions: Positions::Absolute,
            tokens: toks(30, vocab, 1),
            schedule: vec![7, 9, 1, 1, 1, 4, 1, 1, 1, 1, 1, 1, 1],
        },
        // Decode only, joining late.
        Seq {
            policy: "window+i:sinks=2",
            capacity: b(4),
            positions: Positions::Cache,
            tokens: toks(20, vocab, 2),
            schedule: vec![0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
        },
        // The full cache, uneven chunks.
        Seq {
            policy: "full",
            capacity: Capacity::Unbounded,
            positions: Positions::Absolute,
            tokens: toks(30, vocab, 3),
            schedule: vec![3, 1, 5, 0, 2, 1, 1, 8],
        },
        // H2O (every step, every row) in cache mode, leaving early.
        Seq {
            policy: "h2o",
            capacity: b(9),
            positions: Positions::Cache,
            tokens: toks(20, vocab, 4),
            schedule: vec![5, 5, 1, 1],
        },
        // A tiny capacity, always over budget.
        Seq {
            policy: "window",
            capacity: b(1),
            positions: Positions::Absolute,
            tokens: toks(20, vocab, 5),
            schedule: vec![2, 1, 1, 3, 1, 1, 1],
        },
    ]
}

#[test]
fn a_mixed_batch_gives_each_sequence_what_it_gets_alone() {
    for (name, model) in tiny_models(WeightFormat::F32) {
        let vocab = model.info().vocab_size;
        check(&*model, name, &mixed(vocab), 1e-5);
    }
    // The CPU kernels are batch-invariant: with Q8_0 matrices the match is exact.
    for (name, model) in tiny_models(WeightFormat::Q8_0) {
        let vocab = model.info().vocab_size;
        check(&*model, name, &mixed(vocab), 0.0);
    }
}

#[test]
fn a_sequence_that_ends_early_leaves_the_others_untouched() {
    let (_, model) = tiny_models(WeightFormat::F32).remove(0);
    let vocab = model.info().vocab_size;
    let mk = |policy, schedule: Vec<usize>, seed| Seq {
        policy,
        capacity: Capacity::Bounded(5),
        positions: Positions::Absolute,
        tokens: toks(24, vocab, seed),
        schedule,
    };
    // The middle sequence stops after two steps; the others go on for ten.
    let seqs = vec![mk("tova", vec![1; 10], 11), mk("h2o", vec![4, 1], 12), mk("window", vec![2; 10], 13)];
    check(&*model, "ends early", &seqs, 1e-5);
}

fn arb_seq(vocab: usize) -> impl Strategy<Value = Seq> {
    let policies = prop::sample::select(vec!["full", "window", "window+i:sinks=1", "h2o", "tova", "random"]);
    (policies, 1usize..8, any::<bool>(), prop::collection::vec(0usize..5, 1..7), any::<u64>()).prop_map(
        move |(policy, c, cache, schedule, seed)| {
            let total: usize = schedule.iter().sum();
            Seq {
                policy,
                capacity: match policy {
                    "full" => Capacity::Unbounded,
                    // window+i keeps its sink plus at least one recent token.
                    "window+i:sinks=1" => Capacity::Bounded(c.max(2)),
                    _ => Capacity::Bounded(c),
                },
                positions: if cache { Positions::Cache } else { Positions::Absolute },
                tokens: toks(total, vocab, seed),
                schedule,
            }
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// Random batch compositions on the tiny LLaMA (Q8_0 on the CPU kernels, so the match must be
    /// exact): any mix of policies, capacities, position modes and chunk schedules.
    #[test]
    fn random_batches_match_running_alone(seqs in prop::collection::vec(arb_seq(tiny_llama::tiny_config().vocab), 1..5)) {
        let (_, model) = tiny_models(WeightFormat::Q8_0).remove(0);
        check(&*model, "random", &seqs, 0.0);
    }
}

/// The real model: a perplexity grid in one batch equals the same grid run one by one, to the bit
/// (the CPU kernels and the attention step are batch-invariant).
#[test]
fn real_model_grid_in_one_batch_equals_the_sequential_grid() {
    let (Some(path), Some(text)) = (msrnn_tests::files::smollm2(), msrnn_tests::files::hamlet()) else { return };
    let model = load_model(&path, &LoadOptions::default()).unwrap();
    let text = std::fs::read_to_string(text).unwrap();
    let ids = model.tokenizer().encode(&text[..4000], false).unwrap();
    let ids = &ids[..96];
    let reg = msrnn_policies::registry();
    let cells: Vec<(&str, Capacity, Positions)> = vec![
        ("full", Capacity::Unbounded, Positions::Absolute),
        ("tova", Capacity::Bounded(16), Positions::Absolute),
        ("h2o", Capacity::Bounded(32), Positions::Absolute),
        ("window+i:sinks=4", Capacity::Bounded(16), Positions::Cache),
    ];
    let make = |(p, c, pos): &(&str, Capacity, Positions)| {
        new_state_positioned(&*model, &reg, &p.parse::<PolicySpec>().unwrap(), *c, 1, *pos).unwrap()
    };
    let mut states: Vec<MsrnnState> = cells.iter().map(make).collect();
    let mut refs: Vec<&mut MsrnnState> = states.iter_mut().collect();
    let batched = perplexity_batch(&*model, &mut refs, ids, EvalMode::Decode, &mut |_| {}).unwrap();
    for (cell, b) in cells.iter().zip(&batched) {
        let one = perplexity(&*model, &mut make(cell), ids, EvalMode::Decode, &mut |_| {}).unwrap();
        assert_eq!(one.nll_sum, b.nll_sum, "{cell:?}: batched {} vs alone {}", b.ppl, one.ppl);
        assert_eq!(one.max_live, b.max_live);
        eprintln!("{cell:?}: perplexity {:.3} both ways", one.ppl);
    }
}
