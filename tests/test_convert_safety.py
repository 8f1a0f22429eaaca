"""convert must never destroy what it did not write (issue #11, section 1, and a full disk).

Every refusal is one `error:` line, exit 1, and leaves the folders byte for byte as they were.
Replacing an earlier output is a swap: whatever happens on the way (a signal, a failed
rename, a full disk), the target holds either the complete earlier model or the complete
new one, and the exit message says which.
"""

import errno
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import mgm_mlx
from mgm_mlx.convert.convert import convert, main

import pytest

from checkpoints import make_checkpoint

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


def test_source_linked_files(src, tmp_path, capsys):
    """A source folder of symlinks (as in the HF cache): a target holding the files they point
    to is refused; a target merely beside those files is fine."""
    shutil.copytree(src, tmp_path / "store" / "blobs")
    link = tmp_path / "store" / "snapshots" / "abc"  # huggingface_hub's layout
    link.mkdir(parents=True)
    for f in (tmp_path / "store" / "blobs").iterdir():
        (link / f.name).symlink_to(Path("../../blobs") / f.name)
    (tmp_path / "store" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path)
    message = cli(["--hf-path", link, "--mlx-path", tmp_path / "store" / "blobs", "--force"], capsys)
    assert "contains the source" in message and snapshot(tmp_path) == before
    convert(link, tmp_path / "store" / "blobs-mlx")  # beside the real files
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


# ---- replacing: atomic, only what convert wrote

def test_force_replaces_an_earlier_output(src, refs, tmp_path, capsys):
    shutil.copytree(refs[0], tmp_path / "out")
    main(["--hf-path", str(src), "--mlx-path", str(tmp_path / "out"), "-q", "--force"])
    assert capsys.readouterr().out.startswith(f"saved {tmp_path / 'out'}")
    assert files(tmp_path / "out") == files(refs[1])
    assert os.listdir(tmp_path) == ["out"]  # nothing beside it


@pytest.mark.parametrize("earlier", [False, True], ids=["empty", "earlier-output"])
def test_symlink_target_is_filled_where_it_points(src, refs, tmp_path, capsys, earlier):
    real = tmp_path / "disk" / "mgm"
    shutil.copytree(refs[0], real) if earlier else real.mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    main(["--hf-path", str(src), "--mlx-path", str(tmp_path / "link"), "-q"] + ["--force"] * earlier)
    assert (tmp_path / "link").is_symlink() and os.readlink(tmp_path / "link") == str(real)
    assert files(real) == files(refs[1]) and os.listdir(real.parent) == ["mgm"]
    mgm_mlx.load(tmp_path / "link")


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", ""])
    p.wait()
    return p.pid


def test_stale_partials_of_dead_processes_are_removed(src, tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    for name, marker in ((f".out.partial-{dead}", True), (f".old.partial-{dead}", False),
                         (f".out.partial-{alive}", True), (f".notes.partial-{dead}", False)):
        (tmp_path / name).mkdir()
        if marker:
            (tmp_path / name / "mgm_mlx.json").write_text('{"format": "mgm-mlx", "version": "0.1.0"}')
            (tmp_path / name / "model.safetensors").write_bytes(b"half")
    (tmp_path / f".notes.partial-{dead}" / "draft.txt").write_text("not ours: no marker")
    convert(src, tmp_path / "out")
    # dead and ours (marker, or empty) go; a live process's and a foreign folder stay
    assert sorted(os.listdir(tmp_path)) == sorted([f".notes.partial-{dead}", f".out.partial-{alive}", "out"])


# ---- interrupted or failing at each step of the replace

class _After:
    """Wrap a function: on its n-th matching call, do the real thing, then send a signal."""

    def __init__(self, real, n, match, signum=signal.SIGINT):
        self.real, self.n, self.match, self.signum, self.calls = real, n, match, signum, 0

    def __call__(self, *args, **kw):
        result = self.real(*args, **kw)
        if self.match(*args):
            self.calls += 1
            if self.calls == self.n:
                os.kill(os.getpid(), self.signum)
        return result


def _is_old_model_file(names):
    return lambda path, *a: os.path.basename(os.fspath(path)) in names


def _involves_out(src, dst=None, *a):
    return any(os.path.basename(os.fspath(p)).startswith((".out.", "out")) for p in (src, dst) if p is not None)


STEPS = {  # step -> (function to wrap, n-th matching call, match)
    "exchange": ("_exchange", 1, lambda *a: True),
    "rename-1": ("rename", 1, _involves_out),
    "rename-2": ("rename", 2, _involves_out),
    "unlink": ("unlink", 1, None),  # a file of the earlier model is deleted
    "rmdir": ("rmdir", 1, _involves_out),  # the earlier model's folder is deleted
}


@pytest.mark.parametrize("swap, step, signum", [("exchange", s, signal.SIGINT) for s in ("exchange", "unlink", "rmdir")]
                         + [("two-renames", s, signal.SIGINT) for s in ("rename-1", "rename-2", "unlink", "rmdir")]
                         + [("exchange", "exchange", signal.SIGTERM), ("two-renames", "rename-1", signal.SIGHUP)])
def test_signal_at_each_step_of_the_replace(src, refs, tmp_path, monkeypatch, capsys, swap, step, signum):
    """A Ctrl-C right after any step of the swap waits for the swap: the target is the complete
    new model and the message says so (before: a model without its tokenizer files, or the
    new model, with 'nothing was written')."""
    if swap == "two-renames" or step == "exchange":
        from mgm_mlx import safe_output
    if swap == "two-renames":
        monkeypatch.setattr(safe_output, "_exchange", lambda a, b: False)
    shutil.copytree(refs[0], tmp_path / "out")
    name, n, match = STEPS[step]
    match = match or _is_old_model_file(set(files(refs[0])))
    owner = safe_output if name == "_exchange" else os
    wrapped = _After(getattr(owner, name), n, match, signum)
    monkeypatch.setattr(owner, name, wrapped)
    message = cli(["--hf-path", src, "--mlx-path", tmp_path / "out", "-q", "--force"], capsys)
    assert wrapped.calls >= n  # the signal was sent at that step
    got = files(tmp_path / "out")
    assert got == files(refs[1]), sorted(got or [])
    assert message == f"interrupted; the new model was already in place in {tmp_path / 'out'}"
    assert os.listdir(tmp_path) == ["out"]


def test_interrupt_while_writing_keeps_the_earlier_output(src, refs, tmp_path, monkeypatch, capsys):
    import mlx_lm.utils

    real = mlx_lm.utils.save_model

    def save_then_stop(path, model, **kw):
        real(path, model, **kw)
        os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(mlx_lm.utils, "save_model", save_then_stop)
    shutil.copytree(refs[0], tmp_path / "out")
    message = cli(["--hf-path", src, "--mlx-path", tmp_path / "out", "-q", "--force"], capsys)
    assert message == f"interrupted; nothing was written ({tmp_path / 'out'} keeps the earlier model)"
    assert files(tmp_path / "out") == files(refs[0]) and os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("failing", ["exchange", "rename-1", "rename-2"])
def test_failed_swap_keeps_the_earlier_output(src, refs, tmp_path, monkeypatch, capsys, failing):
    """A rename that fails (or a swap the filesystem refuses) rolls back: the earlier model stays."""
    from mgm_mlx import safe_output

    def fail(*a):
        raise PermissionError(errno.EACCES, "Permission denied", str(a[0]))

    if failing == "exchange":
        monkeypatch.setattr(safe_output, "_exchange", fail)
    else:
        monkeypatch.setattr(safe_output, "_exchange", lambda a, b: False)
        real, calls = os.rename, []

        def rename(a, b, *rest):
            calls.append(a)
            if len(calls) == int(failing[-1]):
                fail(a)
            return real(a, b, *rest)

        monkeypatch.setattr(os, "rename", rename)
    shutil.copytree(refs[0], tmp_path / "out")
    message = cli(["--hf-path", src, "--mlx-path", tmp_path / "out", "-q", "--force"], capsys)
    assert message.startswith("error: ") and "Permission denied" in message
    assert files(tmp_path / "out") == files(refs[0]) and os.listdir(tmp_path) == ["out"]


def test_old_model_that_cannot_be_deleted_does_not_undo_the_new_one(src, refs, tmp_path, monkeypatch, capsys):
    from mgm_mlx import safe_output

    real = os.unlink

    def unlink(path, *a, **kw):
        if ".partial-" in os.fspath(path):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "unlink", unlink)
    shutil.copytree(refs[0], tmp_path / "out")
    main(["--hf-path", str(src), "--mlx-path", str(tmp_path / "out"), "-q", "--force"])
    assert capsys.readouterr().out.startswith("saved ")
    assert files(tmp_path / "out") == files(refs[1])
    monkeypatch.setattr(os, "unlink", real)
    leftover = [p for p in tmp_path.iterdir() if p.name != "out"]  # the earlier model, hidden
    assert len(leftover) == 1 and safe_output.is_output(leftover[0])


# ---- SIGTERM and SIGHUP act as Ctrl-C

CHILD = textwrap.dedent("""
    import sys, time
    import mlx_lm.utils
    from mgm_mlx.convert.convert import main

    real = mlx_lm.utils.save_model

    def save_and_wait(path, model, **kw):
        real(path, model, **kw)
        print("written", flush=True)
        time.sleep(60)

    mlx_lm.utils.save_model = save_and_wait
    main(sys.argv[1:])
""")


@pytest.mark.parametrize("signum, earlier", [(signal.SIGTERM, False), (signal.SIGHUP, True)], ids=["SIGTERM", "SIGHUP"])
def test_termination_signal_while_writing(src, refs, tmp_path, signum, earlier):
    out = tmp_path / "out"
    if earlier:
        shutil.copytree(refs[0], out)
    child = subprocess.Popen([sys.executable, "-c", CHILD, "--hf-path", str(src), "--mlx-path", str(out), "-q", "--force"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    assert child.stdout.readline() == "written\n"
    child.send_signal(signum)
    _, err = child.communicate(timeout=60)
    kept = f" ({out} keeps the earlier model)" if earlier else ""
    assert (child.returncode, err) == (1, f"interrupted; nothing was written{kept}\n")
    assert os.listdir(tmp_path) == (["out"] if earlier else [])
    assert files(out) == (files(refs[0]) if earlier else None)


def test_ignored_sighup_stays_ignored(src, tmp_path, monkeypatch):
    """Under nohup, SIGHUP is ignored and must stay so."""
    import mlx_lm.utils

    real = mlx_lm.utils.save_model

    def save_and_hang_up(path, model, **kw):
        real(path, model, **kw)
        os.kill(os.getpid(), signal.SIGHUP)

    monkeypatch.setattr(mlx_lm.utils, "save_model", save_and_hang_up)
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        main(["--hf-path", str(src), "--mlx-path", str(tmp_path / "out")])
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
    assert (tmp_path / "out" / "config.json").exists()


# ---- a full disk: one line, nothing half-written, an earlier output intact

def _file_size_limit(limit):
    def apply():  # in the child: writes past `limit` bytes fail with EFBIG, as on a full disk
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.parametrize("earlier", [False, True], ids=["new", "earlier-output"])
def test_full_disk(src, refs, tmp_path, earlier):
    out = tmp_path / "out"
    if earlier:
        shutil.copytree(refs[0], out)
    result = run(["--hf-path", src, "--mlx-path", out, "--force"], preexec_fn=_file_size_limit(100_000))
    assert result.returncode == 1 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: cannot write {out} (") and "disk is full" in result.stderr
    assert os.listdir(tmp_path) == (["out"] if earlier else [])
    assert files(out) == (files(refs[0]) if earlier else None)


def test_no_space_left_from_a_plain_write(src, refs, tmp_path, monkeypatch, capsys):
    """The same through an OSError (ENOSPC) from Python's own file writes."""
    real = shutil.copy

    def copy(a, b, *rest, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(shutil, "copy", copy)
    shutil.copytree(refs[0], tmp_path / "out", copy_function=real)
    message = cli(["--hf-path", src, "--mlx-path", tmp_path / "out", "--force"], capsys)
    assert message.startswith(f"error: cannot write {tmp_path / 'out'} (No space left on device)")
    assert "disk is full" in message and "earlier model" in message
    assert files(tmp_path / "out") == files(refs[0]) and os.listdir(tmp_path) == ["out"]
