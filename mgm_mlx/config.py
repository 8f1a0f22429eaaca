"""Checking config.json values before anything is built from them.

A config is data from a file: each field is checked against the type its dataclass declares
(mlx-lm's ModelArgs, VisionArgs, ...), sizes must be positive, and the sizes that decide how
much gets built (layers, vocabulary, widths) must agree with the weights' shapes. Every
problem is one line that names the field.
"""

import math
import types
import typing
from dataclasses import MISSING, fields

# Fields that count or size something: whole numbers of at least 1.
SIZES = {
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "head_dim", "num_local_experts", "num_experts_per_tok", "max_position_embeddings",
    "image_size_aux", "image_grid", "tokenizer_model_max_length", "mm_hidden_size", "mm_hidden_size_aux",
    "image_size", "patch_size", "num_channels", "in_channels", "stem_size", "sliding_window",
}
# Upper bounds where a larger value only costs memory (the weights bound the rest).
LIMITS = {"image_size_aux": 4096, "image_grid": 4, "tokenizer_model_max_length": 1 << 20}


def matches(value, hint, depth: int = 0) -> bool:
    """Does a JSON value fit a type annotation (int, float, str, bool, Optional, List, Dict)?"""
    if depth > 8:
        return False
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):  # Optional[int], int | None
        return any(matches(value, a, depth + 1) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:  # JSON writes 10000.0 as 10000
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple) or hint in (list, tuple):
        return isinstance(value, list) and all(matches(v, args[0], depth + 1) for v in value) if args else isinstance(value, list)
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            return False
        return all(matches(v, args[1], depth + 1) for v in value.values()) if args else True
    return True  # a type JSON cannot hold; the dataclass decides


def checked(cls, config: dict, where: str = "config", strict: bool = False) -> dict:
    """The entries of `config` that are fields of dataclass `cls`, each of its declared type.

    strict: a key that is not a field is an error (a section that only this package writes).
    A null for a field with a default means the default."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls)}
    if strict:
        unknown = sorted(set(config) - set(known))
        if unknown:
            raise ValueError(f"{where} has unknown field {unknown[0]!r} (known: {', '.join(sorted(known))})")
    out = {}
    for name, f in known.items():
        if name not in config:
            continue
        value = config[name]
        has_default = f.default is not MISSING or f.default_factory is not MISSING
        if value is None and has_default:
            continue
        if not matches(value, hints.get(name, typing.Any)):
            kind = getattr(hints.get(name), "__name__", None) or str(hints.get(name)).replace("typing.", "")
            raise ValueError(f"{where} {name}={_show(value)} should be {kind}")
        check_value(name, value, where)
        out[name] = value
    return out


def check_value(name: str, value, where: str = "config"):
    if name in SIZES and isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"{where} {name}={value} must be at least 1")
        if value > LIMITS.get(name, 1 << 31):
            raise ValueError(f"{where} {name}={value} is too large (at most {LIMITS.get(name, 1 << 31)})")


def expect(config: dict, name: str, actual: int, what: str, where: str = "config"):
    """A config size must equal what the weights have."""
    if config.get(name) is not None and config[name] != actual:
        raise ValueError(f"{where} {name}={_show(config[name])} but the weights have {actual} ({what})")


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
