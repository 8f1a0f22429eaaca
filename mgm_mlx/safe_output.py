"""Writing convert's output folder without ever destroying what convert did not write.

A model is written into a hidden `.NAME.partial-PID` folder beside the target, then put in
place in one step. Only an empty folder or an earlier mgm-mlx output (recognised by its
marker file) is ever replaced, and the old one is deleted only once the new one is in place.
"""

import ctypes
import errno
import json
import os
import re
import shutil
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from . import __version__

MARKER = "mgm_mlx.json"  # written into every output: what --force may replace
PARTIAL = re.compile(r"^\..+\.partial-(\d+)$")
SIGNALS = tuple(getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n))


class LateInterrupt(KeyboardInterrupt):
    """A signal that arrived while the new model was being put in place: it waited for that."""


def check_target(mlx_path, sources, force: bool) -> Path:
    """The resolved target folder, or an error saying why convert may not write there."""
    given = Path(mlx_path).expanduser()
    target = given.resolve()  # '..' and symlinks first: decide on the folder really replaced
    shown = str(given) if given.absolute() == target else f"{given} (= {target})"
    cwd = Path.cwd().resolve()
    if cwd.is_relative_to(target):  # it would be swapped away under our own feet (and the shell's)
        raise ValueError(f"{shown} is the current folder or one of its parents; choose another --mlx-path")
    for source in sources:
        folder = Path(source).expanduser().resolve()
        # where its files really are: a folder of symlinks (as in the HF cache) points elsewhere
        linked = [f.resolve() for f in folder.iterdir() if f.is_symlink()] if folder.is_dir() else []
        if target == folder:
            raise ValueError(f"{shown} is the source model")
        if any(p.is_relative_to(target) for p in (folder, *linked)):
            raise ValueError(f"{shown} contains the source model {source}")
        if target.is_relative_to(folder):
            raise ValueError(f"{shown} lies inside the source model {source}")
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{shown} is a file, not a folder")
    if os.path.ismount(target):  # the new model is written beside it, on another filesystem
        raise ValueError(f"{shown} is a mount point; choose a folder inside it")
    if target.exists() and any(target.iterdir()):
        if not is_output(target):
            raise FileExistsError(
                f"{shown} is not empty and is not an earlier mgm-mlx output (it has no {MARKER}); "
                "--force replaces only those, so choose another --mlx-path"
            )
        if not force:
            raise FileExistsError(f"{shown} holds an earlier mgm-mlx output; pass --force to replace it")
    return target


def write_marker(folder: Path):
    (folder / MARKER).write_text(json.dumps({"format": "mgm-mlx", "version": __version__}) + "\n")


def is_output(folder: Path) -> bool:
    """Whether folder was written by convert (a finished output or one of its partial folders)."""
    try:
        return json.loads((Path(folder) / MARKER).read_text()).get("format") == "mgm-mlx"
    except (OSError, ValueError, AttributeError):
        return False


def partial_folder(target: Path) -> Path:
    return target.parent / f".{target.name}.partial-{os.getpid()}"


def remove_stale_partials(parent: Path):
    """Delete the partial folders of converts that were killed (their PID no longer runs)."""
    if not parent.is_dir():
        return
    for folder in parent.iterdir():
        match = PARTIAL.match(folder.name)
        if match and folder.is_dir() and not folder.is_symlink() and not _running(int(match[1])):
            try:
                ours = is_output(folder) or not any(folder.iterdir())  # never a look-alike of someone else's
            except OSError:  # unreadable: not ours to judge
                continue
            if ours:
                discard(folder)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process, or not a PID at all: keep its folder
        return True
    return True


def discard(folder: Path):
    """Delete a folder convert wrote, its marker last, so that what an interrupted delete
    leaves is still recognised (and finished) by a later convert. Errors are ignored."""
    try:
        for child in sorted(folder.iterdir(), key=lambda p: p.name == MARKER):
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
        folder.rmdir()
    except OSError:
        pass


def replace(partial: Path, target: Path):
    """Put the finished partial folder at target (which is absent, empty or an earlier output).

    Signals wait until this is done: the target holds the old model, or the new one, never a
    mix. A signal that came meanwhile is raised afterwards as LateInterrupt.
    """
    committed = False
    try:
        with _signals_held():
            if not os.path.lexists(target):
                os.rename(partial, target)
                committed = True
                return
            old = _swap(partial, target)
            committed = True
            discard(old)  # a failure leaves it hidden, for a later convert to remove
    except KeyboardInterrupt:
        if committed:
            raise LateInterrupt from None
        raise


def _swap(new: Path, target: Path) -> Path:
    """Put new at target; returns where the old target now is."""
    if _exchange(new, target):  # one step: no moment without a model at target
        return new
    old = target.parent / f".{target.name}.old-{os.getpid()}"  # never cleaned up automatically
    os.rename(target, old)
    try:
        os.rename(new, target)
    except BaseException:
        os.rename(old, target)  # roll back: the earlier model stays
        raise
    return old


_AT_FDCWD, _RENAME_EXCHANGE, _RENAME_SWAP = -100, 2, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE, macOS renamex_np
    RENAME_SWAP). False where the OS or the filesystem cannot; then two renames do it."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if sys.platform.startswith("linux"):
            rc = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        elif sys.platform == "darwin":
            rc = libc.renamex_np(os.fsencode(a), os.fsencode(b), _RENAME_SWAP)
        else:
            return False
    except (AttributeError, OSError):  # an older libc without the call
        return False
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False  # a filesystem without the exchange
    raise OSError(err, os.strerror(err), str(b))


@contextmanager
def _signals_held():
    """SIGINT, SIGTERM and SIGHUP wait until the block is done, then act as they would have."""
    held, previous = [], {}
    try:
        for s in SIGNALS:
            previous[s] = signal.signal(s, lambda signum, frame: held.append(signum))
    except ValueError:  # not the main thread: signals interrupt the main thread, not this one
        pass
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, signal.SIG_DFL if handler is None else handler)
        for s in dict.fromkeys(held):
            signal.raise_signal(s)
