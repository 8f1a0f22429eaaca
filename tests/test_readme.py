"""The README's examples, run as written, in the README's order, in one folder.

Every command line of its ```bash blocks and every ```python block is either run here or
listed in NOT_RUN with the reason. A tiny model stands in for YanweiLi/MGM-2B (and a tiny
Llama without towers for path/to/MGM-7B, its towers under their real repo ids) in a Hugging
Face cache laid out as huggingface_hub lays it out, offline. The first example runs in a
fresh process from a shell's point of view; the others call the same `main(argv)` in this
process (the chat app's window is stood in for, its engine is real; the upload to the hub is
recorded instead of sent).
"""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from mgm_mlx import chat, default_model
from mgm_mlx import generate as generate_cli
from mgm_mlx.__main__ import main as umbrella
from mgm_mlx.convert import convert as convert_module

import pytest
from PIL import Image

from checkpoints import hub_cache, make_checkpoint
from test_first_run import FakeApp

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
TOWERS = ("openai/clip-vit-large-patch14-336", "laion/CLIP-convnext_large_d_320.laion2B-s29B-b131K-ft-soup")

# What is not run here, and why: (a start of the command line or of the code block, why).
NOT_RUN = [
    ("pip install", "installs packages; .ci/ installs the project from scratch as the README says"),
    ("sudo apt install", "installs a system package"),
    ("git clone", "needs the network; only for re-making the goldens"),
    ("pytest", "the test suite itself"),
    ("ruff check", "the lint; .ci/run runs it before the tests"),
    ("python tests/goldens/make_goldens.py", "needs torch, transformers, timm and MGM's repository"),
    ("python benchmarks/", "full-size benchmarks: minutes to hours each"),
    ("python -m mgm_mlx.server", "serves until stopped; test_server.py starts the server and runs the README's "
                                 "curl and openai examples against it"),
    ("curl ", "needs the server: test_server.py::test_the_readmes_examples_as_written"),
    ("IMG=", "the same curl block"), ("# ", "a comment line of a curl block"), ('{"', "the same curl block"),
    ("EOF", "the same curl block"),
    ("export OPENAI_API_BASE", "lmms-eval's setting; lmms-eval is not a dependency"),
    ("python -m lmms_eval", "lmms-eval is not a dependency (and needs its datasets)"),
    ("import base64\nfrom openai import OpenAI", "needs the server: test_server.py runs it against one"),
    ("mlx.distributed_config", "needs two Macs reachable by ssh"),
    ("mlx.launch --hostfile", "needs two Macs; test_distributed.py runs the same command under mlx.launch -n 2"),
    ("python -m mgm_mlx.eval", "needs the benchmark datasets; test_eval.py runs every task end to end on tiny "
                               "datasets in a local Hugging Face cache"),
    ("python examples/encode_image.py", "test_examples.py::test_encode_image runs it as written"),
    ("python -m mgm_mlx.generate --model mgm-7b-4bit --prompt \"Draw",
     "--gen needs diffusionkit's FLUX weights; test_imagegen.py runs --gen end to end on tiny weights"),
    ("from mgm_mlx.imagegen import", "continues a conversation (`reply`) and needs diffusionkit's weights; "
                                     "test_imagegen.py covers the same calls"),
]


def blocks(language: str) -> list:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.S | re.M)


def commands() -> list:
    """The command lines of the ```bash blocks, continuations joined, comments dropped."""
    out = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = " ".join(re.sub(r"\s#.*$", "", line).split())  # no "#" inside the commands' quotes
            if line:
                out.append(line)
    return out


def skipped(text: str) -> str | None:
    return next((why for start, why in NOT_RUN if text.startswith(start)), None)


def same(command: str) -> str:
    """`python -m mgm_mlx convert` and `python -m mgm_mlx.convert` are one command."""
    return re.sub(r"^python -m mgm_mlx[ .]", "mgm-mlx ", command)


def test_every_example_is_run_or_explained():
    for text in commands() + [b.strip() for b in blocks("python")]:
        assert text.startswith(("python -m mgm_mlx", "mgm-mlx", "import mgm_mlx", "import mlx.core")) or skipped(text), \
            f"README example neither run by test_readme.py nor listed in NOT_RUN: {text[:80]}"
    assert commands()[2] == 'python -m mgm_mlx.generate --image photo.jpg --prompt "What is in the picture?"'


@pytest.fixture
def world(tmp_path, monkeypatch):
    """The folder the README's commands run in, and the Hugging Face cache they see."""
    import huggingface_hub
    import huggingface_hub.constants as constants

    hub, work, parts = tmp_path / "hub", tmp_path / "work", tmp_path / "parts"
    hub_cache(hub, default_model.DEFAULT_MODEL, make_checkpoint(parts / "MGM-2B", "gemma")[0])
    llama, towers = make_checkpoint(parts / "MGM-7B", "llama", towers_inside=False)
    for repo, folder in zip(TOWERS, towers):
        hub_cache(hub, repo, folder)
    (work / "path" / "to").mkdir(parents=True)
    shutil.copytree(llama, work / "path" / "to" / "MGM-7B")
    shutil.copytree(parts / "MGM-2B", work / "path" / "to" / "MGM-2B")
    Image.open(ROOT / "examples" / "house.png").convert("RGB").save(work / "photo.jpg", quality=90)

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("MGM_MLX_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(work)
    from mgm_mlx.tui import app

    monkeypatch.setattr(app, "ChatApp", FakeApp)
    uploads = []
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda self, **k: uploads.append(("create", k)))
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", lambda self, **k: uploads.append(("upload", k)))
    env = {**os.environ, "HF_HUB_CACHE": str(hub), "HF_HUB_OFFLINE": "1", "MGM_MLX_HOME": str(tmp_path / "home")}
    return work, env, uploads


MAINS = {"mgm_mlx": umbrella, "mgm_mlx.generate": generate_cli.main, "mgm_mlx.chat": chat.main,
         "mgm_mlx.convert": convert_module.main}


def _in_process(command: str, capsys) -> tuple:
    argv = shlex.split(command)
    module, rest = ("mgm_mlx", argv[1:]) if argv[0] == "mgm-mlx" else (argv[2], argv[3:])
    code = 0
    try:
        MAINS[module](rest)
    except SystemExit as e:
        code = e.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_readme_as_written(world, capsys):
    work, env, uploads = world
    done, first = set(), True
    for command in commands():
        if skipped(command) or same(command) in done:  # the same conversion twice would (rightly) be refused
            continue
        if same(command).startswith("mgm-mlx convert "):
            done.add(same(command))
        if first:  # a fresh process, as from a shell: downloads (here: from the cache) and converts
            out = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=work, env=env,
                                 capture_output=True, text=True)
            assert out.returncode == 0, f"{command}\n{out.stderr}"
            assert "First run of the default model YanweiLi/MGM-2B" in out.stderr and "Generation:" in out.stderr
            assert default_model.is_ready(default_model.converted_folder())
            first = False
            continue
        code, out, err = _in_process(command, capsys)
        assert code == 0, f"{command}\n{code}\n{err}"
        assert "First run" not in err, command  # the default model is converted once
        if " generate " in f" {same(command)} ":
            assert "Generation:" in err, command
    assert [u[0] for u in uploads] == ["create", "upload"] and uploads[0][1]["repo_id"] == "your-name/MGM-2B-4bit-mlx"
    for folder in ("mgm-2b-4bit", "mgm-2b-8bit", "mgm-2b-mixed", "mgm-2b-bf16", "mgm-2b-4bit-mlx", "mgm-7b-4bit"):
        assert (work / folder / "config.json").exists(), folder

    # the Python blocks, after the commands (they use mgm-2b-4bit and photo.jpg)
    ran = []
    for code in blocks("python"):
        if not skipped(code.strip()):
            namespace = {}
            exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (the README's own example)
            ran.append(namespace)
    assert len(ran[0]["chat"].turns) == 2  # the chat example's two questions
    assert ran[1]["tokens"].shape == (1, 576, 64)  # the image path on its own
