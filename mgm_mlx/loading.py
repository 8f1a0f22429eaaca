"""Reading MGM checkpoints: a local folder or a Hugging Face repo id, released or converted.

`load` returns (model, processor). Weights stay memory-mapped (mx.load) until used, so peak
memory stays near the size of the weights.
"""

import json
import re
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from .model import Model
from .prompt import Processor
from .vision import MGMVision, load_strict

# What a download fetches: no training_args.bin, no optimizer state.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "tokenizer.model", "*.jinja", "*.txt"]
REPO_ID = re.compile(r"^[\w.-]+/[\w.-]+$")


def resolve(path_or_repo) -> Path:
    """A local folder as it is; a repo id through huggingface_hub (cached, with progress)."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is a file; pass the model folder")
        return path
    if not REPO_ID.match(str(path_or_repo)):
        raise FileNotFoundError(f"model folder not found: {path}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_repo), allow_patterns=ALLOW_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated repo, ...
        reason = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0][:160]
        raise FileNotFoundError(
            f"cannot download {path_or_repo} ({reason}); without network, pass a local folder"
        ) from None


def load_config(path) -> dict:
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model folder not found: {path}")
    file = path / "config.json"
    if not file.exists():
        raise FileNotFoundError(f"{path} has no config.json")
    config = _read_json(file)
    if not isinstance(config, dict):
        raise ValueError(f"{file} does not hold a JSON object")
    return config


def _read_json(file: Path):
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {file} ({e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from None


def read_tensors(file: Path) -> dict:
    """One weight file: safetensors through mx.load; a pickle only via torch.load(weights_only)."""
    if file.suffix == ".safetensors":
        try:
            return mx.load(str(file))
        except Exception as e:
            raise ValueError(f"cannot read {file.name}: it is truncated or not safetensors ({e})") from None
    try:
        import torch
    except ImportError:
        raise ValueError(f"{file.name} is a PyTorch pickle; install torch to read it, or use safetensors") from None
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read {file.name} ({e})") from None
    dtypes = {torch.bfloat16: mx.bfloat16, torch.float16: mx.float16}
    return {k: mx.array(v.float().numpy()).astype(dtypes.get(v.dtype, mx.float32)) for k, v in state.items()}


def weight_files(path) -> list:
    """Shards named by the index, else every *.safetensors, else the pickle shards."""
    path = Path(path)
    for index, pattern in (("model.safetensors.index.json", "*.safetensors"), ("pytorch_model.bin.index.json", "pytorch_model*.bin")):
        if (path / index).exists():
            weight_map = _read_json(path / index)
            if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
                raise ValueError(f"{path / index} has no weight_map")
            names = sorted(set(weight_map["weight_map"].values()))
            missing = [n for n in names if not (path / n).exists()]
            if missing:
                raise FileNotFoundError(f"shard {missing[0]} named by {index} is missing in {path}")
            return [path / n for n in names]
        files = sorted(path.glob(pattern))
        if files:
            return files
    raise FileNotFoundError(f"no weights (*.safetensors) in {path}")


def load_weights(path) -> dict:
    weights = {}
    for f in weight_files(path):
        weights.update(read_tensors(f))
    return weights


def _tower_file(folder: Path, names) -> Path:
    for name in names:
        if (folder / name).exists():
            return folder / name
    raise FileNotFoundError(f"{folder} has none of {', '.join(names)}")


def tower_weights(vision_tower=None, vision_tower_aux=None):
    """Tower weights from their own folders, renamed to the released MGM layout.

    vision_tower: openai/clip-vit-large-patch14-336 in HF format (`vision_model.*`).
    vision_tower_aux: laion/CLIP-convnext_large_d_320... in OpenCLIP format (`visual.trunk.*`).
    Returns (weights, CLIP config overrides from the tower's config.json).
    """
    weights, overrides = {}, {}
    if vision_tower:
        folder = resolve(vision_tower)
        raw = read_tensors(_tower_file(folder, ["model.safetensors", "pytorch_model.bin"]))
        weights.update({"model.vision_tower.vision_tower." + k: v for k, v in raw.items() if k.startswith("vision_model.")})
        if (folder / "config.json").exists():
            cfg = _read_json(folder / "config.json")
            cfg = cfg.get("vision_config", cfg) if isinstance(cfg, dict) else {}
            overrides = {k: cfg[k] for k in ("num_attention_heads", "hidden_act", "layer_norm_eps") if k in cfg}
    if vision_tower_aux:
        folder = resolve(vision_tower_aux)
        raw = read_tensors(_tower_file(folder, ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]))
        for k, v in raw.items():
            for src, dst in (("visual.trunk.stem.", "vision_stem."), ("visual.trunk.stages.", "vision_stages.")):
                if k.startswith(src):
                    weights["model.vision_tower_aux." + dst + k[len(src) :]] = v
    return weights, overrides


def load(
    path_or_repo,
    dtype=None,
    vision_dtype=None,
    quantize_bits: int | None = None,
    group_size: int = 64,
    vision_tower=None,
    vision_tower_aux=None,
    template: str | None = None,
    lazy: bool = False,
):
    """Load a released MGM checkpoint or a converted mgm-mlx folder -> (model, processor).

    dtype / vision_dtype cast the LLM / image path (default: as stored; float32 on a CPU
    device, where half precision is emulated and MLX's MoE kernel is float32-only). quantize_bits
    quantizes the LLM in memory, for Macs that cannot hold it in 16 bits. Tower weights
    missing from the checkpoint come from vision_tower / vision_tower_aux.
    """
    path = resolve(path_or_repo)
    config = load_config(path)
    stored = config.get("quantization")
    if quantize_bits and stored and stored["bits"] != quantize_bits:  # say so before loading anything
        raise ValueError(f"{path} is already quantized to {stored['bits']} bits")
    weights = load_weights(path)
    extra, overrides = tower_weights(
        vision_tower if not _has(weights, "vision_tower.vision_tower.", "vision.vision_tower.") else None,
        vision_tower_aux if not _has(weights, "vision_tower_aux.", "vision.vision_tower_aux.") else None,
    )
    weights.update(extra)
    if overrides:
        config = {**config, "mm_vision_config": {**config.get("mm_vision_config", {}), **overrides}}
    cast_first = dtype is not None  # asked for: quantize from that dtype (as convert --dtype does)
    if mx.default_device().type == mx.cpu:
        dtype = dtype or mx.float32
        vision_dtype = vision_dtype or mx.float32
    model = Model.from_weights(config, weights)
    weights = model.sanitize(weights)
    if "quantization" in config:
        q = config["quantization"]
        model.quantize(q["group_size"], q["bits"], weights=weights)
    if quantize_bits and not stored and not cast_first:
        # quantize from the stored dtype (as convert does by default): the CPU's float32 copy
        # of the whole LLM first would need 4 bytes a weight (27 GB for a 7B), thrown away after
        model.load(weights, dtype=None, vision_dtype=vision_dtype)
        model.quantize(group_size, quantize_bits)
        if dtype is not None:  # norms, scales and biases (on a CPU: float32, the fast kernels)
            model.language_model.apply(lambda x: x.astype(dtype) if mx.issubdtype(x.dtype, mx.floating) else x)
    else:
        model.load(weights, dtype=dtype, vision_dtype=vision_dtype)
        if quantize_bits and not stored:
            model.quantize(group_size, quantize_bits)
    del weights, extra  # the model holds all it needs: each source tensor goes once used
    if not lazy:
        for _, value in tree_flatten(model.parameters()):  # one at a time keeps the peak low
            mx.eval(value)
    return model, Processor.from_folder(path, config, model.vision.args.image_size_aux, template)


def _has(weights: dict, *infixes) -> bool:
    return any(infix in k for k in weights for infix in infixes)


def vision_from_weights(config: dict, weights: dict, dtype=None) -> MGMVision:
    """Only the image path, from a config dict and raw (or sanitized) weights."""
    model = MGMVision.from_weights(config, weights)
    weights = model.sanitize(weights)
    if dtype is not None:
        weights = {k: v.astype(dtype) for k, v in weights.items()}
    load_strict(model, weights)
    mx.eval(model.parameters())
    return model


def load_vision(path, dtype=None) -> MGMVision:
    """The image path (towers, mining, projector) of an MGM checkpoint folder."""
    return vision_from_weights(load_config(path), load_weights(path), dtype)
