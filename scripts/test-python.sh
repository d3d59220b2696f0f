#!/usr/bin/env bash
# The Python tests: builds the extension module into a virtual environment (.venv-py, git-ignored;
# MSRNN_PY_VENV to put it elsewhere) with maturin, then runs pytest on msrnn-py/tests against the
# real model. scripts/test.sh runs it after `cargo test`; it can also run alone.
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${MSRNN_PY_VENV:-.venv-py}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check maturin pytest numpy
# The debug profile is enough: dependencies are built at opt-level 3 in dev (Cargo.toml).
(
    # shellcheck disable=SC1091
    . "$venv/bin/activate"
    cd msrnn-py
    maturin develop --quiet
)
# The CLI, for the tests that compare with it (scripts/test.sh passes the one `cargo test` built).
if [ -z "${MSRNN_CLI:-}" ]; then
    cargo build --quiet -p msrnn-cli --bin msrnn
    export MSRNN_CLI="$PWD/target/debug/msrnn"
fi
export RAYON_NUM_THREADS="${RAYON_NUM_THREADS:-1}" CANDLE_NUM_THREADS="${CANDLE_NUM_THREADS:-1}"
"$venv/bin/python" -m pytest -q msrnn-py/tests "$@"
