"""Saved conversations: one JSON file per chat in the user's data folder, written atomically.

A chat's name is its file name (the stem). The "id" inside a file is only written, for older
versions of the app, and never read: file content must not decide where anything is written.
In memory, chat["id"] holds the name; new_chat, load and save set it.
"""

import hashlib
import io
import json
import os
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import NamedTuple


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
    return {"id": new_name(), "model": model, "title": "", "turns": []}


def title(chat: dict) -> str:
    """The chat's title: the one given by renaming, else its first question."""
    first = chat["turns"][0]["user"] if chat["turns"] else "(empty)"
    return " ".join((chat.get("title") or first).split())[:60]


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
    model, name = data.get("model", "?"), data.get("title", "")
    if not isinstance(model, str) or not isinstance(name, str):
        raise ValueError("the model name or the title is not text")
    turns = []
    for i, turn in enumerate(data["turns"], 1):
        if not (isinstance(turn, dict) and isinstance(turn.get("user"), str) and isinstance(turn.get("assistant"), str)
                and _strings(turn.get("images")) and _strings(turn.get("pictures", []))
                and _kept(turn.get("kept", [None] * len(turn["images"])), len(turn["images"]))):
            raise ValueError(f"turn {i} is not a turn (user and assistant text, a list of image paths)")
        turns.append({"user": turn["user"], "images": turn["images"], "assistant": turn["assistant"]}
                     | ({"pictures": turn["pictures"]} if "pictures" in turn else {})
                     | ({"kept": turn["kept"]} if "kept" in turn else {}))
    return {"model": model, "title": name, "turns": turns}


def _kept(value, n: int) -> bool:
    # one entry per image: the name of its kept copy, or null
    return (isinstance(value, list) and len(value) == n
            and all(v is None or (isinstance(v, str) and KEPT_NAME.fullmatch(v)) for v in value))


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


class Entry(NamedTuple):
    name: str
    title: str
    turns: int
    model: str
    changed: float  # the file's mtime


def listing():
    """([Entry], newest first; [file names that are not chats])."""
    chats, skipped = [], []
    for file in folder().glob("*.json"):
        try:
            chat, _ = _read(file)
            changed = file.stat().st_mtime
        except (OSError, ValueError):
            skipped.append(file.name)
            continue
        chats.append(Entry(file.stem, title(chat), len(chat["turns"]), chat["model"], changed))
    return sorted(chats, key=lambda e: e.name, reverse=True), skipped  # names are creation times


def rename(name: str, new_title: str):
    """Give chat `name` a title (the file keeps its name)."""
    chat, seen = load(name)
    chat["title"] = " ".join(new_title.split())
    save(chat, seen)


def delete(name: str):
    """Delete chat `name`, and the kept image copies no other chat uses."""
    path(name).unlink()
    used = {k for entry in listing()[0] for t in load(entry.name)[0]["turns"] for k in t.get("kept", []) if k}
    for file in (folder() / KEPT).glob("*"):
        if file.name not in used and KEPT_NAME.fullmatch(file.name):
            file.unlink(missing_ok=True)


# Copies of attached images, so a chat still has its pictures when the originals move.
KEPT = "images"
KEPT_NAME = re.compile(r"[0-9a-f]{64}\.(png|jpg|jpeg|webp|gif|bmp|tif|tiff)")
MAX_KEPT_BYTES = 20 << 20  # larger files are kept as a PNG of at most MAX_KEPT_SIDE pixels a side
MAX_KEPT_SIDE = 2048


def keep_image(source) -> str:
    """Copy an image into the chats folder, named by its content; returns the copy's name."""
    source = Path(source)
    data = source.read_bytes()
    suffix = source.suffix.lower().lstrip(".")
    if len(data) > MAX_KEPT_BYTES or suffix not in ("png", "jpg", "jpeg", "webp", "gif", "bmp", "tif", "tiff"):
        from mgm_mlx.image import load_image  # too large, or an odd format: a bounded PNG stands in

        image = load_image(source)
        image.thumbnail((MAX_KEPT_SIDE, MAX_KEPT_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        data, suffix = buffer.getvalue(), "png"
    name = f"{hashlib.sha256(data).hexdigest()}.{suffix}"
    d = folder() / KEPT
    try:
        d.mkdir(parents=True, exist_ok=True)
        if not (d / name).exists():
            fd, tmp = tempfile.mkstemp(dir=d, prefix=".", suffix=".tmp")
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, d / name)
    except OSError as e:
        raise OSError(f"cannot keep a copy of {source.name} in {d}: {e.strerror or e}") from e
    return name


def image_path(turn: dict, i: int) -> str:
    """Where image i of a saved turn is now: the original, else the kept copy."""
    original = turn["images"][i]
    kept = (turn.get("kept") or [None] * len(turn["images"]))[i]
    if Path(original).is_file() or not kept:
        return original
    return str(folder() / KEPT / kept)


def markdown(chat: dict) -> str:
    """The conversation as Markdown (for export)."""
    lines = [f"# Chat with {chat['model']}", ""]
    for turn in chat["turns"]:
        images = "".join(f"![{Path(p).name}]({p})\n" for p in turn["images"])
        pictures = "".join(f"\n![{Path(p).name}]({p})" for p in turn.get("pictures", []))
        lines += ["**You:**", "", images + turn["user"], "", "**MGM:**", "", turn["assistant"] + pictures, ""]
    return "\n".join(lines)
