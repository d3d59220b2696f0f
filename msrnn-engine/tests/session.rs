//! Conversations: chat prompts from the model's own template (ChatML and Gemma 3), the next turn
//! of a resumed conversation, and a state file holding both the state and the conversation.

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::GgmlDType;
use candle_core::Device;
use msrnn_core::generate::SplitMix64;
use msrnn_core::{Capacity, PolicySpec, Sampling, StateRecipe};
use msrnn_engine::session::{self, advance_seed, chat_text, next_turn_prompt, turn_end, Turn};
use msrnn_engine::{Conversation, Engine, EngineOptions, Event, GenConfig, LoadedModel, Message, Role, StopReason};
use msrnn_gemma as _;
use msrnn_llama as _;
use msrnn_modelkit::WeightFormat;
use msrnn_tests::files::scratch;

fn smol() -> LoadedModel {
    let path = scratch("session-llama").join("tiny.gguf");
    msrnn_tests::tiny_llama::TinyLlama::random(msrnn_tests::tiny_llama::tiny_config(), 3).write_gguf(
        &path,
        GgmlDType::F32,
        true,
    );
    msrnn_engine::load(&path, WeightFormat::F32, &Device::Cpu).unwrap()
}

fn gemma() -> LoadedModel {
    let path = scratch("session-gemma").join("tiny.gguf");
    let g = msrnn_tests::tiny_gemma::TinyGemma::random(msrnn_tests::tiny_gemma::tiny_config(), 3);
    // An instruction-tuned file: its template names the turn markers.
    let mut md = g.gguf_metadata();
    md.push(("tokenizer.chat_template".into(), Value::String("{{ '<start_of_turn>' + role }}".into())));
    msrnn_tests::write_gguf(&path, &md, &g.gguf_tensors(GgmlDType::F32));
    msrnn_engine::load(&path, WeightFormat::F32, &Device::Cpu).unwrap()
}

fn msgs(m: &[(Role, &str)]) -> Vec<Message> {
    m.iter().map(|(r, c)| Message::new(*r, *c)).collect()
}

#[test]
fn chat_messages_follow_each_template() {
    let m = smol();
    let tok = m.tokenizer();
    let conv =
        msgs(&[(Role::System, "Be brief."), (Role::User, "Hi"), (Role::Assistant, "Hello"), (Role::User, "Bye")]);
    assert_eq!(
        chat_text(tok, &conv).unwrap(),
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello<|im_end|>\n\
         <|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\n"
    );
    // One user message is the tokenizer's own chat prompt.
    assert_eq!(chat_text(tok, &msgs(&[(Role::User, "Hi")])).unwrap(), tok.chat_prompt("Hi"));
    assert_eq!(
        chat_text(tok, &msgs(&[(Role::System, "S"), (Role::User, "U")])).unwrap(),
        tok.chat_prompt_with_system(Some("S"), "U")
    );
    assert!(chat_text(tok, &[]).unwrap_err().to_string().contains("at least one message"));

    let g = gemma();
    let tok = g.tokenizer();
    // Gemma 3 has no system role: the system text opens the first user turn; the answering role is `model`.
    assert_eq!(
        chat_text(tok, &conv).unwrap(),
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello<end_of_turn>\n\
         <start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
    );
    assert_eq!(
        chat_text(tok, &msgs(&[(Role::System, "S"), (Role::User, "U")])).unwrap(),
        tok.chat_prompt_with_system(Some("S"), "U")
    );
    let (end, sep) = turn_end(tok).expect("Gemma's template has an end of turn");
    assert_eq!((tok.decode(&[end]).unwrap().as_str(), sep.as_str()), ("<end_of_turn>", "\n"));
    let (end, sep) = turn_end(m.tokenizer()).unwrap();
    assert_eq!((m.tokenizer().decode(&[end]).unwrap().as_str(), sep.as_str()), ("<|im_end|>", "\n"));
    assert_eq!("assistant".parse::<Role>().unwrap(), Role::Assistant);
    assert!("robot".parse::<Role>().unwrap_err().to_string().contains("unknown role `robot`"));
}

#[test]
fn the_next_turn_feeds_the_pending_token_and_closes_a_cut_answer() {
    let m = smol();
    let tok = m.tokenizer();
    let end = turn_end(tok).unwrap().0;
    let fresh = next_turn_prompt(tok, Turn::Text("Hi"), None, true, false).unwrap();
    assert_eq!(fresh, tok.encode(&tok.chat_prompt("Hi"), false).unwrap());
    let mut conv = Conversation {
        pending: Some(42),
        sampling: Sampling::Greedy,
        draws: 0,
        chat: true,
        turn_ended: false,
        generated: 5,
        turns: 1,
    };
    // Cut off by the token limit: the answer is closed before the next user turn.
    let next = next_turn_prompt(tok, Turn::Text("More"), Some(&conv), true, true).unwrap();
    let mut want = vec![42, end];
    want.extend(tok.encode(&format!("\n{}", tok.chat_prompt("More")), false).unwrap());
    assert_eq!(next, want);
    // A finished turn (its end token is the pending one) is not closed twice; messages work alike.
    conv.turn_ended = true;
    conv.pending = Some(end);
    let next = next_turn_prompt(tok, Turn::Messages(&msgs(&[(Role::User, "More")])), Some(&conv), true, true).unwrap();
    assert_eq!(next[..1], [end]);
    assert_eq!(next[1..], tok.encode(&format!("\n{}", tok.chat_prompt("More")), false).unwrap()[..]);
    // Going on without a prompt feeds the pending token only; nothing pending and no prompt is an error.
    assert_eq!(next_turn_prompt(tok, Turn::Continue, Some(&conv), true, true).unwrap(), vec![end]);
    conv.pending = None;
    let e = next_turn_prompt(tok, Turn::Continue, Some(&conv), true, true).unwrap_err().to_string();
    assert!(e.contains("no token waiting"), "{e}");
    // Raw text is appended as it is.
    let raw = next_turn_prompt(tok, Turn::Text(" the end"), Some(&conv), false, true).unwrap();
    assert_eq!(raw, tok.encode(" the end", false).unwrap());
}

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

/// Two turns of 6 tokens, saved and resumed in between through bytes, give what 12 tokens in one
/// run give (sampled: the random stream goes on too).
#[test]
fn a_saved_conversation_goes_on_like_one_run() {
    let m = std::sync::Arc::new(smol());
    let reg = std::sync::Arc::new(msrnn_policies::registry());
    let spec: PolicySpec = "tova".parse().unwrap();
    let recipe = StateRecipe::new(spec.clone(), Capacity::Bounded(16));
    let sampling = Sampling::TopP { temperature: 1.0, top_p: 0.9, seed: 5 };
    let mut e = Engine::new(m.clone(), reg, EngineOptions::default());
    let prompt = next_turn_prompt(m.tokenizer(), Turn::Text("hello the world"), None, false, false).unwrap();
    let run = |e: &mut Engine, state, prompt: Vec<u32>, n, sampling| {
        let cfg = GenConfig { max_tokens: n, sampling, ..Default::default() };
        e.add(state, prompt, cfg).unwrap();
        match e.run_to_end().unwrap().pop() {
            Some(Event::Finished(f)) => f,
            other => panic!("{other:?}"),
        }
    };
    let st = e.new_state(&recipe).unwrap();
    let whole = run(&mut e, st, prompt.clone(), 12, sampling);
    let st = e.new_state(&recipe).unwrap();
    let first = run(&mut e, st, prompt, 6, sampling);
    assert_eq!(first.reason, StopReason::MaxTokens);
    let conv = Conversation::after(None, &first, sampling, 0, false);
    let bytes = session::save_bytes(&first.state, &m.id, &spec, &conv).unwrap();
    let (h, back) = session::read_bytes(&bytes).unwrap();
    assert_eq!(back.as_ref(), Some(&conv));
    assert_eq!((h.policy, h.capacity), (spec.clone(), Capacity::Bounded(16)));
    let mut state = e.new_state(&recipe).unwrap();
    state.load_bytes(&bytes, &m.id, &spec).unwrap();
    let draws = Conversation::draws_for(Some(&conv), sampling);
    assert_eq!(draws, 6);
    let next = next_turn_prompt(m.tokenizer(), Turn::Continue, Some(&conv), false, true).unwrap();
    let second = run(&mut e, state, next, 6, session::continue_sampling(sampling, draws));
    let both: Vec<u32> = first.tokens.iter().chain(&second.tokens).copied().collect();
    assert_eq!(both, whole.tokens);
    // And through a file.
    let path = scratch("session-file").join("conv.st");
    session::save(&path, &first.state, &m.id, &spec, &conv).unwrap();
    assert_eq!(session::read_conversation(&path).unwrap(), Some(conv));
    let e = session::read_conversation(&path.with_extension("missing")).unwrap_err().to_string();
    assert!(e.contains("cannot read it"), "{e}");
}
