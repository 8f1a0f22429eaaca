"""convert must never destroy what it did not write (issue #11, section 1).

Every refusal is one `error:` line, exit 1, and leaves the folders byte for byte as they were.
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from checkpoints import make_checkpoint

import mgm_mlx
from mgm_mlx.convert.convert import convert, main

ENV = {**os.environ, "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("released") / "MGM-2B", "gemma")[0]


@pytest.fixture(scope="module")
def refs(src, tmp_path_factory):
    """Two different outputs of the same source: the earlier (float16) and the new (4-bit)."""
    root = tmp_path_factory.mktemp("refs")
    convert(src, root / "old", dtype="float16")
    convert(src, root / "new", quantize=True)
    return root / "old", root / "new"


def files(folder: Path):
    """A converted folder's contents (flat), or None if there is no folder."""
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else None


def snapshot(root: Path) -> dict:
    """Everything under root: files by content, symlinks by target, folders by name."""
    out = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        out[key] = ("link", os.readlink(p)) if p.is_symlink() else p.read_bytes() if p.is_file() else "dir"
    return out


def cli(argv, capsys):
    """main(argv) must exit non-zero with one line; returns that line."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
    err = capsys.readouterr().err
    message = str(info.value.code)
    assert info.value.code not in (0, None) and "\n" not in message and "Traceback" not in err, (message, err)
    return message


def run(args, cwd=None, **kw):
    return subprocess.run([sys.executable, "-m", "mgm_mlx.convert", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=ENV, timeout=120, **kw)


# ---- refusals: one line, exit 1, nothing touched

def test_force_in_a_folder_holding_the_source(src, tmp_path):
    """The issue's first case: `--hf-path src --mlx-path . --force` emptied the folder."""
    shutil.copytree(src, tmp_path / "src")
    (tmp_path / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    out = run(["--hf-path", "src", "--mlx-path", ".", "--force"], cwd=tmp_path)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.startswith("error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "current folder" in out.stderr
    assert snapshot(tmp_path) == before


def _layout(root: Path, src: Path):
    """models/MGM-2B (the source), models/other/x.txt, a/keep.txt, a/b/, work/notes.txt,
    empty/, file.txt, link -> models/MGM-2B."""
    shutil.copytree(src, root / "models" / "MGM-2B")
    (root / "models" / "other").mkdir()
    (root / "models" / "other" / "x.txt").write_text("x")
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "keep.txt").write_text("keep")
    (root / "work" / "sub").mkdir(parents=True)
    (root / "work" / "notes.txt").write_text("notes")
    (root / "empty").mkdir()
    (root / "file.txt").write_text("a file")
    (root / "link").symlink_to(root / "models" / "MGM-2B")


@pytest.mark.parametrize("cwd, hf, mlx, words", [
    (".", "models/MGM-2B", "a/b/..", "not an earlier mgm-mlx output"),  # resolves to a/
    (".", "models/MGM-2B", "models", "contains the source"),
    (".", "models/MGM-2B", "models/MGM-2B", "is the source"),
    (".", "models/MGM-2B", "link", "is the source"),  # a symlink to it
    (".", "link", "models/MGM-2B/../MGM-2B", "is the source"),
    (".", "models/MGM-2B", "models/MGM-2B/mlx", "inside the source"),
    (".", "models/MGM-2B", "link/mlx", "inside the source"),
    ("work", "../models/MGM-2B", ".", "current folder"),
    ("work/sub", "../../models/MGM-2B", "..", "current folder or one of its parents"),
    ("empty", "../models/MGM-2B", ".", "current folder"),  # even when empty
    (".", "models/MGM-2B", "file.txt", "is a file"),
    (".", "models/MGM-2B", "models/other", "not an earlier mgm-mlx output"),
], ids=["dotdot", "contains-source", "is-source", "link-to-source", "source-via-link", "inside-source",
        "inside-source-via-link", "cwd", "cwd-parent", "empty-cwd", "file", "not-output"])
def test_force_refuses(src, tmp_path, monkeypatch, capsys, cwd, hf, mlx, words):
    _layout(tmp_path, src)
    before = snapshot(tmp_path)
    monkeypatch.chdir(tmp_path / cwd)
    message = cli(["--hf-path", hf, "--mlx-path", mlx, "--force"], capsys)
    assert message.startswith("error: ") and words in message, message
    assert snapshot(tmp_path) == before


def test_source_linked_files(src, tmp_path, monkeypatch, capsys):
    """A source folder of symlinks (as in the HF cache): a target holding the files they point
    to is refused; a target merely beside those files is fine."""
    shutil.copytree(src, tmp_path / "store" / "blobs")
    (tmp_path / "snapshot").mkdir()
    for f in (tmp_path / "store" / "blobs").iterdir():
        (tmp_path / "snapshot" / f.name).symlink_to(f)
    (tmp_path / "store" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    message = cli(["--hf-path", tmp_path / "snapshot", "--mlx-path", tmp_path / "store", "--force"], capsys)
    assert "contains the source" in message and snapshot(tmp_path) == before
    convert(tmp_path / "snapshot", tmp_path / "store" / "blobs-mlx")  # beside the real files
    assert (tmp_path / "store" / "blobs-mlx" / "mgm_mlx.json").exists()


def test_mount_point_is_refused(src, tmp_path, monkeypatch, capsys):
    (tmp_path / "disk").mkdir()
    monkeypatch.setattr(os.path, "ismount", lambda p: os.fspath(p) == str(tmp_path / "disk"))
    message = cli(["--hf-path", src, "--mlx-path", tmp_path / "disk"], capsys)
    assert "mount point" in message and os.listdir(tmp_path) == ["disk"]


def test_without_force_an_earlier_output_is_kept(src, refs, tmp_path, capsys):
    shutil.copytree(refs[0], tmp_path / "out")
    message = cli(["--hf-path", src, "--mlx-path", tmp_path / "out"], capsys)
    assert "earlier mgm-mlx output" in message and "--force" in message
    assert files(tmp_path / "out") == files(refs[0])


def test_every_output_carries_the_marker(refs):
    import json

    for folder in refs:
        marker = json.loads((folder / "mgm_mlx.json").read_text())
        assert marker == {"format": "mgm-mlx", "version": mgm_mlx.__version__}
