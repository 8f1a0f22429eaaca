"""The image path against PyTorch: bilinear resizes (torch.nn.functional.interpolate),
CLIP (transformers CLIPVisionModel hidden_states[-2]), ConvNeXt (timm, as OpenCLIP builds
it, eval mode), mining + projector (a transcription of mgm_arch.unified_resampler) and the
whole non-HD and HD encode_images. Goldens come from tests/goldens/make_goldens.py; with
torch installed the same checks also run live. Tolerance: fp32 max-abs 1e-4."""

import json

from mgm_mlx import mining
from mgm_mlx.clip import VisionConfig
from mgm_mlx.convnext import ConvNeXtConfig
from mgm_mlx.image import preprocess
from mgm_mlx.loading import load_vision, load_weights, vision_from_weights
from mgm_mlx.model import part, sanitize
from mgm_mlx.ops import lowres_views, resize_bilinear, windows

import mlx.core as mx
import numpy as np
import pytest

from common import TINY, mode_variants, smooth
from conftest import assert_close

RESIZES = {
    "down_768_336": (768, 336, 1),
    "down_96_42": (96, 42, 2),
    "down_384_192": (384, 192, 1),
    "up_96_192": (96, 192, 1),
    "up_48_192": (48, 192, 1),
    "up_24_192": (24, 192, 1),
    "odd_7x10_23x31": ((7, 10), (23, 31), 2),
}


def _pair(n):
    return (n, n) if isinstance(n, int) else n


@pytest.mark.parametrize("name", list(RESIZES))
def test_resize_matches_interpolate(gold, name):
    a, b, c = RESIZES[name]
    seed = list(RESIZES).index(name)
    x = mx.array(smooth((1, *_pair(a), c), seed))
    assert_close(resize_bilinear(x, _pair(b)), gold[f"resize/{name}"])


def test_resize_keeps_dtype_and_computes_in_float32():
    x = mx.array(smooth((1, 24, 24, 4))).astype(mx.float16)
    y = resize_bilinear(x, (192, 192))
    assert y.dtype == mx.float16
    ref = resize_bilinear(x.astype(mx.float32), (192, 192))
    assert_close(y, np.array(ref.astype(mx.float16).astype(mx.float32)), tol=0)


def test_tower_sizes_come_from_the_weights(vision):
    c = vision.vision_tower.config
    assert (c.hidden_size, c.intermediate_size, c.num_hidden_layers) == (128, 256, 3)
    assert (c.num_attention_heads, c.image_size, c.patch_size) == (2, 336, 14)
    assert c.num_layers_run == 2 and vision.vision_tower.vision_model.num_layers_run == 2
    n = vision.vision_tower_aux.config
    assert (n.depths, n.dims, n.hidden_size) == ([1, 1, 2, 1], [8, 16, 24, 32], 80)
    assert vision.num_tokens == 576


def test_real_sizes_are_derived_from_real_shapes():
    w = {
        "vision_model.embeddings.patch_embedding.weight": np.empty((1024, 3, 14, 14)),
        "vision_model.embeddings.position_embedding.weight": np.empty((577, 1024)),
        "vision_model.encoder.layers.0.mlp.fc1.weight": np.empty((4096, 1024)),
        **{f"vision_model.encoder.layers.{i}.layer_norm1.weight": None for i in range(24)},
    }
    assert VisionConfig.from_weights(w) == VisionConfig()
    w = {"vision_stem.0.weight": np.empty((192, 3, 4, 4))}
    for s, (d, n) in enumerate(zip([192, 384, 768, 1536], [3, 3, 27, 3])):
        w.update({f"vision_stages.{s}.blocks.{b}.conv_dw.weight": np.empty((d, 1, 7, 7)) for b in range(n)})
    config = ConvNeXtConfig.from_weights(w)
    assert config == ConvNeXtConfig() and config.hidden_size == 2880


def test_clip_matches_transformers(gold, vision):
    x = mx.array(smooth((1, 336, 336, 3), 1))
    assert_close(vision.vision_tower(x), gold["clip/feats"])


def test_convnext_matches_timm(gold, vision):
    x = mx.array(smooth((1, 128, 128, 3), 2))
    for s, out in enumerate(vision.vision_tower_aux.stages(x)):
        assert_close(out, gold[f"convnext/stage{s}"])
    assert_close(vision.vision_tower_aux(x), gold["convnext/concat"])


@pytest.mark.parametrize("case, q_shape, a_shape", [
    ("small", (2, 16, 128), (2, 32, 32, 80)),
    ("full", (1, 576, 128), (1, 192, 192, 80)),
])
def test_mining_and_projector_match_reference(gold, vision, case, q_shape, a_shape):
    q = mx.array(smooth(q_shape, 3)) * 2
    a = mx.array(smooth(a_shape, 4)) * 2
    mined = mining.mine(q, a, vision.vlm_uni_query_projector, vision.vlm_uni_aux_projector, vision.vlm_uni_val_projector)
    assert_close(mined, gold[f"mining/{case}_residual"])
    assert_close(mining.chain(vision.mm_projector, mined), gold[f"mining/{case}_tokens"])


def test_unfold_order():
    # window q = row*P + col holds its s*s pixels row-major
    a = mx.arange(4 * 4).reshape(1, 4, 4, 1)
    w = np.array(windows(a, 2).reshape(1, 4, -1, 1))[0, :, :, 0]
    assert w.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_pipeline_matches_reference(gold, vision):
    pixels = mx.array(preprocess(mode_variants()["rgb"], 768)[None])
    views = lowres_views(pixels, 336)
    assert_close(vision.vision_tower(views), gold["pipeline/clip"])
    timings = {}
    tokens = vision(pixels, timings=timings)
    assert tokens.shape == (1, 576, 64)
    assert_close(tokens, gold["pipeline/tokens"])
    assert set(timings) == {"clip", "convnext", "mining"}


def test_hd_pipeline_matches_reference(gold, vision_hd):
    pixels = mx.array(preprocess(mode_variants()["rgb"], 1536)[None])
    tokens = vision_hd(pixels)
    assert tokens.shape == (1, 2880, 64) and vision_hd.num_tokens == 2880
    assert_close(tokens, gold["pipeline/hd_tokens"])


def test_batch_equals_one_by_one(vision_hd):
    pixels = mx.array(np.stack([preprocess(mode_variants()[m], 1536) for m in ("rgb", "tall")]))
    both = vision_hd(pixels)
    assert_close(both[:1], np.array(vision_hd(pixels[:1])), tol=1e-5)
    assert_close(both[1:], np.array(vision_hd(pixels[1:])), tol=1e-5)


@pytest.mark.parametrize("dtype", [mx.float16, mx.bfloat16])
def test_half_precision_runs(gold, dtype):
    model = vision_from_weights(json.loads((TINY / "config.json").read_text()), load_weights(TINY), dtype)
    pixels = mx.array(preprocess(mode_variants()["rgb"], 768)[None])
    tokens = model(pixels)
    assert tokens.dtype == dtype
    tokens = np.array(tokens.astype(mx.float32))
    assert np.isfinite(tokens).all()
    expected = gold["pipeline/tokens"]
    rel = np.abs(tokens - expected).max() / np.abs(expected).max()
    assert rel < 0.05, f"{dtype}: relative error {rel:.3f}"


def test_geometry_that_does_not_tile_is_refused():
    config = {**json.loads((TINY / "config.json").read_text()), "image_size_aux": 700}
    with pytest.raises(ValueError, match="windows"):
        vision_from_weights(config, load_weights(TINY))


def test_config_that_disagrees_with_weights_is_refused():
    config = {**json.loads((TINY / "config.json").read_text()), "mm_hidden_size_aux": 2880}
    with pytest.raises(ValueError, match="mm_hidden_size_aux"):
        vision_from_weights(config, load_weights(TINY))


@pytest.mark.parametrize("prefix, part", [
    ("model.vision_tower.vision_tower.", "CLIP"),
    ("model.vision_tower_aux.", "ConvNeXt"),
    ("model.vlm_uni_", "patch info mining"),
])
def test_missing_tower_is_named(prefix, part):
    weights = {k: v for k, v in load_weights(TINY).items() if not k.startswith(prefix)}
    with pytest.raises(ValueError, match=f"no {part} weights"):
        vision_from_weights(json.loads((TINY / "config.json").read_text()), weights)


def test_unused_tensors_are_dropped(vision):
    full = sanitize(load_weights(TINY))
    kept = part(full, "vision.")
    assert not any("post_layernorm" in k or "embed_tokens" in k for k in kept)
    assert kept["vision_tower.vision_model.embeddings.patch_embedding.weight"].shape == (128, 14, 14, 3)
    # sanitizing twice changes nothing (converted folders hold sanitized weights)
    again = part(sanitize(full), "vision.")
    assert {k: v.shape for k, v in again.items()} == {k: v.shape for k, v in kept.items()}


def test_saved_sanitized_weights_load_the_same(vision, gold, tmp_path):
    # a folder holding already-sanitized weights must rebuild the same model
    weights = sanitize(load_weights(TINY))
    mx.save_safetensors(str(tmp_path / "model.safetensors"), weights)
    (tmp_path / "config.json").write_text((TINY / "config.json").read_text())
    again = load_vision(tmp_path, mx.float32)
    assert again.vision_tower.config == vision.vision_tower.config
    pixels = mx.array(preprocess(mode_variants()["rgb"], 768)[None])
    assert_close(again(pixels), gold["pipeline/tokens"])


@pytest.mark.parametrize("shape", [(1, 3, 768, 768), (1, 336, 336, 3), (768, 768, 3)])
def test_wrong_pixel_shape_is_refused(vision, shape):
    with pytest.raises(ValueError, match=r"expected pixels \[B, 768, 768, 3\]"):
        vision(mx.zeros(shape))


@pytest.mark.parametrize("edit, words", [
    (lambda d: (d / "config.json").write_text("null"), "JSON object"),
    (lambda d: (d / "config.json").write_text('{"image_grid": "2"}'), "image_grid='2' should be int"),
    (lambda d: (d / "config.json").write_bytes(b"\xff\xfe{"), "cannot read"),
    (lambda d: (d / "model.safetensors.index.json").write_text("{}"), "no weight_map"),
    (lambda d: (d / "model.safetensors.index.json").write_text("{oops"), "not valid JSON"),
])
def test_bad_folders_give_one_line(tmp_path, edit, words):
    for f in TINY.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    edit(tmp_path)
    with pytest.raises(ValueError, match=words) as info:
        load_vision(tmp_path)
    assert "\n" not in str(info.value)


def test_missing_tensor_is_named(tmp_path):
    weights = {k: v for k, v in load_weights(TINY).items() if "mm_projector.0" not in k}
    with pytest.raises(ValueError, match="mm_projector.0.weight"):
        vision_from_weights(json.loads((TINY / "config.json").read_text()), weights)


# ---- live comparisons on fresh inputs (need torch, transformers, timm)

def test_live_resizes_at_real_sizes(torch_ref):
    import torch
    import torch.nn.functional as F

    for a, b in ((768, 336), (1536, 672), (672, 336), (24, 192), (48, 96), (384, 192)):
        x = np.random.default_rng(a).standard_normal((1, a, a, 2)).astype(np.float32)
        expected = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size=(b, b), mode="bilinear", align_corners=False)
        assert_close(resize_bilinear(mx.array(x), (b, b)), expected.permute(0, 2, 3, 1).numpy())


def test_live_towers(torch_ref):
    import torch

    ref, clip_model, trunk, m = torch_ref
    from mgm_mlx.loading import load_vision

    vision = load_vision(TINY, mx.float32)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 336, 336, 3)).astype(np.float32)
    with torch.no_grad():
        expected = ref.clip_features(clip_model, torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    assert_close(vision.vision_tower(mx.array(x)), expected)
    x = rng.standard_normal((1, 160, 160, 3)).astype(np.float32)
    with torch.no_grad():
        expected = ref.convnext_concat(ref.convnext_stages(trunk, torch.from_numpy(x).permute(0, 3, 1, 2)))
    assert_close(vision.vision_tower_aux(mx.array(x)), expected.permute(0, 2, 3, 1).numpy())


@pytest.mark.parametrize("hd", [False, True])
def test_live_pipeline(torch_ref, vision, vision_hd, hd):
    import torch

    ref, clip_model, trunk, m = torch_ref
    image = mode_variants()["tall"]
    size, grid = (1536, 2) if hd else (768, 1)
    with torch.no_grad():
        hr = ref.preprocess(image, size)[None]
        expected = ref.encode_images(m, clip_model, trunk, ref.lowres(hr, grid, hd), hr, grid, hd).numpy()
    pixels = mx.array(preprocess(image, size)[None])
    assert_close(pixels, hr.permute(0, 2, 3, 1).numpy())
    assert_close((vision_hd if hd else vision)(pixels), expected)
