"""Writing convert's output folder without ever destroying what convert did not write.

Only an empty folder or an earlier mgm-mlx output (recognised by its marker file) is ever
replaced, and never a folder that is, holds or lies in the source, or holds the current folder.
"""

import json
import os
from pathlib import Path

from . import __version__

MARKER = "mgm_mlx.json"  # written into every output: what --force may replace


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
