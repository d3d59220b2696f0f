//! `msrnn generate`: stream a model's answer through a bounded multi-state, and save or resume that
//! state.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;
use msrnn_core::generate::SplitMix64;
use msrnn_core::{generate, Capacity, GenerateOptions, MsrnnState, PolicySpec, Sampling, StopReason};
use msrnn_llama::{TokenStream, Tokenizer};

use crate::model::LoadedModel;
use crate::policy;
use crate::report::bytes;
use crate::state::{self as statefile, Conversation};
use crate::Ctx;

pub const DEFAULT_POLICY: &str = "h2o-ema";
pub const DEFAULT_CAPACITY: usize = 512;

#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The prompt: the user's message (the model's chat template is applied unless --raw). `-`
    /// reads it from stdin. With --resume it is the next turn, and may be left out to let the
    /// model go on where it stopped.
    #[arg(value_name = "PROMPT")]
    prompt: Option<String>,

    /// Read the prompt from FILE (`-` for stdin).
    #[arg(long, value_name = "FILE", conflicts_with = "prompt")]
    prompt_file: Option<PathBuf>,

    /// Compression policy: NAME[:key=value,...] (`msrnn policies` lists them). `full` keeps every
    /// token (the plain transformer). [default: h2o-ema; with --resume: the saved one]
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

/// The prompt text from the positional argument, --prompt-file, or stdin.
fn prompt_text(a: &GenerateArgs) -> Result<Option<String>> {
    let read_stdin = || -> Result<String> {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("cannot read the prompt from stdin")?;
        Ok(s)
    };
    let text = match (&a.prompt, &a.prompt_file) {
        (Some(p), _) if p == "-" => Some(read_stdin()?),
        (Some(p), _) => Some(p.clone()),
        (None, Some(f)) if f.as_os_str() == "-" => Some(read_stdin()?),
        (None, Some(f)) => Some(crate::report::read_text(f, "--prompt-file")?),
        (None, None) => None,
    };
    if let Some(t) = &text {
        if t.trim().is_empty() {
            bail!("the prompt is empty");
        }
    }
    Ok(text)
}

/// The end-of-turn token of the chat template and the text that separates turns after it, derived
/// from the template itself: `chat_prompt(X)` = user header + X + end + separator + assistant header.
fn turn_end(tok: &Tokenizer) -> Option<(u32, String)> {
    const MARK: &str = "\u{1}";
    let p = tok.chat_prompt(MARK);
    let (user_header, suffix) = p.split_once(MARK)?;
    let assistant_header = user_header.replace("user", "assistant");
    for &e in tok.eos_tokens() {
        let text = tok.decode(&[e]).ok()?;
        if let Some(rest) = suffix.strip_prefix(&text) {
            let sep = rest.strip_suffix(&assistant_header).unwrap_or("");
            return Some((e, sep.to_string()));
        }
    }
    None
}

/// The generator state after `draws` samples from `seed` (each top-p sample draws once).
fn advance_seed(seed: u64, draws: u64) -> u64 {
    let mut g = SplitMix64::new(seed);
    for _ in 0..draws {
        g.next_u64();
    }
    g.state()
}

pub fn run(ctx: &Ctx, a: GenerateArgs) -> Result<()> {
    let registry = policy::registry(ctx)?;
    let text = prompt_text(&a)?;
    let (saved_header, conv) = match &a.resume {
        Some(p) => {
            let h = MsrnnState::read_header(p).with_context(|| format!("--resume {}", p.display()))?;
            let c = statefile::conversation(p).with_context(|| format!("--resume {}", p.display()))?;
            (Some(h), c)
        }
        None => (None, None),
    };
    if text.is_none() && a.resume.is_none() {
        bail!("no prompt: give one as an argument (`msrnn generate \"...\"`), with --prompt-file FILE, or `-` to read stdin");
    }

    // Policy and capacity: the flags, else the saved state's, else the defaults.
    let spec: PolicySpec = match (&a.policy, &saved_header) {
        (Some(s), _) => policy::parse_spec(&registry, s, "--policy")?,
        (None, Some(h)) => h.policy.clone(),
        (None, None) => DEFAULT_POLICY.parse()?,
    };
    let capacity = match (a.capacity, &saved_header) {
        (Some(c), _) if policy::is_full(&registry, &spec) => Capacity::Bounded(c), // the policy refuses it, naming why
        (Some(c), _) => Capacity::bounded(c).with_context(|| format!("--capacity {c}"))?,
        (None, Some(h)) => h.capacity,
        (None, None) if policy::is_full(&registry, &spec) => Capacity::Unbounded,
        (None, None) => Capacity::Bounded(DEFAULT_CAPACITY),
    };

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
    let draws = match (&conv, sampling) {
        (Some(c), Sampling::TopP { .. }) if c.sampling == sampling => c.draws,
        _ => 0,
    };
    let effective = match sampling {
        Sampling::TopP { temperature, top_p, seed } => {
            Sampling::TopP { temperature, top_p, seed: advance_seed(seed, draws) }
        }
        s => s,
    };

    let m = crate::model::load(&ctx.global)?;
    let mut state = policy::make_state(m.model(), &registry, &spec, capacity, a.prefill_chunk.max(1))?;
    if let Some(p) = &a.resume {
        state.load(p, &m.id, &spec).with_context(|| format!("--resume {}", p.display()))?;
    }

    let tok = m.tokenizer();
    let chat = match &conv {
        Some(c) => c.chat && !a.raw,
        None => tok.has_chat_template() && !a.raw,
    };
    let prompt = build_prompt(tok, text.as_deref(), conv.as_ref(), chat, a.resume.is_some())?;
    warn_context(&m, &registry, &spec, &state, prompt.len(), a.max_tokens);
    tracing::info!(prompt_tokens = prompt.len(), %spec, %capacity, chat, "generating");

    let opts = GenerateOptions {
        max_tokens: a.max_tokens,
        sampling: effective,
        stop_tokens: tok.eos_tokens().to_vec(),
        prefill_chunk: a.prefill_chunk.max(1),
    };
    let mut stream = TokenStream::new(tok);
    let mut out = std::io::stdout().lock();
    let mut write_err: Option<std::io::Error> = None;
    let mut ends_with_newline = true;
    let mut on_token = |id: u32| -> bool {
        if let Some(piece) = stream.push(id) {
            ends_with_newline = piece.ends_with('\n');
            if let Err(e) = out.write_all(piece.as_bytes()).and_then(|_| out.flush()) {
                write_err = Some(e);
                return false;
            }
        }
        true
    };
    let g = generate(m.model(), &mut state, &prompt, &opts, &mut on_token).context("generation failed")?;
    if let Some(e) = write_err {
        return Err(e.into());
    }
    if let Some(rest) = stream.finish() {
        ends_with_newline = rest.ends_with('\n');
        out.write_all(rest.as_bytes())?;
    }
    out.flush()?;
    drop(out);
    // stdout holds exactly the generated text (a resumed run's output appends to it seamlessly);
    // the line break that ends it on a terminal goes to stderr, with the statistics.
    if !ends_with_newline {
        eprintln!();
    }

    let stop = match g.stop {
        StopReason::StopToken => "end of turn",
        StopReason::MaxTokens => "--max-tokens reached",
        StopReason::Caller => "output closed",
    };
    let prefill_s = g.prefill_time.as_secs_f64();
    eprintln!(
        "--\n{} tokens in {:.2} s: {:.1} tokens/s decoding ({stop}); prompt {} tokens in {:.2} s ({:.0} tokens/s); model load {:.2} s",
        g.tokens.len(),
        g.decode_time.as_secs_f64() + prefill_s,
        g.decode_tokens_per_s(),
        g.prompt_tokens,
        prefill_s,
        g.prompt_tokens as f64 / prefill_s.max(1e-9),
        m.load_time.as_secs_f64(),
    );
    eprintln!(
        "state: policy {spec}, capacity {capacity}, {} tokens seen, live cache {} tokens per layer (max), KV {} live / {} allocated (threads: {}, matmuls: {})",
        state.tokens_seen(),
        state.max_live(),
        bytes(state.live_kv_bytes() as u64),
        bytes(state.allocated_kv_bytes() as u64),
        ctx.threads,
        m.lm.weight_kinds(),
    );

    if let Some(path) = &a.save_state {
        save(path, &m, &state, &spec, &g, sampling, draws, chat, conv.as_ref())?;
        eprintln!(
            "saved the state to {} ({}); go on with: msrnn generate --resume {} [PROMPT]",
            path.display(),
            bytes(std::fs::metadata(path).map(|x| x.len()).unwrap_or(0)),
            path.display()
        );
    }
    Ok(())
}

/// Prompt token ids. A fresh run encodes the (templated) text; a resumed run first feeds the token
/// the saved run sampled last but never fed, then the next turn, if any.
fn build_prompt(
    tok: &Tokenizer,
    text: Option<&str>,
    conv: Option<&Conversation>,
    chat: bool,
    resumed: bool,
) -> Result<Vec<u32>> {
    if !resumed {
        let text = text.expect("checked: a fresh run has a prompt");
        let templated = if chat { tok.chat_prompt(text) } else { text.to_string() };
        return Ok(tok.encode(&templated, tok.wants_bos())?);
    }
    let mut ids: Vec<u32> = conv.and_then(|c| c.pending).into_iter().collect();
    if let Some(text) = text {
        let next = if chat {
            // Close the previous answer if --max-tokens cut it off, then open the next user turn.
            let (end, sep) = turn_end(tok).unwrap_or((u32::MAX, String::new()));
            let ended = conv.is_none_or(|c| c.turn_ended);
            if !ended && end != u32::MAX {
                ids.push(end);
            }
            format!("{sep}{}", tok.chat_prompt(text))
        } else {
            text.to_string()
        };
        ids.extend(tok.encode(&next, false)?);
    }
    if ids.is_empty() {
        bail!(
            "the saved state has no token waiting to be fed (it was saved without generating); give a PROMPT to go on"
        );
    }
    Ok(ids)
}

/// Warns when the full cache would run past the model's context (a bounded policy keeps going).
fn warn_context(
    m: &LoadedModel,
    r: &msrnn_core::PolicyRegistry,
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
    if policy::is_full(r, spec) {
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

#[allow(clippy::too_many_arguments)]
fn save(
    path: &Path,
    m: &LoadedModel,
    state: &MsrnnState,
    spec: &PolicySpec,
    g: &msrnn_core::Generation,
    sampling: Sampling,
    draws: u64,
    chat: bool,
    prev: Option<&Conversation>,
) -> Result<()> {
    crate::report::create_parent(path, "--save-state")?;
    state.save(path, &m.id, spec).with_context(|| format!("--save-state {}", path.display()))?;
    let sampled = if matches!(sampling, Sampling::TopP { .. }) { g.tokens.len() as u64 } else { 0 };
    let conv = Conversation {
        pending: g.tokens.last().copied(),
        sampling,
        draws: draws + sampled,
        chat,
        turn_ended: g.stop == StopReason::StopToken,
        generated: prev.map_or(0, |c| c.generated) + g.tokens.len() as u64,
        turns: prev.map_or(0, |c| c.turns) + 1,
    };
    statefile::attach(path, &conv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advancing_the_seed_continues_the_stream() {
        let mut g = SplitMix64::new(42);
        for _ in 0..5 {
            g.next_f64();
        }
        let mut resumed = SplitMix64::new(advance_seed(42, 5));
        assert_eq!(g.next_u64(), resumed.next_u64());
        assert_eq!(advance_seed(7, 0), 7);
    }
}
