"""Saved conversations: one JSON file per chat in the user's data folder, written atomically.

A chat's name is its file name (the stem). The "id" inside a file is only written, for older
versions of the app, and never read: file content must not decide where anything is written.
In memory, chat["id"] holds the name; new_chat, load and save set it.
"""

import json
import os
import tempfile
import time
import uuid
from pathlib import Path


def folder() -> Path:
    """$MGM_MLX_HOME/chats, else the platform's user data folder (e.g. ~/Library/Application Support)."""
    from platformdirs import user_data_dir

    root = Path(os.environ.get("MGM_MLX_HOME") or user_data_dir("mgm-mlx"))
    return root / "chats"


def path(name: str) -> Path:
    """The file of chat `name`, always directly inside folder()."""
    if not isinstance(name, str) or name in ("", ".", "..") or name != Path(name).name or "\\" in name:
        raise ValueError(f"not a chat name: {name!r}")
    return folder() / f"{name}.json"


def new_name() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]


def new_chat(model: str) -> dict:
    return {"id": new_name(), "model": model, "turns": []}


def stamp(name: str):
    """What identifies the file's current version (None: no file). Every save writes a new file
    and renames it, so another window's save changes the inode even within one mtime tick."""
    try:
        st = os.stat(path(name))
    except FileNotFoundError:
        return None
    return _stamp(st)


def _stamp(st):
    return st.st_ino, st.st_mtime_ns, st.st_size


def save(chat: dict, seen=None):
    """Write via a temporary file in the same folder and rename: never half a file.

    seen: the stamp of the file as this window last read or wrote it. If the file on disk has
    changed since (another window continued this chat), the chat goes to a fresh name instead, so
    no window's turns are lost; chat["id"] then changes. Returns the stamp of the file written.
    A folder that cannot be written raises OSError("cannot save the chat in FOLDER: why").
    """
    d = folder()
    target = path(chat["id"])
    try:
        d.mkdir(parents=True, exist_ok=True)
        if seen is not None and stamp(chat["id"]) not in (None, seen):
            chat["id"] = new_name()
            target = path(chat["id"])
        fd, tmp = tempfile.mkstemp(dir=d, prefix=".", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(chat, f, indent=1)
                f.flush()
                written = _stamp(os.fstat(f.fileno()))  # the rename keeps inode, mtime and size
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    except OSError as e:
        raise OSError(f"cannot save the chat in {d}: {e.strerror or e}") from e
    return written


def _strings(value) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def check(data) -> dict:
    """The chat in parsed JSON `data`, with only the fields the app uses; ValueError if it is not one."""
    if not isinstance(data, dict) or not isinstance(data.get("turns"), list):
        raise ValueError("not a chat (no list of turns)")
    model = data.get("model", "?")
    if not isinstance(model, str):
        raise ValueError("the model name is not text")
    turns = []
    for i, turn in enumerate(data["turns"], 1):
        if not (isinstance(turn, dict) and isinstance(turn.get("user"), str) and isinstance(turn.get("assistant"), str)
                and _strings(turn.get("images")) and _strings(turn.get("pictures", []))):
            raise ValueError(f"turn {i} is not a turn (user and assistant text, a list of image paths)")
        turns.append({"user": turn["user"], "images": turn["images"], "assistant": turn["assistant"]}
                     | ({"pictures": turn["pictures"]} if "pictures" in turn else {}))
    return {"model": model, "turns": turns}


def _read(file: Path):
    if not file.is_file():  # a folder or a FIFO named *.json must not block or crash the list
        raise ValueError("not a regular file")
    with open(file, "rb") as f:
        data, st = f.read(), os.fstat(f.fileno())
    try:
        return check(json.loads(data)), _stamp(st)
    except RecursionError:  # deeply nested JSON
        raise ValueError("nested too deeply") from None


def load(name: str):
    """(chat, stamp); OSError or ValueError when the file is gone or is not a chat."""
    chat, st = _read(path(name))
    return {"id": name, **chat}, st


def listing():
    """([(name, title, number of turns)], newest first; [file names that are not chats])."""
    chats, skipped = [], []
    for file in sorted(folder().glob("*.json"), reverse=True):
        try:
            chat, _ = _read(file)
        except (OSError, ValueError):
            skipped.append(file.name)
            continue
        first = chat["turns"][0]["user"] if chat["turns"] else "(empty)"
        chats.append((file.stem, " ".join(first.split())[:60], len(chat["turns"])))
    return chats, skipped


def markdown(chat: dict) -> str:
    """The conversation as Markdown (for export)."""
    lines = [f"# Chat with {chat['model']}", ""]
    for turn in chat["turns"]:
        images = "".join(f"![{Path(p).name}]({p})\n" for p in turn["images"])
        pictures = "".join(f"\n![{Path(p).name}]({p})" for p in turn.get("pictures", []))
        lines += ["**You:**", "", images + turn["user"], "", "**MGM:**", "", turn["assistant"] + pictures, ""]
    return "\n".join(lines)
