"""Reading MGM checkpoint folders: config.json and (sharded) safetensors."""

import json
from pathlib import Path

import mlx.core as mx

from .vision import MGMVision


def load_config(path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    try:
        return json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} has no config.json") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path / 'config.json'} is not valid JSON ({e})") from None


def weight_files(path) -> list:
    """Shards named by model.safetensors.index.json, else every *.safetensors in the folder."""
    path = Path(path)
    index = path / "model.safetensors.index.json"
    if index.exists():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (path / n).exists()]
        if missing:
            raise FileNotFoundError(f"shard {missing[0]} named by {index.name} is missing in {path}")
        return [path / n for n in names]
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {path}")
    return files


def load_weights(path) -> dict:
    """All tensors of a checkpoint folder; mx.load memory-maps, so nothing is read until used."""
    weights = {}
    for f in weight_files(path):
        try:
            weights.update(mx.load(str(f)))
        except Exception as e:
            raise ValueError(f"cannot read {f.name}: it is truncated or not safetensors ({e})") from None
    return weights


def vision_from_weights(config: dict, weights: dict, dtype=None) -> MGMVision:
    """Build the image path from a config dict and raw (or sanitized) weights."""
    model = MGMVision.from_weights(config, weights)
    weights = model.sanitize(weights)
    if dtype is not None:
        weights = {k: v.astype(dtype) for k, v in weights.items()}
    model.load_weights(list(weights.items()), strict=True)
    mx.eval(model.parameters())
    return model


def load_vision(path, dtype=None) -> MGMVision:
    """The image path (towers, mining, projector) of an MGM checkpoint folder."""
    return vision_from_weights(load_config(path), load_weights(path), dtype)
