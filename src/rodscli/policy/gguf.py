"""GGUF import (`rods init-policy --from-gguf`): a llama.cpp file as a plain HF checkpoint.

transformers reads GGUF files itself (`from_pretrained(dir, gguf_file=NAME)`, with the
`gguf` package): it de-quantizes every tensor, undoes llama.cpp's renaming and rotary
permutation of the query/key weights, and rebuilds the tokenizer and its chat template
from the file's metadata. The model it returns is marked as coming from a quantized file
and refuses `save_pretrained`, so the weights are copied into a fresh model built from the
same config, without its quantization note (every key must match), and that one is saved:
safetensors, config, tokenizer, chat template, generation config. De-quantizing is the slow part (SmolLM2-135M Q4_1: about
100 s on 2 CPU cores); do it once and point every stage at the directory it writes.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rodscli.errors import InputError, OptionError
from rodscli.policy.tiny import INFO_FILE
from rodscli.records import file_hash

KIND = "gguf-import"
DTYPES = ("float32", "bfloat16", "float16")


def import_gguf(gguf_file: str | Path, out: str | Path, dtype: str = "float32",
                chat_template: str | None = None) -> dict:
    """Write the HF checkpoint of `gguf_file` to `out`; return a summary.

    `chat_template` (template text) replaces the file's own template, or supplies one when
    the file has none.
    """
    import torch

    path = Path(gguf_file)
    _check_input(path, dtype)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.perf_counter()  # everything is read and checked before anything is written
    where, name = str(path.parent), path.name
    try:
        tok = AutoTokenizer.from_pretrained(where, gguf_file=name, local_files_only=True)
        loaded = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.float32, local_files_only=True)
    except (ValueError, KeyError, OSError, NotImplementedError) as exc:
        raise InputError(f"transformers cannot load this GGUF file: {type(exc).__name__}: {exc}", where=str(path)) from None
    if chat_template is not None:
        tok.chat_template = chat_template
    model = _plain_copy(loaded, dtype)
    model.generation_config = _generation_config(tok)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    n_params = sum(p.numel() for p in model.parameters())
    info = {"kind": KIND, "source": name, "source_blake2b": file_hash(path), "dtype": dtype,
            "architecture": model.config.model_type, "n_params": n_params, "vocab_size": len(tok),
            "chat_template": "given" if chat_template is not None else ("from the file" if tok.chat_template else "none")}
    (out / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n")
    info["seconds"] = round(time.perf_counter() - started, 2)
    info["out"] = str(out)
    return info


def _check_input(path: Path, dtype: str) -> None:
    """A known dtype, a file that starts with the GGUF magic bytes, and the `gguf` package."""
    if dtype not in DTYPES:
        raise OptionError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}", field="--dtype")
    if not path.is_file():
        raise InputError("no such GGUF file", where=str(path))
    with open(path, "rb") as fh:
        if fh.read(4) != b"GGUF":
            raise InputError("not a GGUF file (it does not start with the GGUF magic bytes)", where=str(path))
    try:
        import gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError:
        raise OptionError("GGUF import needs the `gguf` package: pip install 'rodscli[gguf]'", field="--from-gguf") from None


def _plain_copy(loaded: Any, dtype: str) -> Any:
    """The weights of the model loaded from the GGUF file in a fresh model of its config, in
    `dtype` and without the quantization note (every key must match)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = loaded.config
    config.dtype = dtype
    # the loaded config says "quantized with gguf": saved as is, every later load would be marked
    # quantized too and refuse save_pretrained (train-step could not write its checkpoint)
    for attribute in ("quantization_config", "_name_or_path"):
        if hasattr(config, attribute):
            delattr(config, attribute)
    model = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, dtype))
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if missing or unexpected:  # a transformers bug or an architecture it maps only in part
        raise RuntimeError(f"GGUF weights do not fit the model built from their config: missing {missing[:5]}, unexpected {unexpected[:5]}")
    if getattr(model.config, "tie_word_embeddings", False):
        model.tie_weights()
    return model


def _generation_config(tok: Any) -> Any:
    """Stop on the tokenizer's end of sequence and ChatML's end of turn, where they exist."""
    from transformers import GenerationConfig

    eos = [i for i in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>")) if isinstance(i, int) and i != tok.unk_token_id]
    return GenerationConfig(
        bos_token_id=tok.bos_token_id, eos_token_id=sorted(set(eos)) or None,
        pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else (eos[0] if eos else None),
    )
