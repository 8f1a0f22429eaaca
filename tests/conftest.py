import json

import mgm_mlx  # noqa: F401  (first: on Linux it may load OpenBLAS before mlx)
import mlx.core as mx
import numpy as np
import pytest

from common import GOLDENS, HD_FIELDS, TINY, TOL

from mgm_mlx.loading import load_vision, load_weights, vision_from_weights


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
