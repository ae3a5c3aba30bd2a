"""Benchmark the openai backend's answer checks: `parse_completion` on vLLM-shaped answers
(every token id matched as ASCII digits and checked against the vocabulary, every log-prob
checked finite and <= 0, the reply's length checked), against an unchecked parse measured
in the same run (the plain loop: `json.loads`, the "token_id:" prefix stripped with int(),
float() on each log-prob). Both parse the same bytes.

    .venv/bin/python bench/server_checks.py [--tokens 512] [--repeat 2000]
"""

from __future__ import annotations

import argparse
import json
import time

import orjson

from rodscli.policy.openai import parse_completion


def answer(n_tokens: int) -> bytes:
    return orjson.dumps({"choices": [{"finish_reason": "length", "logprobs": {
        "tokens": [f"token_id:{(i * 37) % 2000}" for i in range(n_tokens)],
        "token_logprobs": [-0.37 - (i % 5) for i in range(n_tokens)]}}]})


def unchecked(raw: bytes) -> tuple[list[int], list[float]]:
    lp = json.loads(raw)["choices"][0]["logprobs"]
    return [int(t[len("token_id:"):]) for t in lp["tokens"]], [float(x) for x in lp["token_logprobs"]]


def timed(fn, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - start) / repeat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=2000)
    args = ap.parse_args()
    raw = answer(args.tokens)
    gen = parse_completion(orjson.loads(raw), [1], "bench", args.tokens, 2196)
    assert (gen.token_ids, gen.logprobs) == unchecked(raw)  # the same result, checked
    checked_s = timed(lambda: parse_completion(orjson.loads(raw), [1], "bench", args.tokens, 2196), args.repeat)
    plain_s = timed(lambda: unchecked(raw), args.repeat)
    print(f"{args.tokens}-token answer: checked {checked_s * 1e6:.0f} us, unchecked {plain_s * 1e6:.0f} us; "
          f"ratio {checked_s / plain_s:.2f} (time of the checked parse over the unchecked one)")


if __name__ == "__main__":
    main()
