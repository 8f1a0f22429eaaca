import json

import mgm_mlx  # noqa: F401  (first: on Linux it may load OpenBLAS before mlx)
from mgm_mlx.loading import load_vision, load_weights, vision_from_weights

import mlx.core as mx
import numpy as np
import pytest

from common import GOLDENS, HD_FIELDS, TINY, TOL


def assert_close(actual, expected, tol=TOL):
    """Max-abs error check that says how far off it was."""
    actual = np.asarray(actual.astype(mx.float32) if isinstance(actual, mx.array) else actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape}"
    err = float(np.max(np.abs(actual - expected)))
    assert err <= tol, f"max abs error {err:.3g} > {tol:g}"
    return err


@pytest.fixture(scope="session")
def gold():
    return np.load(GOLDENS / "vision.npz")


@pytest.fixture(scope="session")
def vision():
    return load_vision(TINY, dtype=mx.float32)


@pytest.fixture(scope="session")
def vision_hd():
    config = {**json.loads((TINY / "config.json").read_text()), **HD_FIELDS}
    return vision_from_weights(config, load_weights(TINY), mx.float32)


@pytest.fixture(scope="session")
def torch_ref():
    """The PyTorch reference modules with the tiny checkpoint's weights (skips without torch)."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    pytest.importorskip("timm")
    import reference

    return reference, *reference.load_tiny(TINY)


# ---- tiny diffusionkit models in a Hugging Face cache (test_imagegen.py, test_tui.py)

@pytest.fixture(scope="session")
def dk():
    pytest.importorskip("diffusionkit")
    from mgm_mlx import diffusionkit_compat

    diffusionkit_compat.apply()
    import diffusion_cache

    return diffusion_cache


@pytest.fixture(scope="session")
def caches(dk, tmp_path_factory):
    out = {}
    for kind in ("flux", "sd3"):
        root = tmp_path_factory.mktemp(f"hf-{kind}")
        out[kind] = root, dk.make_cache(root, kind)
    return out


@pytest.fixture
def offline(dk, caches, monkeypatch):
    """Point the hub (and transformers through it) at a tiny cache with no network."""
    import huggingface_hub.constants as hub

    def use(kind):
        monkeypatch.setattr(hub, "HF_HUB_CACHE", str(caches[kind][0]))
        monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
        for (module, name), value in dk.patches(kind).items():
            monkeypatch.setattr(module, name, value)
        return caches[kind][1]

    yield use
    from mgm_mlx import diffusion

    diffusion._drop()
