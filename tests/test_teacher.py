"""The teacher in synthesis: the chat client against real HTTP servers on 127.0.0.1 (a
stdlib server that answers what a broken server would, and `transformers serve` running
the real tiny policy), the agents' gates on hand-made answers, and `rods synthesize
--teacher-url` end to end on built-in and BFCL seeds."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import orjson
import pytest

from rodscli import records, schemas
from rodscli.cli import main
from rodscli.envs.base import replay_reference
from rodscli.envs.builtin import seed_tasks
from rodscli.errors import BackendError, OptionError
from rodscli.stages.synthesize import SynthesizeOptions, synthesize
from rodscli.synth.teacher import TeacherOptions, teach
from rodscli.synth.teacher.agents import (
    answer_text,
    gate_context,
    gate_turn,
    parse_verdict,
    state_view,
    task_values,
)
from rodscli.synth.teacher.client import ChatClient, ChatRequest
from rodscli.synth.teacher.prompts import NAMES, load_prompts

# ------------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Scripted(BaseHTTPRequestHandler):
    """Answers each POST with the next (status, body) of the server's script; records headers."""

    def do_POST(self):  # noqa: N802 - the stdlib's name
        length = int(self.headers.get("Content-Length") or 0)
        self.server.bodies.append(json.loads(self.rfile.read(length)))
        self.server.auth.append(self.headers.get("Authorization"))
        script = self.server.script
        if callable(script[0]):  # an answer made from the request
            status, body = script[0](self.server.bodies[-1])
        else:
            status, body = script.pop(0) if len(script) > 1 else script[0]
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def scripted():
    servers = []

    def start(*script):
        server = ThreadingHTTPServer(("127.0.0.1", 0), Scripted)
        server.script, server.bodies, server.auth = list(script), [], []
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server, f"http://127.0.0.1:{server.server_address[1]}/v1"

    yield start
    for s in servers:
        s.shutdown()
        s.server_close()


def chat(text: str) -> dict:
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}


def start_transformers_serve(model: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """`transformers serve` on 127.0.0.1 with a local checkpoint, offline; waits for /health."""
    port = free_port()
    exe = Path(sys.executable).with_name("transformers")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(exe), "serve", str(model), "--host", "127.0.0.1", "--port", str(port),
                             "--device", "cpu", "--log-level", "info"],
                            stdout=log.open("w"), stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited: {log.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError("transformers serve did not come up in 180 s")


@pytest.fixture(scope="module")
def tiny_server(tiny_policy, tmp_path_factory):
    proc, url = start_transformers_serve(tiny_policy, tmp_path_factory.mktemp("serve") / "serve.log")
    yield url, str(tiny_policy)
    proc.terminate()
    proc.wait(timeout=30)


# ------------------------------------------------------------------------------- the client


def test_client_sends_the_chat_request_and_the_key(scripted, monkeypatch):
    server, url = scripted((200, chat("hello")))
    monkeypatch.setenv("MY_TEACHER_KEY", "sk-test")
    client = ChatClient(url, "m", api_key_env="MY_TEACHER_KEY", max_tokens=7, temperature=0.5)
    assert client.complete([ChatRequest([{"role": "user", "content": "hi"}], seed=3)] * 3) == ["hello"] * 3
    body = server.bodies[0]
    assert body == {"model": "m", "messages": [{"role": "user", "content": "hi"}], "temperature": 0.5,
                    "max_tokens": 7, "seed": 3, "stream": False}
    assert server.auth == ["Bearer sk-test"] * 3


def test_client_retries_busy_answers_then_succeeds(scripted):
    server, url = scripted((503, {"error": "busy"}), (429, {"error": "slow down"}), (200, chat("ok")))
    client = ChatClient(url, "m", retries=3, backoff=0.01)
    assert client.complete([ChatRequest([{"role": "user", "content": "x"}])]) == ["ok"]
    assert (client.requests, client.retried) == (3, 2)


@pytest.mark.parametrize("answer, message", [
    ((200, b"<html>gateway</html>"), "not JSON"),
    ((200, {"hello": 1}), "did not answer a chat completion"),
    ((200, {"choices": [{"message": {"content": [1, 2]}}]}), "non-text message"),
    ((404, {"error": "no such model"}), "answered HTTP 404"),
    ((503, {"error": "busy"}), "answered HTTP 503"),  # retried, then given up
])
def test_client_nonsense_is_one_clear_error(scripted, answer, message):
    _, url = scripted(answer)
    with pytest.raises(BackendError, match=message) as exc:
        ChatClient(url, "m", retries=1, backoff=0.01).complete([ChatRequest([{"role": "user", "content": "x"}])])
    assert "\n" not in str(exc.value)


def test_client_server_down_is_one_clear_error():
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    client = ChatClient(url, "m", retries=2, backoff=0.01)
    with pytest.raises(BackendError, match=r"cannot reach the teacher .* \(after 3 tries\)"):
        client.complete([ChatRequest([{"role": "user", "content": "x"}])])
    assert client.requests == 3


def test_teacher_options_are_checked():
    assert TeacherOptions().url is None  # off by default
    with pytest.raises(OptionError, match="--teacher-model"):
        TeacherOptions(url="http://127.0.0.1:1/v1")
    with pytest.raises(OptionError, match="unknown teacher agent"):
        TeacherOptions(url="http://127.0.0.1:1/v1", model="m", agents="rewrite,plan")
    with pytest.raises(BackendError, match="http://"):
        ChatClient("127.0.0.1:8000", "m")
    for bad, why in (("{top_p: 1}", "not JSON"), ("[1]", "JSON object"), ('{"stream": true}', "cannot set stream")):
        with pytest.raises(OptionError, match=why) as exc:
            TeacherOptions(url="http://127.0.0.1:1/v1", model="m", extra_body=bad)
        assert exc.value.field == "--teacher-extra-body"


def test_extra_body_fields_go_with_every_request_and_into_the_provenance(scripted, tmp_path):
    server, url = scripted((200, chat("no verdict")))
    seed_file, out = tmp_path / "seeds.jsonl", tmp_path / "out.jsonl"
    records.write_records(seed_file, seed_tasks(per_skill=1)[:2], "task")
    extra = '{"top_k": 0, "repeat_penalty": 1.0, "temperature": 0.2}'
    assert main(["synthesize", "--seeds", str(seed_file), "--per-seed", "1", "--out", str(out), "--teacher-url", url,
                 "--teacher-model", "m", "--teacher-agents", "critique", "--teacher-attempts", "1",
                 "--teacher-extra-body", extra]) == 0
    assert len(server.bodies) == 2
    for body in server.bodies:  # server-specific fields added; an extra field replaces rods's own (temperature)
        assert (body["top_k"], body["repeat_penalty"], body["temperature"], body["model"]) == (0, 1.0, 0.2, "m")
    assert records.read_provenance(out)["synthesis"]["teacher"]["extra_body"] == json.loads(extra)


# ------------------------------------------------------------------------------- gates and parsing


def test_parse_verdict_takes_the_first_valid_object():
    ok = {"clear": True, "answerable": True, "consistent": False, "reason": "no such customer"}
    assert parse_verdict(f"Sure! Here is my verdict: {json.dumps(ok)} Hope it helps {{") == ok
    assert parse_verdict('{"clear": "yes"} then {"clear": true, "answerable": true, "consistent": true}') == \
        {"clear": True, "answerable": True, "consistent": True}
    for bad in ("", "clear: true", '{"clear": true, "answerable": true}', '{"clear": 1, "answerable": 1, "consistent": 1}',
                "{{{", '["clear"]'):
        assert parse_verdict(bad) is None, bad


def test_answer_text_and_the_turn_gate():
    assert answer_text('Rewritten request: "Could you look up Ada?"\n\nI kept the name.') == "Could you look up Ada?"
    template = "Please find a customer by full name with name 'Ada Moreno', then get a customer's full record."
    values = {"'Ada Moreno'", "'C-0001'"}
    assert gate_turn("Could you look up the customer named 'Ada Moreno' and get their full record?", template, values)
    assert not gate_turn("Could you look up the customer 'Ada Moreno'?\nThen their record.", template, values)
    assert not gate_turn("Get the full record of customer 'C-0001' named 'Ada Moreno'.", template, values)
    # what SmolLM2-135M answered and the llm writer's critic let through
    short = "Sorry, the quantity is 20."
    assert gate_turn("Oh, sorry: the quantity is 20.", short, {"20"})
    assert not gate_turn("I'm sorry for the error, but I'm here to assist you. Please go ahead.", short, {"20"})
    assert not gate_turn("Sorry, the quantity is 25.", short, {"20"})  # a number the template does not name
    assert not gate_turn("The request is to find a customer by full name with name 'Ada Moreno' and get the full record.",
                         template, values)
    assert not gate_turn("The requested request is: find customer 'Ada Moreno' and get their full record.", template, values)
    assert not gate_turn("Find the customer named 'Ada Moreno' in 'Riverton' and get their full record.", template, values)


def test_distractor_context_names_nothing_of_the_task():
    task = seed_tasks(per_skill=1)[3]  # a long_context task
    assert task["skill"] == "long_context"
    name = task["reference"][0][0]["arguments"].get("name") or next(iter(task["reference"][0][0]["arguments"].values()))
    assert gate_context("It has been a long week at the shop. I finally have a quiet morning to sort things out.", task)
    assert not gate_context(f"Yesterday I talked to {name} about the shop.", task)  # a value of the task
    assert not gate_context("I have 3 meetings today.", task)  # a number
    assert not gate_context("", task)
    view = state_view(task)
    assert len(view) <= 2000 + len(" ...(cut)") and any(v.strip("'") in view for v in task_values(task))


def test_prompts_are_packaged_and_overridable(tmp_path):
    packaged = load_prompts()
    assert set(packaged) == set(NAMES) and all(p.source == "package" and p.text.strip() for p in packaged.values())
    assert "$request" in packaged["rewrite"].text and "$task" in packaged["critique"].text
    (tmp_path / "rewrite.md").write_text("Say it better: $request")
    mine = load_prompts(tmp_path)
    assert mine["rewrite"].fill(request="hi", values="x") == "Say it better: hi"
    assert mine["rewrite"].sha256 == hashlib.sha256(b"Say it better: $request").hexdigest()
    assert mine["critique"] == packaged["critique"]
    assert mine["rewrite"].messages(request="hi") == [{"role": "user", "content": "Say it better: hi"}]
    # worked examples first: `### user` / `### assistant` sections, the fields filled in the last
    shots = packaged["critique"].messages(task="Requests:\n1. Do it.")
    assert [m["role"] for m in shots] == ["user", "assistant", "user", "assistant", "user"]
    assert all(parse_verdict(m["content"]) for m in shots if m["role"] == "assistant")
    assert "Requests:\n1. Do it." in shots[-1]["content"] and "$task" not in shots[-1]["content"]
    with pytest.raises(OptionError):
        load_prompts(tmp_path / "missing")


# ------------------------------------------------------------------------------- agents over a scripted teacher


def test_critique_counts_rejections_by_reason(scripted):
    """The verdicts are a real server's answers: one accepts, one is not JSON, one fails a check."""
    tasks = [orjson.loads(orjson.dumps(t)) for t in seed_tasks(per_skill=1)[:4]]
    cands, _ = synthesize(tasks, tasks, SynthesizeOptions(per_seed=1))
    assert len(cands) == 4
    verdicts = [chat('{"clear": true, "answerable": true, "consistent": true, "reason": "fine"}'),
                chat("I think it is fine."),
                chat('{"clear": true, "answerable": false, "consistent": true}'),
                chat('{"clear": false, "answerable": false, "consistent": true}')]
    server, url = scripted(*[(200, v) for v in verdicts])
    opts = TeacherOptions(url=url, model="m", agents="critique", concurrency=1)
    kept, stats = teach(cands, opts)
    assert [t["id"] for t in kept] == [cands[0]["id"]]
    assert kept[0]["synthesis"]["teacher"]["verdict"]["reason"] == "fine"
    assert stats["critique_rejected"] == {"critique_invalid": 1, "critique_not_clear": 1,
                                          "critique_not_answerable": 1, "critique_not_consistent": 0}
    assert set(stats["prompts"]) == {"critique"} and stats["written"] == 1
    shown = server.bodies[0]["messages"][-1]["content"]
    assert cands[0]["user_turns"][0] in shown and cands[0]["reference"][0][0]["name"] in shown


def test_a_rejected_candidate_is_replaced_by_a_new_attempt(scripted):
    """Through synthesize(): the critique (a real HTTP server's verdicts, in order) rejects 3
    of 4 candidates; each is replaced by a new programmatic attempt for its variant (a new
    world), judged again, up to --teacher-attempts 3 per variant; counted and recorded."""
    ok = chat('{"clear": true, "answerable": true, "consistent": true}')
    verdicts = [ok, chat("no idea"), chat('{"clear": false, "answerable": true, "consistent": true}'),
                chat('{"clear": true, "answerable": false, "consistent": true}'),  # round 0: 4 candidates
                ok, chat('{"clear": true, "answerable": true, "consistent": false}'), chat("{}"),  # round 1: 3 replacements
                ok, chat("still no idea")]  # round 2: 2 replacements; the last variant is given up
    server, url = scripted(*[(200, v) for v in verdicts])
    seeds = [orjson.loads(orjson.dumps(t)) for t in seed_tasks(per_skill=1)[:4]]
    plain, first = synthesize(seeds, seeds, SynthesizeOptions(per_seed=1))
    kept, stats = synthesize(seeds, seeds, SynthesizeOptions(per_seed=1),
                             teacher=TeacherOptions(url=url, model="m", agents="critique", concurrency=1))
    assert len(server.bodies) == 9 and len({b["seed"] for b in server.bodies}) == 9  # each round its own seeds
    teacher = stats["teacher"]
    assert teacher["critique_rejected"] == {"critique_invalid": 3, "critique_not_clear": 1,
                                            "critique_not_answerable": 1, "critique_not_consistent": 1}
    tries = teacher["critique_attempts"]
    assert {k: tries[k] for k in ("per_variant", "judged", "replacements", "replaced", "unmade")} == \
        {"per_variant": 3, "judged": 9, "replacements": 5, "replaced": 2, "unmade": 0}
    assert tries["synthesized"]["attempted"] >= 5 and teacher["written"] == 3
    assert {k: stats[k] for k in ("accepted", "attempted")} == {k: first[k] for k in ("accepted", "attempted")}
    assert [t["id"] for t in kept] == [t["id"] for t in plain[:3]] and kept[0] == {**plain[0], "synthesis": kept[0]["synthesis"]}
    assert [t["synthesis"]["teacher"].get("attempt", 0) for t in kept] == [0, 1, 2]
    assert kept[1]["synthesis"]["teacher"]["replaces"] == ["critique_invalid"]
    assert kept[2]["synthesis"]["teacher"]["replaces"] == ["critique_not_clear", "critique_not_consistent"]
    for new, old in zip(kept[1:], plain[1:3], strict=True):  # a new attempt: a later try, a new world, still verified
        assert new["synthesis"]["attempt"] > old["synthesis"]["attempt"] and new["initial_state"] != old["initial_state"]
        assert replay_reference(new).ok and schemas.problems("task", new) == []
        assert new["synthesis"]["teacher"]["verdict"] == {"clear": True, "answerable": True, "consistent": True}
    shown = server.bodies[4]["messages"][-1]["content"]  # the first replacement was what the critic saw
    assert kept[1]["user_turns"][0] in shown


def test_teacher_attempts_1_drops_what_the_critique_rejects(scripted, tmp_path, capfd):
    server, url = scripted((200, chat("no verdict")))
    seed_file, out = tmp_path / "seeds.jsonl", tmp_path / "out.jsonl"
    records.write_records(seed_file, seed_tasks(per_skill=1)[:2], "task")
    assert main(["synthesize", "--seeds", str(seed_file), "--per-seed", "1", "--out", str(out), "--teacher-url", url,
                 "--teacher-model", "m", "--teacher-agents", "critique", "--teacher-attempts", "1"]) == 0
    teacher = records.read_provenance(out)["synthesis"]["teacher"]
    assert records.read_all(out, "task") == [] and len(server.bodies) == 2
    assert teacher["critique_rejected"]["critique_invalid"] == 2
    assert teacher["critique_attempts"] == {"per_variant": 1, "judged": 2, "replacements": 0, "replaced": 0,
                                            "unmade": 0, "synthesized": {}}
    assert "0/0 replacements accepted (of 2 judged; 0 not made)" in " ".join(capfd.readouterr().err.split())
    with pytest.raises(OptionError, match="--teacher-attempts"):
        TeacherOptions(url=url, model="m", attempts=0)


def test_augment_adds_reverified_copies_and_counts_the_rest(scripted):
    """Paraphrases that keep the values make copies that replay; a long_context copy opens
    with the distractor; a distractor naming a value of the task drops its copy."""
    tasks = [orjson.loads(orjson.dumps(t)) for t in seed_tasks(per_skill=1)[:4]]  # base, miss_func, miss_param, long_context
    cands, _ = synthesize(tasks, tasks, SynthesizeOptions(per_seed=1))
    assert [c["skill"] for c in cands] == ["base", "miss_func", "miss_param", "long_context"]
    leak = cands[3]["reference"][0][0]["arguments"]
    leak = str(next(v for v in leak.values() if isinstance(v, str) and len(v) >= 4))
    context = "It has been a long week at work. I finally have a quiet morning to sort things out."
    distractors: list[int] = []

    def answer(body):
        prompt = body["messages"][-1]["content"]
        if "Request: " in prompt:  # paraphrase: the request, said a little differently
            return 200, chat("Hi there! " + prompt.rsplit("Request: ", 1)[1])
        distractors.append(body["seed"])  # the first one is clean, the second names a value
        return 200, chat(context if len(distractors) == 1 else f"I talked to {leak} yesterday.")

    _, url = scripted(answer)
    kept, stats = teach([orjson.loads(orjson.dumps(c)) for c in cands],
                        TeacherOptions(url=url, model="m", agents="augment", paraphrases=2, concurrency=2))
    copies = [t for t in kept if "augment_of" in t["synthesis"].get("teacher", {})]
    assert len(distractors) == 2 and len(copies) == stats["augmented"] == 7  # 3 x 2 + the clean long_context copy
    assert stats["augment_rejected"] == {"augment_context_rejected": 1}
    assert kept[:4] == cands and all(t["synthesis"]["teacher"]["augment"] == ["paraphrase"] for t in copies[:6])
    assert copies[6]["synthesis"]["teacher"]["augment"] == ["paraphrase", "distractor_context"]
    by_id = {c["id"]: c for c in cands}
    for t in copies:
        base = by_id[t["synthesis"]["teacher"]["augment_of"]]
        assert t["id"].startswith(base["id"] + "a") and t["reference"] == base["reference"]
        assert replay_reference(t).ok and schemas.problems("task", t) == []
        assert all(u == "Hi there! " + b or (t["skill"] == "long_context" and u == f"{context} Hi there! {b}")
                   for u, b in zip(t["user_turns"], base["user_turns"], strict=True))
    assert len({t["id"] for t in kept}) == len(kept)


# ------------------------------------------------------------------------------- a real transformers serve


def _bfcl_seeds(n: int) -> list[dict]:
    from rodscli.envs.bfcl import BFCLTasksOptions, bfcl_tasks

    train = list(bfcl_tasks(BFCLTasksOptions(split="train")))
    return train[::len(train) // n][:n]


@pytest.mark.slow
def test_synthesize_with_a_served_teacher_on_builtin_and_bfcl(tiny_server, tmp_path):
    """`rods synthesize --teacher-url` on 10 built-in and 10 BFCL seeds against `transformers
    serve` running the tiny policy: the candidates replay, keep the template run's plans, and
    each turn is the template's or a rewrite that passed the gate. (The untrained tiny
    policy never writes a valid JSON verdict: its critique is tested below.)"""
    url, model = tiny_server
    seeds = seed_tasks(per_skill=2)[:10] + _bfcl_seeds(10)
    seed_file = tmp_path / "seeds.jsonl"
    records.write_records(seed_file, seeds, "task")
    plain, out = tmp_path / "plain.jsonl", tmp_path / "teacher.jsonl"
    assert main(["--quiet", "synthesize", "--seed-tasks", str(seed_file), "--per-seed", "1", "--out", str(plain)]) == 0
    assert main(["--quiet", "synthesize", "--seed-tasks", str(seed_file), "--per-seed", "1", "--out", str(out),
                 "--teacher-url", url, "--teacher-model", model, "--teacher-agents", "rewrite,augment",
                 "--teacher-max-tokens", "12", "--paraphrases", "1"]) == 0
    before, after = records.read_all(plain, "task"), records.read_all(out, "task")
    stats = records.read_provenance(out)["synthesis"]["teacher"]
    assert {t["env"] for t in before} == {"builtin", "bfcl"} and len(before) >= 15
    originals = [t for t in after if "augment_of" not in t["synthesis"]["teacher"]]
    assert [t["reference"] for t in originals] == [t["reference"] for t in before]
    assert stats["turns"] == sum(len(t["user_turns"]) for t in before)
    assert stats["written"] == len(after) == len(before) + stats["augmented"]
    assert stats["requests"] >= stats["turns"] * 2
    assert set(stats["prompts"]) == {"rewrite", "paraphrase", "distract"}
    assert stats["prompts"]["rewrite"]["sha256"] == load_prompts()["rewrite"].sha256
    for b, a in zip(before, originals, strict=True):
        values = task_values(a)
        for ok, t0, t1 in zip(a["synthesis"]["teacher"]["rewritten"], b["user_turns"], a["user_turns"], strict=True):
            assert t1 == t0 if not ok else gate_turn(t1, t0, values)
    for t in after:
        assert schemas.problems("task", t) == [], t["id"]
        assert replay_reference(t).ok, t["id"]


@pytest.mark.slow
def test_tiny_teachers_critique_rejects_everything_as_invalid(tiny_server, tmp_path):
    url, model = tiny_server
    seeds = [orjson.loads(orjson.dumps(t)) for t in seed_tasks(per_skill=1)[:3]]
    cands, stats = synthesize(seeds, seeds, SynthesizeOptions(per_seed=1),
                              teacher=TeacherOptions(url=url, model=model, agents="rewrite,critique", max_tokens=24,
                                                     attempts=2))
    assert cands == [] and stats["accepted"] == 3
    teacher = stats["teacher"]  # each variant judged twice: the candidate, then a replacement for it
    assert teacher["critique_rejected"]["critique_invalid"] == 6 and teacher["written"] == 0
    assert {k: teacher["critique_attempts"][k] for k in ("judged", "replacements", "replaced")} == \
        {"judged": 6, "replacements": 3, "replaced": 0}
    assert teacher["turns"] > sum(len(t["user_turns"]) for t in synthesize(seeds, seeds, SynthesizeOptions(per_seed=1))[0])
    assert teacher["requests"] == 6 + teacher["turns"]


@pytest.mark.slow
def test_teacher_killed_mid_run_exits_2_with_no_output(tiny_policy, tmp_path):
    proc, url = start_transformers_serve(tiny_policy, tmp_path / "serve.log")
    try:
        seed_file, out = tmp_path / "seeds.jsonl", tmp_path / "out.jsonl"
        records.write_records(seed_file, seed_tasks(per_skill=2), "task")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        run = subprocess.Popen([sys.executable, "-m", "rodscli", "synthesize", "--seed-tasks", str(seed_file), "--per-seed", "2",
                                "--out", str(out), "--teacher-url", url, "--teacher-model", str(tiny_policy),
                                "--teacher-max-tokens", "8", "--teacher-retries", "1", "--teacher-concurrency", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        deadline = time.monotonic() + 300
        while "POST /v1/chat/completions" not in (tmp_path / "serve.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        proc.kill()  # mid-run: the teacher has answered a first request
        proc.wait()
        _, err = run.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert run.returncode == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip() and "synthesize:" not in ln]
    assert len(lines) == 1 and "teacher" in lines[0], err
    assert not out.exists() and not Path(f"{out}.meta.json").exists()


def test_without_teacher_url_the_candidates_are_the_template_writers(tmp_path):
    """No --teacher-url: the CLI writes exactly the library's template-writer candidates."""
    seeds = seed_tasks(per_skill=1)
    seed_file, out = tmp_path / "seeds.jsonl", tmp_path / "out.jsonl"
    records.write_records(seed_file, seeds, "task")
    assert main(["--quiet", "synthesize", "--seed-tasks", str(seed_file), "--per-seed", "2", "--out", str(out)]) == 0
    seeds = records.read_all(seed_file, "task")
    lib, stats = synthesize(seeds, seeds, SynthesizeOptions(per_seed=2))
    assert "teacher" not in stats and all("teacher" not in t["synthesis"] for t in lib)
    assert records.read_all(out, "task") == lib


def test_the_teacher_benchmarks_shards_sum_to_one_run():
    """bench/teacher.py --merge: counts add up key by key, settings and names must agree,
    and --shard K/N is checked (the acceptance run is measured as shards at once)."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("teacher_bench", Path(__file__).resolve().parents[1] / "bench" / "teacher.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    a = {"model": "m", "agents": ["rewrite"], "turns": 3, "critique_rejected": {"critique_invalid": 2},
         "critique_attempts": {"per_variant": 3, "judged": 5, "synthesized": {"attempted": 4}}}
    b = {"model": "m", "agents": ["rewrite"], "turns": 4, "critique_rejected": {"critique_invalid": 1},
         "critique_attempts": {"per_variant": 3, "judged": 2, "synthesized": {"attempted": 1, "near_duplicate": 2}}}
    assert bench.summed(a, b) == {"model": "m", "agents": ["rewrite"], "turns": 7,
                                  "critique_rejected": {"critique_invalid": 3},
                                  "critique_attempts": {"per_variant": 3, "judged": 7,
                                                        "synthesized": {"attempted": 5, "near_duplicate": 2}}}
    with pytest.raises(SystemExit, match="'model'"):
        bench.summed(a, {**b, "model": "other"})
    assert bench.shard_spec("1/4") == (1, 4)
    for bad in ("4/4", "1", "a/2"):
        with pytest.raises(argparse.ArgumentTypeError, match="K/N"):
            bench.shard_spec(bad)
