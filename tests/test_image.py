"""Preprocessing against the reference pipeline (expand2square + PIL CLIPImageProcessor +
bilinear low-res views), image modes, and bad input. Tolerance: fp32 max-abs 1e-4."""

from mgm_mlx.image import (
    CLIP_MEAN,
    CLIP_STD,
    PAD_COLOR,
    ImageError,
    load_image,
    preprocess,
)
from mgm_mlx.ops import lowres_views

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from common import SMALL, mode_variants, sample_array
from conftest import assert_close

PAD_NORMALISED = (np.array(PAD_COLOR) / 255 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)


def test_pad_colour_is_the_reference_mean():
    assert PAD_COLOR == (122, 116, 104)


@pytest.mark.parametrize("mode", list(mode_variants()))
def test_modes_match_reference(gold, mode):
    assert_close(preprocess(mode_variants()[mode], SMALL), gold[f"pre/{mode}"])


def test_768_matches_reference(gold):
    x = preprocess(mode_variants()["rgb"], 768)
    assert x.shape == (768, 768, 3) and x.dtype == np.float32
    assert_close(x[::5, ::5], gold["pre/rgb768_s5"])


def test_lowres_view_matches_reference(gold):
    hr = mx.array(preprocess(mode_variants()["rgb"], 768)[None])
    lr = lowres_views(hr, 336)
    assert lr.shape == (1, 336, 336, 3)
    assert_close(lr[:, ::3, ::3], gold["lr/nonhd_s3"])


def test_hd_views_match_reference(gold):
    hr = mx.array(preprocess(mode_variants()["rgb"], 1536)[None])
    views = lowres_views(hr, 336, grid=2, use_global=True)
    assert views.shape == (5, 336, 336, 3)  # tile00, tile01, tile10, tile11, global
    assert_close(views[:, ::4, ::4], gold["lr/hd_s4"])


def test_hd_views_batch_keeps_images_apart():
    hr = mx.array(np.stack([preprocess(mode_variants()[m], 192) for m in ("rgb", "gray")]))
    both = lowres_views(hr, 48, grid=2, use_global=True)
    one = lowres_views(hr[1:], 48, grid=2, use_global=True)
    assert both.shape == (10, 48, 48, 3)
    assert_close(both[5:], np.array(one), tol=0)


def test_exif_orientation_is_honoured(tmp_path):
    upright = Image.fromarray(sample_array())
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated; display after a 90-degree clockwise turn
    path = tmp_path / "rotated.png"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif)
    assert np.array_equal(np.asarray(load_image(path)), np.asarray(upright))


def test_sixteen_bit_grey_matches_eight_bit():
    grey = np.asarray(mode_variants()["gray"])
    wide = Image.fromarray(grey.astype(np.uint16) * 257)
    assert wide.mode.startswith("I")
    assert_close(preprocess(wide, SMALL), preprocess(Image.fromarray(grey), SMALL), tol=0)


def test_numpy_inputs_match_pil():
    rgb = sample_array()
    expected = preprocess(Image.fromarray(rgb), SMALL)
    assert_close(preprocess(rgb, SMALL), expected, tol=0)
    assert_close(preprocess(rgb.astype(np.float32) / 255, SMALL), expected, tol=0)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 9, np.uint8)], -1)
    assert_close(preprocess(rgba, SMALL), expected, tol=0)
    grey = rgb[..., 0]
    assert_close(preprocess(grey, SMALL), preprocess(Image.fromarray(grey), SMALL), tol=0)


@pytest.mark.parametrize(
    "array, words",
    [
        (np.zeros((4, 4, 2), np.uint8), "shape"),
        (np.zeros((0, 4, 3), np.uint8), "shape"),
        (np.zeros((4, 4, 3), np.int64), "dtype"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
    ],
)
def test_bad_arrays(array, words):
    with pytest.raises(ImageError, match=words):
        load_image(array)


def _truncated_jpeg(path):
    Image.fromarray(sample_array()).save(path, quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: None, "not found"),
        (lambda p: p.write_text("hello, I am text\n"), "not an image"),
        (lambda p: p.write_bytes(b""), "empty"),
        (_truncated_jpeg, "truncated"),
        (lambda p: p.mkdir(), "folder"),
    ],
    ids=["missing", "text", "zero-bytes", "truncated-jpeg", "folder"],
)
def test_bad_files_give_one_clear_line(tmp_path, make, words):
    path = tmp_path / "picture.jpg"
    make(path)
    with pytest.raises(ImageError, match=words) as info:
        preprocess(path, SMALL)
    message = str(info.value)
    assert "\n" not in message and str(path) in message


def test_not_an_image_object():
    with pytest.raises(ImageError, match="int"):
        load_image(42)


def test_one_pixel_image():
    x = preprocess(np.array([[[255, 0, 0]]], np.uint8), SMALL)
    red = (np.array([1.0, 0, 0]) - CLIP_MEAN) / CLIP_STD
    assert_close(x, np.broadcast_to(red, x.shape).astype(np.float32))


def test_long_strip_is_padded_not_stretched():
    strip = np.zeros((40, 10000, 3), np.uint8)
    x = preprocess(strip, 768)
    assert x.shape == (768, 768, 3) and np.isfinite(x).all()
    assert_close(x[:300], np.broadcast_to(PAD_NORMALISED, (300, 768, 3)).astype(np.float32))
    black = -np.array(CLIP_MEAN) / np.array(CLIP_STD)
    assert_close(x[384, 100:600], np.broadcast_to(black, (500, 3)).astype(np.float32), tol=1e-3)


def test_huge_canvas_is_shrunk_first():
    x = preprocess(np.full((5, 30000, 3), 200, np.uint8), 64)
    assert x.shape == (64, 64, 3) and np.isfinite(x).all()
    assert_close(x[0], np.broadcast_to(PAD_NORMALISED, (64, 3)).astype(np.float32))
