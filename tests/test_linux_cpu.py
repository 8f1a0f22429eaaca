"""The Linux CPU prefill route for quantized layers: same outputs as quantized_matmul, only
where it should be on."""

import mgm_mlx  # noqa: F401  (first: on Linux it may load OpenBLAS before mlx)
from mgm_mlx import language, linux_cpu
from mgm_mlx.model import Model

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from checkpoints import LLMS

# Float32 dequantize + BLAS against quantized_matmul: only the summation order differs.
TOL = 1e-4


def quantized_pair(family, monkeypatch, bits=4):
    """The same quantized tiny LLM twice: plain and with the prefill route."""
    monkeypatch.setattr(linux_cpu.sys, "platform", "linux")
    monkeypatch.delenv("MGM_MLX_NO_CPU_PATH", raising=False)
    mx.random.seed(0)
    config = {**LLMS[family], "vocab_size": 320}
    plain, routed = language.build(config), language.build(config)
    nn.quantize(plain, 32, bits)
    nn.quantize(routed, 32, bits)
    routed.update(plain.parameters())
    n = linux_cpu.route_quantized_prefill(routed)
    return plain, routed, n


@pytest.mark.parametrize("family,bits", [("gemma", 4), ("llama", 4), ("llama", 8), ("mixtral", 4)])
def test_route_matches_quantized_matmul(family, bits, monkeypatch):
    plain, routed, n = quantized_pair(family, monkeypatch, bits)
    assert n > 0
    if family == "mixtral":  # the experts keep gather_qmm
        kinds = {type(m).__name__ for _, m in routed.named_modules()}
        assert "QuantizedSwitchLinear" in kinds
    calls = []
    real = linux_cpu.dequantize
    monkeypatch.setattr(linux_cpu, "dequantize", lambda layer: calls.append(1) or real(layer))
    ids = mx.array([[(7 * i + 3) % 320 for i in range(24)]])
    expected, actual = plain(ids), routed(ids)
    assert calls, "the prefill route did not run"
    err = mx.abs(actual - expected).max().item()
    assert err <= TOL * max(1.0, mx.abs(expected).max().item()), f"max abs error {err:.3g}"
    # One row (decode) stays on quantized_matmul: bit for bit the same.
    calls.clear()
    np.testing.assert_array_equal(np.array(routed(ids[:, :1])), np.array(plain(ids[:, :1])))
    assert not calls


def test_dequantize_matches_mlx():
    w = mx.random.normal((48, 256))
    for bits in (2, 3, 4, 8):
        layer = nn.QuantizedLinear.from_linear(nn.Linear(256, 48), 64, bits)
        layer.update({"weight": mx.quantize(w, 64, bits)[0]})
        expected = mx.dequantize(layer.weight, layer.scales, layer.biases, 64, bits)
        assert mx.array_equal(linux_cpu.dequantize(layer), expected), bits


@pytest.mark.parametrize("platform,env", [("darwin", None), ("linux", "1")])
def test_route_off(platform, env, monkeypatch):
    monkeypatch.setattr(linux_cpu.sys, "platform", platform)
    if env:
        monkeypatch.setenv("MGM_MLX_NO_CPU_PATH", env)
    else:
        monkeypatch.delenv("MGM_MLX_NO_CPU_PATH", raising=False)
    lm = language.build({**LLMS["llama"], "vocab_size": 320})
    nn.quantize(lm, 32, 4)
    assert linux_cpu.route_quantized_prefill(lm) == 0
    assert {type(m) for _, m in lm.named_modules()} & {nn.QuantizedLinear}
    assert not any(type(m).__name__ == "PrefillQuantizedLinear" for _, m in lm.named_modules())


def test_model_quantize_routes(monkeypatch):
    """Model.quantize (load with quantize_bits, or a converted folder) gives the route."""
    monkeypatch.setattr(linux_cpu.sys, "platform", "linux")
    monkeypatch.delenv("MGM_MLX_NO_CPU_PATH", raising=False)
    lm = language.build({**LLMS["llama"], "vocab_size": 320})
    model = Model({}, None, lm)
    model.quantize(32, 4)
    names = {type(m).__name__ for _, m in lm.named_modules()}
    assert "PrefillQuantizedLinear" in names and "QuantizedLinear" not in names
    assert len(tree_flatten(lm.parameters())) > 0
