"""`msrnn serve` end to end, through the official `openai` client and plain HTTP."""

import json
import os
import resource
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import openai
import pytest

from conftest import BASE_ARGS, BIN, MODEL as MODEL_FILE, Server, raise_open_files, wait_for

MODEL = "SmolLM2"  # any name: the server answers with its own


def chat(client, text, max_tokens=8, **kw):
    return client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": text}], max_tokens=max_tokens, temperature=0, **kw)


def session(sid, **more):
    return {"msrnn": {"session": sid, **more}}


# --- the API -----------------------------------------------------------------------------------

def test_models_and_health(server):
    models = server.client().models.list()
    assert len(models.data) == 1 and models.data[0].id.startswith("SmolLM2")
    status, _, body = server.raw("GET", "/health", auth=False)
    assert status == 200 and json.loads(body)["status"] == "ok"


def test_chat_is_greedy_at_temperature_zero(server):
    c = server.client()
    a = chat(c, "Name a colour.")
    b = chat(c, "Name a colour.")
    assert a.object == "chat.completion"
    text = a.choices[0].message.content
    assert isinstance(text, str) and text.strip(), a
    assert a.choices[0].finish_reason in ("stop", "length")
    assert 1 <= a.usage.completion_tokens <= 8 and a.usage.prompt_tokens > 5
    assert a.usage.total_tokens == a.usage.prompt_tokens + a.usage.completion_tokens
    assert b.choices[0].message.content == text


def test_completion(server):
    r = server.client().completions.create(model=MODEL, prompt="The capital of France is", max_tokens=6,
                                           temperature=0)
    assert r.object == "text_completion"
    assert r.choices[0].text.strip() and r.usage.completion_tokens <= 6


def test_metrics_count_evictions_and_tokens_per_second(server):
    """Capacity 64: a turn whose state sees T > 64 tokens evicts T - 64 entries in each of the
    model's 30 layers, and the tokens/s gauges see the work."""
    before = server.metric("msrnn_kv_evicted_entries_total")
    r = server.client().completions.create(model=MODEL, prompt="one two three four five six seven eight " * 12,
                                           max_tokens=4, temperature=0)
    seen = r.model_extra["msrnn"]["tokens_seen"]
    assert seen > 64 + 10, r.model_extra
    assert server.metric("msrnn_kv_evicted_entries_total") - before == 30 * (seen - 64)
    assert server.metric("msrnn_prefill_tokens_per_second") > 0
    assert server.metric("msrnn_decode_tokens_per_second") > 0


def test_streaming_gives_the_same_text(server):
    c = server.client()
    whole = chat(c, "Count to five.", max_tokens=12).choices[0].message.content
    chunks = list(chat(c, "Count to five.", max_tokens=12, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == whole
    finishes = [ch.choices[0].finish_reason for ch in chunks if ch.choices and ch.choices[0].finish_reason]
    assert finishes in (["stop"], ["length"])
    assert chunks[-1].usage.completion_tokens <= 12 and not chunks[-1].choices


def test_concurrent_requests_batch_and_match_one_at_a_time(server):
    c = server.client()
    prompts = ["Name a fruit.", "Name a river.", "Name a planet."]
    alone = [chat(c, p).choices[0].message.content for p in prompts]
    together = [None] * len(prompts)

    def run(i):
        together[i] = chat(c, prompts[i]).choices[0].message.content

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone


def test_two_turn_session(server):
    c = server.client()
    sid = "two-turns"
    server.raw("DELETE", f"/v1/sessions/{sid}")
    first = chat(c, "My name is Ada.", extra_body=session(sid))
    assert first.model_extra["msrnn"]["turns"] == 1 and not first.model_extra["msrnn"]["resumed"]
    second = chat(c, "What is my name?", extra_body=session(sid))
    extra = second.model_extra["msrnn"]
    assert extra["turns"] == 2 and extra["resumed"]
    # Only the new message was sent: the prompt is this turn's tokens, not the history.
    assert second.usage.prompt_tokens < first.usage.prompt_tokens + first.usage.completion_tokens + 5
    assert extra["tokens_seen"] > first.model_extra["msrnn"]["tokens_seen"]

    status, _, body = server.raw("GET", "/v1/sessions")
    listed = {s["id"]: s for s in json.loads(body)["data"]}
    assert status == 200 and listed[sid]["turns"] == 2 and listed[sid]["policy"] == "tova"
    status, headers, state = server.raw("GET", f"/v1/sessions/{sid}")
    assert status == 200 and headers["content-type"] == "application/octet-stream"
    n = int.from_bytes(state[:8], "little")
    header = json.loads(state[8:8 + n])
    assert "msrnn-cli" in header["__metadata__"] and len(state) == listed[sid]["bytes"]

    # The stored policy is the session's: asking for another is refused with the reason.
    with pytest.raises(openai.ConflictError, match="window"):
        chat(c, "Hi.", extra_body=session(sid, policy="window"))
    # A chat session does not go on as a raw completion.
    with pytest.raises(openai.BadRequestError, match="chat"):
        c.completions.create(model=MODEL, prompt="x", max_tokens=2, extra_body=session(sid))

    assert server.raw("DELETE", f"/v1/sessions/{sid}")[0] == 200
    assert server.raw("GET", f"/v1/sessions/{sid}")[0] == 404
    assert server.raw("DELETE", f"/v1/sessions/{sid}")[0] == 404


# --- hostile input ---------------------------------------------------------------------------

IDLE = 1000
MIB = 1 << 20


def post_chat(server, text, max_tokens=4):
    """A chat request over its own connection (closed after the answer, unlike the `openai` client's
    pool): so `msrnn_open_connections` counts only the connections a test means to hold."""
    status, _, body = server.raw("POST", "/v1/chat/completions", {
        "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens, "temperature": 0})
    assert status == 200, body
    return json.loads(body)


def quiet(server, connections=1):
    """Waits until no sequence runs or waits and only `connections` are open (the `/metrics`
    request's own, by default; None: any number, e.g. where `openai` clients keep theirs open);
    then live and allocated KV must be 0."""
    wait_for(lambda: server.metric("msrnn_sequences_active") == 0 and server.metric("msrnn_sequences_queued") == 0,
             what="an empty batch and queue")
    if connections is not None:
        wait_for(lambda: server.metric("msrnn_open_connections") == connections, what="the connections to close")
    assert server.metric("msrnn_kv_live_bytes") == 0
    assert server.metric("msrnn_kv_allocated_bytes") == 0


def settled_rss(server):
    """The server's RSS once it has been idle long enough to trim its heap (a second after the
    engine's last step: TRIM_AFTER in worker.rs), so that every reading is taken in that state."""
    time.sleep(1.5)
    return server.rss()


@pytest.fixture(scope="module")
def baseline(server):
    """The shared server's RSS before the hostile cases, once warm: after one round of
    `hostile_round`, so that what the allocator keeps for that work (its buffers, a batch of three,
    states written to the store) is counted in, and what the rounds after it add is a leak."""
    hostile_round(server, "warm")
    return settled_rss(server)


def error_of(resp):
    status, _, body = resp
    e = json.loads(body)["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    return status, e


def test_malformed_json_and_wrong_types(server, baseline):
    status, e = error_of(server.raw("POST", "/v1/chat/completions", b'{"messages": [}'))
    assert status == 400 and "not valid JSON" in e["message"] and e["type"] == "invalid_request_error"
    status, e = error_of(server.raw("POST", "/v1/chat/completions", b""))
    assert status == 400 and "empty" in e["message"]
    with pytest.raises(openai.BadRequestError) as err:
        server.client().chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}],
                                                max_tokens="ten")
    assert err.value.body["param"] == "max_tokens"
    status, e = error_of(server.raw("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": 5}]}))
    assert status == 400 and e["param"].startswith("messages[0]")


def test_unknown_fields_are_refused(server, baseline):
    with pytest.raises(openai.BadRequestError, match="unknown field `frobnicate`"):
        chat(server.client(), "hi", extra_body={"frobnicate": True})
    with pytest.raises(openai.BadRequestError, match="polcy"):
        chat(server.client(), "hi", extra_body={"msrnn": {"polcy": "tova"}})
    with pytest.raises(openai.BadRequestError, match="unknown policy"):
        chat(server.client(), "hi", extra_body={"msrnn": {"policy": "tovaa"}})


def test_limits(server, baseline):
    c = server.client()
    with pytest.raises(openai.BadRequestError) as err:
        chat(c, "hi", max_tokens=10**12)
    assert err.value.body["param"] == "max_tokens" and "limit" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        chat(c, "word " * 400)
    assert err.value.body["code"] == "context_length_exceeded"
    status, e = error_of(server.raw("POST", "/v1/chat/completions", b"x" * (2 << 20)))
    assert status == 413 and e["code"] == "payload_too_large"
    status, e = error_of(server.raw("GET", "/v1/nothing-here"))
    assert status == 404


def test_wrong_api_key(server, baseline):
    with pytest.raises(openai.AuthenticationError):
        chat(server.client(api_key="wrong"), "hi")
    status, e = error_of(server.raw("GET", "/v1/models", auth=False))
    assert status == 401 and e["type"] == "authentication_error"


def read_until(conn, done):
    """Reads from a socket until `done(bytes so far)`; fails if the server closes first."""
    got = b""
    while not done(got):
        chunk = conn.recv(4096)
        assert chunk, f"the server closed the connection early: {got[-300:]!r}"
        got += chunk
    return got


def send_chat(server, body):
    """Sends a chat request with `body` on a plain socket; returns the socket."""
    u = urllib.parse.urlparse(server.url)
    data = json.dumps(body).encode()
    s = socket.create_connection((u.hostname, u.port), timeout=120)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {server.api_key}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    return s


def raw_stream_then_vanish(server, body, read_bytes=200):
    """Sends a streaming request on a plain socket, reads the start of the answer, and closes."""
    s = send_chat(server, body)
    got = read_until(s, lambda g: b"data: {" in g and len(g) >= read_bytes)
    s.close()
    return got


def test_a_client_vanishing_mid_stream_is_cancelled(server, baseline):
    before = server.metric("msrnn_sequences_cancelled_total")
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}],
            "max_tokens": 64, "temperature": 0, "stream": True}
    got = raw_stream_then_vanish(server, body)
    assert b"200 OK" in got
    wait_for(lambda: server.metric("msrnn_sequences_cancelled_total") > before, what="the cancel")
    wait_for(lambda: server.metric("msrnn_sequences_active") == 0, what="an empty batch")
    assert server.metric("msrnn_kv_allocated_bytes") == 0
    # ... and the server goes on serving.
    assert chat(server.client(), "Name a colour.").choices[0].message.content


def vanish_before_the_answer(server, body):
    """Sends a request on a plain socket and closes it at once, before any answer."""
    send_chat(server, body).close()


def post_huge(server, n):
    """POSTs `n` bytes on a plain socket; the status of the answer, or None when the server closed
    the connection before the client could send them all or read it (it answers 413 as soon as the
    body passes --max-body and closes)."""
    u = urllib.parse.urlparse(server.url)
    s = socket.create_connection((u.hostname, u.port), timeout=120)
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  + f"Authorization: Bearer {server.api_key}\r\nContent-Length: {n}\r\n\r\n".encode())
        s.sendall(b"x" * n)
        head = read_until(s, lambda g: b"\r\n" in g)
    except (BrokenPipeError, ConnectionResetError, AssertionError):
        return None
    finally:
        s.close()
    return int(head.split()[1])


def hostile_round(server, tag):
    """One round of the hostile cases: each cheap refusal five times (a leak per request adds up:
    five 2 MB bodies are 10 MB), then, at once, clients vanishing from three streamed turns on
    sessions and from three non-streamed turns. Then nothing runs, no KV is live, and no session is
    left claimed by a cancelled turn (nor stored: only finished turns are)."""
    user = [{"role": "user", "content": "hi"}]
    for _ in range(5):
        assert server.raw("POST", "/v1/chat/completions", b'{"messages": [}')[0] == 400
        assert server.raw("POST", "/v1/chat/completions", {"messages": user, "max_tokens": "ten"})[0] == 400
        assert server.raw("POST", "/v1/chat/completions", {"messages": user, "frobnicate": 1})[0] == 400
        assert server.raw("POST", "/v1/chat/completions", {"messages": user, "max_tokens": 10**12})[0] == 400
        long = [{"role": "user", "content": "w " * 400}]
        assert server.raw("POST", "/v1/chat/completions", {"messages": long})[0] == 400
        assert post_huge(server, 2 << 20) in (413, None)
        assert server.raw("GET", "/v1/models", auth=False)[0] == 401
    story = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}], "max_tokens": 64,
             "temperature": 0}
    sids = [f"vanish-{tag}-{i}" for i in range(3)]
    before = server.metric("msrnn_sequences_cancelled_total")
    threads = [threading.Thread(target=raw_stream_then_vanish, args=(server, {**story, "stream": True, **session(sid)}))
               for sid in sids]
    threads += [threading.Thread(target=vanish_before_the_answer, args=(server, story)) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_for(lambda: server.metric("msrnn_sequences_cancelled_total") >= before + 3, what="the streams' cancels")
    quiet(server, None)
    for sid in sids:
        r = chat(server.client(), "hi", max_tokens=2, extra_body=session(sid))
        assert r.model_extra["msrnn"]["turns"] == 1 and not r.model_extra["msrnn"]["resumed"]
        assert server.raw("DELETE", f"/v1/sessions/{sid}")[0] == 200
    quiet(server, None)


def test_the_hostile_cases_leak_nothing(server, baseline):
    """After the hostile cases above and four more rounds of them: nothing runs or waits, no KV is
    live or allocated, and RSS is within 10 MiB of the baseline taken after the first round (a
    2 MB body or a 4 MB state kept per request would add 40 MB or more)."""
    rss = []
    for i in range(4):
        hostile_round(server, str(i))
        rss.append(server.rss())
    rss.append(settled_rss(server))
    print(f"hostile rounds: baseline {baseline / MIB:.1f} MiB, after each round",
          ", ".join(f"{r / MIB:.1f}" for r in rss[:-1]), f"MiB, settled {rss[-1] / MIB:.1f} MiB")
    assert rss[-1] - baseline < 10 * MIB, (baseline, rss)


def test_idle_connections_are_closed_and_idle_sessions_expire(tmp):
    """More idle connections than --max-connections: each is closed after --header-timeout, so a
    real request gets through. A session idle for --session-ttl is deleted."""
    s = Server(tmp, "idle", ["--sessions", f"sqlite:{tmp / 'idle.db'}", "--max-connections", "4",
                             "--header-timeout", "1s", "--session-ttl", "2s"])
    try:
        u = urllib.parse.urlparse(s.url)
        idle = [socket.create_connection((u.hostname, u.port)) for _ in range(12)]
        t0 = time.time()
        status, _, _ = s.raw("GET", "/health", auth=False)
        assert status == 200 and time.time() - t0 < 30
        for c in idle[:4]:  # the first ones were accepted, then closed by the server (a timeout fails)
            c.settimeout(10)
            while c.recv(4096):
                pass
        for c in idle:
            c.close()
        assert chat(s.client(), "hi", max_tokens=2, extra_body=session("brief")).usage.completion_tokens >= 1

        def listed():
            return [x["id"] for x in json.loads(s.raw("GET", "/v1/sessions")[2])["data"]]

        assert listed() == ["brief"]
        wait_for(lambda: listed() == [], timeout=20, what="the idle session to expire")
        assert s.raw("GET", "/v1/sessions/brief")[0] == 404
    finally:
        s.stop()


def test_a_thousand_idle_connections_leak_nothing(tmp):
    """1,000 idle TCP connections to one server. `--max-connections 1100` holds them all (each is a
    descriptor and a small task, ~10 KiB), so a real request is answered at once; below 1,000 they
    would wait in the listen backlog and a request behind them would wait for rounds of
    `--header-timeout`. The server starts with a soft open-file limit of 512, too low for 1,000
    connections, and must raise it itself (1024, the common default, is just enough for 1,000). Round 1: the
    clients close their connections; round 2: the server closes them after `--header-timeout`.
    After each, every connection's task is gone, no KV is live, RSS is within 10 MiB of the
    baseline, and round 2 ends within 4 MiB of round 1 (a leak per connection would add up)."""
    if not raise_open_files(IDLE + 100):
        pytest.skip(f"this process may not open {IDLE + 100} files (ulimit -n)")
    s = Server(tmp, "idle-1000", ["--sessions", f"sqlite:{tmp / 'idle-1000.db'}", "--max-connections", "1100",
                                  "--header-timeout", "10s"], nofile=512)
    try:
        addr = (urllib.parse.urlparse(s.url).hostname, urllib.parse.urlparse(s.url).port)
        for _ in range(2):  # warm: the model's buffers, the allocator's arenas
            post_chat(s, "Name a colour.")
        quiet(s)
        base = settled_rss(s)
        rss = []
        for closer in ("client", "server"):
            idle = [socket.create_connection(addr, timeout=30) for _ in range(IDLE)]
            try:
                wait_for(lambda: s.metric("msrnn_open_connections") >= IDLE + 1, timeout=20,
                         what=f"the server to hold {IDLE} idle connections")
                held = s.rss()
                t0 = time.time()
                assert post_chat(s, "Name a colour.")["choices"][0]["message"]["content"]
                took = time.time() - t0
                assert took < 20, f"a request among {IDLE} idle connections took {took:.1f} s"
                if closer == "server":
                    # --header-timeout closes them; a client then reads the end of the stream.
                    wait_for(lambda: s.metric("msrnn_open_connections") == 1, timeout=30,
                             what="the header timeout to close the idle connections")
                    idle[0].settimeout(10)
                    assert idle[0].recv(1) == b""
            finally:
                for c in idle:
                    c.close()
            quiet(s)
            # The engine trims the heap when it goes idle: one more request, so that what the
            # closed connections freed is handed back, then the reading.
            assert post_chat(s, "Name a colour.")["choices"][0]["message"]["content"]
            quiet(s)
            rss.append(settled_rss(s))
            print(f"{closer}: base {base / MIB:.1f} MiB, {IDLE} held {held / MIB:.1f} MiB "
                  f"(+{(held - base) / 1024 / IDLE:.1f} KiB each), after {rss[-1] / MIB:.1f} MiB, "
                  f"request {took:.2f} s")
        assert max(rss) - base < 10 * MIB, (base, rss)
        assert rss[1] - rss[0] < 4 * MIB, (base, rss)
    finally:
        s.stop()


def test_a_max_connections_beyond_the_open_file_limit_is_refused(tmp):
    """A hard limit the server cannot raise: it says so at start, instead of stalling under load."""
    def limit():
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    r = subprocess.run([BIN, "--model", MODEL_FILE, *BASE_ARGS, "--sessions", f"sqlite:{tmp / 'nofile.db'}",
                        "--max-connections", "1000"], capture_output=True, text=True, timeout=60,
                       preexec_fn=limit)
    assert r.returncode != 0 and "listening" not in r.stdout
    assert "--max-connections 1000 needs about 1064 open files" in r.stderr, r.stderr[-2000:]
    assert "at most 256 (hard limit" in r.stderr, r.stderr[-2000:]


# --- admission ------------------------------------------------------------------------------

def test_full_queue_gets_429_with_retry_after(server, tmp):
    one = chat(server.client(), "hi", max_tokens=1).model_extra["msrnn"]["kv_allocated_bytes"]
    s = Server(tmp, "budget", ["--sessions", f"sqlite:{tmp / 'budget.db'}", "--kv-budget", str(one),
                               "--max-queue", "0"])
    try:
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}],
                "max_tokens": 64, "temperature": 0, "stream": True}
        u = urllib.parse.urlparse(s.url)
        data = json.dumps(body).encode()
        hold = socket.create_connection((u.hostname, u.port), timeout=120)
        hold.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {s.api_key}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        head = read_until(hold, lambda g: b"\r\n\r\n" in g)
        assert b"200 OK" in head  # admitted: the budget is now spent
        status, headers, resp = s.raw("POST", "/v1/chat/completions", {
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})
        assert status == 429, resp
        assert int(headers["retry-after"]) >= 1
        assert json.loads(resp)["error"]["type"] == "rate_limit_error"
        hold.close()
        wait_for(lambda: s.metric("msrnn_sequences_active") == 0, what="the held request to leave")
        assert chat(s.client(), "hi", max_tokens=2).choices[0].message.content is not None
    finally:
        s.stop()


# --- durability and draining ---------------------------------------------------------------

def test_kill_9_keeps_finished_turns(tmp):
    db = tmp / "durable.db"
    s = Server(tmp, "durable", ["--sessions", f"sqlite:{db}"])
    try:
        first = chat(s.client(), "Remember the number 7.", extra_body=session("d"))
        assert first.model_extra["msrnn"]["turns"] == 1
        saved = s.raw("GET", "/v1/sessions/d")[2]
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a long story."}],
                "max_tokens": 64, "temperature": 0, "stream": True, "msrnn": {"session": "d"}}
        u = urllib.parse.urlparse(s.url)
        data = json.dumps(body).encode()
        conn = socket.create_connection((u.hostname, u.port), timeout=120)
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Authorization: Bearer {s.api_key}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
        read_until(conn, lambda g: g.count(b"data: {") >= 3)
        s.proc.send_signal(signal.SIGKILL)  # mid-turn
        s.proc.wait()
        conn.close()
    finally:
        s.stop()
    s = Server(tmp, "durable-again", ["--sessions", f"sqlite:{db}"])
    try:
        assert s.raw("GET", "/v1/sessions/d")[2] == saved  # the finished turn, intact
        second = chat(s.client(), "What number?", extra_body=session("d"))
        assert second.model_extra["msrnn"]["turns"] == 2 and second.model_extra["msrnn"]["resumed"]
    finally:
        s.stop()


def test_sigterm_drains_running_turns(tmp):
    s = Server(tmp, "drain", ["--sessions", f"sqlite:{tmp / 'drain.db'}"])
    u = urllib.parse.urlparse(s.url)
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Tell a story."}],
            "max_tokens": 24, "temperature": 0, "stream": True, "msrnn": {"session": "t"}}
    data = json.dumps(body).encode()
    conn = socket.create_connection((u.hostname, u.port), timeout=120)
    conn.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {s.api_key}\r\nContent-Length: {len(data)}\r\n\r\n".encode() + data)
    got = read_until(conn, lambda g: b"data: {" in g)
    s.proc.send_signal(signal.SIGTERM)
    while b"data: [DONE]" not in got:
        chunk = conn.recv(4096)
        if not chunk:
            break
        got += chunk
    conn.close()
    assert b"data: [DONE]" in got and b'"finish_reason":"' in got, got[-500:]
    assert s.proc.wait(60) == 0
    s.stop()
    s = Server(tmp, "drain-again", ["--sessions", f"sqlite:{tmp / 'drain.db'}"])
    try:
        status, _, body = s.raw("GET", "/v1/sessions")
        assert [x["turns"] for x in json.loads(body)["data"] if x["id"] == "t"] == [1]
    finally:
        s.stop()


# --- several processes sharing Redis ---------------------------------------------------------

REDIS = os.environ.get("MSRNN_TEST_REDIS")


@pytest.mark.skipif(not REDIS, reason="set MSRNN_TEST_REDIS=redis://127.0.0.1:PORT (scripts/test-server.sh does)")
def test_two_processes_share_sessions_through_redis(tmp):
    a = Server(tmp, "redis-a", ["--sessions", REDIS])
    b = Server(tmp, "redis-b", ["--sessions", REDIS])
    try:
        turns = ["My name is Ada.", "What is my name?", "Say it again."]
        # One conversation, its turns alternating between the two processes ...
        for sid in ("alt", "one"):
            a.raw("DELETE", f"/v1/sessions/{sid}")
        alternating = [chat((a, b)[i % 2].client(), t, extra_body=session("alt")).choices[0].message.content
                       for i, t in enumerate(turns)]
        # ... gives exactly what one process gives.
        alone = [chat(a.client(), t, extra_body=session("one")).choices[0].message.content for t in turns]
        assert alternating == alone
        listed = {x["id"]: x for x in json.loads(b.raw("GET", "/v1/sessions")[2])["data"]}
        assert listed["alt"]["turns"] == 3 and listed["one"]["turns"] == 3
        assert a.raw("GET", "/v1/sessions/alt")[2] == b.raw("GET", "/v1/sessions/alt")[2]
    finally:
        a.stop()
        b.stop()
