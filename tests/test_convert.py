"""Loading released checkpoints and converting them (tiny random checkpoints in the released
layout; Gemma, Llama and Mixtral LLMs; new and legacy model_type; towers inside the shards
and in their own folders), and every bad input the converter must refuse cleanly."""

import json
import os
import subprocess
import sys

import mgm_mlx
from mgm_mlx.convert.convert import convert, main
from mgm_mlx.language import family
from mgm_mlx.prompt import pick_template

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from checkpoints import make_checkpoint
from common import mode_variants

TOKENS = mx.array([[5, 17, 42, 99, 3, 250, 7]])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("released")
    out = {}
    for name, llm, legacy, inside in (
        ("gemma", "gemma", False, True),
        ("llama-legacy", "llama", True, False),  # towers in their own folders
        ("mixtral", "mixtral", False, True),
    ):
        out[name] = make_checkpoint(root / name, llm, legacy=legacy, towers_inside=inside)
    return out


def _load(ckpts, name, **kw):
    folder, towers = ckpts[name]
    if towers:
        kw.update(vision_tower=towers[0], vision_tower_aux=towers[1])
    return mgm_mlx.load(folder, **kw)


def _convert(ckpts, name, out, **kw):
    folder, towers = ckpts[name]
    if towers:
        kw.update(vision_tower=towers[0], vision_tower_aux=towers[1])
    return convert(folder, out, **kw)


def _params(model):
    return {k: np.array(v.astype(mx.float32) if v.dtype != mx.uint32 else v) for k, v in tree_flatten(model.parameters())}


def test_dispatch_uses_the_config_not_the_folder():
    assert family({"architectures": ["MiniGeminiGemmaForCausalLM"]}) == "gemma"
    assert family({"model_type": "mini_gemini"}) == "llama"
    assert family({"architectures": ["MGMMixtralForCausalLM"], "model_type": "mgm_mixtral"}) == "mixtral"
    with pytest.raises(ValueError, match="mgm_gemma, mgm, mgm_mixtral"):
        family({"model_type": "llava", "architectures": ["LlavaForCausalLM"]})


@pytest.mark.parametrize("config, vocab, template", [
    ({"model_type": "mgm_gemma"}, {}, "gemma"),
    ({"model_type": "mgm_mixtral"}, {}, "mistral_instruct"),
    ({"model_type": "mgm", "vocab_size": 32000}, {}, "vicuna_v1"),
    ({"model_type": "mgm", "vocab_size": 128256}, {"<|eot_id|>": 128009}, "llama_3"),  # MGM-8B
    ({"model_type": "mgm", "vocab_size": 64000}, {"<|im_start|>": 6}, "chatml_direct"),  # MGM-34B
])
def test_template_from_config_and_tokenizer(config, vocab, template):
    assert pick_template(config, vocab) == template


@pytest.mark.parametrize("name", ["gemma", "llama-legacy", "mixtral"])
def test_raw_checkpoint_loads(ckpts, name):
    model, processor = _load(ckpts, name)
    logits = model.language_model(TOKENS)
    assert logits.shape == (1, TOKENS.shape[1], model.config["vocab_size"])
    assert bool(mx.all(mx.isfinite(logits)))
    assert processor.template == {"gemma": "gemma", "llama-legacy": "vicuna_v1", "mixtral": "mistral_instruct"}[name]
    assert processor.images([mode_variants()["rgb"]]).shape == (1, 768, 768, 3)


def test_tied_lm_head_duplicate_is_dropped(ckpts):
    model, _ = _load(ckpts, "gemma")
    keys = dict(tree_flatten(model.parameters()))
    assert "language_model.lm_head.weight" not in keys
    model, _ = _load(ckpts, "llama-legacy")  # untied: kept
    assert "language_model.lm_head.weight" in dict(tree_flatten(model.parameters()))


@pytest.mark.parametrize("name", ["gemma", "llama-legacy", "mixtral"])
def test_float32_round_trip_is_exact(ckpts, name, tmp_path):
    raw, _ = _load(ckpts, name, dtype=mx.float32, vision_dtype=mx.float32)
    out = _convert(ckpts, name, tmp_path / "mlx", dtype="float32", vision_dtype="float32")
    converted, processor = mgm_mlx.load(out)
    a, b = _params(raw), _params(converted)
    assert a.keys() == b.keys()
    for key in a:  # every tensor survives
        assert np.array_equal(a[key], b[key]), key
    assert np.array_equal(np.array(raw.language_model(TOKENS)), np.array(converted.language_model(TOKENS)))
    assert processor.template == _load(ckpts, name)[1].template


def test_float32_round_trip_image_tokens(ckpts, tmp_path):
    raw, processor = _load(ckpts, "gemma", dtype=mx.float32, vision_dtype=mx.float32)
    converted, _ = mgm_mlx.load(convert(ckpts["gemma"][0], tmp_path / "mlx", dtype="float32", vision_dtype="float32"))
    pixels = processor.images([mode_variants()["rgb"]])
    assert np.array_equal(np.array(raw.vision(pixels)), np.array(converted.vision(pixels)))


def test_quantizing_at_load_starts_from_the_stored_dtype(ckpts, tmp_path):
    """No float32 copy of the LLM on the way (27 GB for a 7B on a CPU): quantize_bits alone
    quantizes the bf16 weights as convert -q does, then computes as load does (float32 on a CPU)."""
    out = _convert(ckpts, "gemma", tmp_path / "q", quantize=True, q_bits=4)
    converted, _ = mgm_mlx.load(out)
    in_memory, _ = _load(ckpts, "gemma", vision_dtype=mx.float16, quantize_bits=4)
    a, b = _params(in_memory), _params(converted)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a if k.startswith("language_model."))
    assert in_memory.language_model.model.norm.weight.dtype == converted.language_model.model.norm.weight.dtype


@pytest.mark.parametrize("name", ["gemma", "mixtral"])
@pytest.mark.parametrize("bits", [4, 8])
def test_quantized_round_trip(ckpts, name, bits, tmp_path):
    out = _convert(ckpts, name, tmp_path / "q", quantize=True, q_bits=bits, dtype="float32")
    converted, _ = mgm_mlx.load(out)
    config = json.loads((out / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": bits}
    # the same as quantizing the raw checkpoint in memory at load time
    in_memory, _ = _load(ckpts, name, dtype=mx.float32, vision_dtype=mx.float16, quantize_bits=bits)
    a, b = _params(in_memory), _params(converted)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    # embeddings, lm_head and every LLM linear are quantized; the image path is not
    q = {k for k in b if k.endswith(".scales")}
    assert "language_model.model.embed_tokens.scales" in q
    assert not any(k.startswith("vision.") for k in q)
    stored = {}
    for f in out.glob("*.safetensors"):
        stored.update(mx.load(str(f)))
    assert {v.dtype for k, v in stored.items() if k.startswith("vision.")} == {mx.float16}
    assert stored["language_model.model.embed_tokens.weight"].dtype == mx.uint32
    # Stated tolerance against float32: every quantized weight within 12% (4-bit) / 0.8%
    # (8-bit) relative error (measured 0.091 / 0.0054); 8-bit logits keep cosine >= 0.95
    # with the float32 ones (measured 0.96-0.999 on these deliberately peaky tiny LLMs,
    # where 4-bit logits are too chaotic to bound usefully).
    full, _ = _load(ckpts, name, dtype=mx.float32)
    raw = dict(tree_flatten(full.parameters()))
    for path, module in converted.named_modules():
        if hasattr(module, "scales"):
            w = mx.dequantize(module.weight, module.scales, module.biases, module.group_size, module.bits)
            err = float(mx.linalg.norm(w - raw[f"{path}.weight"]) / mx.linalg.norm(raw[f"{path}.weight"]))
            assert err < {4: 0.12, 8: 0.008}[bits], (path, err)
    if bits == 8:
        ref = np.array(full.language_model(TOKENS))[0]
        out = np.array(converted.language_model(TOKENS))[0]
        cos = (out * ref).sum(-1) / np.linalg.norm(out, axis=-1) / np.linalg.norm(ref, axis=-1)
        assert cos.min() >= 0.95, cos


def test_output_folder_is_self_contained(ckpts, tmp_path):
    out = _convert(ckpts, "llama-legacy", tmp_path / "mlx", quantize=True)
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    config = json.loads((out / "config.json").read_text())
    assert "mm_vision_tower" not in config and "mm_vision_tower_aux" not in config
    assert config["mm_vision_config"]["num_hidden_layers"] == 3 and config["mgm_template"] == "vicuna_v1"
    assert not any(p.name.startswith(".") for p in out.parent.iterdir())  # no partial folder left
    # loads without the tower folders
    model, _ = mgm_mlx.load(out)
    assert model.vision.num_tokens == 576


def test_hd_checkpoint(ckpts, tmp_path):
    folder = ckpts["gemma"][0]
    hd = tmp_path / "hd"
    hd.mkdir()
    for f in folder.iterdir():
        os.link(f, hd / f.name)  # links out of the folder are refused
    (hd / "config.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    (hd / "config.json").write_text(json.dumps({**config, "image_size_aux": 1536, "image_grid": 2, "image_global": True}))
    out = convert(hd, tmp_path / "hd-mlx", quantize=True)
    model, processor = mgm_mlx.load(out)
    assert model.vision.num_tokens == 2880 and processor.image_size == 1536


# ---- bad input: one clear line, non-zero exit, nothing half-written

def _cli(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert info.value.code not in (0, None) or str(info.value.code).startswith("error")
    message = str(info.value.code)
    assert "\n" not in message and "Traceback" not in err
    return message


def test_non_empty_target_needs_force(ckpts, tmp_path, capsys):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    message = _cli(["--hf-path", str(ckpts["gemma"][0]), "--mlx-path", str(target)], capsys)
    assert "--force" in message and (target / "keep.txt").read_text() == "mine"
    # --force replaces only an earlier mgm-mlx output (issue #11): not this folder
    message = _cli(["--hf-path", str(ckpts["gemma"][0]), "--mlx-path", str(target), "--force"], capsys)
    assert "not an earlier mgm-mlx output" in message and os.listdir(target) == ["keep.txt"]
    earlier = tmp_path / "earlier"
    main(["--hf-path", str(ckpts["gemma"][0]), "--mlx-path", str(earlier)])
    message = _cli(["--hf-path", str(ckpts["gemma"][0]), "--mlx-path", str(earlier), "-q"], capsys)
    assert "--force" in message and "quantization" not in json.loads((earlier / "config.json").read_text())
    main(["--hf-path", str(ckpts["gemma"][0]), "--mlx-path", str(earlier), "-q", "--force"])
    assert "quantization" in json.loads((earlier / "config.json").read_text())


def test_unknown_model_type_lists_supported(ckpts, tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ckpts["gemma"][0].iterdir():
        os.link(f, bad / f.name)
    (bad / "config.json").unlink()
    (bad / "config.json").write_text(json.dumps({"model_type": "qwen2_vl", "architectures": ["Qwen2VL"]}))
    message = _cli(["--hf-path", str(bad), "--mlx-path", str(tmp_path / "out")], capsys)
    assert "qwen2_vl" in message and "mgm_gemma" in message and "mini_gemini" in message
    assert not (tmp_path / "out").exists()


def _copy_with(ckpts, tmp_path, edit):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ckpts["gemma"][0].iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    edit(bad)
    return bad


@pytest.mark.parametrize("edit, words", [
    (lambda d: (d / "model-00002-of-00002.safetensors").write_bytes(
        (d / "model-00002-of-00002.safetensors").read_bytes()[:5000]), "truncated or not safetensors"),
    (lambda d: (d / "model-00001-of-00002.safetensors").unlink(), "model-00001-of-00002.safetensors"),
    (lambda d: (d / "config.json").write_text(
        json.dumps({**json.loads((d / "config.json").read_text()), "intermediate_size": 96})), "intermediate_size=96"),
    (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "config.json").unlink(), "no config.json"),
], ids=["truncated-shard", "missing-shard", "shape-mismatch", "bad-json", "no-config"])
def test_bad_checkpoints(ckpts, tmp_path, capsys, edit, words):
    bad = _copy_with(ckpts, tmp_path, edit)
    message = _cli(["--hf-path", str(bad), "--mlx-path", str(tmp_path / "out")], capsys)
    assert words in message
    assert not (tmp_path / "out").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad"]  # no partial folder


def test_repo_id_without_network(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    message = _cli(["--hf-path", "YanweiLi/MGM-2B", "--mlx-path", str(tmp_path / "out")], capsys)
    assert "pass a local folder" in message
    assert not (tmp_path / "out").exists()


def test_missing_towers_are_named(ckpts, tmp_path, capsys):
    message = _cli(["--hf-path", str(ckpts["llama-legacy"][0]), "--mlx-path", str(tmp_path / "out")], capsys)
    assert "no CLIP weights" in message and "--vision-tower" in message


def test_interrupted_conversion_leaves_nothing(ckpts, tmp_path, monkeypatch):
    import mlx_lm.utils

    def save_then_stop(path, model, **kw):
        (path / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(mlx_lm.utils, "save_model", save_then_stop)
    with pytest.raises(SystemExit, match="interrupted"):
        main(["--hf-path", str(ckpts["gemma"][0]), "--mlx-path", str(tmp_path / "out")])
    assert list(tmp_path.iterdir()) == []


def test_folder_without_tokenizer_and_requantizing(ckpts, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    for f in ckpts["gemma"][0].iterdir():
        if not f.name.startswith(("tokenizer", "special")):
            os.link(f, bare / f.name)
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        mgm_mlx.load(bare)
    out = convert(ckpts["gemma"][0], tmp_path / "q4", quantize=True)
    with pytest.raises(ValueError, match="already quantized to 4 bits"):
        mgm_mlx.load(out, quantize_bits=8)


def test_command_line_error_has_no_traceback(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(
        [sys.executable, "-m", "mgm_mlx.convert", "--hf-path", str(tmp_path / "nowhere"), "--mlx-path", str(tmp_path / "o")],
        capture_output=True, text=True, env=env,
    )
    assert out.returncode == 1
    assert out.stderr.strip() == f"error: model folder not found: {tmp_path / 'nowhere'}"
