#!/usr/bin/env bash
# End-to-end tests of `msrnn serve` (scripts/test.sh runs them after `cargo test`): real server
# processes of the debug binary with the real model, the official `openai` Python client from a
# venv this script makes, and a Redis server (the Debian package, installed if missing) that two
# server processes share. Everything listens on 127.0.0.1 only and stops when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN="${MSRNN_BIN:-target/debug/msrnn}"
MODEL="${MSRNN_MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}"
VENV="${MSRNN_SERVER_VENV:-.venv-server-tests}"

if [ ! -x "$BIN" ]; then
    cargo build -p msrnn-cli
fi
if [ ! -f "$MODEL" ]; then
    echo "test-server: $MODEL is missing; fetch it with ./scripts/fetch-model.sh" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet openai pytest

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && apt-get install -y -qq redis-server >/dev/null
    else
        echo "test-server: redis-server is not installed (apt-get install redis-server); the Redis test will skip" >&2
    fi
fi

REDIS_PID=""
cleanup() {
    if [ -n "$REDIS_PID" ]; then
        kill "$REDIS_PID" 2>/dev/null || true
        wait "$REDIS_PID" 2>/dev/null || true
    fi
}
trap cleanup EXIT

if command -v redis-server >/dev/null 2>&1; then
    PORT="$("$VENV/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    # In memory only: no dump file, no append-only log.
    redis-server --bind 127.0.0.1 --port "$PORT" --save "" --appendonly no --daemonize no --loglevel warning \
        >"${TMPDIR:-/tmp}/msrnn-test-redis.log" 2>&1 &
    REDIS_PID=$!
    for _ in $(seq 50); do
        if "$VENV/bin/python" -c "import socket; socket.create_connection(('127.0.0.1', $PORT), 0.2)" 2>/dev/null; then
            break
        fi
        sleep 0.1
    done
    export MSRNN_TEST_REDIS="redis://127.0.0.1:$PORT"
fi

export MSRNN_BIN="$PWD/$BIN" MSRNN_MODEL="$PWD/$MODEL"
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}" CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-1}"
"$VENV/bin/python" -m pytest -q -p no:cacheprovider msrnn-server/tests/py "$@"
