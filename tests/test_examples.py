"""Every example runs end to end on a tiny checkpoint in the released layout."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from checkpoints import hub_cache, make_checkpoint
from common import TINY

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ex") / "gemma", "gemma")[0]


def _run(script, *args, stdin=None, env=None):
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *map(str, args)],
                         capture_output=True, text=True, input=stdin, cwd=EXAMPLES.parent, env=env)
    assert out.returncode == 0, out.stderr
    return out


def test_ask(model):
    out = _run("ask.py", "--model", model, "--image", EXAMPLES / "house.png")
    assert "Generation:" in out.stderr and "Image tokens: 576" in out.stderr


def test_ask_with_the_default_model(model, tmp_path):
    hub_cache(tmp_path / "hub", "YanweiLi/MGM-2B", model)  # a tiny model stands in for MGM-2B
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1",
           "MGM_MLX_HOME": str(tmp_path / "home")}
    out = _run("ask.py", "--image", EXAMPLES / "house.png", env=env)
    assert "First run of the default model YanweiLi/MGM-2B" in out.stderr and "Generation:" in out.stderr


def test_chat(model):
    out = _run("chat.py", "--model", model, stdin="What is it?\nAnd the roof?\n/new\nHi\n\n")
    assert out.stdout.count("> ") == 5


def test_batch(model, tmp_path):
    (tmp_path / "a.png").write_bytes((EXAMPLES / "house.png").read_bytes())
    (tmp_path / "b.jpg").write_text("not really a picture")
    out = _run("batch.py", "--model", model, "--folder", tmp_path)
    lines = out.stdout.strip().splitlines()
    assert lines[0].startswith("a.png: ") and lines[1].startswith("b.jpg: (skipped:")


def test_encode_image():
    out = _run("encode_image.py", "--model", TINY, "--image", EXAMPLES / "house.png")
    assert "tokens (1, 576, 64)" in out.stdout
