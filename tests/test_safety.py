"""Hostile and careless input (issue #11, sections 2-5): no code or pickle from a checkpoint
runs, no file outside the model folder is read, sizes are checked before anything is
allocated, and every bad value ends in one line instead of a traceback."""

import json
import os
import struct
import subprocess
import sys
import time
import types
import zlib
from pathlib import Path

import mgm_mlx
from mgm_mlx import image as image_module
from mgm_mlx import language, loading
from mgm_mlx.generate import Chat, main

import mlx.core as mx
import numpy as np
import pytest
from PIL import Image

from checkpoints import make_checkpoint
from common import TINY

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HOUSE = EXAMPLES / "house.png"


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("safety") / "gemma", "gemma")[0]


@pytest.fixture(scope="module")
def gemma(released):
    return mgm_mlx.load(released)


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _edit_config(folder: Path, **fields):
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **fields}))


def _run(args, stdin=None, cwd=None, timeout=120):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, input=stdin, cwd=cwd,
                          timeout=timeout)


def _one_line(out, words):
    err = out.stderr.decode() if isinstance(out.stderr, bytes) else out.stderr
    assert out.returncode == 1, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert words in err, err


# ---- 2. never run or unpickle what a checkpoint ships

def test_code_in_a_checkpoint_never_runs(released, tmp_path, monkeypatch):
    bad = _copy(released, tmp_path / "remote")
    marker = tmp_path / "ran"
    config = json.loads((bad / "tokenizer_config.json").read_text())
    config.pop("tokenizer_class", None)
    config["auto_map"] = {"AutoTokenizer": ["tok.Tok", "tok.Tok"]}
    (bad / "tokenizer_config.json").write_text(json.dumps(config))
    (bad / "tok.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                "from transformers import PreTrainedTokenizerFast as Tok\n")
    monkeypatch.setattr("builtins.input", lambda *a: "y")  # a user who answers yes to transformers' question
    with pytest.raises(ValueError, match="never runs code"):
        mgm_mlx.load(bad)
    assert not marker.exists()


@pytest.mark.parametrize("name, words", [
    ("../outside.safetensors", "plain file names"),
    ("/etc/model.safetensors", "plain file names"),
    ("config.json", "only .safetensors"),
    ("link.safetensors", "links outside"),
])
def test_index_names_stay_inside_the_folder(released, tmp_path, name, words):
    bad = _copy(released, tmp_path / "bad")
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes((bad / "model-00001-of-00002.safetensors").read_bytes())
    (bad / "link.safetensors").symlink_to(outside)
    index = json.loads((bad / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = name
    (bad / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=words):
        mgm_mlx.load(bad)


def test_a_fifo_is_refused_instead_of_hanging(released, tmp_path):
    bad = _copy(released, tmp_path / "bad")
    shard = bad / "model-00002-of-00002.safetensors"
    shard.unlink()
    os.mkfifo(shard)
    try:
        out = _run(["-c", f"import mgm_mlx; mgm_mlx.load({str(bad)!r})"], timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("load waited on a FIFO")
    assert b"not a regular file" in out.stderr


def test_hugging_face_cache_links_are_followed(released, tmp_path):
    repo = tmp_path / "models--someone--mgm"
    snapshot = repo / "snapshots" / "abc123"
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for f in released.iterdir():
        blob = repo / "blobs" / f"blob-{f.name}"
        blob.write_bytes(f.read_bytes())
        (snapshot / f.name).symlink_to(Path("../../blobs") / blob.name)
    model, _ = mgm_mlx.load(snapshot)
    assert model.language_model is not None


def _fake_torch(monkeypatch, version):
    calls = []
    torch = types.ModuleType("torch")
    torch.__version__ = version
    torch.bfloat16, torch.float16 = object(), object()

    def load(path, **kw):
        calls.append(kw)
        return {}

    torch.load = load
    monkeypatch.setitem(sys.modules, "torch", torch)
    return calls


def test_pickles_only_when_nothing_else_and_only_safely(released, tmp_path, monkeypatch):
    both = _copy(released, tmp_path / "both")
    (both / "pytorch_model.bin").write_bytes(b"a pickle that must not be read")
    calls = _fake_torch(monkeypatch, "2.6.0")
    mgm_mlx.load(both)
    assert calls == []  # safetensors present: the pickle is never opened

    only = tmp_path / "only"
    only.mkdir()
    (only / "pytorch_model.bin").write_bytes(b"pickle")
    loading.read_tensors(only / "pytorch_model.bin")
    assert calls == [{"map_location": "cpu", "weights_only": True}]
    _fake_torch(monkeypatch, "2.5.1+cpu")
    with pytest.raises(ValueError, match="2.6 or later"):
        loading.read_tensors(only / "pytorch_model.bin")
    monkeypatch.setitem(sys.modules, "torch", None)  # not installed
    with pytest.raises(ValueError, match="convert it to safetensors"):
        loading.read_tensors(only / "pytorch_model.bin")


def test_downloads_fetch_only_what_the_loader_reads(monkeypatch, tmp_path):
    from huggingface_hub.utils import filter_repo_objects

    asked = {}

    def fake_download(repo_id, allow_patterns=None, **kw):
        asked["patterns"] = allow_patterns
        return str(tmp_path)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_download)
    loading.resolve("YanweiLi/MGM-2B")
    repo = ["config.json", "model-00001-of-00002.safetensors", "model.safetensors.index.json", "tokenizer.json",
            "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json", "modeling_evil.py",
            "pytorch_model.bin", "training_args.bin", "optimizer.pt", "trainer_state.json", "evil.pkl"]
    fetched = set(filter_repo_objects(repo, allow_patterns=asked["patterns"]))
    assert fetched == set(repo[:7])


# ---- 3. sizes are checked before anything is allocated

@pytest.mark.parametrize("fields, words", [
    ({"num_hidden_layers": 1000000}, "num_hidden_layers=1000000 but the weights have 2"),
    ({"vocab_size": 10**12}, "vocab_size"),
    ({"vocab_size": 1000}, "vocab_size=1000 but the weights have"),
    ({"hidden_size": "64"}, "hidden_size='64' should be int"),
    ({"num_attention_heads": 0}, "num_attention_heads=0 must be at least 1"),
    ({"num_key_value_heads": 2}, "num_key_value_heads=2 but the weights have 1"),
    ({"quantization": "yes"}, "quantization='yes' should be an object"),
    ({"quantization": {"bits": 7, "group_size": 64}}, "2-8 bits"),
    ({"mm_vision_aux_config": {"bogus": 1}}, "unknown field 'bogus'"),
    ({"mm_vision_config": {"num_attention_heads": "2"}}, "num_attention_heads='2' should be int"),
    ({"image_size_aux": 153600}, "image_size_aux=153600 is too large"),
    ({"mm_vision_select_layer": 40}, "mm_vision_select_layer=40"),
    ({"rms_norm_eps": float("nan")}, "rms_norm_eps"),
])
def test_config_sizes_are_checked_before_building(released, tmp_path, monkeypatch, fields, words):
    bad = _copy(released, tmp_path / "bad")
    _edit_config(bad, **fields)

    def no_build(config):
        raise AssertionError("the LLM was built before the config was checked")

    monkeypatch.setattr(language, "build", no_build)
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace("+", r"\+")):
        mgm_mlx.load(bad)


def test_deeply_nested_config_is_one_line(released, tmp_path):
    bad = _copy(released, tmp_path / "bad")
    (bad / "config.json").write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match="nested too deeply"):
        mgm_mlx.load(bad)


def _huge_png(path: Path, side: int = 12000):
    """A 12000x12000 black PNG of a few hundred KB (zlib of zero rows, no image in memory)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    z = zlib.compressobj(1)
    row = bytes(1 + 3 * side)
    body = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def test_a_huge_image_is_refused_in_bounded_memory(tmp_path):
    png = tmp_path / "huge.png"
    _huge_png(png)
    code = ("import mgm_mlx\n"
            f"try: mgm_mlx.load_image({str(png)!r}); print('loaded')\n"
            "except mgm_mlx.ImageError as e: print('refused:', e)\n"
            # this process's own peak (ru_maxrss would count the parent's before exec)
            "print([line.split()[1] for line in open('/proc/self/status') if line.startswith('VmHWM')][0])")
    out = _run(["-c", code])
    lines = out.stdout.decode().strip().splitlines()
    assert lines[0].startswith("refused:") and "12000x12000" in lines[0] and "64 megapixels" in lines[0], lines
    peak_mb = int(lines[-1]) / 1024  # kB
    assert peak_mb < 600, f"{peak_mb:.0f} MB"  # decoding it took 2.1 GB


def test_a_large_jpeg_is_decoded_at_a_reduced_scale(tmp_path, monkeypatch):
    monkeypatch.setattr(image_module, "MAX_PIXELS", 100_000)
    picture = Image.open(HOUSE).convert("RGB").resize((640, 480))
    picture.save(tmp_path / "big.jpg", quality=95)
    picture.save(tmp_path / "big.png")
    small = mgm_mlx.load_image(tmp_path / "big.jpg")
    assert small.size == (320, 240)  # 1/2 scale: the first that fits 100,000 pixels
    reference = np.asarray(picture.resize((320, 240), Image.BILINEAR), np.float32)
    assert np.abs(np.asarray(small, np.float32) - reference).mean() < 8
    with pytest.raises(mgm_mlx.ImageError, match="640x480 pixels"):
        mgm_mlx.load_image(tmp_path / "big.png")


def test_a_huge_prompt_is_refused_before_tokenizing(gemma, monkeypatch):
    from mgm_mlx import processor

    def no_tokenize(*a):
        raise AssertionError("tokenized")

    monkeypatch.setattr(processor, "tokenize", no_tokenize)
    tic = time.perf_counter()
    with pytest.raises(ValueError, match="characters, far more than the 2048 tokens"):
        Chat(*gemma).send("word " * 2_000_000)
    assert time.perf_counter() - tic < 5


# ---- 4. one line, never a traceback

@pytest.mark.parametrize("flags, words", [
    (["--seed", "-1"], "seed must be from 0"),
    (["--seed", str(2**64)], "seed must be from 0"),
    (["--max-tokens", "0"], "max_tokens must be at least 1"),
    (["--max-tokens", "-5"], "max_tokens must be at least 1"),
    (["--temp", "-1"], "temperature"),
    (["--top-p", "2"], "top_p"),
])
def test_bad_numbers_are_one_line(released, flags, words, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--model", str(released), "--prompt", "hi", *flags])
    assert str(info.value.code).startswith("error: ") and words in str(info.value.code)


def test_the_api_refuses_bad_numbers_too(gemma):
    chat = Chat(*gemma)
    with pytest.raises(ValueError, match="max_tokens"):
        chat.send("hi", max_tokens=-1)
    with pytest.raises(ValueError, match="seed"):
        chat.send("hi", seed=-1)


def test_text_that_is_not_utf8_is_read(released):
    out = _run(["-m", "mgm_mlx.generate", "--model", released, "--prompt", "-", "-m", "3"],
               stdin=b"What \xff\xfe is it?\n")
    assert out.returncode == 0, out.stderr.decode()
    out = _run(["-m", "mgm_mlx.generate", "--model", released, "--prompt", b"What \xff is it?", "-m", "3"])
    assert out.returncode == 0, out.stderr.decode()
    from mgm_mlx.generate import valid_text

    assert valid_text("a\udcffb") == "a\ufffdb" and valid_text("a\ud800b") == "a\ufffd\ufffd\ufffdb"


@pytest.mark.parametrize("make, words", [
    (lambda w: {**w, "model.norm.weight": w["model.norm.weight"] * float("nan")}, "NaN or infinite"),
    (lambda w: {**w, "model.norm.weight": w["model.norm.weight"] + float("inf")}, "NaN or infinite"),
    (lambda w: {**w, "model.norm.weight": w["model.norm.weight"].astype(mx.int32)}, "is int32; it should be"),
    (lambda w: {**w, "model.norm.weight": w["model.norm.weight"] > 0}, "is bool; it should be"),
], ids=["nan", "inf", "int", "bool"])
def test_broken_weights_are_refused_by_name(released, tmp_path, make, words):
    bad = _copy(released, tmp_path / "bad")
    for shard in bad.glob("*.safetensors"):
        weights = mx.load(str(shard))
        if "model.norm.weight" in weights:
            mx.save_safetensors(str(shard), make(weights), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=words) as info:
        mgm_mlx.load(bad)
    assert "norm" in str(info.value)
    _one_line(_run(["-m", "mgm_mlx.convert", "--hf-path", bad, "--mlx-path", tmp_path / "out", "-q"]), words)
    assert not (tmp_path / "out").exists()


def test_an_image_only_checkpoint_says_so(tmp_path):
    with pytest.raises(ValueError, match="holds only the image path"):
        mgm_mlx.load(TINY)
    _one_line(_run(["-m", "mgm_mlx.generate", "--model", TINY, "--prompt", "hi"]), "holds only the image path")
    _one_line(_run(["-m", "mgm_mlx.convert", "--hf-path", TINY, "--mlx-path", tmp_path / "out"]),
              "holds only the image path")
    _one_line(_run([EXAMPLES / "ask.py", "--model", TINY]), "holds only the image path")


def test_examples_run_from_another_folder(released, tmp_path):
    out = _run([EXAMPLES / "ask.py", "--model", released], cwd=tmp_path)
    assert out.returncode == 0, out.stderr.decode()
    out = _run([EXAMPLES / "chat.py", "--model", released], stdin=b"What is it?\n\n", cwd=tmp_path)
    assert out.returncode == 0, out.stderr.decode()


def test_a_closed_pipe_ends_quietly(released):
    command = (f"{sys.executable} -m mgm_mlx.generate --model {released} --prompt 'Tell me a story' -m 200 "
               "--image " + str(HOUSE) + " | head -c 1")
    out = subprocess.run(["bash", "-c", command], capture_output=True)
    assert b"Traceback" not in out.stderr and b"error" not in out.stderr, out.stderr.decode()


def test_the_generate_function_survives_importing_its_module(released):
    code = ("from mgm_mlx.generate import Chat\nimport mgm_mlx\n"
            f"model, processor = mgm_mlx.load({str(released)!r})\n"
            "print(type(mgm_mlx.generate(model, processor, 'hi', max_tokens=2)).__name__)")
    out = _run(["-c", code])
    assert out.returncode == 0 and out.stdout.decode().strip() == "str", out.stderr.decode()


# ---- 5. what the user sees

@pytest.fixture
def forced(gemma, monkeypatch):
    """Make the tiny LLM pick the given token ids in turn (then its own choices)."""
    model, processor = gemma
    llm_class = type(model.language_model)
    original = llm_class.__call__

    def force(ids):
        calls = []

        def call(self, inputs, cache=None, input_embeddings=None):
            logits = original(self, inputs, cache=cache, input_embeddings=input_embeddings)
            if logits.shape[1] > 1:  # a prefill chunk: its logits are not sampled
                return logits
            if len(calls) < len(ids):
                logits = logits + 1000.0 * (mx.arange(logits.shape[-1]) == ids[len(calls)])
            calls.append(1)
            return logits

        monkeypatch.setattr(llm_class, "__call__", call)

    return force


def test_special_tokens_are_not_shown(gemma, forced):
    model, processor = gemma
    vocab = processor.tokenizer.get_vocab()
    hello = processor.tokenizer.encode("red", add_special_tokens=False)
    forced([vocab["<start_of_turn>"], *hello, vocab["<bos>"], *hello])
    chat = Chat(model, processor)
    reply = chat.send("hi", max_tokens=6)
    assert reply.startswith("redred") and "<" not in reply, reply
    assert "<" not in chat.messages[-1]


def test_escape_sequences_are_shown_harmlessly(released, gemma, forced, monkeypatch, capsys):
    from mgm_mlx.generate import printable

    assert printable("a\x1b[2Jb\tc\nd\x9b\x07") == "a^[[2Jb\tc\nd\\x9b^G"
    model, processor = gemma
    escape = processor.tokenizer.encode("\x1b]0;owned\x07", add_special_tokens=False)
    forced(escape)
    monkeypatch.setattr("mgm_mlx.loading.load", lambda *a, **k: gemma)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    main(["--model", "any", "--prompt", "hi", "-m", str(len(escape)), "--quiet"])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "^[]0;owned^G" in out, repr(out)
