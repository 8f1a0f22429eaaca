"""Saved conversations: one JSON file per chat in the user's data folder, written atomically."""

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


def save(chat: dict) -> Path:
    """Write via a temporary file in the same folder and rename: never half a file."""
    d = folder()
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{chat['id']}.json"
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(chat, f, indent=1)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def new_chat(model: str) -> dict:
    return {"id": time.strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6], "model": model, "turns": []}


def listing() -> list:
    """(id, title, number of turns), newest first; unreadable files are skipped."""
    out = []
    for path in sorted(folder().glob("*.json"), reverse=True):
        try:
            chat = json.loads(path.read_text())
            first = chat["turns"][0]["user"] if chat["turns"] else "(empty)"
            out.append((chat["id"], " ".join(first.split())[:60], len(chat["turns"])))
        except (OSError, ValueError, KeyError, IndexError):
            continue
    return out


def load(chat_id: str) -> dict:
    return json.loads((folder() / f"{chat_id}.json").read_text())


def markdown(chat: dict) -> str:
    """The conversation as Markdown (for export)."""
    lines = [f"# Chat with {chat['model']}", ""]
    for turn in chat["turns"]:
        images = "".join(f"![{Path(p).name}]({p})\n" for p in turn["images"])
        pictures = "".join(f"\n![{Path(p).name}]({p})" for p in turn.get("pictures", []))
        lines += ["**You:**", "", images + turn["user"], "", "**MGM:**", "", turn["assistant"] + pictures, ""]
    return "\n".join(lines)
