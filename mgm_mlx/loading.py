"""Reading MGM checkpoints: a local folder or a Hugging Face repo id, released or converted.

`load` returns (model, processor). Weights stay memory-mapped (mx.load) until used, so peak
memory stays near the size of the weights.
"""

import json
import re
import stat
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from . import language
from .model import Model, load_strict, part, sanitize
from .processor import Processor
from .prompt import TOKENIZER_FILES
from .vision import REQUIRED, MGMVision, MissingPart

WEIGHT_INDEX = "model.safetensors.index.json"
# What a download fetches: exactly what the loader reads. No code (*.py), no pickles
# (*.bin, *.pt), no training state.
ALLOW_PATTERNS = ["config.json", WEIGHT_INDEX, "*.safetensors", *TOKENIZER_FILES]
MAX_JSON_BYTES = 64 << 20  # a config or an index is kilobytes; tokenizer.json a few MB
# torch.load(weights_only=True) can be bypassed before 2.6 (CVE-2025-32434).
MIN_TORCH = (2, 6)


def resolve(path_or_repo) -> Path:
    """A local folder as it is; a repo id through huggingface_hub (cached, with progress)."""
    path = Path(path_or_repo).expanduser()
    if path.exists():
        if not path.is_dir():
            raise FileNotFoundError(f"{path} is a file; pass the model folder")
        return path
    if not is_repo_id(path_or_repo):
        raise FileNotFoundError(f"model folder not found: {path}")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(str(path_or_repo), allow_patterns=ALLOW_PATTERNS))
    except Exception as e:  # offline, unknown repo, gated repo, ...
        reason = (str(e).splitlines() or [type(e).__name__])[0].split(". ")[0][:160]
        raise FileNotFoundError(
            f"cannot download {path_or_repo} ({reason}); without network, pass a local folder"
        ) from None


def is_repo_id(text) -> bool:
    """"owner/name" as the Hugging Face hub spells repo ids (huggingface_hub's own check)."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(text))
    except HFValidationError:
        return False
    return "/" in str(text)


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
    file = model_file(file.parent, file.name)
    if file.stat().st_size > MAX_JSON_BYTES:
        raise ValueError(f"{file} is too large for a JSON settings file")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read {file} ({e.__class__.__name__})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{file} is not valid JSON ({e})") from None
    except RecursionError:
        raise ValueError(f"{file} is nested too deeply to be a settings file") from None


def model_file(folder: Path, name: str) -> Path:
    """`name` in `folder` as a regular file that stays inside the folder, else one clear line.

    Names read from files (an index) must be plain names; a symlink may point only inside
    the folder or, in a Hugging Face cache snapshot, into that repo's blobs/. FIFOs and
    devices are refused (reading a FIFO would wait forever)."""
    if not name or name != Path(name).name or name in (".", ".."):
        raise ValueError(f"{folder} names the file {name!r}; only plain file names inside the folder are read")
    path = folder / name
    real = path.resolve()
    roots = [folder.resolve()]
    if folder.parent.name == "snapshots":  # huggingface_hub links snapshot files to ../../blobs/
        roots.append(folder.parent.parent.resolve() / "blobs")
    if not any(real.is_relative_to(root) for root in roots):
        raise ValueError(f"{path} links outside the model folder; refusing to read it (link the whole folder instead)")
    try:
        mode = real.stat().st_mode
    except OSError:
        raise FileNotFoundError(f"{name} is missing in {folder}") from None  # or a dangling link
    if not stat.S_ISREG(mode):
        raise ValueError(f"{path} is not a regular file")
    return path


def read_tensors(file: Path) -> dict:
    """One weight file: safetensors through mx.load; a pickle only via torch.load(weights_only)."""
    file = model_file(file.parent, file.name)
    if file.suffix == ".safetensors":
        try:
            return mx.load(str(file))
        except Exception as e:
            raise ValueError(f"cannot read {file.name}: it is truncated or not safetensors ({e})") from None
    how = ("convert it to safetensors first (in Python with torch: "
           "safetensors.torch.save_file(torch.load(f, weights_only=True), 'model.safetensors'))")
    try:
        import torch
    except ImportError:
        raise ValueError(f"{file.name} is a PyTorch pickle; install torch>=2.6 to read it, or {how}") from None
    if _version(torch.__version__) < MIN_TORCH:
        raise ValueError(f"{file.name} is a PyTorch pickle and torch {torch.__version__} cannot read one safely "
                         f"(2.6 or later can); upgrade torch or {how}")
    try:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"cannot read {file.name} ({e})") from None
    dtypes = {torch.bfloat16: mx.bfloat16, torch.float16: mx.float16}
    return {k: mx.array(v.float().numpy()).astype(dtypes.get(v.dtype, mx.float32)) for k, v in state.items()}


def _version(text: str) -> tuple:
    return tuple(int(m.group()) if (m := re.match(r"\d+", p)) else 0 for p in text.split(".")[:2])


def weight_files(path) -> list:
    """The safetensors shards named by the index, else every *.safetensors; PyTorch pickles
    (pytorch_model*.bin) only when the folder has no safetensors at all."""
    path = Path(path)
    if (path / WEIGHT_INDEX).exists():
        weight_map = _read_json(path / WEIGHT_INDEX)
        if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
            raise ValueError(f"{path / WEIGHT_INDEX} has no weight_map")
        names = sorted({str(n) for n in weight_map["weight_map"].values()})
        for name in names:
            if not name.endswith(".safetensors"):
                raise ValueError(f"{WEIGHT_INDEX} in {path} names {name!r}; only .safetensors files are read")
        return [model_file(path, name) for name in names]
    for pattern in ("*.safetensors", "pytorch_model*.bin"):
        files = sorted(path.glob(pattern))
        if files:
            return [model_file(path, f.name) for f in files]
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


# Where a part of the image path can come from when a checkpoint lacks it.
HINTS = {
    "CLIP": " (model.vision_tower.vision_tower.*); give its folder with --vision-tower",
    "ConvNeXt": " (model.vision_tower_aux.*); give its folder with --vision-tower-aux",
    "patch info mining": " (model.vlm_uni_*)",
}


def add_towers(weights: dict, config: dict, vision_tower=None, vision_tower_aux=None) -> dict:
    """Tower weights a checkpoint lacks, from the towers' own folders (or repo ids), added to
    the sanitized `weights`; returns the config with CLIP settings from the tower's config.json.

    vision_tower: openai/clip-vit-large-patch14-336 in HF format (`vision_model.*`).
    vision_tower_aux: laion/CLIP-convnext_large_d_320... in OpenCLIP format (`visual.trunk.*`).
    """
    if vision_tower and REQUIRED["CLIP"] not in part(weights, "vision."):
        folder = resolve(vision_tower)
        weights.update(sanitize(read_tensors(_tower_file(folder, ["model.safetensors", "pytorch_model.bin"]))))
        if (folder / "config.json").exists():
            cfg = _read_json(folder / "config.json")
            cfg = cfg.get("vision_config", cfg) if isinstance(cfg, dict) else {}
            overrides = {k: cfg[k] for k in ("num_attention_heads", "hidden_act", "layer_norm_eps") if k in cfg}
            config = {**config, "mm_vision_config": {**(config.get("mm_vision_config") or {}), **overrides}}
    if vision_tower_aux and REQUIRED["ConvNeXt"] not in part(weights, "vision."):
        folder = resolve(vision_tower_aux)
        weights.update(sanitize(read_tensors(_tower_file(folder, ["open_clip_model.safetensors",
                                                                  "open_clip_pytorch_model.bin"]))))
    return config


def build_vision(config: dict, weights: dict) -> MGMVision:
    """The image path for sanitized weights; a missing part says where to get it."""
    try:
        return MGMVision.from_weights(config, part(weights, "vision."))
    except MissingPart as e:
        raise ValueError(f"{e}{HINTS[e.part]}") from None


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
    progress: bool = False,
    group=None,
):
    """Load a released MGM checkpoint or a converted mgm-mlx folder -> (model, processor).

    read -> check the config against the shapes -> sanitize (once) -> build -> quantize ->
    strict load. dtype / vision_dtype cast the LLM / image path (default: as stored; float32
    on a CPU device, where half precision is emulated and MLX's MoE kernel is float32-only).
    quantize_bits quantizes the LLM in memory, for Macs that cannot hold it in 16 bits.
    Tower weights missing from the checkpoint come from vision_tower / vision_tower_aux.
    progress shows a bar on stderr while the weights are read (the commands pass it on a
    terminal; a large model takes a while). group (mx.distributed.init() under mlx.launch)
    splits the model across its ranks before any weight is read (distributed.py).
    """
    path = resolve(path_or_repo)
    config = load_config(path)
    stored = check_quantization(config.get("quantization"))
    if quantize_bits and stored and stored["bits"] != quantize_bits:  # say so before loading anything
        raise ValueError(f"{path} is already quantized to {stored['bits']} bits")
    raw = load_weights(path)  # lazy: shapes from the file headers, data when used
    try:  # before anything is built
        language.check(config, {k.removeprefix("language_model."): v.shape for k, v in raw.items()})
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    weights = sanitize(raw)
    del raw
    config = add_towers(weights, config, vision_tower, vision_tower_aux)
    model = Model(config, build_vision(config, weights), language.build(config))
    weights = model.sanitize(weights)
    cast_first = dtype is not None  # asked for: quantize from that dtype (as convert --dtype does)
    if mx.default_device().type == mx.cpu:
        dtype = dtype or mx.float32
        vision_dtype = vision_dtype or mx.float32
    if stored:
        model.quantize_as_stored(weights)
    if quantize_bits and not stored and not cast_first:
        # quantize from the stored dtype (as convert does by default): the CPU's float32 copy
        # of the whole LLM first would need 4 bytes a weight (27 GB for a 7B), thrown away after
        model.load_checked(weights, dtype=None, vision_dtype=vision_dtype)
        model.quantize(group_size, quantize_bits)
        if dtype is not None:  # norms, scales and biases (on a CPU: float32, the fast kernels)
            model.language_model.apply(lambda x: x.astype(dtype) if mx.issubdtype(x.dtype, mx.floating) else x)
    else:
        model.load_checked(weights, dtype=dtype, vision_dtype=vision_dtype)
        if quantize_bits and not stored:
            model.quantize(group_size, quantize_bits)
    del weights  # the model holds all it needs: each source tensor goes once used
    if group is not None and group.size() > 1:  # split before any weight is read
        from . import distributed

        distributed.prepare(model, group, path, model.config)
    if not lazy:
        evaluate(model, "Loading" if progress else None)
        if group is not None and group.size() > 1:
            distributed.barrier(group)
    return model, Processor.from_folder(path, model.config, model.vision.args.image_size_aux, template)


def check_quantization(q) -> dict | None:
    """config["quantization"] as mlx-lm writes it: {"group_size": int, "bits": int, "mode": ...},
    plus per-layer entries of the same form (mixed precision)."""
    if q is None:
        return None
    entries = [q] + [v for v in q.values() if isinstance(v, dict)] if isinstance(q, dict) else [q]
    for entry in entries:
        if not isinstance(entry, dict) or not all(
                isinstance(entry.get(k), int) and not isinstance(entry.get(k), bool) for k in ("bits", "group_size")):
            raise ValueError(f"config quantization={q!r:.60} should be an object with integer bits and group_size")
        if entry["bits"] not in (2, 3, 4, 5, 6, 8) or entry["group_size"] not in (16, 32, 64, 128):
            raise ValueError(f"config quantization has bits={entry['bits']}, group_size={entry['group_size']}; "
                             "MLX quantizes to 2-8 bits in groups of 16, 32, 64 or 128")
    return q


def evaluate(model, progress: str | None = None, leave: bool = False):
    """Evaluate the parameters one at a time (keeps the peak low) and refuse NaN or infinite
    values by name: a broken checkpoint would otherwise answer <unk><unk>... and exit 0.

    progress: a label for a bar on stderr that counts the bytes evaluated so far (the size
    of the model in memory, or of convert's output); huggingface_hub's tqdm, so
    HF_HUB_DISABLE_PROGRESS_BARS=1 turns it off with the download bars. leave: keep the
    finished bar on screen."""
    params = tree_flatten(model.parameters())
    bar = None
    if progress:
        from huggingface_hub.utils import tqdm

        bar = tqdm(total=sum(v.nbytes for _, v in params), desc=progress, unit="B", unit_scale=True,
                   leave=leave, dynamic_ncols=True)
    try:
        for name, value in params:
            if mx.issubdtype(value.dtype, mx.floating):
                finite = mx.all(mx.isfinite(value))
                mx.eval(value, finite)
                if not finite.item():
                    raise ValueError(f"the weights hold NaN or infinite values ({name})")
            else:
                mx.eval(value)
            if bar is not None:
                bar.update(value.nbytes)
    finally:
        if bar is not None:
            bar.close()


def vision_from_weights(config: dict, weights: dict, dtype=None) -> MGMVision:
    """Only the image path, from a config dict and weights in any layout."""
    weights = sanitize(weights)
    model = build_vision(config, weights)
    weights = part(weights, "vision.")
    if dtype is not None:
        weights = {k: v.astype(dtype) for k, v in weights.items()}
    load_strict(model, weights)
    mx.eval(model.parameters())
    return model


def load_vision(path, dtype=None) -> MGMVision:
    """The image path (towers, mining, projector) of an MGM checkpoint folder."""
    return vision_from_weights(load_config(path), load_weights(path), dtype)
