"""BFCL's ground truth: call strings like "cd(folder='doc')" parsed as data (`ast.parse` +
`ast.literal_eval` on the argument nodes), never evaluated."""

from __future__ import annotations

import ast
from typing import Any


def _literal(node: ast.AST, source: str) -> Any:
    """A literal argument value; anything else (a name, a call, an operator) is refused."""
    try:
        return _plain(ast.literal_eval(node))
    except (ValueError, TypeError, SyntaxError, RecursionError) as exc:
        raise ValueError(f"argument is not a literal in {source!r} ({exc})") from None


def _plain(value: Any) -> Any:
    """Python literals as JSON data: tuples and sets become lists."""
    if isinstance(value, tuple | list | set | frozenset):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def parse_call(text: str, param_order: dict[str, list[str]]) -> dict:
    """Parse one ground-truth call string like "cd(folder='doc')" into {name, arguments}.

    Only a single call of a plain name with literal arguments is accepted; positional
    arguments are named from the function's parameter order. Raises ValueError otherwise.
    """
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise ValueError(f"not a call: {text!r} ({exc.msg})") from None
    call = tree.body
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        raise ValueError(f"not a plain function call: {text!r}")
    name = call.func.id
    arguments: dict[str, Any] = {}
    if call.args:
        order = param_order.get(name)
        if order is None or len(call.args) > len(order):
            raise ValueError(f"cannot name positional arguments of {name!r} in {text!r}")
        for pname, node in zip(order, call.args, strict=False):
            arguments[pname] = _literal(node, text)
    for kw in call.keywords:
        if kw.arg is None:
            raise ValueError(f"**kwargs not allowed in {text!r}")
        arguments[kw.arg] = _literal(kw.value, text)
    return {"name": name, "arguments": arguments}

