"""Architecture SPECs: a small, safe text/JSON/TOML description of an ``ntkit.layers`` architecture.

Three equivalent forms describe a serial stack of layers:

* **text** — layers separated by ``;`` or new lines, each a layer name with
  optional arguments in Python literal syntax; ``serial(...)`` and
  ``parallel(...)`` nest::

      Dense(512, W_std=1.5, b_std=0.05); Relu; Dense(1)

* **JSON** — a list of layers (or ``{"layers": [...]}``); a layer is a text
  item such as ``"Relu"`` or an object ``{"type": "Dense", "args": [512],
  "W_std": 1.5}`` whose other keys are keyword arguments::

      [{"type": "Dense", "args": [512], "W_std": 1.5}, "Relu", {"type": "Dense", "args": [1]}]

* **TOML** — ``[[layer]]`` tables (or a ``layers`` array) with the same keys::

      [[layer]]
      type = "Dense"
      args = [512]
      W_std = 1.5

      [[layer]]
      type = "Relu"

Only names exported by :mod:`ntkit.layers` that build layers are accepted,
and argument values must be literals (numbers, strings, booleans, ``None``,
tuples/lists/dicts of those). Nothing is ever evaluated: the text form is
parsed with :mod:`ast` and arguments go through :func:`ast.literal_eval`.

Examples
--------
>>> from ntkit.spec import parse_spec
>>> arch = parse_spec("FanOut(2); parallel(Identity, Identity); FanInSum")
>>> type(arch).__name__
'Serial'
"""

from __future__ import annotations

import ast
import difflib
import inspect
import json
import os
import tomllib
from collections.abc import Mapping
from typing import Any

__all__ = ["SpecError", "parse_spec", "load_spec", "layer_names"]

_COMBINATORS = ("serial", "parallel")
_MAX_SPEC_CHARS = 100_000


class SpecError(ValueError):
    """An architecture SPEC that cannot be parsed or names an unknown layer / bad argument."""


def layer_names() -> list[str]:
    """Names a SPEC may use: every layer class of :mod:`ntkit.layers`, plus ``serial`` and ``parallel``.

    Examples
    --------
    >>> "serial" in layer_names()
    True
    """
    return sorted(_registry())


def _registry() -> dict[str, Any]:
    from . import layers as L
    from .layers.base import Layer

    reg: dict[str, Any] = {}
    for name in getattr(L, "__all__", []):
        obj = getattr(L, name, None)
        if inspect.isclass(obj) and issubclass(obj, Layer) and obj is not Layer and not name.startswith("_"):
            reg[name] = obj
    for name in _COMBINATORS:
        if hasattr(L, name):
            reg[name] = getattr(L, name)
    return reg


def _unknown(name: str, reg: Mapping[str, Any]) -> SpecError:
    close = difflib.get_close_matches(name, list(reg), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; known layers: {', '.join(sorted(reg))}"
    return SpecError(f"unknown layer {name!r} in the architecture spec{hint}")


def _construct(name: str, args: list[Any], kwargs: dict[str, Any], reg: Mapping[str, Any]) -> Any:
    if name not in reg:
        raise _unknown(name, reg)
    try:
        return reg[name](*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"bad arguments for {name} in the architecture spec: {exc}") from None


# ---- text form ----------------------------------------------------------------


def _split_items(text: str) -> list[str]:
    """Split on ';' and new lines outside brackets and strings; drop '#' comments."""
    items, buf, depth, quote = [], [], 0, ""
    i = 0
    while i < len(text):
        ch = text[i]
        if quote:
            buf.append(ch)
            if ch == "\\" and i + 1 < len(text):
                buf.append(text[i + 1])
                i += 1
            elif ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            buf.append(ch)
        elif ch == "#":
            while i < len(text) and text[i] != "\n":
                i += 1
            continue
        elif ch in "([{":
            depth += 1
            buf.append(ch)
        elif ch in ")]}":
            depth -= 1
            if depth < 0:
                raise SpecError(f"unbalanced {ch!r} in the architecture spec")
            buf.append(ch)
        elif ch in ";\n" and depth == 0:
            items.append("".join(buf))
            buf = []
        else:
            buf.append(ch)
        i += 1
    if quote:
        raise SpecError("unterminated string in the architecture spec")
    if depth:
        raise SpecError("unbalanced brackets in the architecture spec (a '(' is not closed)")
    items.append("".join(buf))
    return [s.strip() for s in items if s.strip()]


def _literal(node: ast.AST, where: str) -> Any:
    try:
        return ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        src = ast.unparse(node) if hasattr(ast, "unparse") else "?"
        raise SpecError(
            f"argument {src!r} of {where} is not a literal (numbers, strings, True/False/None, "
            "tuples/lists of those, or a layer)"
        ) from None


def _from_node(node: ast.AST, reg: Mapping[str, Any], allow_literal: bool, where: str) -> Any:
    if isinstance(node, ast.Name):
        if node.id in reg:
            return _construct(node.id, [], {}, reg)
        if not allow_literal:
            raise _unknown(node.id, reg)
        raise SpecError(f"{node.id!r} in {where} is neither a layer nor a literal")
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name):
            raise SpecError(f"only plain layer names may be called in the architecture spec (in {where})")
        name = node.func.id
        if name not in reg:
            raise _unknown(name, reg)
        args = []
        for a in node.args:
            if isinstance(a, ast.Starred):
                raise SpecError(f"'*' arguments are not allowed in the architecture spec (in {name})")
            args.append(_from_node(a, reg, True, name))
        kwargs = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise SpecError(f"'**' arguments are not allowed in the architecture spec (in {name})")
            kwargs[kw.arg] = _from_node(kw.value, reg, True, name)
        return _construct(name, args, kwargs, reg)
    if not allow_literal:
        raise SpecError(f"expected a layer such as Dense(512) or Relu in the architecture spec, got {where!r}")
    return _literal(node, where)


def _parse_text_item(item: str, reg: Mapping[str, Any]) -> Any:
    try:
        tree = ast.parse(item, mode="eval")
    except SyntaxError as exc:
        raise SpecError(f"cannot parse {item!r} in the architecture spec: {exc.msg}") from None
    return _from_node(tree.body, reg, False, item)


def _parse_text(text: str, reg: Mapping[str, Any]) -> list[Any]:
    return [_parse_text_item(item, reg) for item in _split_items(text)]


# ---- JSON / TOML forms ------------------------------------------------------------


def _from_obj(obj: Any, reg: Mapping[str, Any], where: str) -> Any:
    if isinstance(obj, str):
        return _parse_text_item(obj, reg)
    if isinstance(obj, Mapping):
        d = dict(obj)
        name = d.pop("type", None) or d.pop("layer", None)
        if not isinstance(name, str):
            raise SpecError(f"{where}: each layer table needs a string 'type' (e.g. \"Dense\"), got {obj!r}")
        args = d.pop("args", [])
        if not isinstance(args, list | tuple):
            raise SpecError(f"{where}: 'args' of {name} must be a list, got {args!r}")
        args = [_value(a, reg, f"{where}.{name}") for a in args]
        kwargs = {k: _value(v, reg, f"{where}.{name}") for k, v in d.items()}
        if name in _COMBINATORS:
            inner = kwargs.pop("layers", None)
            if inner is not None:
                args = list(args) + [_from_obj(o, reg, f"{where}.{name}") for o in inner]
        return _construct(name, list(args), kwargs, reg)
    raise SpecError(f"{where}: a layer must be a string like \"Relu\" or a table with a 'type', got {obj!r}")


def _value(v: Any, reg: Mapping[str, Any], where: str) -> Any:
    """An argument value from JSON/TOML: layers inside combinators, lists → tuples stay lists."""
    if isinstance(v, Mapping) and ("type" in v or "layer" in v):
        return _from_obj(v, reg, where)
    return v


def _layers_list(data: Any, fmt: str) -> list[Any]:
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        for key in ("layers", "layer", "arch", "architecture"):
            if key in data:
                val = data[key]
                if isinstance(val, str):
                    return [val]
                if isinstance(val, list):
                    return val
        raise SpecError(f"{fmt} spec must hold a 'layers' list (or [[layer]] tables), got keys {sorted(data)}")
    raise SpecError(f"{fmt} spec must be a list of layers or a table with 'layers', got {type(data).__name__}")


def _guess_format(text: str) -> str:
    s = text.lstrip()
    if s.startswith(("[", "{")) and not s.startswith("[["):
        try:
            json.loads(text)
            return "json"
        except json.JSONDecodeError:
            pass
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        return "text"
    return "toml" if isinstance(data, dict) and data else "text"


def parse_spec(text: str, format: str | None = None) -> Any:
    """Build an architecture from a SPEC string.

    Parameters
    ----------
    text : str
        The spec in text, JSON or TOML form (see module docstring).
    format : {"text", "json", "toml"}, optional
        Force a form; by default it is guessed (valid JSON → JSON, ``[[layer]]``
        tables → TOML, otherwise text).

    Returns
    -------
    ntkit.layers.Layer
        ``serial(...)`` of the layers (a single layer is returned as is).

    Raises
    ------
    SpecError
        Unparseable text, an unknown layer name (with suggestions), a
        non-literal argument or arguments the layer rejects.

    Examples
    --------
    >>> arch = parse_spec('[{"type": "FanOut", "args": [2]}, "parallel(Identity, Identity)", "FanInSum"]')
    >>> len(arch.layers)
    3
    """
    if not isinstance(text, str):
        raise TypeError(f"spec must be a string, got {type(text).__name__}")
    if len(text) > _MAX_SPEC_CHARS:
        raise SpecError(f"architecture spec is too long ({len(text)} characters > {_MAX_SPEC_CHARS})")
    if not text.strip():
        raise SpecError("architecture spec is empty; example: 'Dense(512); Relu; Dense(1)'")
    fmt = format or _guess_format(text)
    if fmt not in ("text", "json", "toml"):
        raise SpecError(f"format must be 'text', 'json' or 'toml', got {format!r}")
    reg = _registry()
    if fmt == "text":
        layers = _parse_text(text, reg)
    else:
        try:
            data = json.loads(text) if fmt == "json" else tomllib.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
            raise SpecError(f"invalid {fmt.upper()} in the architecture spec: {exc}") from None
        layers = [_from_obj(o, reg, f"layer {i}") for i, o in enumerate(_layers_list(data, fmt.upper()))]
    if not layers:
        raise SpecError("architecture spec has no layers; example: 'Dense(512); Relu; Dense(1)'")
    if len(layers) == 1:
        return layers[0]
    return reg["serial"](*layers)


def load_spec(source: str) -> Any:
    """Architecture from a SPEC file path (``.json``, ``.toml``, anything else = text) or an inline SPEC.

    Raises ``FileNotFoundError`` when ``source`` looks like a path
    (ends in ``.json``/``.toml``/``.txt``/``.spec``) but does not exist.

    Examples
    --------
    >>> type(load_spec("Identity")).__name__
    'Identity'
    """
    if not isinstance(source, str):
        raise TypeError(f"spec must be a string (inline spec or file path), got {type(source).__name__}")
    ext = os.path.splitext(source)[1].lower()
    looks_like_path = ext in (".json", ".toml", ".txt", ".spec") and "(" not in source and ";" not in source
    if os.path.isfile(source):
        with open(source, encoding="utf-8") as fh:
            text = fh.read(_MAX_SPEC_CHARS + 1)
        fmt = {".json": "json", ".toml": "toml"}.get(ext)
        return parse_spec(text, fmt)
    if looks_like_path:
        raise FileNotFoundError(f"architecture spec file not found: {source}")
    return parse_spec(source)
