"""Asking the questions: one model call per question (`answer`, the only place the model is
used), answers appended to TASK-answers.jsonl as they come (an interrupted run resumes from
there), a progress line with the accuracy so far and the time left.

As the reference (mgm/eval/model_vqa_loader.py and friends): a fresh conversation per
question, "<image>\\n" + prompt in the model's template, greedy, the task's max new tokens,
the decoded answer without special tokens, stripped.
"""

import json
import os
import sys
import time
from pathlib import Path

from mgm_mlx.image import ImageError


def answer(session, image, prompt: str, max_tokens: int) -> str:
    """The model's greedy answer to one question about one image, in a fresh conversation.
    One Session serves the whole run: the template's opening stays in its KV cache, and an
    image asked about twice (MME's pairs) goes through the image path once."""
    from mgm_mlx.session import Settings, Turn

    settings = Settings(max_tokens=max_tokens, temp=0.0)
    return "".join(r.text for r in session.stream([Turn(prompt, [image])], settings)).strip()


def read_answers(path: Path) -> dict:
    """key -> record from an answers file; a torn last line (a killed run) is cut off."""
    if not path.exists():
        return {}
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        cut = data.rfind(b"\n") + 1
        with open(path, "r+b") as f:
            f.truncate(cut)
        data = data[:cut]
    out = {}
    for number, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            out[str(record["id"])] = record
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{path} line {number} is not an answer record; move the file away to start over") from None
    return out


def run(task, items, table, model, processor, path: Path, done: dict, template: str | None = None,
        progress: bool = True) -> dict:
    """Ask every item not in `done`; append each answer to `path`; returns the new records."""
    from mgm_mlx.session import Session

    from tqdm import tqdm

    session = Session(model, processor, template)

    pending = [i for i in items if i.key not in done]
    scores = [s for s in (task.quick(i, done[i.key]["answer"]) for i in items if i.key in done) if s is not None]
    new = {}
    bar = tqdm(total=len(items), initial=len(items) - len(pending), desc=task.name, unit="q", dynamic_ncols=True,
               disable=not progress, file=sys.stderr)
    if scores:
        bar.set_postfix_str(f"acc {100 * sum(scores) / len(scores):.1f}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as out:
        for item in pending:
            record = {"id": item.key, "prompt": item.prompt}
            tic = time.perf_counter()
            try:
                image = table.image(item.ref, task.image_column)
                record["answer"] = answer(session, image, item.prompt, task.max_tokens)
            except (ImageError, ValueError) as e:  # an unreadable image, a prompt too long for the model
                record["answer"], record["error"] = "", str(e).splitlines()[0][:300] if str(e) else type(e).__name__
            record["seconds"] = round(time.perf_counter() - tic, 4)
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())
            new[item.key] = record
            score = task.quick(item, record["answer"])
            if score is not None:
                scores.append(score)
                bar.set_postfix_str(f"acc {100 * sum(scores) / len(scores):.1f}")
            bar.update(1)
    bar.close()
    return new
