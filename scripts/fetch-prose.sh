#!/usr/bin/env bash
# Fetches a prose text for evaluations on something other than a play: Lewis Carroll's "Alice's
# Adventures in Wonderland" (alice29.txt of the Canterbury corpus, public domain), shipped as test
# data in the `brotli` 1.2.1 source package. Writes data/prose/alice29.txt. Idempotent; set
# MSRNN_PROSE_ARCHIVE=/path/to/brotli-1.2.1.tar.gz to use a copy already on disk instead of pip.
# scripts/fetch-data.sh runs it.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/data/prose"
PACKAGE="brotli==1.2.1"
ARCHIVE_SHA256=02b2f7b5a83485efe448a44ddf7983def05c3bb1dcf917d4f7154070260e13de
FILE="alice29.txt"
FILE_SHA256=7467306ee0feed4971260f3c87421154a05be571d944e9cb021a5713700c38f0

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [[ -f "$DEST/$FILE" ]] && [[ "$(sha_of "$DEST/$FILE")" == "$FILE_SHA256" ]]; then
    echo "fetch-prose: $DEST/$FILE is present and verified"
    exit 0
fi
for tool in python3 tar sha256sum; do
    command -v "$tool" >/dev/null || { echo "fetch-prose: '$tool' is required" >&2; exit 1; }
done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
if [[ -n "${MSRNN_PROSE_ARCHIVE:-}" ]]; then
    archive="$MSRNN_PROSE_ARCHIVE"
    echo "fetch-prose: using $archive"
else
    echo "fetch-prose: downloading $PACKAGE (source) with pip"
    python3 -m pip download --quiet --no-deps --no-binary :all: "$PACKAGE" -d "$TMP/dl"
    archive="$TMP/dl/brotli-1.2.1.tar.gz"
fi
if [[ ! -f "$archive" ]]; then
    echo "fetch-prose: $archive is missing" >&2
    exit 1
fi
if [[ "$(sha_of "$archive")" != "$ARCHIVE_SHA256" ]]; then
    echo "fetch-prose: $archive has sha256 $(sha_of "$archive"), expected $ARCHIVE_SHA256" >&2
    exit 1
fi
tar -xzf "$archive" -C "$TMP" "brotli-1.2.1/tests/testdata/$FILE"
src="$TMP/brotli-1.2.1/tests/testdata/$FILE"
if [[ "$(sha_of "$src")" != "$FILE_SHA256" ]]; then
    echo "fetch-prose: $FILE has sha256 $(sha_of "$src"), expected $FILE_SHA256" >&2
    exit 1
fi
mkdir -p "$DEST"
cp -f "$src" "$DEST/$FILE"
echo "fetch-prose: wrote $DEST/$FILE"
