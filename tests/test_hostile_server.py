"""`rods rollout --backend openai` against a hostile server: every broken answer is exit 2,
one line naming what was wrong, and no output file; a hung server with `--timeout 5` ends
the run within 10 s; replies longer than asked for are refused where they arrive."""

from __future__ import annotations

import json
import time

import pytest
from hostile_server import HANG, HostileServer, Reply, completion

from rodscli import records
from rodscli.cli import main
from rodscli.envs.builtin import seed_tasks
from rodscli.policy.base import load_tokenizer


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tasks") / "tasks.jsonl"
    records.write_records(path, seed_tasks()[:1], "task")
    return path


@pytest.fixture(scope="module")
def vocab(tiny_policy):
    return len(load_tokenizer(tiny_policy))


def run(tiny_policy, task_file, tmp_path, url, *extra):
    out = tmp_path / "r.jsonl"
    argv = ["rollout", "--policy", str(tiny_policy), "--tasks", str(task_file), "--out", str(out),
            "--backend", "openai", "--base-url", url, "-G", "1", "--max-new-tokens", "64", *extra]
    code = main(argv)
    return code, out


def nested(depth: int) -> bytes:
    return b'{"choices": ' + b"[" * depth + b"]" * depth + b"}"


CASES = {
    # name: (answer for every request, words the one error line must hold)
    "choice_not_object": ({"choices": [5]}, "choices[0] is a int"),
    "no_choices": ({"error": "overloaded"}, "no choices"),
    "logprobs_list": ({"choices": [{"logprobs": [1, 2], "finish_reason": "stop"}]}, "logprobs is a list"),
    "superscript_id": (completion(["token_id:\u00b2"]), "token 0 is not a token id"),
    "5000_digit_id": (completion(["token_id:" + "9" * 5000]), "token 0 is not a token id"),
    "out_of_vocab": (completion([10 ** 9]), "outside the tokenizer's vocabulary"),
    "logprob_text": (completion([5], ["abc"]), "log-prob 0 is 'abc'"),
    "logprob_object": (completion([5], [{}]), "log-prob 0 is {}"),
    "logprob_positive": (completion([5], [3.5]), "not a finite number <= 0"),
    "logprob_nan": (Reply(json.dumps(completion([5])).replace("-0.5", "NaN").encode()), "not JSON"),
    "truncated": (Reply(json.dumps(completion([5])).encode()[:40], length=400), "cut off after 40 bytes"),
    "deep_nesting": (Reply(nested(100_000)), "not JSON"),
    "not_json": (Reply(b"<html>502 Bad Gateway</html>"), "not JSON"),
    "http_error": (Reply(b'{"error": "engine died"}', status=500), "answered 500"),
    "too_many_tokens": (completion([5] * 192, finish="length"), "192 tokens for a reply of at most 64"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_server_answer_is_one_line_exit_2_no_output(case, tiny_policy, task_file, tmp_path, capsys, vocab):
    answer, words = CASES[case]
    with HostileServer(lambda body: answer) as srv:
        code, out = run(tiny_policy, task_file, tmp_path, srv.url)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert words in lines[0], err
    assert srv.url in lines[0]  # says whose answer it was
    assert "Traceback" not in err
    assert not list(tmp_path.iterdir())  # no output, no temp file, no sidecar


def test_in_vocab_ids_pass(tiny_policy, task_file, tmp_path, vocab):
    """The boundary of the vocabulary check: the last id is accepted, the next one is not."""
    with HostileServer(lambda body: completion([vocab - 1], finish="length")) as srv:
        code, out = run(tiny_policy, task_file, tmp_path, srv.url, "--max-tokens", "2000")
    assert code == 0
    assert main(["validate", str(out)]) == 0
    with HostileServer(lambda body: completion([vocab])) as srv:
        code, _ = run(tiny_policy, task_file, tmp_path / "x", srv.url)
    assert code == 2


def test_hung_server_ends_within_10s_of_timeout_5(tiny_policy, task_file, tmp_path, capsys):
    with HostileServer(lambda body: HANG) as srv:
        t = time.monotonic()
        code, out = run(tiny_policy, task_file, tmp_path, srv.url, "--timeout", "5")
        took = time.monotonic() - t
    err = capsys.readouterr().err
    assert code == 2 and took < 10, (took, err)
    assert "within --timeout 5s" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_slow_dribbling_answer_is_cut_at_the_deadline():
    """A server that sends a byte now and then never trips a per-read socket timeout: the
    whole answer has one deadline, checked between reads."""
    from rodscli.policy.openai import read_response

    class Dribble:  # an http.client response that yields one byte every 50 ms
        length = None

        def read1(self, n):
            time.sleep(0.05)
            return b" "

    t = time.monotonic()
    with pytest.raises(TimeoutError):
        read_response(Dribble(), time.monotonic() + 0.3, "srv")
    assert time.monotonic() - t < 1.0


def test_max_tokens_holds_against_a_server_that_ignores_max_tokens(tiny_policy, task_file, tmp_path):
    """Each request asks for at most what is left of --max-tokens; a server that sends one
    token more is refused; one that always sends the most it may never passes the limit."""
    asked = []

    def greedy(body):  # a tool call every time, as long as it may be
        asked.append(body["max_tokens"])
        return completion([5] * body["max_tokens"], finish="length")

    with HostileServer(greedy) as srv:
        code, out = run(tiny_policy, task_file, tmp_path, srv.url, "--max-tokens", "700")
    assert code == 0 and asked and max(asked) <= 64
    (rec,) = records.read_all(out, "rollout")
    assert len(rec["token_ids"]) <= 700 and rec["finish_reason"] == "max_tokens"

    with HostileServer(lambda body: completion([5] * (body["max_tokens"] + 1), finish="length")) as srv:
        code, out = run(tiny_policy, task_file, tmp_path / "over", srv.url, "--max-tokens", "700")
    assert code == 2 and not out.exists()
