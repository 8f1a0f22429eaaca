"""VLM-guided image generation: <h> extraction and file handling (always), then the real
diffusionkit FLUX.1-schnell / SD3 pipelines on tiny random weights in a Hugging Face cache
(diffusion_cache.py, offline), and the whole --gen command with a tiny MGM checkpoint."""

import hashlib
import sys
from pathlib import Path

import mgm_mlx.generate as cli
from mgm_mlx import diffusion
from mgm_mlx.imagegen import (
    INSTALL,
    NEGATIVE_PROMPT,
    GenerationError,
    ImageRequest,
    check_output,
    clean_prompt,
    extract_prompt,
    get_generator,
    next_image_path,
    parse_size,
    reply_prompt,
    save_png,
    with_gen,
)

import numpy as np
import pytest
from PIL import Image

from checkpoints import make_checkpoint

REPLY = "Sure! Here is a cozy scene.\n<h>a small red house under a blue sky</h> And later <h> a cat\n on  the sun </h> done"


def test_the_last_h_block_is_the_prompt():
    assert extract_prompt(REPLY) == "a cat on the sun"  # the last block, as mgm/serve/cli.py
    assert extract_prompt("<h>a dog</h>") == "a dog"
    for reply in ("no block here", "<h>unclosed", "<h>  </h>", "</h>backwards<h>", ""):
        assert extract_prompt(reply) is None
    assert with_gen("Draw a cat") == "Draw a cat <GEN>"
    assert reply_prompt("A cat <GEN>\n<h>on a mat</h>") == "A cat on a mat"
    assert reply_prompt("  \n") is None


def test_prompt_cleaning_sizes_and_negative_prompt():
    assert clean_prompt("a café,  🐱 sunny\nday") == "a cafe, sunny day"
    with pytest.raises(GenerationError, match="empty"):
        clean_prompt("🐱🐱")
    assert parse_size("1024") == (1024, 1024) and parse_size("768x512") == (768, 512) and parse_size("64×48") == (64, 48)
    for bad in ("big", "1x2x3", ""):
        with pytest.raises(GenerationError, match="bad image size"):
            parse_size(bad)
    # mgm/serve/cli.py's common_neg_prompt (same in model_worker.py), character for character
    assert hashlib.sha256(NEGATIVE_PROMPT.encode()).hexdigest()[:16] == "066f785baf0e3cfd"


def test_output_files_are_numbered_and_never_overwritten(tmp_path):
    image = Image.new("RGB", (16, 16), "red")
    assert next_image_path(tmp_path) == tmp_path / "mgm-image-001.png"
    (tmp_path / "mgm-image-007.png").write_bytes(b"x")
    (tmp_path / "mgm-image-notes.png").write_bytes(b"x")
    assert save_png(image, next_image_path(tmp_path)) == tmp_path / "mgm-image-008.png"
    with pytest.raises(GenerationError, match="exists"):
        save_png(image, tmp_path / "mgm-image-007.png")
    assert (tmp_path / "mgm-image-007.png").read_bytes() == b"x"
    with pytest.raises(GenerationError, match="does not exist"):
        check_output(tmp_path / "nope" / "a.png")
    with pytest.raises(GenerationError, match="PNG"):
        check_output(tmp_path / "a.jpg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mgm-image-007.png", "mgm-image-008.png", "mgm-image-notes.png"]
    assert Image.open(tmp_path / "mgm-image-008.png").size == (16, 16)


def test_missing_extra_and_unknown_names_say_what_to_do(monkeypatch):
    with pytest.raises(GenerationError, match="unknown image backend"):
        get_generator("dalle")
    monkeypatch.setitem(sys.modules, "diffusionkit", None)  # as if not installed
    with pytest.raises(GenerationError) as e:
        get_generator(model="flux-schnell")
    assert INSTALL in str(e.value)
    with pytest.raises(GenerationError, match="unknown image model 'flux-dev'"):
        diffusion.DiffusionKitGenerator("flux-dev")


def test_cli_without_the_extra_fails_before_loading_the_model(monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "diffusionkit", None)
    with pytest.raises(SystemExit) as e:
        cli.main(["--model", str(tmp_path / "not-loaded"), "--prompt", "Draw a cat", "--gen"])
    assert str(e.value).startswith("error: image generation needs diffusionkit: pip install")


# ---- the real diffusionkit pipelines (tests run when the [gen] extra is installed)

def _pixels(picture):
    return np.asarray(picture.image)


@pytest.mark.parametrize("kind, model", [("flux", "flux-schnell"), ("sd3", "sd3-medium")])
def test_loaders_map_every_released_tensor(offline, kind, model):
    from mlx.utils import tree_flatten

    native = offline(kind)
    pipe = diffusion.DiffusionKitGenerator(model, keep=True)._pipeline()  # as loaded, before any picture
    parts = {"mmdit": pipe.mmdit, "decoder": pipe.decoder, "encoder": pipe.encoder, "clip_l": pipe.clip_l,
             "t5": pipe.t5_encoder}
    if kind == "sd3":
        parts["clip_g"] = pipe.clip_g
    for name, module in parts.items():
        got = {k: np.asarray(v) for k, v in tree_flatten(module.parameters())}
        assert got.keys() == native[name].keys(), name
        for k, v in native[name].items():
            np.testing.assert_array_equal(got[k], v, err_msg=f"{name}.{k}")


@pytest.mark.parametrize("keep", [False, True])
def test_flux_png_of_the_requested_size_deterministic_for_a_seed(offline, tmp_path, keep):
    offline("flux")
    gen = diffusion.DiffusionKitGenerator("flux-schnell", keep=keep)
    a = gen.generate(ImageRequest("a red cat on the sky", 96, 64, seed=7))
    b = gen.generate(ImageRequest("a red cat on the sky", 96, 64, seed=7))  # twice in one process
    done = []
    c = gen.generate(ImageRequest("a red cat on the sky", 96, 64, seed=8), progress=lambda i, n: done.append((i, n)))
    assert done == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert a.image.size == (96, 64) and a.image.mode == "RGB"
    assert a.request.steps == 4 and a.request.guidance == 0 and a.request.negative_prompt == ""  # FLUX: none
    assert np.array_equal(_pixels(a), _pixels(b)) and not np.array_equal(_pixels(a), _pixels(c))
    assert _pixels(a).std() > 1  # a picture, not a flat fill
    assert (diffusion._PIPELINE is not None) == keep  # freed after the picture unless kept
    path = save_png(a.image, tmp_path / "cat.png")
    assert Image.open(path).size == (96, 64)
    assert np.array_equal(np.asarray(Image.open(path)), _pixels(a))


def test_sd3_uses_the_negative_prompt_and_guidance(offline):
    offline("sd3")
    gen = diffusion.DiffusionKitGenerator("sd3-medium")
    a = gen.generate(ImageRequest("a small house", 64, 80, steps=2, seed=1))
    b = gen.generate(ImageRequest("a small house", 64, 80, steps=2, seed=1, negative_prompt="blurry"))
    assert a.image.size == (64, 80) and a.request.guidance == 5.0 and a.request.negative_prompt == NEGATIVE_PROMPT
    assert not np.array_equal(_pixels(a), _pixels(b))  # the negative prompt takes part with guidance > 1
    with pytest.raises(GenerationError, match="guidance above 0"):
        gen.generate(ImageRequest("a small house", 64, 64, guidance=0))
    with pytest.raises(GenerationError, match="64 to 128 pixels"):  # the tiny SD3 position table: 16 latents
        gen.generate(ImageRequest("a small house", 256, 64))


def test_bad_sizes_and_missing_weights_are_one_clear_line(offline, dk, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub

    offline("flux")
    gen = diffusion.DiffusionKitGenerator("flux-schnell")
    for w, h in ((1000, 1000), (32, 64), (4096, 1024)):
        with pytest.raises(GenerationError, match="multiples of 16 from 64 to 2048"):
            gen.generate(ImageRequest("a cat", w, h))
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path))  # an empty cache, offline
    with pytest.raises(GenerationError) as e:
        gen.generate(ImageRequest("a cat", 64, 64, seed=0))
    assert "not in the Hugging Face cache" in str(e.value) and "argmaxinc/mlx-FLUX.1-schnell" in str(e.value)


def test_a_failed_picture_leaves_a_working_generator(offline, monkeypatch):
    from diffusionkit import mlx as dkm

    offline("flux")
    gen = diffusion.DiffusionKitGenerator("flux-schnell", keep=True)
    good = gen.generate(ImageRequest("a cat", 64, 64, seed=3))

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    with monkeypatch.context() as m:  # fails mid-sampling, after the modulation weights were swapped out
        m.setattr(dkm.CFGDenoiser, "__call__", boom)
        with pytest.raises(GenerationError, match="image generation failed: out of memory"):
            gen.generate(ImageRequest("a cat", 64, 64, seed=3))
    again = gen.generate(ImageRequest("a cat", 64, 64, seed=3))
    assert np.array_equal(_pixels(good), _pixels(again))


def test_patches_stay_inside_diffusionkit(dk):
    from mgm_mlx import diffusionkit_compat

    import mlx.core as mx
    from diffusionkit.mlx import mmdit, t5

    assert mmdit.mx is not mx and mmdit.mx.fast.scaled_dot_product_attention is diffusionkit_compat._sdpa
    assert t5.mx.metal.device_info()["memory_size"] > 0
    # mlx-lm and everyone else see MLX as it is
    assert mx.fast.scaled_dot_product_attention is not diffusionkit_compat._sdpa
    assert mx.metal.device_info is not t5.mx.metal.device_info


def test_flux_takes_no_guidance(offline):
    offline("flux")
    with pytest.raises(GenerationError, match="without guidance"):
        diffusion.DiffusionKitGenerator("flux-schnell").check(ImageRequest("a cat", 64, 64, guidance=3.0))


def test_pictures_are_readable_like_any_new_file(tmp_path):
    import os

    umask = os.umask(0o022)
    try:
        path = save_png(Image.new("RGB", (16, 16)), tmp_path / "a.png")
    finally:
        os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o644


# ---- the whole --gen command with a tiny MGM checkpoint

@pytest.fixture(scope="module")
def tiny_mgm(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("gen") / "mgm", "gemma")[0]


def _run(args, capsys):
    """main() in this process (the tiny diffusion shapes are patched in); exit as Python would."""
    code, message = 0, ""
    try:
        cli.main(args)
    except SystemExit as e:
        code, message = (1, e.code + "\n") if isinstance(e.code, str) else (e.code, "")
    out = capsys.readouterr()
    return code, out.out, out.err + message


def test_gen_draws_the_h_prompt_into_numbered_files(offline, tiny_mgm, tmp_path, monkeypatch, capsys):
    offline("flux")
    monkeypatch.chdir(tmp_path)
    asked = []
    stream = cli.Chat.stream

    def answer_with_h(self, text, images=(), **kwargs):  # the tiny random LLM can't write <h>; append one
        asked.append(text)
        yield from stream(self, text, images, **kwargs)
        yield cli.Response(" <h>a red house under the sun</h>", 0, None, False, 0, 0.0, 0, 0.0, 0.0, "stop")

    monkeypatch.setattr(cli.Chat, "stream", answer_with_h)
    base = ["--model", str(tiny_mgm), "--prompt", "Draw a house", "-m", "4", "--gen", "--gen-size", "96x64", "--gen-seed", "5"]
    code, out, err = _run(base, capsys)
    assert code == 0, err
    assert asked == ["Draw a house <GEN>"]
    assert "Drawing with FLUX.1-schnell (96x64, seed 5): a red house under the sun" in err
    assert "Image: 96x64, 4 steps, guidance 0, seed 5" in err
    assert out.strip().endswith("Saved image to mgm-image-001.png")
    code, out, err = _run(base, capsys)
    assert code == 0 and out.strip().endswith("Saved image to mgm-image-002.png")
    first, second = (np.asarray(Image.open(tmp_path / f"mgm-image-00{i}.png")) for i in (1, 2))
    assert first.shape == (64, 96, 3) and np.array_equal(first, second)
    code, out, err = _run(base + ["--output-image", "mgm-image-001.png"], capsys)  # never overwritten, before any work
    assert code == 1 and "exists" in err and len(err.strip().splitlines()) == 1 and out == ""


def test_gen_without_an_h_block_says_so_and_from_reply_draws_the_reply(offline, tiny_mgm, tmp_path, monkeypatch, capsys):
    offline("flux")
    monkeypatch.chdir(tmp_path)
    base = ["--model", str(tiny_mgm), "--prompt", "Draw a house", "-m", "6", "--gen-size", "64", "--quiet"]
    code, out, err = _run(base + ["--gen"], capsys)
    assert code == 1 and "no <h>...</h> picture prompt" in err and "--gen-from-reply" in err
    assert list(Path(tmp_path).iterdir()) == []
    code, out, err = _run(base + ["--gen-from-reply", "--output-image", "reply.png"], capsys)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "Saved image to reply.png" and err == ""
    assert Image.open(tmp_path / "reply.png").size == (64, 64)


@pytest.mark.parametrize("args, words", [
    (["--gen-size", "1000"], "multiples of 16"),
    (["--gen-model", "dalle"], "unknown image model 'dalle'"),
    (["--output-image", "/no/such/folder/x.png"], "does not exist"),
])
def test_gen_bad_options_fail_before_the_model_loads(offline, tmp_path, capsys, args, words):
    offline("flux")
    code, out, err = _run(["--model", str(tmp_path / "never-loaded"), "--prompt", "Draw", "--gen", *args], capsys)
    assert code == 1 and words in err and len(err.strip().splitlines()) == 1


def test_gen_offline_without_the_weights_fails_before_the_model_loads(offline, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hub

    offline("flux")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    code, _, err = _run(["--model", str(tmp_path / "never-loaded"), "--prompt", "Draw", "--gen"], capsys)
    assert code == 1 and "FLUX.1-schnell weights are not in the Hugging Face cache" in err
    assert len(err.strip().splitlines()) == 1


def test_chat_app_picture_options_are_checked_at_start():
    from mgm_mlx.chat import main as chat_main

    for args, words in ((["--gen-size", "1000"], "multiples of 16"), (["--gen-model", "dalle"], "unknown image model")):
        with pytest.raises(SystemExit) as e:
            chat_main(["--model", "never-loaded", *args])
        assert str(e.value).startswith("error: ") and words in str(e.value)
