"""Make diffusionkit 0.5.1 (frozen upstream, written for mlx 0.17) run on today's MLX.

Everything that touches diffusionkit's internals lives here and is applied once, by `apply()`:
- stub modules for the three names `diffusionkit.mlx` imports from argmaxtools (and
  `diffusionkit.utils`, which imports torch), only when the real ones are absent;
- inside diffusionkit only (its module globals named `mx`), `mx.fast.scaled_dot_product_attention`
  drops the removed `memory_efficient_threshold` argument, `mx.metal.device_info()` has the
  `memory_size` the T5 encoder reads (the CPU backend lacks it), and the deprecated
  `mx.metal.*` memory functions go to their `mx.*` replacements;
- diffusionkit's MMDiT, CLIP text model and T5 encoder take checkpoint tensors they have no
  parameter for (BFL's k bias, `position_ids`) the way mlx 0.17 did: ignored, and logged.
mlx.core, mlx.nn and mlx-lm are left untouched. `steps(report)` swaps the sampler's tqdm bar
for a callback while one picture is drawn. See ../shared/reference/diffusionkit.md.
"""

import contextlib
import importlib.util
import logging
import os
import sys
import time
import types

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten

VERSION = "0.5.1"  # the patches rely on this version's internals
log = logging.getLogger("mgm_mlx.diffusionkit")
_applied = False


def _stub(name: str, **attrs):
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    sys.modules[name] = module
    return module


def _absent(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is None
    except (ImportError, ValueError):
        return True


def install_stubs():
    """Stand-ins for what diffusionkit.mlx imports from its PyTorch/Core ML tool chain."""
    real_tools = not _absent("argmaxtools")
    if not real_tools:
        _stub("argmaxtools", __path__=[])
        _stub("argmaxtools.utils", get_logger=logging.getLogger)
        _stub("argmaxtools.test_utils",
              # only used by generate_image(verbose=True), which we never pass
              AppleSiliconContextMixin=type("AppleSiliconContextMixin", (), {}),
              InferenceContextSpec=type("InferenceContextSpec", (), {}))
    if not real_tools or _absent("torch"):  # the real diffusionkit.utils imports both
        import diffusionkit

        diffusionkit.utils = _stub("diffusionkit.utils", bytes2gigabytes=lambda n: n / 1024**3)


class _Proxy:
    """A module look-alike: the given attributes replaced, everything else from `target`."""

    def __init__(self, target, **overrides):
        self.__dict__.update(overrides)
        self._target = target

    def __getattr__(self, name):
        return getattr(self._target, name)


def _sdpa(*args, memory_efficient_threshold=None, **kwargs):
    return mx.fast.scaled_dot_product_attention(*args, **kwargs)


def _device_info():
    info = dict(mx.device_info())
    if "memory_size" not in info:  # the CPU backend: total RAM
        info["memory_size"] = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return info


EXPECTED_EXTRA = ("attn.k_proj.bias", "position_ids")  # BFL's fused-qkv k bias; an old CLIP buffer


def _lenient_update(self, parameters: dict, strict: bool = True):
    ours = dict(tree_flatten(self.parameters()))
    extra = [k for k, _ in tree_flatten(parameters) if k not in ours]
    odd = [k for k in extra if not k.endswith(EXPECTED_EXTRA)]
    if odd:  # not seen in the layouts we know: worth a look
        log.warning("%s: ignored %d unexpected checkpoint tensors: %s", type(self).__name__, len(odd), ", ".join(odd[:8]))
    if len(extra) > len(odd):
        log.info("%s: ignored %d known extra tensors", type(self).__name__, len(extra) - len(odd))
    return nn.Module.update(self, parameters, strict=False)


def apply():
    """Stub what is absent, import diffusionkit.mlx and patch it; idempotent."""
    global _applied
    if _applied:
        return
    from importlib.metadata import PackageNotFoundError, version

    try:
        found = version("diffusionkit")
    except PackageNotFoundError:
        raise ImportError("diffusionkit is not installed") from None
    if not found.startswith("0.5."):
        raise ImportError(f"diffusionkit {found} is installed, these patches are for {VERSION}")
    install_stubs()
    from diffusionkit import mlx as dk
    from diffusionkit.mlx import clip, mmdit, t5

    metal = _Proxy(
        mx.metal,
        device_info=_device_info,
        get_peak_memory=mx.get_peak_memory,
        get_active_memory=mx.get_active_memory,
        reset_peak_memory=lambda: None,  # the caller measures the whole picture (and mlx-lm its reply)
        set_memory_limit=mx.set_memory_limit,
    )
    proxy = _Proxy(mx, fast=_Proxy(mx.fast, scaled_dot_product_attention=_sdpa), metal=metal)
    for module in (dk, mmdit, t5):
        module.mx = proxy
    # The CLIP tokenizers warn on every call where the (77-token) negative prompt is cut.
    logging.getLogger("diffusionkit.mlx.tokenizer").setLevel(logging.ERROR)
    for cls in (mmdit.MMDiT, clip.CLIPTextModel, t5.SD3T5Encoder):
        cls.update = _lenient_update
    _applied = True


class _Steps:
    """What diffusionkit's sample_euler uses of tqdm.trange: iteration and format_dict."""

    def __init__(self, total: int, report):
        self.total, self.report, self.start = total, report, time.perf_counter()

    @property
    def format_dict(self):
        return {"elapsed": time.perf_counter() - self.start}

    def __iter__(self):
        for i in range(self.total):
            yield i
            self.report(i + 1, self.total)  # step i is done once the sampler asks for the next


@contextlib.contextmanager
def steps(report):
    """While drawing one picture: report(step, total) after each denoising step, no tqdm bar.
    sample_euler imports tqdm.trange when it runs; the caller holds the pipeline lock."""
    import tqdm

    original = tqdm.trange
    tqdm.trange = lambda n, *args, **kwargs: _Steps(n, report)
    try:
        yield
    finally:
        tqdm.trange = original
