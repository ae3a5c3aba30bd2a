"""The embedded policy (`rods init-policy`): a small Llama-style causal LM made locally.

No model hub is reachable from the machines rods is tested on, so the default policy is
built here: a byte-level BPE tokenizer trained on the built-in domains' conversations (the
seed tasks' reference solutions rendered with the chat template: user turns, tool schemas,
tool calls, tool results), the Hermes/Qwen chat template of `chat_template.jinja`, and a
randomly initialised Llama of a few million parameters. The result is an ordinary Hugging
Face checkpoint directory: `AutoTokenizer` and `AutoModelForCausalLM` load it offline, and
every stage treats it exactly like any other checkpoint (e.g. a Qwen3 directory).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

from rodscli.config import option
from rodscli.errors import OptionError

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
INFO_FILE = "rods_policy.json"  # what init-policy made: kind, seed, size
KIND = "rods-tiny"


@dataclass
class InitPolicyOptions:
    """Options of `rods init-policy`."""

    vocab_size: int = option(4096, help="Tokenizer vocabulary size (BPE merges learned on the built-in domains).")
    hidden_size: int = option(192, help="Model width.")
    layers: int = option(4, help="Number of transformer layers.")
    heads: int = option(4, help="Attention heads (2 key/value heads: grouped-query attention as in Qwen).")
    intermediate_size: int = option(512, help="MLP width.")
    max_positions: int = option(8192, help="Longest sequence the model accepts (rotary positions).")


def policy_kind(policy: str | Path | None) -> str | None:
    """`kind` of a checkpoint's INFO_FILE (KIND for one made by init-policy), None without one."""
    path = Path(policy) / INFO_FILE if policy is not None else None
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("kind")
    except (ValueError, AttributeError):
        return None


def _tokenizer_from_texts(texts: list[str], vocab_size: int, template: str):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    # A space before a capital or a digit is a token of its own, so a value reads the same in
    # a request and in a call's JSON string: "does Xavier Kaur" and '"Xavier Kaur"' both hold
    # the tokens Xavier, space, Kaur (plain byte-level BPE has "ĠXavier" in one, "Xavier" in the
    # other, and a small model never learns to copy names). It costs ~3% more tokens.
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r" (?=[A-Z0-9])"), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(texts, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        model_max_length=1 << 20, clean_up_tokenization_spaces=False,
    )
    tok.chat_template = template
    return tok


def corpus(tasks: list[dict]) -> list[str]:
    """The tokenizer's training text: every task's reference conversation, rendered.

    Rendering needs a tokenizer, so a throw-away one with no merges renders first.
    """
    from rodscli.policy.chat import ChatFormat, teacher_forced

    template = Path(__file__).with_name("chat_template.jinja").read_text()
    bootstrap = _tokenizer_from_texts(["rods"], 300, template)
    fmt = ChatFormat(bootstrap)
    return [fmt.decode(teacher_forced(bootstrap, task, fmt=fmt)["token_ids"]) for task in tasks]


def init_policy(out: str | Path, opts: InitPolicyOptions | None = None, seed: int = 0,
                tasks: list[dict] | None = None) -> dict:
    """Write the embedded policy checkpoint to `out`; return a summary.

    `tasks` default: the built-in domains' seed tasks.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    opts = opts or InitPolicyOptions()
    if opts.hidden_size % opts.heads:
        raise OptionError(f"--hidden-size {opts.hidden_size} is not a multiple of --heads {opts.heads}")
    started = time.perf_counter()
    if tasks is None:
        from rodscli.envs.builtin import seed_tasks

        tasks = seed_tasks()
    template = Path(__file__).with_name("chat_template.jinja").read_text()
    tok = _tokenizer_from_texts(corpus(tasks), opts.vocab_size, template)
    eot = tok.convert_tokens_to_ids("<|im_end|>")
    pad = tok.convert_tokens_to_ids("<|endoftext|>")
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=opts.hidden_size, intermediate_size=opts.intermediate_size,
        num_hidden_layers=opts.layers, num_attention_heads=opts.heads,
        num_key_value_heads=max(1, opts.heads // 2), max_position_embeddings=opts.max_positions,
        tie_word_embeddings=True, bos_token_id=None, eos_token_id=eot, pad_token_id=pad,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eot, pad_token_id=pad, bos_token_id=None)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    info = {"kind": KIND, "seed": seed, "n_params": n_params, "vocab_size": len(tok),
            "n_tasks": len(tasks), "corpus_sha": hashlib.sha256("".join(t["id"] for t in tasks).encode()).hexdigest()[:16]}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    info["seconds"] = round(time.perf_counter() - started, 2)
    info["out"] = str(out)
    return info
