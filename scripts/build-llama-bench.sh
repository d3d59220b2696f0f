#!/usr/bin/env bash
# Builds llama.cpp's `llama-bench` and `llama-server` (CPU only) from the llama-cpp-python source package, the peers
# that msrnn's CPU kernels and its server (scripts/bench-server.sh) are measured against. Everything lands in the
# git-ignored folder .peers/:
#   .peers/venv          a Python venv holding cmake (from pip)
#   .peers/src           the unpacked sdist; llama.cpp is its vendor/llama.cpp
#   .peers/build         the cmake build tree
#   .peers/llama-bench   the kernel benchmark binary
#   .peers/llama-server  the HTTP server binary (OpenAI-compatible, continuous batching)
#   .peers/llama-quantize, .peers/llama-perplexity   with TARGETS naming them (scripts/compare-llama.sh does)
# Usage: scripts/build-llama-bench.sh   (LLAMA_CPP_PYTHON_VERSION and JOBS may be overridden; TARGETS="llama-bench"
#        builds the kernel benchmark alone)
# Then:  .peers/llama-bench -m models/SmolLM2-135M-Instruct.Q4_1.gguf -t 1 -p 512 -n 32 -d 0,1024,8192
set -euo pipefail
cd "$(dirname "$0")/.."

VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
JOBS="${JOBS:-2}"
TARGETS="${TARGETS:-llama-bench llama-server}"
PEERS="$PWD/.peers"
mkdir -p "$PEERS"

if [ ! -x "$PEERS/venv/bin/cmake" ]; then
    python3 -m venv "$PEERS/venv"
    "$PEERS/venv/bin/pip" install --quiet cmake
fi

SRC="$PEERS/src/llama_cpp_python-$VERSION"
if [ ! -d "$SRC/vendor/llama.cpp" ]; then
    mkdir -p "$PEERS/sdist" "$PEERS/src"
    # The sdist only: no wheel, no dependencies. pip prepares its metadata in an isolated build env.
    "$PEERS/venv/bin/pip" download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$VERSION" -d "$PEERS/sdist"
    tar -xzf "$PEERS/sdist/llama_cpp_python-$VERSION.tar.gz" -C "$PEERS/src"
fi

# CPU only, tuned for this machine's instruction set (as a user building llama.cpp would), static, no curl (models are
# local files; the server's own HTTP code needs no curl).
"$PEERS/venv/bin/cmake" -S "$SRC/vendor/llama.cpp" -B "$PEERS/build" \
    -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DGGML_NATIVE=ON -DGGML_OPENMP=ON \
    -DGGML_CUDA=OFF -DGGML_METAL=OFF -DGGML_VULKAN=OFF -DLLAMA_CURL=OFF \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON
for target in $TARGETS; do
    "$PEERS/venv/bin/cmake" --build "$PEERS/build" --target "$target" -j "$JOBS"
    cp "$(find "$PEERS/build" -name "$target" -type f -perm -u+x | head -1)" "$PEERS/$target"
    echo "built $PEERS/$target (llama-cpp-python $VERSION)"
done
