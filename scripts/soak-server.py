#!/usr/bin/env python3
"""A soak of `msrnn serve`: many sessions, many short turns each, every session's state cycling
through the SQLite store between its turns, and the server's resident memory sampled as it goes.

It starts the server itself (a fresh SQLite file in a temporary folder), then runs `--turns`
rounds; each round sends one turn to every one of `--sessions` sessions from `--clients`
concurrent clients, so between two turns of a session every other session's state has been
stored and loaded. Every `--every` requests it reads VmRSS from /proc/PID/status and the server's
/metrics, writing a CSV row. At the end it prints a JSON summary (RSS first, last, max) and, with
`--svg`, draws the RSS curve as a small SVG (hand-written: no plotting library needed).

    python scripts/soak-server.py --bin target/release/msrnn --sessions 1000 --turns 3 \\
        --csv results/soak.csv --svg docs/results/soak-rss.svg

Needs httpx (scripts/bench-server.sh's venv has it).
"""

import argparse
import asyncio
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time

import httpx

WORDS = ("apple river stone cloud lamp garden violin copper meadow harbor lantern pepper falcon marble "
         "ribbon candle orchard thunder velvet compass").split()


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def metric(text, name):
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def start_server(args, tmp):
    port_sock = __import__("socket").socket()
    port_sock.bind(("127.0.0.1", 0))
    port = port_sock.getsockname()[1]
    port_sock.close()
    cmd = [args.bin, "--model", args.model, "--threads", str(args.threads), "serve", "--port", str(port),
           "--policy", args.policy, "--capacity", str(args.capacity), "--prefill-chunk", str(args.prefill_chunk), "--sessions", f"sqlite:{tmp}/sessions.db",
           "--max-queue", "1024"]
    log = open(f"{tmp}/server.log", "w")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if p.poll() is not None:
            raise SystemExit(f"soak: the server exited: {open(f'{tmp}/server.log').read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return p, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    p.kill()
    raise SystemExit("soak: the server never became healthy")


def svg(rows, path, title):
    """RSS (MiB) against requests as a 640x300 SVG polyline with min/max labels."""
    xs = [r["requests"] for r in rows]
    ys = [r["rss_kib"] / 1024 for r in rows]
    x0, x1 = min(xs), max(xs) or 1
    lo, hi = 0.0, max(ys) * 1.15
    w, h, pad = 640, 300, 50
    px = lambda x: pad + (x - x0) / max(1, x1 - x0) * (w - 2 * pad)  # noqa: E731
    py = lambda y: h - pad - (y - lo) / max(1e-9, hi - lo) * (h - 2 * pad)  # noqa: E731
    pts = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in zip(xs, ys))
    ticks = "".join(
        f'<line x1="{pad}" x2="{w - pad}" y1="{py(v):.1f}" y2="{py(v):.1f}" stroke="#ddd"/>'
        f'<text x="{pad - 6}" y="{py(v) + 4:.1f}" text-anchor="end">{v:.0f}</text>'
        for v in [hi * i / 4 for i in range(5)]
    )
    with open(path, "w") as f:
        f.write(
            f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" '
            f'font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n{ticks}\n'
            f'<polyline fill="none" stroke="#1f77b4" stroke-width="1.5" points="{pts}"/>\n'
            f'<text x="{w / 2}" y="18" text-anchor="middle" font-size="13">{title}</text>\n'
            f'<text x="{w / 2}" y="{h - 12}" text-anchor="middle">requests</text>\n'
            f'<text x="{pad - 6}" y="{h - pad + 16}" text-anchor="end">{x0}</text>'
            f'<text x="{w - pad}" y="{h - pad + 16}" text-anchor="end">{x1}</text>\n'
            f'<text x="14" y="{h / 2}" transform="rotate(-90 14 {h / 2})" text-anchor="middle">RSS (MiB)</text>\n'
            "</svg>\n"
        )


async def soak(args, pid, url):
    rows, errors = [], []
    done = 0
    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=args.clients + 2)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:

        async def sample():
            m = (await client.get("/metrics")).text
            rows.append({
                "requests": done,
                "elapsed_s": round(time.perf_counter() - t0, 2),
                "rss_kib": rss_kib(pid),
                "sessions_stored": int(metric(m, "msrnn_sessions_stored") or 0),
                "kv_allocated_bytes": int(metric(m, "msrnn_kv_allocated_bytes") or 0),
                "session_saves": int(metric(m, "msrnn_session_saves_total") or 0),
                "session_resumes": int(metric(m, "msrnn_session_resumes_total") or 0),
            })

        async def turn(s, t):
            words = " ".join(WORDS[(s * 7 + t * 3 + k) % len(WORDS)] for k in range(3))
            body = {
                "model": "soak",
                "messages": [{"role": "user", "content": f"Turn {t}: remember {words}."}],
                "max_tokens": args.max_tokens,
                "temperature": 0,
                "msrnn": {"session": f"soak-{s:05d}"},
            }
            r = await client.post("/v1/chat/completions", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"session {s} turn {t}: HTTP {r.status_code} {r.text[:200]}")

        await sample()
        for t in range(args.turns):
            queue = asyncio.Queue()
            for s in range(args.sessions):
                queue.put_nowait(s)

            async def worker():
                nonlocal done
                while not queue.empty():
                    s = queue.get_nowait()
                    try:
                        await turn(s, t)
                    except Exception as e:  # noqa: BLE001  (counted; the soak goes on)
                        errors.append(str(e)[:300])
                    done += 1
                    if done % args.every == 0:
                        await sample()

            await asyncio.gather(*(worker() for _ in range(args.clients)))
            print(f"soak: round {t + 1}/{args.turns} done, {done} requests, "
                  f"{time.perf_counter() - t0:.0f} s, RSS {rss_kib(pid) / 1024:.1f} MiB", file=sys.stderr)
        await sample()
    return rows, errors, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bin", default="target/release/msrnn")
    ap.add_argument("--model", default="models/SmolLM2-135M-Instruct.Q4_1.gguf")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--policy", default="tova")
    ap.add_argument("--capacity", type=int, default=32)
    ap.add_argument("--prefill-chunk", type=int, default=16, help="small: a state's buffers are C + chunk slots")
    ap.add_argument("--sessions", type=int, default=1000)
    ap.add_argument("--turns", type=int, default=3, help="turns per session (rounds over all sessions)")
    ap.add_argument("--max-tokens", type=int, default=6)
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients")
    ap.add_argument("--every", type=int, default=50, help="requests between samples")
    ap.add_argument("--csv", default="results/soak.csv")
    ap.add_argument("--svg", default=None)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory(prefix="msrnn-soak-") as tmp:
        proc, url = start_server(args, tmp)
        try:
            rows, errors, wall = asyncio.run(soak(args, proc.pid, url))
            db = os.path.getsize(f"{tmp}/sessions.db") + sum(
                os.path.getsize(f"{tmp}/{f}") for f in os.listdir(tmp) if f.startswith("sessions.db-"))
        finally:
            proc.terminate()
            proc.wait(timeout=120)
    os.makedirs(os.path.dirname(args.csv) or ".", exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    rss = [r["rss_kib"] / 1024 for r in rows]
    # The first sample after every session exists once (the first round): the store is warm.
    warm = next((r for r in rows if r["requests"] >= args.sessions), rows[-1])
    summary = {
        "sessions": args.sessions,
        "turns_per_session": args.turns,
        "requests": rows[-1]["requests"],
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 1),
        "requests_per_s": round(rows[-1]["requests"] / wall, 1),
        "rss_start_mib": round(rss[0], 1),
        "rss_after_round_1_mib": round(warm["rss_kib"] / 1024, 1),
        "rss_last_mib": round(rss[-1], 1),
        "rss_max_mib": round(max(rss), 1),
        "sessions_stored": rows[-1]["sessions_stored"],
        "store_bytes": db,
        "csv": args.csv,
    }
    if args.svg:
        svg(rows, args.svg, f"msrnn serve: RSS over {summary['requests']} turns of {args.sessions} sessions "
            f"({args.policy} C={args.capacity}, {args.turns} turns each)")
        summary["svg"] = args.svg
    print(json.dumps(summary))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(main())
