#!/usr/bin/env python3
"""A load generator for OpenAI-compatible servers (`msrnn serve`, llama.cpp's `llama-server`).

N concurrent clients stream `POST /v1/completions` requests (server-sent events) and time every
token as it arrives. Prints one JSON object: aggregate decode tokens/s (all generated tokens, from the
servers' `usage`, over the run's wall time), time to first token and inter-token latency
percentiles (from the arrival of the chunks that carry text).

Each request's prompt is a different slice of a text file, so no server can reuse another request's
prompt cache. Greedy (temperature 0), raw text (no chat template), so both servers do the same work.

    python scripts/loadgen.py --url http://127.0.0.1:8080 --clients 4 --requests 8 \\
        --text data/prose/alice29.txt --prompt-chars 4000 --max-tokens 128

Needs httpx (scripts/bench-server.sh makes a venv with it).
"""

import argparse
import asyncio
import json
import math
import sys
import time

import httpx


def percentile(xs, p):
    """Nearest-rank percentile (p in 0..100); None for no data."""
    if not xs:
        return None
    s = sorted(xs)
    return s[max(0, math.ceil(p / 100 * len(s)) - 1)]


def prompts(text, n, chars, seed):
    """n slices of `chars` characters from distinct offsets, each starting at a word."""
    if len(text) < chars + 1:
        raise SystemExit(f"loadgen: the text has {len(text)} characters, fewer than --prompt-chars {chars}")
    span = len(text) - chars
    out = []
    for i in range(n):
        # A golden-ratio walk: offsets spread over the whole text, different for every request.
        at = int(((seed + i) * 0.6180339887498949 % 1.0) * span)
        while at < span and not text[at].isspace():
            at += 1
        out.append(text[at:at + chars].strip())
    return out


async def one(client, url, body, api_key):
    """Streams one completion; returns (ttft_s, [inter-token gaps s], completion tokens, prompt tokens)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    t0 = time.perf_counter()
    times = []
    usage = None
    async with client.stream("POST", f"{url}/v1/completions", json=body, headers=headers) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {(await r.aread())[:300]!r}")
        async for line in r.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            ev = json.loads(data)
            if ev.get("usage"):
                usage = ev["usage"]
            # A chunk with text is a generated token (both servers stream token by token; a token
            # that completes no character yet, the finish reason and the usage come without text).
            if any(c.get("text") for c in ev.get("choices") or []):
                times.append(time.perf_counter())
    if not times:
        raise RuntimeError("the stream had no tokens")
    completion = usage["completion_tokens"] if usage else len(times)
    prompt = usage["prompt_tokens"] if usage else None
    gaps = [b - a for a, b in zip(times, times[1:])]
    return times[0] - t0, gaps, completion, prompt


async def run(args):
    text = open(args.text, encoding="utf-8", errors="replace").read()
    ps = prompts(text, args.requests, args.prompt_chars, args.seed)
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    timeout = httpx.Timeout(args.timeout, connect=30)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
        body = lambda prompt, n: {  # noqa: E731
            "model": args.model,
            "prompt": prompt,
            "max_tokens": n,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if args.warmup:
            await one(client, args.url, body("Once upon a time", 4), args.api_key)
        queue = asyncio.Queue()
        for p in ps:
            queue.put_nowait(p)
        results, errors = [], []

        async def worker():
            while True:
                try:
                    p = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    results.append(await one(client, args.url, body(p, args.max_tokens), args.api_key))
                except Exception as e:  # noqa: BLE001  (reported, the run goes on)
                    errors.append(str(e)[:300])

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(args.clients)))
        wall = time.perf_counter() - t0

    ttfts = [r[0] for r in results]
    gaps = [g for r in results for g in r[1]]
    completion = sum(r[2] for r in results)
    prompt_tokens = [r[3] for r in results if r[3] is not None]
    ms = lambda x: None if x is None else round(x * 1000, 1)  # noqa: E731
    return {
        "url": args.url,
        "clients": args.clients,
        "requests": args.requests,
        "ok": len(results),
        "errors": len(errors),
        "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 3),
        "prompt_tokens_mean": round(sum(prompt_tokens) / len(prompt_tokens), 1) if prompt_tokens else None,
        "completion_tokens": completion,
        "decode_tok_s": round(completion / wall, 2) if wall > 0 else None,
        "ttft_p50_ms": ms(percentile(ttfts, 50)),
        "ttft_p95_ms": ms(percentile(ttfts, 95)),
        "itl_p50_ms": ms(percentile(gaps, 50)),
        "itl_p95_ms": ms(percentile(gaps, 95)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True, help="the server's base URL, without /v1")
    ap.add_argument("--clients", type=int, default=1, help="concurrent clients")
    ap.add_argument("--requests", type=int, default=0, help="requests in all (default: 2 per client)")
    ap.add_argument("--text", default="data/prose/alice29.txt", help="the text prompts are sliced from")
    ap.add_argument("--prompt-chars", type=int, default=4000, help="characters per prompt (~4 per token)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--model", default="bench", help="the request's model field")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--seed", type=int, default=1, help="shifts the prompts' offsets")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per request")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the short unmeasured request")
    args = ap.parse_args()
    if args.clients < 1:
        raise SystemExit("loadgen: --clients must be at least 1")
    if args.requests <= 0:
        args.requests = 2 * args.clients
    out = asyncio.run(run(args))
    json.dump(out, sys.stdout)
    print()
    return 0 if out["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
