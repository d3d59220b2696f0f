//! `msrnn generate`: stream a model's answer through a bounded multi-state, and save or resume that
//! state.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use msrnn_core::{Capacity, KvFormat, MsrnnState, PolicyRegistry, PolicySpec, Positions, Sampling, StateRecipe};
use msrnn_engine::session::{self, continue_sampling, next_turn_prompt, Conversation, Turn};
use msrnn_engine::{Engine, EngineOptions, Event, Finished, GenConfig, StopReason};

use crate::model::LoadedModel;
use crate::policy;
use crate::report::bytes;
use crate::state as statefile;
use crate::Ctx;

pub const DEFAULT_POLICY: &str = "tova";
pub const DEFAULT_CAPACITY: usize = 512;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt: the user's message (the model's chat template is applied unless --raw). `-`
    /// reads it from stdin. Several prompts are answered together, one batched forward pass per
    /// step (see --jsonl and --out-dir). With --resume it is the next turn, and may be left out to
    /// let the model go on where it stopped.
    #[arg(value_name = "PROMPT")]
    prompts: Vec<String>,

    /// Read the prompt from FILE (`-` for stdin): the whole file is one prompt, or one per line
    /// with --each-line.
    #[arg(long, value_name = "FILE", conflicts_with = "prompts")]
    prompt_file: Option<PathBuf>,

    /// Every non-empty line of --prompt-file (or of stdin, `-`) is a prompt of its own; all are
    /// answered together.
    #[arg(long)]
    each_line: bool,

    /// Answer every prompt N times in the same batch (the same answer N times when greedy or
    /// with one seed: a way to measure batched generation).
    #[arg(long, value_name = "N", default_value_t = 1)]
    repeat: usize,

    /// Stream JSON lines on stdout instead of text: `{"prompt": i, "token": ID, "text": "..."}`
    /// per generated token (i counts prompts from 0; text is empty while a character is
    /// incomplete), then `{"prompt": i, "done": true, ...}` with the answer and its statistics.
    #[arg(long, conflicts_with = "out_dir")]
    jsonl: bool,

    /// Write each answer to DIR/answer-<i>.txt as it streams (i counts prompts from 0). Without
    /// --jsonl or --out-dir, several answers are printed one after another once all are done.
    #[arg(long, value_name = "DIR")]
    out_dir: Option<PathBuf>,

    /// Compression policy: NAME[:key=value,...] (`msrnn policies` lists them). `full` keeps every
    /// token (the plain transformer). [default: tova; with --resume: the saved one]
    #[arg(long, short = 'p', value_name = "SPEC")]
    policy: Option<String>,

    /// Cache capacity C: tokens kept per layer (not used by `full`). [default: 512; with --resume:
    /// the saved one]
    #[arg(long, short = 'c', value_name = "C")]
    capacity: Option<usize>,

    /// Most tokens to generate; generation also stops at the model's end-of-turn token.
    #[arg(long, short = 'n', value_name = "N", default_value_t = 256)]
    max_tokens: usize,

    /// Sample with this temperature instead of greedy decoding (0 = greedy). [default: greedy;
    /// with --resume: the saved sampling]
    #[arg(long, value_name = "T")]
    temperature: Option<f64>,

    /// Nucleus sampling: draw only from the most likely tokens that cover this probability mass
    /// (with --temperature). [default: 0.9]
    #[arg(long, value_name = "P")]
    top_p: Option<f64>,

    /// Seed of the sampler (with --temperature): the same seed gives the same text. [default: 0]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,

    /// Feed the prompt as it is, without the chat template.
    #[arg(long)]
    raw: bool,

    /// Prompt tokens fed per forward pass; the policy brings each layer back to C after each chunk.
    #[arg(long, value_name = "N", default_value_t = 64)]
    prefill_chunk: usize,

    /// At the end, write the state (the whole memory of the conversation: C tokens per layer) to
    /// FILE, to go on later with --resume.
    #[arg(long, value_name = "FILE")]
    save_state: Option<PathBuf>,

    /// Start from a state written by --save-state. It must come from the same model (file and
    /// --weights), policy and capacity. Without a PROMPT the generation goes on exactly as if it
    /// had never stopped.
    #[arg(long, value_name = "FILE")]
    resume: Option<PathBuf>,
}

/// The prompt texts from the positional arguments, --prompt-file or stdin (split into lines with
/// --each-line), each repeated --repeat times.
fn prompt_texts(a: &GenerateArgs) -> Result<Vec<String>> {
    let mut stdin_read = false;
    let mut read_stdin = || -> Result<String> {
        if std::mem::replace(&mut stdin_read, true) {
            bail!("`-` (stdin) can be given once");
        }
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read the prompt from stdin")?;
        Ok(s)
    };
    let mut split_from: Option<String> = None;
    let mut texts = Vec::new();
    let mut add = |text: String, from: String, texts: &mut Vec<String>| -> Result<()> {
        if a.each_line {
            let lines: Vec<String> =
                text.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_string).collect();
            if lines.is_empty() {
                bail!("{from} has no non-empty line");
            }
            texts.extend(lines);
            split_from = Some(from);
        } else {
            texts.push(text);
        }
        Ok(())
    };
    match &a.prompt_file {
        Some(f) if f.as_os_str() == "-" => add(read_stdin()?, "stdin".into(), &mut texts)?,
        Some(f) => {
            add(crate::report::read_text(f, "--prompt-file")?, format!("--prompt-file {}", f.display()), &mut texts)?
        }
        None => {}
    }
    for p in &a.prompts {
        if p == "-" {
            add(read_stdin()?, "stdin".into(), &mut texts)?;
        } else {
            texts.push(p.clone());
        }
    }
    if a.each_line && split_from.is_none() {
        bail!("--each-line splits --prompt-file FILE or stdin (`-`) into prompts; neither was given");
    }
    let several = texts.len() > 1;
    for (i, t) in texts.iter().enumerate() {
        if t.trim().is_empty() {
            bail!("{} is empty", if several { format!("prompt {i}") } else { "the prompt".to_string() });
        }
    }
    if a.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    let once = texts.clone();
    for _ in 1..a.repeat {
        texts.extend(once.iter().cloned());
    }
    Ok(texts)
}

pub fn run(ctx: &Ctx, a: GenerateArgs) -> Result<()> {
    let registry = Arc::new(policy::registry(ctx)?);
    let texts = prompt_texts(&a)?;
    let several = texts.len() > 1;
    if several && (a.resume.is_some() || a.save_state.is_some()) {
        bail!(
            "--save-state and --resume take one prompt (a state is one conversation); {} prompts were given",
            texts.len()
        );
    }
    let (saved_header, conv) = match &a.resume {
        Some(p) => {
            let h = MsrnnState::read_header(p).with_context(|| format!("--resume {}", p.display()))?;
            let c = statefile::conversation(p).with_context(|| format!("--resume {}", p.display()))?;
            (Some(h), c)
        }
        None => (None, None),
    };
    if texts.is_empty() && a.resume.is_none() {
        bail!("no prompt: give one as an argument (`msrnn generate \"...\"`), with --prompt-file FILE, or `-` to read stdin");
    }

    // Policy and capacity: the flags, else the saved state's, else the defaults.
    let spec: PolicySpec = match (&a.policy, &saved_header) {
        (Some(s), _) => policy::parse_spec(&registry, s, "--policy")?,
        (None, Some(h)) => h.policy.clone(),
        (None, None) => DEFAULT_POLICY.parse()?,
    };
    // Capacity: the flag, else the saved state's, else the recipe's default (checked with the model).
    let capacity = match (a.capacity, &saved_header) {
        (Some(c), _) => Some(Capacity::bounded(c).with_context(|| format!("--capacity {c}"))?),
        (None, Some(h)) => Some(h.capacity),
        (None, None) => None,
    };
    // Positions: the flag, else the saved state's, else absolute.
    let positions = match (ctx.global.positions, &saved_header) {
        (Some(p), _) => p,
        (None, Some(h)) => h.positions,
        (None, None) => Positions::default(),
    };
    // KV format: the flag, else the saved state's, else f32 (a file in another format is refused).
    let kv = match (ctx.global.kv, &saved_header) {
        (Some(k), _) => k,
        (None, Some(h)) => h.kv,
        (None, None) => KvFormat::default(),
    };
    let kv_note = if kv.is_f32() { String::new() } else { format!(" ({kv})") };

    // Sampling: the flags, else the saved run's.
    let saved_sampling = conv.as_ref().map(|c| c.sampling);
    let sampling = match a.temperature {
        Some(0.0) => Sampling::Greedy,
        Some(temperature) => Sampling::TopP { temperature, top_p: a.top_p.unwrap_or(0.9), seed: a.seed.unwrap_or(0) },
        None => match saved_sampling {
            Some(Sampling::TopP { temperature, top_p, seed }) => {
                Sampling::TopP { temperature, top_p: a.top_p.unwrap_or(top_p), seed: a.seed.unwrap_or(seed) }
            }
            _ => {
                if a.top_p.is_some() || a.seed.is_some() {
                    eprintln!("warning: --top-p and --seed take effect only with --temperature > 0; decoding greedily");
                }
                Sampling::Greedy
            }
        },
    };
    if let Sampling::TopP { temperature, top_p, .. } = sampling {
        msrnn_core::Sampler::new(sampling).with_context(|| format!("--temperature {temperature} --top-p {top_p}"))?;
    }
    // Continue the saved random stream when the sampling is unchanged.
    let draws = Conversation::draws_for(conv.as_ref(), sampling);
    let effective = continue_sampling(sampling, draws);
    let mode = match (&a.out_dir, a.jsonl) {
        (Some(d), _) => {
            std::fs::create_dir_all(d).with_context(|| format!("--out-dir {}: cannot create it", d.display()))?;
            Output::Dir(d.clone())
        }
        (None, true) => Output::Jsonl,
        (None, false) if several => Output::Blocks,
        (None, false) => Output::Plain,
    };

    let m = Arc::new(crate::model::load(&ctx.global)?);
    let chunk = a.prefill_chunk.max(1);
    let recipe = match capacity {
        Some(c) => StateRecipe::new(spec.clone(), c),
        // No capacity anywhere: unbounded for an unbounded policy, else the default (at most the
        // model's context).
        None => StateRecipe::resolve(&registry, m.info(), spec.clone(), None, DEFAULT_CAPACITY)?,
    }
    .positions(positions)
    .max_chunk(chunk)
    .kv(kv);
    registry.check_recipe(m.info(), &recipe).with_context(|| match a.capacity {
        Some(c) => format!("--capacity {c}"),
        None => format!("policy `{spec}` at capacity {}", recipe.capacity),
    })?;
    let capacity = recipe.capacity;
    let tok = m.tokenizer();
    let chat = match &conv {
        Some(c) => c.chat && !a.raw,
        None => tok.has_chat_template() && !a.raw,
    };
    let resumed = a.resume.is_some();
    let mut prompts = Vec::new();
    if texts.is_empty() {
        // --resume without a prompt: the model goes on where it stopped.
        prompts.push(next_turn_prompt(tok, Turn::Continue, conv.as_ref(), chat, true)?);
    }
    for t in &texts {
        prompts.push(next_turn_prompt(tok, Turn::Text(t), conv.as_ref(), chat, resumed)?);
    }
    let mut engine = Engine::new(m.clone(), registry.clone(), EngineOptions { prefill_budget: usize::MAX });
    let cfg = GenConfig {
        max_tokens: a.max_tokens,
        sampling: effective,
        stop_tokens: tok.eos_tokens().to_vec(),
        stop_strings: Vec::new(),
        prefill_chunk: chunk,
    };
    let longest = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = Vec::with_capacity(prompts.len());
    for (i, prompt) in prompts.into_iter().enumerate() {
        let mut state = engine.new_state(&recipe).with_context(|| format!("policy `{spec}` at capacity {capacity}"))?;
        if let Some(p) = &a.resume {
            state.load(p, &m.id, &spec).with_context(|| format!("--resume {}", p.display()))?;
        }
        if i == 0 {
            warn_context(&m, &registry, &spec, &state, longest, a.max_tokens);
        }
        ids.push(engine.add(state, prompt, cfg.clone()).context("generation failed")?);
    }
    tracing::info!(prompts = ids.len(), longest, %spec, %capacity, %positions, chat, "generating");

    let mut sinks = Sinks::new(&mode, ids.len())?;
    let t0 = std::time::Instant::now();
    let mut done: Vec<Option<Finished>> = (0..ids.len()).map(|_| None).collect();
    let index = |id| ids.iter().position(|&x| x == id).expect("our sequence");
    while engine.active() > 0 {
        for ev in engine.step().context("generation failed")? {
            match ev {
                Event::Token { id, token, text } => {
                    if !sinks.token(index(id), token, &text) {
                        // The output closed: stop every answer (finish reports why).
                        for id in engine.ids() {
                            let f = engine.cancel(id).expect("live");
                            done[index(id)] = Some(f);
                        }
                    }
                }
                Event::Scored { .. } => {}
                Event::Finished(f) => {
                    let i = index(f.id);
                    done[i] = Some(f);
                }
                Event::Failed { id, error } => bail!("generation failed (prompt {}): {error}", index(id)),
            }
        }
    }
    let wall = t0.elapsed().as_secs_f64();
    let done: Vec<Finished> = done.into_iter().map(|f| f.expect("every answer finished")).collect();
    let gens: Vec<msrnn_core::Generation> = done.iter().map(generation).collect();
    sinks.finish(&gens, &done)?;
    let states: Vec<&MsrnnState> = done.iter().map(|f| &f.state).collect();

    for (i, (g, state)) in gens.iter().zip(&states).enumerate() {
        if several {
            eprintln!("prompt {i}: {}", summary(g));
            continue;
        }
        eprintln!("--\n{}; model load {:.2} s", summary(g), m.load_time.as_secs_f64());
        eprintln!(
            "state: policy {spec}, capacity {capacity}, {positions} positions, {} tokens seen, live cache {} tokens per \
             layer (max), KV{kv_note} {} live / {} allocated (threads: {}, matmuls: {})",
            state.tokens_seen(),
            state.max_live(),
            bytes(state.live_kv_bytes() as u64),
            bytes(state.allocated_kv_bytes() as u64),
            ctx.threads,
            m.lm.weight_kinds(),
        );
    }
    if several {
        let prompt_tokens: usize = gens.iter().map(|g| g.prompt_tokens).sum();
        let generated: usize = gens.iter().map(|g| g.tokens.len()).sum();
        let (live, alloc) =
            states.iter().fold((0, 0), |(l, a), s| (l + s.live_kv_bytes() as u64, a + s.allocated_kv_bytes() as u64));
        eprintln!(
            "--\n{} prompts in one batch: {prompt_tokens} prompt tokens and {generated} generated in {wall:.2} s ({:.1} \
             generated tokens/s in all); model load {:.2} s",
            gens.len(),
            generated as f64 / wall.max(1e-9),
            m.load_time.as_secs_f64(),
        );
        eprintln!(
            "states: policy {spec}, capacity {capacity}, {positions} positions, live cache {} tokens per layer (max), \
             KV{kv_note} {} live / {} allocated in all (threads: {}, matmuls: {})",
            states.iter().map(|s| s.max_live()).max().unwrap_or(0),
            bytes(live),
            bytes(alloc),
            ctx.threads,
            m.lm.weight_kinds(),
        );
    }

    if let Some(path) = &a.save_state {
        let f = &done[0];
        crate::report::create_parent(path, "--save-state")?;
        let c = Conversation::after(conv.as_ref(), f, sampling, draws, chat);
        session::save(path, &f.state, &m.id, &spec, &c).with_context(|| format!("--save-state {}", path.display()))?;
        eprintln!(
            "saved the state to {} ({}); go on with: msrnn generate --resume {} [PROMPT]",
            path.display(),
            bytes(std::fs::metadata(path).map(|x| x.len()).unwrap_or(0)),
            path.display()
        );
    }
    Ok(())
}

/// An engine result as the summary lines and JSON report it (a cancelled answer: the output
/// closed).
fn generation(f: &Finished) -> msrnn_core::Generation {
    msrnn_core::Generation {
        tokens: f.tokens.clone(),
        stop: match f.reason {
            StopReason::StopToken => msrnn_core::StopReason::StopToken,
            StopReason::MaxTokens => msrnn_core::StopReason::MaxTokens,
            StopReason::StopString | StopReason::Cancelled => msrnn_core::StopReason::Caller,
        },
        prompt_tokens: f.prompt_tokens,
        prefill_time: f.prefill_time,
        decode_time: f.decode_time,
    }
}

fn stop_text(s: msrnn_core::StopReason) -> &'static str {
    use msrnn_core::StopReason;
    match s {
        StopReason::StopToken => "end of turn",
        StopReason::MaxTokens => "--max-tokens reached",
        StopReason::Caller => "output closed",
    }
}

/// `12 tokens (end of turn): prefill 656 tokens in 3.10 s (212 tokens/s); decode 11 tokens in 0.40 s
/// (27.5 tokens/s)`. The first generated token comes from the prefill's last logits; decoding feeds
/// the tokens after it one at a time.
pub(crate) fn summary(g: &msrnn_core::Generation) -> String {
    let prefill = g.prefill_time.as_secs_f64();
    format!(
        "{} tokens ({}): prefill {} tokens in {prefill:.2} s ({:.0} tokens/s); decode {} tokens in {:.2} s ({:.1} tokens/s)",
        g.tokens.len(),
        stop_text(g.stop),
        g.prompt_tokens,
        g.prompt_tokens as f64 / prefill.max(1e-9),
        g.tokens.len().saturating_sub(1),
        g.decode_time.as_secs_f64(),
        g.decode_tokens_per_s(),
    )
}

/// Where the answers go.
#[derive(Clone)]
enum Output {
    /// One answer streamed to stdout (stdout holds exactly the generated text).
    Plain,
    /// Several answers, printed one after another once all are done.
    Blocks,
    /// JSON lines on stdout.
    Jsonl,
    /// One file per answer.
    Dir(PathBuf),
}

/// Each answer's detokenizer and destination.
struct Sinks {
    mode: Output,
    texts: Vec<String>,
    files: Vec<std::fs::File>,
    out: std::io::Stdout,
    /// The first write error; it stops the generation.
    error: Option<std::io::Error>,
}

impl Sinks {
    fn new(mode: &Output, n: usize) -> Result<Self> {
        let mut files = Vec::new();
        if let Output::Dir(d) = mode {
            for i in 0..n {
                let p = answer_path(d, i, n);
                files.push(
                    std::fs::File::create(&p).with_context(|| format!("--out-dir: cannot create {}", p.display()))?,
                );
            }
        }
        Ok(Self { mode: mode.clone(), texts: vec![String::new(); n], files, out: std::io::stdout(), error: None })
    }

    /// A generated token of answer `i` and the text it completes; `false` stops the generation (a
    /// write failed).
    fn token(&mut self, i: usize, id: u32, piece: &str) -> bool {
        if let Err(e) = self.write(i, Some(id), Some(piece)) {
            self.error = Some(e);
            return false;
        }
        self.error.is_none()
    }

    fn write(&mut self, i: usize, id: Option<u32>, piece: Option<&str>) -> std::io::Result<()> {
        if let Some(p) = piece {
            self.texts[i].push_str(p);
        }
        match &self.mode {
            Output::Plain => {
                if let Some(p) = piece {
                    let mut out = self.out.lock();
                    out.write_all(p.as_bytes())?;
                    out.flush()?;
                }
            }
            Output::Blocks => {}
            Output::Jsonl => {
                let line = serde_json::json!({"prompt": i, "token": id, "text": piece.unwrap_or("")});
                let mut out = self.out.lock();
                writeln!(out, "{line}")?;
                out.flush()?;
            }
            Output::Dir(_) => {
                if let Some(p) = piece {
                    self.files[i].write_all(p.as_bytes())?;
                    self.files[i].flush()?;
                }
            }
        }
        Ok(())
    }

    /// Flushes what the detokenizers held back, then each answer's end: a summary line (JSON
    /// lines), the answers one after another (several, no --out-dir), a line break on stderr
    /// (one answer on stdout: stdout holds exactly the generated text, so a resumed run's output
    /// appends to it seamlessly).
    fn finish(&mut self, gens: &[msrnn_core::Generation], done: &[Finished]) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e.into());
        }
        for (i, f) in done.iter().enumerate() {
            match f.text.get(self.texts[i].len()..) {
                Some(rest) if !rest.is_empty() => self.write(i, None, Some(rest))?,
                _ => {}
            }
        }
        match &self.mode {
            Output::Plain => {
                if !self.texts[0].is_empty() && !self.texts[0].ends_with('\n') {
                    eprintln!();
                }
            }
            Output::Blocks => {
                let mut out = self.out.lock();
                for (i, t) in self.texts.iter().enumerate() {
                    writeln!(out, "--- answer {i} ---")?;
                    out.write_all(t.as_bytes())?;
                    if !t.ends_with('\n') {
                        writeln!(out)?;
                    }
                }
                out.flush()?;
            }
            Output::Jsonl => {
                let mut out = self.out.lock();
                for (i, (g, t)) in gens.iter().zip(&self.texts).enumerate() {
                    let line = serde_json::json!({
                        "prompt": i,
                        "done": true,
                        "stop": stop_text(g.stop),
                        "text": t,
                        "prompt_tokens": g.prompt_tokens,
                        "generated_tokens": g.tokens.len(),
                        "prefill_seconds": g.prefill_time.as_secs_f64(),
                        "decode_seconds": g.decode_time.as_secs_f64(),
                        "decode_tokens_per_s": g.decode_tokens_per_s(),
                    });
                    writeln!(out, "{line}")?;
                }
                out.flush()?;
            }
            Output::Dir(d) => {
                let n = self.texts.len();
                eprintln!(
                    "wrote {n} answer{} to {}",
                    if n == 1 { "" } else { "s" },
                    if n == 1 { answer_path(d, 0, 1) } else { d.clone() }.display()
                );
            }
        }
        Ok(())
    }
}

/// `DIR/answer-07.txt`: numbered from 0, padded so the files sort in order.
fn answer_path(dir: &Path, i: usize, n: usize) -> PathBuf {
    let width = (n.max(1) - 1).to_string().len();
    dir.join(format!("answer-{i:0width$}.txt"))
}

/// Warns when the full cache would run past the model's context (a bounded policy keeps going).
fn warn_context(
    m: &LoadedModel,
    r: &PolicyRegistry,
    spec: &PolicySpec,
    state: &MsrnnState,
    prompt: usize,
    max_tokens: usize,
) {
    let ctx_len = m.info().max_context;
    let seen = state.tokens_seen() as usize;
    let total = seen + prompt + max_tokens;
    if total <= ctx_len {
        return;
    }
    if r.is_unbounded(spec).unwrap_or(false) {
        let what = if seen + prompt > ctx_len {
            format!(
                "the prompt ({prompt} tokens{}) is longer than",
                if seen > 0 { format!(" after {seen} already seen") } else { String::new() }
            )
        } else {
            format!("the prompt ({prompt} tokens) plus --max-tokens {max_tokens} may run past")
        };
        eprintln!(
            "warning: {what} the model's context of {ctx_len} tokens; with the full policy every token stays in the cache and \
             positions past {ctx_len} were never trained, so expect the text to degrade. A bounded policy keeps the cache at C \
             tokens (e.g. --policy tova --capacity 512)."
        );
    } else {
        tracing::info!(total, ctx_len, "running past the model's context with a bounded cache");
    }
}
