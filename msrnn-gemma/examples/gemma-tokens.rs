//! Prints the token ids of a file's first N characters (or of stdin), one per line: for comparing
//! with an independent tokenizer. `cargo run -p msrnn-gemma --example gemma-tokens -- MODEL TEXT [CHARS]`
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        return Err("usage: gemma-tokens MODEL.gguf TEXT_FILE [CHARS]".into());
    }
    let t0 = std::time::Instant::now();
    let tok = msrnn_gemma::Gemma::load_tokenizer(args[1].as_ref())?;
    eprintln!("tokenizer built in {:.2}s", t0.elapsed().as_secs_f64());
    let text = std::fs::read_to_string(&args[2])?;
    let text: String = match args.get(3) {
        Some(n) => text.chars().take(n.parse()?).collect(),
        None => text,
    };
    let t0 = std::time::Instant::now();
    let ids = tok.encode(&text, tok.wants_bos())?;
    eprintln!("{} ids in {:.3}s; round trip {}", ids.len(), t0.elapsed().as_secs_f64(), tok.decode(&ids[1..])? == text);
    for id in ids {
        println!("{id}");
    }
    Ok(())
}
