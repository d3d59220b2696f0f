"""Fixtures for the end-to-end tests of `msrnn serve`: real server processes (the debug binary
`cargo test` leaves, the real model) on free ports, and the official `openai` client.

scripts/test-server.sh makes the venv, starts Redis, and runs these; the environment says where
things are: MSRNN_BIN, MSRNN_MODEL, MSRNN_TEST_REDIS (a redis:// URL; the Redis tests skip
without it)."""

import json
import os
import pathlib
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


class Server:
    """One `msrnn serve` process."""

    def __init__(self, tmp: pathlib.Path, name: str, args=(), api_key=API_KEY):
        self.api_key = api_key
        self.log_path = tmp / f"{name}.log"
        self.args = [BIN, "--model", MODEL, *BASE_ARGS, *args]
        if api_key:
            self.args += ["--api-key", api_key]
        self.start()

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE, stderr=self.log, cwd=ROOT)
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


def wait_for(cond, timeout=30.0, what="condition"):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")
