#!/usr/bin/env bash
# Benchmarks `msrnn serve` against llama.cpp's `llama-server` (scripts/build-llama-bench.sh builds it
# into .peers/) on the same GGUF with the same threads: scripts/loadgen.py streams ~1k-token prompts
# (128 new tokens, greedy) from N concurrent clients to each server in turn. At every concurrency
# level both servers are started fresh and run back to back, the order alternating from level to
# level, so a busy neighbour on a shared machine hits both alike. Prints a table; the JSON of every
# run lands in $OUT.
#
#   scripts/bench-server.sh                      # LEVELS="1 4 16"
#   LEVELS="1 4 16 64" scripts/bench-server.sh
#
# Not part of scripts/test.sh (minutes of CPU). Overridable: MSRNN_BIN (default target/release/msrnn:
# cargo build --release -p msrnn-cli), LLAMA_SERVER, MODEL, THREADS (2), LEVELS, PROMPT_CHARS (4000,
# ~1k tokens), MAX_TOKENS (128), REQUESTS_PER_CLIENT (2; at least 4 requests per level), POLICY (tova),
# CAPACITY (512), KV_BUDGET (4GiB), CTX_PER_SLOT (2048, llama-server's context per parallel slot), OUT.
set -euo pipefail
cd "$(dirname "$0")/.."

MSRNN="${MSRNN_BIN:-target/release/msrnn}"
LLAMA="${LLAMA_SERVER:-.peers/llama-server}"
MODEL="${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
THREADS="${THREADS:-2}"
LEVELS="${LEVELS:-1 4 16}"
PROMPT_CHARS="${PROMPT_CHARS:-4000}"
MAX_TOKENS="${MAX_TOKENS:-128}"
REQUESTS_PER_CLIENT="${REQUESTS_PER_CLIENT:-2}"
POLICY="${POLICY:-tova}"
CAPACITY="${CAPACITY:-512}"
KV_BUDGET="${KV_BUDGET:-4GiB}"
CTX_PER_SLOT="${CTX_PER_SLOT:-2048}"
TEXT="${TEXT:-data/prose/alice29.txt}"
OUT="${OUT:-results/bench-server-$(date -u +%Y%m%d-%H%M%S)}"
VENV="${BENCH_VENV:-.peers/bench-venv}"

for f in "$MSRNN" "$LLAMA"; do
    [ -x "$f" ] || { echo "bench-server: $f is missing (see the header of this script)" >&2; exit 1; }
done
[ -f "$MODEL" ] || { echo "bench-server: $MODEL is missing; ./scripts/fetch-model.sh" >&2; exit 1; }
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -c 'import httpx' 2>/dev/null || "$VENV/bin/python" -m pip install --quiet httpx
PY="$VENV/bin/python"
mkdir -p "$OUT"
TMP="$(mktemp -d)"

PID=""
stop() {
    if [ -n "$PID" ]; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
        PID=""
    fi
}
trap 'stop; rm -rf "$TMP"' EXIT

free_port() { "$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

wait_ready() { # URL LOG
    for _ in $(seq 600); do
        if ! kill -0 "$PID" 2>/dev/null; then
            echo "bench-server: the server died; its log:" >&2
            tail -20 "$2" >&2
            exit 1
        fi
        if "$PY" -c "import httpx, sys; sys.exit(httpx.get('$1/health', timeout=2).status_code != 200)" 2>/dev/null; then
            return
        fi
        sleep 0.5
    done
    echo "bench-server: $1 never became healthy" >&2
    exit 1
}

start_msrnn() { # PORT LEVEL
    "$MSRNN" --model "$MODEL" --threads "$THREADS" serve --port "$1" --policy "$POLICY" --capacity "$CAPACITY" \
        --kv-budget "$KV_BUDGET" --max-queue 1024 --sessions "sqlite:$TMP/sessions-$2.db" \
        >"$OUT/msrnn-$2.log" 2>&1 &
    PID=$!
}

start_llama() { # PORT LEVEL
    "$LLAMA" -m "$MODEL" -t "$THREADS" -tb "$THREADS" --host 127.0.0.1 --port "$1" \
        --parallel "$2" --cont-batching -c "$(($2 * CTX_PER_SLOT))" >"$OUT/llama-$2.log" 2>&1 &
    PID=$!
}

run_one() { # NAME LEVEL
    local port
    port="$(free_port)"
    "start_$1" "$port" "$2"
    wait_ready "http://127.0.0.1:$port" "$OUT/$1-$2.log"
    local n=$(($2 * REQUESTS_PER_CLIENT))
    [ "$n" -ge 4 ] || n=4
    echo "  $1: $2 clients, $n requests" >&2
    "$PY" scripts/loadgen.py --url "http://127.0.0.1:$port" --clients "$2" --requests "$n" --text "$TEXT" \
        --prompt-chars "$PROMPT_CHARS" --max-tokens "$MAX_TOKENS" >"$OUT/$1-$2.json" || {
        echo "bench-server: $1 at $2 clients had errors: $(cat "$OUT/$1-$2.json")" >&2
    }
    stop
}

echo "bench-server: $("$MSRNN" --version 2>/dev/null || echo msrnn) vs llama-server, $MODEL, $THREADS threads," \
    "levels: $LEVELS; results in $OUT" >&2
i=0
for n in $LEVELS; do
    if [ $((i % 2)) -eq 0 ]; then order="msrnn llama"; else order="llama msrnn"; fi
    for s in $order; do
        run_one "$s" "$n"
    done
    i=$((i + 1))
done

"$PY" - "$OUT" $LEVELS <<'EOF'
import json, sys
out, levels = sys.argv[1], sys.argv[2:]
def load(name, n):
    try:
        return json.load(open(f"{out}/{name}-{n}.json"))
    except Exception:
        return None
def f(x, nd=1):
    return "-" if x is None else f"{x:.{nd}f}"
print(f"{'clients':>7} | {'prompt tok':>10} | {'decode tok/s msrnn':>18} {'llama':>7} {'ratio':>6} | "
      f"{'TTFT p50/p95 ms msrnn':>21} {'llama':>13} | {'ITL p50/p95 ms msrnn':>20} {'llama':>11}")
print("-" * 130)
for n in levels:
    m, l = load("msrnn", n), load("llama", n)
    if not m or not l:
        print(f"{n:>7} | missing run")
        continue
    ratio = m["decode_tok_s"] / l["decode_tok_s"] if l["decode_tok_s"] else None
    print(f"{n:>7} | {f(m['prompt_tokens_mean'], 0):>10} | {f(m['decode_tok_s']):>18} {f(l['decode_tok_s']):>7} "
          f"{f(ratio, 2) + 'x':>6} | {f(m['ttft_p50_ms'], 0) + ' / ' + f(m['ttft_p95_ms'], 0):>21} "
          f"{f(l['ttft_p50_ms'], 0) + ' / ' + f(l['ttft_p95_ms'], 0):>13} | "
          f"{f(m['itl_p50_ms']) + ' / ' + f(m['itl_p95_ms']):>20} {f(l['itl_p50_ms']) + ' / ' + f(l['itl_p95_ms']):>11}"
          + ("" if not (m["errors"] or l["errors"]) else f"  errors: msrnn {m['errors']}, llama {l['errors']}"))
EOF
