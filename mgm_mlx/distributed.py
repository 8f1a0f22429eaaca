"""Running one MGM model split across several processes or Macs (MLX's `mx.distributed`,
started with `mlx.launch`): tensor parallelism for the LLM, the image path's two towers on
ranks 0 and 1.

    mlx.launch --hostfile hosts.json -- python -m mgm_mlx.generate --model mgm-34b-hd ...

- The LLM: every linear layer of attention and MLP is split as mlx-lm splits llama (q/k/v and
  gate/up "all-to-sharded", o and down "sharded-to-all", heads divided by the group size);
  the `shard()` methods are in language.py. Key/value heads that do not divide by the group
  size are kept whole (replicated) on the ranks that read them. Embeddings and the output
  layer stay whole on every rank: logits need no gathering, and they are 1-4 % of an MGM
  LLM's weights (see the README).
- Loading: `load(..., group=group)` builds the model lazily, shards it, then evaluates one
  parameter at a time, so a rank reads each tensor once and keeps only its slice.
- The image path (SplitVision): rank 0 reads the image and runs CLIP while rank 1 runs
  ConvNeXt, then mining and the projector; each holds only its part's weights, and the
  tokens reach every rank in the LLM's dtype, so every rank feeds the LLM identical inputs.
  Measured against all of it on rank 0 (SharedVision) and every rank running all of it in
  benchmarks/distributed.py: the fastest or tied at full size, the least memory on any rank,
  and on two machines the towers run at the same time (the README has the figures).
- Sampling: every rank takes rank 0's token, so all stop on the same step.
- Before sharding, the ranks compare hashes of the config, the weight files, the tokenizer
  and the versions of mgm-mlx / mlx / mlx-lm; on any difference every rank raises
  `RanksDisagree` (the CLI prints one line on rank 0 and every rank exits 1).
"""

import hashlib
import json
import socket
import time
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
from mlx.nn.layers.distributed import QuantizedAllToShardedLinear, QuantizedShardedToAllLinear
from mlx.utils import tree_flatten
from PIL import Image

from . import linux_cpu

HASHED = ("config", "weights", "tokenizer", "versions")
HOST_BYTES = 64
# What ranks > 0 pass for an image: only rank 0 reads it (its pixels go to rank 1).
PLACEHOLDER = Image.new("RGB", (1, 1))


class RanksDisagree(ValueError):
    """The ranks loaded different models or run different versions (raised on every rank)."""


class PeerLost(ValueError):
    """A collective failed: another rank stopped (its own message says why)."""

    def __init__(self, error: Exception):
        super().__init__(f"another rank stopped, see its message ({error})")


def init():
    """The group that `mlx.launch` started, or None when this is a single process."""
    group = mx.distributed.init()
    return group if group.size() > 1 else None


def rank(group=None) -> int:
    return group.rank() if group is not None else 0


def prepare(model, group, path: Path, config: dict, vision: str = "split"):
    """Called by `load(..., group=group)` on the lazily built model, before any weight is
    read: check that the ranks agree, shard the LLM, split the image path (vision: "split",
    "rank0", or "every" for each rank running all of it)."""
    agree(group, fingerprints(model, path, config))
    check_shardable(config, group.size(), config.get("quantization") or _quantization(model))
    model.language_model.shard(group)
    route_quantized_prefill(model.language_model)
    if vision in VISION:  # else ("every") each rank runs all of it
        model.vision = VISION[vision](model.vision, group, model.language_model.model.norm.weight.dtype,
                                      config["hidden_size"])
    model.group = group


def barrier(group):
    """Wait for every rank (after loading: a slow disk on one Mac is not a hang later)."""
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))


def finish(group):
    """Before a clean exit: let the work in flight finish on this rank (mlx-lm computes one
    token ahead, collectives included), then wait for every rank, so that no rank closes its
    sockets while a peer is still exchanging. A precaution: once, at the end of an MGM-7B run
    here, rank 1 died at exit with SIGSEGV after writing its results."""
    if group is None:
        return
    from mlx_lm.generate import generation_stream

    mx.synchronize(generation_stream)
    mx.synchronize()
    barrier(group)


# ---- agreeing on the model


def fingerprints(model, path: Path, config: dict) -> dict:
    """One sha256 per thing the ranks must share. Weight files are hashed by name, size and
    their first and last MiB (the safetensors header and some data: cheap, and two different
    fine-tunes of one architecture differ there), plus every parameter's name, shape, dtype."""
    from importlib.metadata import version

    from . import __version__
    from .loading import weight_files
    from .prompt import TOKENIZER_FILES

    h = {k: hashlib.sha256() for k in HASHED}
    h["config"].update(json.dumps(config, sort_keys=True, default=str).encode())
    for file in weight_files(path):
        size = file.stat().st_size
        h["weights"].update(f"{file.name}:{size}:".encode())
        with open(file, "rb") as f:
            h["weights"].update(f.read(1 << 20))
            f.seek(max(size - (1 << 20), 0))
            h["weights"].update(f.read(1 << 20))
    for name, value in tree_flatten(model.parameters()):
        h["weights"].update(f"{name}:{value.shape}:{value.dtype};".encode())
    for name in TOKENIZER_FILES:
        if (path / name).is_file():
            h["tokenizer"].update(name.encode() + b":" + (path / name).read_bytes())
    h["versions"].update(f"mgm-mlx {__version__}, mlx {mx.__version__}, mlx-lm {version('mlx-lm')}".encode())
    return {k: v.digest() for k, v in h.items()}


def agree(group, digests: dict):
    """Every rank sends its digests (and host name); all compare against rank 0's."""
    host = socket.gethostname().encode()[:HOST_BYTES].ljust(HOST_BYTES, b"\0")
    mine = mx.array(list(b"".join(digests[k] for k in HASHED) + host), dtype=mx.uint8)
    rows = mx.distributed.all_gather(mine[None], group=group).tolist()
    size = 32 * len(HASHED)
    hosts = [bytes(r[size:]).rstrip(b"\0").decode(errors="replace") for r in rows]
    differ = []
    for r, row in enumerate(rows[1:], 1):
        parts = [k for i, k in enumerate(HASHED) if row[32 * i:32 * (i + 1)] != rows[0][32 * i:32 * (i + 1)]]
        if parts:
            differ.append(f"rank {r} ({hosts[r]}) has a different {', '.join(_WHAT[p] for p in parts)}")
    if differ:
        raise RanksDisagree(f"the ranks disagree with rank 0 ({hosts[0]}): {'; '.join(differ)}. "
                            "Give every Mac the same model folder and the same mgm-mlx, mlx and mlx-lm")


_WHAT = {"config": "config.json", "weights": "set of weights", "tokenizer": "tokenizer",
         "versions": "mgm-mlx, mlx or mlx-lm version"}


# ---- what can be split


def check_shardable(config: dict, n: int, quantization: dict | None = None):
    """One clear line when the LLM cannot be split across n ranks (before anything is sliced)."""
    problem = _unsplittable(config, n, quantization)
    if problem:
        fits = [k for k in range(2, 17) if not _unsplittable(config, k, quantization)]
        raise ValueError(f"this model cannot be split across {n} ranks: {problem}; "
                         f"it can be split across {', '.join(map(str, fits)) or 'no number of'} ranks")


def _unsplittable(config: dict, n: int, quantization: dict | None) -> str | None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    inner = config["intermediate_size"]
    group = (quantization or {}).get("group_size", 1)
    if heads % n:
        return f"its {heads} attention heads do not divide by {n}"
    if inner % n:
        return f"its intermediate size {inner} does not divide by {n}"
    for what, width in (("attention output", heads * head_dim), ("MLP", inner)):
        if width % (group * n):
            return f"the {width // group} quantization groups of its {what} rows do not divide by {n}"
    return None


def _quantization(model) -> dict | None:
    for _, m in model.language_model.named_modules():
        if isinstance(m, nn.QuantizedLinear):
            return {"group_size": m.group_size, "bits": m.bits}
    return None


# ---- the image path: its two towers on ranks 0 and 1, or all of it on rank 0


class SplitVision(nn.Module):
    """The image path over ranks 0 and 1: the towers need nothing from each other, so rank 0
    runs CLIP on the low-res views while rank 1 runs ConvNeXt; rank 1 then mines and
    projects, and every rank gets the tokens (in the LLM's dtype, as embedding them would
    cast them). Only rank 0 reads the image: its pixels go to rank 1 first. Each of the two
    holds only its part's weights; ranks > 1 hold none."""

    PARTS = {0: ("vision_tower",),
             1: ("vision_tower_aux", "vlm_uni_query_projector", "vlm_uni_aux_projector", "vlm_uni_val_projector",
                 "mm_projector")}

    def __init__(self, vision, group, dtype, hidden_size: int):
        super().__init__()
        self.group, self.args, self.num_tokens, self.dtype = group, vision.args, vision.num_tokens, dtype
        self.hidden_size = hidden_size
        c = vision.vision_tower.config
        self.views = vision.args.image_grid ** 2 + int(vision.args.image_global)
        self.clip_shape = ((c.image_size // c.patch_size) ** 2, c.hidden_size)
        self.clip_dtype = vision.vision_tower.vision_model.embeddings.patch_embedding.weight.dtype
        keep = self.PARTS.get(group.rank(), ())
        for name in [k for k in vision if k not in keep]:
            del vision[name]  # never read from disk
        if keep:
            self.inner = vision

    def __call__(self, pixels: mx.array, timings: dict | None = None) -> mx.array:
        # Every collective is evaluated where it stands: a rank whose result does not depend on
        # one (rank 0 on the CLIP features it sent) would otherwise skip it or run them out of order.
        rank, group = self.group.rank(), self.group
        b = pixels.shape[0]
        pixels = broadcast(pixels, group)
        mx.eval(pixels)
        tic = time.perf_counter()
        spent = [0.0, 0.0, 0.0]  # clip, convnext, mining: each measured where it runs
        if rank == 0:
            feats = self.inner.low_res(pixels)
        else:
            feats = mx.zeros((b * self.views, *self.clip_shape), self.clip_dtype)
            aux = self.inner.high_res(pixels).astype(self.clip_dtype) if rank == 1 else None
        if rank < 2:
            mx.eval(feats if rank == 0 else aux)
            spent[rank] = 1000 * (time.perf_counter() - tic)
        feats = broadcast(feats, group)
        mx.eval(feats)
        toc = time.perf_counter()
        if rank == 1:
            tokens = self.inner.mine(feats, aux).astype(self.dtype)
            mx.eval(tokens)
            spent[2] = 1000 * (time.perf_counter() - toc)
        else:
            tokens = mx.zeros((b, self.num_tokens, self.hidden_size), self.dtype)
        tokens = broadcast(tokens, group, root=1)
        mx.eval(tokens)
        if timings is not None:
            spent = mx.distributed.all_sum(mx.array(spent), group=group).tolist()
            for name, ms in zip(("clip", "convnext", "mining"), spent):
                timings[name] = timings.get(name, 0.0) + ms
            timings["wall"] = timings.get("wall", 0.0) + 1000 * (time.perf_counter() - tic)
        return tokens


class SharedVision(nn.Module):
    """All of the image path on rank 0, its tokens (cast to the LLM's dtype, as embedding
    them would) sent to every rank; the other ranks hold none of its weights and ignore the
    pixels they are given (a placeholder image is fine)."""

    def __init__(self, vision, group, dtype, hidden_size: int):
        super().__init__()
        self.group, self.args, self.num_tokens, self.dtype = group, vision.args, vision.num_tokens, dtype
        self.hidden_size = hidden_size
        if group.rank() == 0:
            self.inner = vision

    def __call__(self, pixels: mx.array, timings: dict | None = None) -> mx.array:
        shape = (pixels.shape[0], self.num_tokens, self.hidden_size)
        first = self.group.rank() == 0
        tokens = self.inner(pixels, timings=timings).astype(self.dtype) if first else mx.zeros(shape, self.dtype)
        tic = time.perf_counter()
        tokens = broadcast(tokens, self.group)
        if timings is not None:
            mx.eval(tokens)
            timings["share"] = timings.get("share", 0.0) + 1000 * (time.perf_counter() - tic)
        return tokens


VISION = {"split": SplitVision, "rank0": SharedVision}


def broadcast(x: mx.array, group, root: int = 0) -> mx.array:
    """`root`'s x on every rank (the others pass anything of the same shape and dtype)."""
    return mx.distributed.all_sum(x if group.rank() == root else mx.zeros_like(x), group=group)


def shared_key(model, key: str) -> str:
    """An image's cache key as rank 0 has it (the others only hold a placeholder image), so
    every rank agrees on running the image path or not."""
    group = getattr(model, "group", None)
    if group is None:
        return key
    digest = mx.array(list(bytes.fromhex(key)), dtype=mx.uint8)
    return bytes(broadcast(digest, group).tolist()).hex()


# ---- sampling


def shared_sampler(model, sampler):
    """The sampler, with rank 0's token used on every rank (unseeded sampling would differ)."""
    group = getattr(model, "group", None)
    if group is None:
        return sampler

    def sample(logprobs):
        return broadcast(sampler(logprobs), group)

    return sample


# ---- the Linux CPU prefill route for the sharded quantized layers (see linux_cpu.py)


def route_quantized_prefill(model) -> int:
    if not linux_cpu.enabled() or mx.default_device().type != mx.cpu:
        return 0
    n = 0
    for _, module in model.named_modules():
        routed = _ROUTED.get(type(module))
        if routed:
            module.__class__ = routed
            n += 1
    return n


def _prefill(layer, x):
    return x.astype(mx.float32) @ linux_cpu.dequantize(layer).T


class _AllToSharded(QuantizedAllToShardedLinear):
    def __call__(self, x):
        if x.size < linux_cpu.PREFILL_ROWS * x.shape[-1] or mx.default_device().type != mx.cpu:
            return super().__call__(x)
        y = _prefill(self, x)
        return (y + self["bias"] if "bias" in self else y).astype(x.dtype)


class _ShardedToAll(QuantizedShardedToAllLinear):
    def __call__(self, x):
        if x.size < linux_cpu.PREFILL_ROWS * x.shape[-1] or mx.default_device().type != mx.cpu:
            return super().__call__(x)
        y = mx.distributed.all_sum(_prefill(self, x), group=self.group)
        return (y + self["bias"] if "bias" in self else y).astype(x.dtype)


_ROUTED = {QuantizedAllToShardedLinear: _AllToSharded, QuantizedShardedToAllLinear: _ShardedToAll}


# ---- the command line


def error_line(error: Exception, group, same_everywhere: bool = False) -> str | int:
    """What a rank prints for an error before exiting 1: rank 0 the usual line; other ranks
    name themselves (a folder missing on one Mac), but say nothing about a disagreement,
    which rank 0 reports for all, nor about what every rank finds alike (bad arguments)."""
    if group is None or group.rank() == 0:
        return f"error: {error}"
    if same_everywhere or isinstance(error, RanksDisagree):
        return 1
    return f"error (rank {group.rank()}, {socket.gethostname()}): {error}"
