"""Fixtures for the end-to-end tests of `msrnn serve`: real server processes (the debug binary
`cargo test` leaves, the real model) on free ports, and the official `openai` client.

scripts/test-server.sh makes the venv, starts Redis, and runs these; the environment says where
things are: MSRNN_BIN, MSRNN_MODEL, MSRNN_TEST_REDIS (a redis:// URL; the Redis tests skip
without it)."""

import json
import os
import pathlib
import resource
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request

import openai
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[3]
BIN = os.environ.get("MSRNN_BIN", str(ROOT / "target" / "debug" / "msrnn"))
MODEL = os.environ.get("MSRNN_MODEL", str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
API_KEY = "test-key"
# Small everything: debug builds, two cores shared with the rest of CI.
BASE_ARGS = [
    "--threads", "1", "serve", "--port", "0", "--capacity", "64", "--prefill-chunk", "32",
    "--max-tokens-limit", "64", "--max-prompt-tokens", "256", "--max-body", "1MiB",
]

# glibc's malloc raises its mmap threshold after the first large free, and from then on keeps
# freed multi-megabyte buffers (states, activations, states serialized for the store) in its
# arenas: RSS then follows the high-water mark of past bursts, not what is live (docs/serving.md
# has the numbers). A fixed threshold hands them back at once, so the tests' RSS checks can be
# tight enough to catch a leak.
SERVER_ENV = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(128 << 10)}


class Server:
    """One `msrnn serve` process."""

    def __init__(self, tmp: pathlib.Path, name: str, args=(), api_key=API_KEY, nofile=None):
        """`nofile`: the soft open-file limit the process starts with (its hard limit stays)."""
        self.api_key = api_key
        self.nofile = nofile
        self.log_path = tmp / f"{name}.log"
        self.args = [BIN, "--model", MODEL, *BASE_ARGS, *args]
        if api_key:
            self.args += ["--api-key", api_key]
        self.start()

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT, env=SERVER_ENV,
                                     preexec_fn=self._limit_files if self.nofile else None)
        line = [None]

        def read():
            line[0] = self.proc.stdout.readline().decode()

        t = threading.Thread(target=read, daemon=True)
        t.start()
        t.join(180)
        if not line[0] or "listening on" not in line[0]:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line[0]!r}\n{self.log_path.read_text()[-3000:]}")
        self.url = line[0].strip().rsplit(" ", 1)[-1]

    def _limit_files(self):
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(self.nofile, hard), hard))

    def rss(self):
        """The server process's resident memory in bytes (VmRSS of /proc/PID/status)."""
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def client(self, api_key=None, timeout=120):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=api_key or self.api_key or "none",
                             max_retries=0, timeout=timeout)

    def raw(self, method, path, body=None, headers=None, auth=True):
        """(status, headers with lower-case names, body bytes) of one plain HTTP request."""
        h = dict(headers or {})
        if auth and self.api_key:
            h["Authorization"] = f"Bearer {self.api_key}"
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        if data is not None:
            h.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=h)
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
        except urllib.error.HTTPError as e:
            return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()

    def metric(self, name):
        _, _, text = self.raw("GET", "/metrics", auth=False)
        for line in text.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
        raise KeyError(name)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.log.close()
        return self.proc.returncode


@pytest.fixture(scope="session")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("serve")


@pytest.fixture(scope="session")
def server(tmp):
    s = Server(tmp, "main", ["--sessions", f"sqlite:{tmp / 'main.db'}"])
    yield s
    s.stop()


def raise_open_files(n):
    """Lets this process open `n` files (raising the hard limit too needs root); False if it cannot."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= n:
        return True
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (n, max(n, hard)))
    except (ValueError, OSError):
        return False
    return True


def wait_for(cond, timeout=30.0, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
