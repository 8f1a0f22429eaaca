"""The first run (#16): the default model from a Hugging Face cache laid out as huggingface_hub
lays it out (offline), converted once into mgm-mlx's cache and reused; the umbrella command;
generate's and chat's flags and their checks; images by URL from a local http.server; and
convert's quantization options, --dequantize and --upload-repo (the hub monkeypatched)."""

import argparse
import http.server
import json
import queue
import subprocess
import sys
import threading
from functools import partial
from pathlib import Path

import mgm_mlx
from mgm_mlx import cli, default_model
from mgm_mlx import generate as generate_cli
from mgm_mlx.__main__ import COMMANDS
from mgm_mlx.__main__ import main as umbrella
from mgm_mlx.convert import convert as convert_module
from mgm_mlx.session import Settings

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten

from checkpoints import hub_cache, make_checkpoint

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
HOUSE = EXAMPLES / "house.png"
QUESTION = "What is in the picture?"
REPO = default_model.DEFAULT_MODEL


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("first-run") / "MGM-2B", "gemma")[0]


@pytest.fixture(scope="module")
def hub(released, tmp_path_factory):
    """A Hugging Face cache holding the tiny model as YanweiLi/MGM-2B."""
    cache = tmp_path_factory.mktemp("hub")
    hub_cache(cache, REPO, released)
    return cache


@pytest.fixture
def offline(hub, tmp_path, monkeypatch):
    """The hub's cache is `hub`, no network; mgm-mlx's cache is empty. Counts conversions."""
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("MGM_MLX_HOME", str(tmp_path / "home"))
    calls = []
    real = convert_module.convert

    def counted(*args, **kwargs):
        calls.append(args[:2])
        return real(*args, **kwargs)

    monkeypatch.setattr(convert_module, "convert", counted)
    return calls


def _main(main, argv, capsys):
    """Run a command's main in this process -> (exit code, stdout, stderr)."""
    code = 0
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else e.code)
    out = capsys.readouterr()
    return code, out.out, out.err


# ---- the default model

def test_generate_without_model_converts_once_then_reuses(offline, tmp_path, capsys):
    argv = ["--image", HOUSE, "--prompt", QUESTION, "-m", "6"]
    code, first, err = _main(generate_cli.main, argv, capsys)
    assert code == 0, err
    folder = tmp_path / "home" / "models" / "YanweiLi--MGM-2B-4bit"
    assert offline == [(REPO, folder)]  # one conversion, of the repo, into the cache
    assert f"First run of the default model {REPO}" in err and "it is in the Hugging Face cache" in err
    assert f"converting it to 4 bits once into {folder}" in err and "deleting that folder removes it" in err
    assert f"Converted {REPO} to 4 bits: {folder}" in err and "Generation:" in err
    config = json.loads((folder / "config.json").read_text())
    assert config["quantization"] == {"group_size": 64, "bits": 4}
    assert "base_model: YanweiLi/MGM-2B" in (folder / "README.md").read_text()

    code, second, err = _main(generate_cli.main, argv, capsys)
    assert code == 0 and offline == [(REPO, folder)]  # reused: no second conversion
    assert "First run" not in err and second == first

    code, _, err = _main(generate_cli.main, argv + ["--q-bits", "8"], capsys)  # its own cached copy
    assert code == 0 and offline[-1] == (REPO, folder.with_name("YanweiLi--MGM-2B-8bit"))
    assert json.loads((folder.with_name("YanweiLi--MGM-2B-8bit") / "config.json").read_text())["quantization"]["bits"] == 8


def test_the_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setenv("MGM_MLX_HOME", str(tmp_path / "h"))
    assert default_model.converted_folder() == tmp_path / "h" / "models" / "YanweiLi--MGM-2B-4bit"
    monkeypatch.delenv("MGM_MLX_HOME")
    from platformdirs import user_cache_dir

    assert default_model.converted_folder(bits=8) == Path(user_cache_dir("mgm-mlx")) / "models" / "YanweiLi--MGM-2B-8bit"


def test_offline_and_not_downloaded_is_one_line(offline, monkeypatch, tmp_path, capsys):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    code, out, err = _main(generate_cli.main, ["--prompt", QUESTION], capsys)
    assert err == "" and offline == []
    assert code.startswith(f"error: the default model {REPO} is not downloaded yet") and "\n" not in code
    assert "HF_HUB_OFFLINE" in code and "--model" in code and "YanweiLi--MGM-2B-4bit" in code

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # no network: the hub's look-up fails

    def unreachable(*a, **k):
        raise OSError("[Errno -2] Name or service not known")

    monkeypatch.setattr("huggingface_hub.HfApi.model_info", unreachable)
    code, out, err = _main(generate_cli.main, ["--prompt", QUESTION], capsys)
    assert err == "" and "huggingface.co cannot be reached; once online, run this command again" in code


def test_a_download_says_its_size_first(offline, hub, monkeypatch, tmp_path, capsys):
    """Online and not cached (the hub stood in for): the size from the hub, then the download."""
    import huggingface_hub
    import huggingface_hub.constants as constants
    from huggingface_hub.hf_api import RepoSibling

    snapshot = next((hub / "models--YanweiLi--MGM-2B" / "snapshots").iterdir())
    siblings = [RepoSibling(f.name, size=f.stat().st_size) for f in snapshot.iterdir()]
    siblings.append(RepoSibling("training_args.bin", size=10**9))  # not downloaded, not counted
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info",
                        lambda self, repo, **k: type("Info", (), {"siblings": siblings})())
    fetched = []

    def snapshot_download(repo, allow_patterns=None, local_files_only=False, **k):
        if local_files_only:
            raise huggingface_hub.errors.LocalEntryNotFoundError("not cached")
        fetched.append((repo, allow_patterns))
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    folder = default_model.default_model()
    size = sum(s.size for s in siblings[:-1] if s.rfilename != "special_tokens_map.json"
               or "special_tokens_map.json" in mgm_mlx.loading.ALLOW_PATTERNS)
    assert f"downloading it into the Hugging Face cache ({size / 1e6:.1f} MB)" in capsys.readouterr().err
    assert fetched == [(REPO, mgm_mlx.loading.ALLOW_PATTERNS)] and offline == [(REPO, folder)]


# ---- the umbrella command

def test_umbrella_version_help_and_dispatch(capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["/venv/bin/mgm-mlx"])  # as the console script starts it
    assert _main(umbrella, ["--version"], capsys)[:2] == (0, f"mgm-mlx {mgm_mlx.__version__}\n")
    code, out, _ = _main(umbrella, ["-h"], capsys)
    assert code == 0 and all(f"  {name} " in out for name in ("generate", "chat", "convert"))
    code, _, err = _main(umbrella, [], capsys)
    assert code == 2 and "usage: mgm-mlx COMMAND" in err
    code, _, _ = _main(umbrella, ["serve"], capsys)
    assert code == f"error: unknown command 'serve'; choose from {', '.join(COMMANDS)} (see mgm-mlx --help)"
    for name, (module, _) in COMMANDS.items():
        code, out, _ = _main(umbrella, [name, "--help"], capsys)
        assert code == 0 and out.startswith(f"usage: mgm-mlx {name} ")
        assert callable(__import__(module, fromlist=["main"]).main)
    code, _, err = _main(umbrella, ["generate", "--temp", "-1", "--prompt", "hi", "--model", "nowhere"], capsys)
    assert code == "error: the temperature must be 0 (greedy) or more (got -1.0)"


def test_umbrella_from_a_shell():
    scripts = Path(sys.executable).parent
    out = subprocess.run([scripts / "mgm-mlx", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == f"mgm-mlx {mgm_mlx.__version__}\n", out.stderr
    out = subprocess.run([sys.executable, "-m", "mgm_mlx", "convert", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("usage: python -m mgm_mlx convert ")


# ---- generate's flags

def test_generate_flags_map_onto_settings():
    args = generate_cli.parser().parse_args([
        "--prompt", "hi", "--temperature", "0.7", "--top-p", "0.9", "--top-k", "5", "--min-p", "0.05",
        "--repetition-penalty", "1.1", "--seed", "3", "--max-kv-size", "1000", "--kv-bits", "4",
        "--kv-group-size", "32", "--quantized-kv-start", "16", "--prefill-step-size", "64", "-m", "9",
        "--system-prompt", "Be brief.", "--dtype", "bfloat16"])
    assert cli.settings(args) == Settings(max_tokens=9, temp=0.7, top_p=0.9, top_k=5, min_p=0.05,
                                          repetition_penalty=1.1, seed=3, max_kv_size=1000, kv_bits=4,
                                          kv_group_size=32, quantized_kv_start=16, prefill_step_size=64)
    assert args.system == "Be brief." and args.dtype == "bfloat16" and args.model is None
    assert cli.settings(generate_cli.parser().parse_args(["--prompt", "hi"])) == Settings()  # the same defaults


def test_help_shows_every_default(capsys):
    for parser in (generate_cli.parser(), __import__("mgm_mlx.chat", fromlist=["x"]).parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if action.default is None or action.default is False or action.default in ([], argparse.SUPPRESS):
                continue
            if action.option_strings:
                assert f"{action.option_strings[0]}" in text
                assert f"default: {action.default}" in text or "default" in (action.help or ""), action.dest
    help_text = " ".join(generate_cli.parser().format_help().split())
    for words in ("(default: 256)", "(default: 2048)", "default: YanweiLi/MGM-2B", "--temperature TEMP",
                  "--system-prompt SYSTEM"):
        assert words in help_text


@pytest.mark.parametrize("flags, words", [
    (["--temp", "-1"], "the temperature must be 0"),
    (["--top-p", "2"], "top_p must be above 0 and at most 1"),
    (["--top-k", "-1"], "top_k must be 0"),
    (["--min-p", "1.5"], "min_p must be"),
    (["--repetition-penalty", "0"], "repetition penalty must be above 0"),
    (["--max-kv-size", "0"], "max_kv_size must be at least 1"),
    (["--kv-bits", "7"], "kv_bits must be one of"),
    (["--kv-group-size", "48"], "kv_group_size must be"),
    (["--quantized-kv-start", "-1"], "quantized_kv_start must be"),
    (["--prefill-step-size", "0"], "prefill_step_size must be at least 1"),
])
def test_nonsense_is_one_line_before_loading(flags, words, offline, capsys):
    # no --model: a resolved default model would be converted, and a load would fail otherwise
    code, out, err = _main(generate_cli.main, ["--prompt", "hi", *flags], capsys)
    assert code.startswith("error: ") and words in code and "\n" not in code and offline == [] and err == ""


def test_usage_errors_are_one_line(capsys):
    code, _, err = _main(generate_cli.main, ["--prompt", "hi", "--dtype", "float8"], capsys)
    assert code == 2 and err.count("\n") == 1 and "invalid choice: 'float8'" in err and "--help" in err


def test_generate_with_the_new_flags(released, monkeypatch, capsys):
    from mgm_mlx import loading

    seen = []
    real = loading.load

    def load(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "load", load)
    base = ["--model", released, "--image", HOUSE, "--prompt", QUESTION, "-m", "5"]
    for flags in (["--kv-bits", "4", "--kv-group-size", "32", "--top-k", "5", "--min-p", "0.05",
                   "--repetition-penalty", "1.1", "--prefill-step-size", "64", "--temperature", "0.7",
                   "--seed", "3", "--dtype", "bfloat16"],
                  ["--max-kv-size", "1000", "--q-bits", "3"]):
        code, out, err = _main(generate_cli.main, base + flags, capsys)
        assert code == 0 and "Generation: 5 tokens" in err, err
    assert seen[0]["dtype"] == mx.bfloat16 and seen[0]["quantize_bits"] is None
    assert seen[1]["dtype"] is None and seen[1]["quantize_bits"] == 3


def test_image_by_url(released, capsys, monkeypatch, tmp_path):
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "photo.png").write_bytes(HOUSE.read_bytes())
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        code, out, err = _main(generate_cli.main, ["--model", released, "--image", f"{url}/photo.png",
                                                   "--prompt", QUESTION, "-m", "3"], capsys)
        assert code == 0 and "Image tokens: 576" in err, err
        code, out, err = _main(generate_cli.main, ["--model", "never-loaded", "--image", f"{url}/missing.png",
                                                   "--prompt", QUESTION], capsys)
        assert code.startswith("error: ") and "404" in code and "\n" not in code
    finally:
        server.shutdown()
        server.server_close()
    code, out, err = _main(generate_cli.main, ["--model", "never-loaded", "--image", f"{url}/photo.png",
                                               "--prompt", QUESTION], capsys)  # the server is gone
    assert code.startswith("error: ") and "\n" not in code and "never-loaded" not in code


# ---- chat's flags (the Textual app is never started here)

class FakeApp:
    """Stands in for ChatApp: builds the real engine, waits for the model, never draws."""

    started = []

    def __init__(self, factory, name):
        self.factory, self.name = factory, name

    def run(self):
        from mgm_mlx.tui.engine import Failed, Loaded

        posted = queue.Queue()
        engine = self.factory(posted.put)
        while not isinstance(message := posted.get(timeout=120), (Loaded, Failed)):
            pass
        FakeApp.started.append((self.name, engine, posted))
        return f"error: {message.error}" if isinstance(message, Failed) else None


def test_chat_flags_reach_the_engine(offline, monkeypatch, tmp_path, capsys):
    from mgm_mlx import chat
    from mgm_mlx.tui import app
    from mgm_mlx.tui.engine import Done

    monkeypatch.setattr(app, "ChatApp", FakeApp)
    FakeApp.started.clear()
    code, out, err = _main(chat.main, ["--top-p", "0.9", "--seed", "7", "--max-kv-size", "1500", "--temp", "0.5",
                                       "-m", "4", "--q-bits", "4"], capsys)
    assert code == 0, code
    assert offline == [(REPO, tmp_path / "home" / "models" / "YanweiLi--MGM-2B-4bit")]  # the default model
    name, engine, posted = FakeApp.started[-1]
    assert name == REPO and engine.quantize_bits is None and engine.system is None
    assert engine.settings == {**vars(Settings()), "max_tokens": 4, "temp": 0.5, "top_p": 0.9, "seed": 7,
                               "max_kv_size": 1500}
    engine.send("What is it?", [str(HOUSE)])
    while not isinstance(message := posted.get(timeout=120), Done):
        pass
    assert message.response.generation_tokens <= 4 and message.response.image_tokens == 576

    FakeApp.started.clear()
    code, _, _ = _main(chat.main, ["--system", "Be brief."], capsys)  # the default model's gemma template has none
    assert code == "error: the gemma template has no system prompt" and FakeApp.started == []

    for flags, words in ((["--top-p", "0"], "top_p must be"), (["--seed", "-2"], "seed must be"),
                         (["--max-kv-size", "0"], "max_kv_size"), (["--gen-size", "1000"], "multiples of 16")):
        FakeApp.started.clear()
        code, _, _ = _main(chat.main, ["--model", "never-loaded", *flags], capsys)
        assert code.startswith("error: ") and words in code and FakeApp.started == []  # before the app


def test_chat_help_names_every_flag(capsys):
    from mgm_mlx import chat

    code, out, _ = _main(chat.main, ["--help"], capsys)
    for flag in ("--model", "--q-bits", "--system", "--top-p", "--seed", "--max-kv-size", "--temp", "--max-tokens",
                 "--gen-model", "--gen-keep"):
        assert flag in out
    parser = chat.parser()
    assert all(a.help for a in parser._actions), [a.dest for a in parser._actions if not a.help]


# ---- loading and conversion

def test_loading_progress_only_when_asked(released, capsys):
    mgm_mlx.load(released)
    assert capsys.readouterr().err == ""
    mgm_mlx.load(released, progress=True)
    assert "Loading" in capsys.readouterr().err


def _llm(folder):
    model, _ = mgm_mlx.load(folder, dtype=mx.float32)
    return model


def _logits(model):
    return np.array(model.language_model(mx.array([[5, 17, 42, 99, 3, 250, 7]])))


def test_convert_quantization_options(released, tmp_path, capsys):
    from mgm_mlx.convert.convert import main

    code, out, err = _main(main, ["--hf-path", released, "--mlx-path", tmp_path / "q8", "--q-bits", "8"], capsys)
    assert code == 0 and "saved" in out  # --q-bits without -q quantizes
    assert json.loads((tmp_path / "q8" / "config.json").read_text())["quantization"] == {"group_size": 64, "bits": 8}

    code, out, err = _main(main, ["--hf-path", released, "--mlx-path", tmp_path / "mixed",
                                  "--quant-predicate", "mixed_3_6"], capsys)
    assert code == 0, code
    q = json.loads((tmp_path / "mixed" / "config.json").read_text())["quantization"]
    layers = {k: v["bits"] for k, v in q.items() if isinstance(v, dict)}
    assert layers and all(k.startswith("language_model.") for k in layers)  # never the image path
    assert layers["language_model.model.layers.1.mlp.down_proj"] == 6  # the last layer: more bits
    assert layers["language_model.model.layers.0.mlp.down_proj"] == 3
    assert layers["language_model.model.layers.0.self_attn.q_proj"] == 3
    mixed = _llm(tmp_path / "mixed")
    assert mixed.language_model.model.layers[1].mlp.down_proj.bits == 6
    assert mixed.language_model.model.layers[0].mlp.down_proj.bits == 3
    assert not any(isinstance(m, nn.QuantizedLinear) for _, m in mixed.vision.named_modules())

    if "mxfp4" in convert_module.q_modes():
        code, out, err = _main(main, ["--hf-path", released, "--mlx-path", tmp_path / "fp4", "--q-mode", "mxfp4"], capsys)
        assert code == 0, code
        q = json.loads((tmp_path / "fp4" / "config.json").read_text())["quantization"]
        assert q == {"group_size": 32, "bits": 4, "mode": "mxfp4"}
        assert _llm(tmp_path / "fp4").language_model.model.layers[0].mlp.down_proj.mode == "mxfp4"

    for flags, words in ((["--q-mode", "mxfp4", "--q-bits", "8"], "mxfp4 has --q-bits 4"),
                         (["--quant-predicate", "mixed_3_6", "--q-mode", "mxfp4"], "recipes are affine"),
                         (["--quant-predicate", "mixed_3_6", "--q-bits", "4"], "leave out --q-bits"),
                         (["-q", "--q-group-size", "16"], "groups of 32, 64 or 128"),
                         (["-q", "--dequantize"], "not both"),
                         (["--dequantize"], "is not quantized"),
                         (["--upload-repo", "not a repo"], "is not a Hugging Face repo id")):
        code, _, _ = _main(main, ["--hf-path", released, "--mlx-path", tmp_path / "bad", *flags], capsys)
        assert code.startswith("error: ") and words in code, code
        assert not (tmp_path / "bad").exists()


def test_dequantize_round_trip(released, tmp_path, capsys):
    from mgm_mlx.convert.convert import main

    assert _main(main, ["--hf-path", released, "--mlx-path", tmp_path / "q", "-q"], capsys)[0] == 0
    code, out, _ = _main(main, ["--hf-path", tmp_path / "q", "--mlx-path", tmp_path / "f", "-d", "--dtype", "float32"],
                         capsys)
    assert code == 0, code
    config = json.loads((tmp_path / "f" / "config.json").read_text())
    assert "quantization" not in config and config["torch_dtype"] == "float32"
    quantized, floats = _llm(tmp_path / "q"), _llm(tmp_path / "f")
    assert not any(k.endswith(".scales") for k, _ in tree_flatten(floats.parameters()))
    np.testing.assert_allclose(_logits(floats), _logits(quantized), atol=2e-3)
    # the dequantized weights are the quantized ones, exactly
    layer = quantized.language_model.model.layers[0].mlp.down_proj
    weight = mx.dequantize(layer.weight, layer.scales, layer.biases, layer.group_size, layer.bits)
    assert np.array_equal(np.array(weight), np.array(floats.language_model.model.layers[0].mlp.down_proj.weight))


def test_convert_progress_and_upload(offline, released, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    calls = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, **k: calls.append(("create", k)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **k: calls.append(("upload", k)))
    folder = convert_module.convert(REPO, tmp_path / "up", quantize=True, upload_repo="someone/MGM-2B-4bit-mlx",
                                    progress=True)
    assert "Converting: 100%" in capsys.readouterr().err  # the bar, with the output size
    assert [c[0] for c in calls] == ["create", "upload"]
    assert calls[0][1]["repo_id"] == "someone/MGM-2B-4bit-mlx" and calls[0][1]["exist_ok"]
    assert calls[1][1]["folder_path"] == str(folder) and calls[1][1]["repo_id"] == "someone/MGM-2B-4bit-mlx"
    assert calls[1][1]["ignore_patterns"] == ["mgm_mlx.json"]
    card = huggingface_hub.ModelCard.load(folder / "README.md")
    assert card.data.library_name == "mlx" and card.data.base_model == REPO
    assert 'mgm_mlx.load("someone/MGM-2B-4bit-mlx")' in card.text and "4-bit (group size 64) LLM" in card.text

    def refused(self, **k):  # not logged in
        raise huggingface_hub.errors.LocalTokenNotFoundError("Token is required (`token=True`), but no token found.")

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", refused)
    code, out, err = _main(convert_module.main, ["--hf-path", REPO, "--mlx-path", tmp_path / "up2", "-q",
                                                 "--upload-repo", "someone/x"], capsys)
    assert code.startswith(f"error: {tmp_path / 'up2'} was written, but uploading it to someone/x failed (Token is")
    assert "hf upload someone/x" in code and (tmp_path / "up2" / "config.json").exists()
