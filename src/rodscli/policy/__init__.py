"""Policies: chat rendering and tool-call parsing (chat.py), backends (hf.py, vllm.py,
openai.py) and the embedded tiny policy (tiny.py)."""
