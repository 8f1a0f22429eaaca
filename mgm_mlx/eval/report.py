"""The results: scores beside the MGM paper's published numbers, time and memory, as JSON
and Markdown. Published numbers: the MGM README's table (dvlab-research/MGM README.md;
also the paper, arXiv 2403.18814), for the released checkpoints under YanweiLi/."""

import json
import re
from pathlib import Path

# model -> task/metric -> published number (MMB = MMBench dev, MME perception / cognition)
PAPER = {
    "MGM-2B": {"textvqa": 56.2, "mmbench": 59.8, "mme_perception": 1341, "mme_cognition": 312, "mmvet": 31.1,
               "mathvista": 29.4},
    "MGM-7B": {"textvqa": 65.2, "mmbench": 69.3, "mme_perception": 1523, "mme_cognition": 316, "mmvet": 40.8,
               "mathvista": 31.4},
    "MGM-13B": {"textvqa": 65.9, "mmbench": 68.5, "mme_perception": 1565, "mme_cognition": 322, "mmvet": 46.0,
                "mathvista": 37.0},
    "MGM-8B": {"textvqa": 67.6, "mmbench": 72.7, "mme_perception": 1606, "mme_cognition": 341, "mmvet": 47.3},
    "MGM-8x7B": {"textvqa": 69.2, "mmbench": 75.6, "mme_perception": 1639, "mme_cognition": 379, "mmvet": 45.8,
                 "mathvista": 41.8},
    "MGM-34B": {"textvqa": 70.1, "mmbench": 79.6, "mme_perception": 1666, "mme_cognition": 439, "mmvet": 53.0,
                "mathvista": 38.9},
    "MGM-7B-HD": {"textvqa": 68.4, "mmbench": 65.8, "mme_perception": 1546, "mme_cognition": 319, "mmvet": 41.3,
                  "mathvista": 32.2},
    "MGM-13B-HD": {"textvqa": 70.2, "mmbench": 68.6, "mme_perception": 1597, "mme_cognition": 320, "mmvet": 50.5,
                   "mathvista": 37.0},
    "MGM-8B-HD": {"textvqa": 71.6, "mme_perception": 1532, "mme_cognition": 357},
    "MGM-8x7B-HD": {"textvqa": 71.9, "mmbench": 74.7, "mme_perception": 1633, "mme_cognition": 356, "mmvet": 53.5,
                    "mathvista": 43.1},
    "MGM-34B-HD": {"textvqa": 74.1, "mmbench": 80.6, "mme_perception": 1659, "mme_cognition": 482, "mmvet": 59.3,
                   "mathvista": 43.3},
}
RELEASED = re.compile(r"(?:mgm|mini-?gemini)[-_](2b|7b|13b|8b|8x7b|34b)([-_]hd)?(?![0-9a-z])", re.IGNORECASE)
# The headline metric(s) of each task: (key in the scores, key in PAPER, label)
HEADLINE = {
    "textvqa": [("accuracy", "textvqa", "TextVQA accuracy")],
    "mme": [("perception", "mme_perception", "MME perception"), ("cognition", "mme_cognition", "MME cognition")],
    "pope": [("f1", None, "POPE F1 (mean of categories)"), ("accuracy", None, "POPE accuracy (mean of categories)")],
    "mmbench": [("accuracy", "mmbench", "MMBench dev accuracy (circular)")],
    "mmvet": [("score", "mmvet", "MM-Vet score")],
    "mathvista": [("accuracy", "mathvista", "MathVista testmini accuracy")],
}


def released_name(*names, hd: bool | None = None) -> str | None:
    """'MGM-7B-HD' etc. from a repo id, folder name or model card line, else None. `hd`
    (from the config) settles HD or not when the name leaves it out."""
    for name in names:
        m = RELEASED.search(str(name or ""))
        if m:
            size = m.group(1).upper().replace("X", "x")
            return f"MGM-{size}" + ("-HD" if (m.group(2) or hd) else "")
    return None


def model_card_title(folder) -> str:
    """The first line of a converted folder's README.md ('# MGM-2B for mgm-mlx')."""
    card = Path(folder) / "README.md"
    try:
        return card.read_text(encoding="utf-8", errors="replace").splitlines()[0] if card.is_file() else ""
    except (OSError, IndexError):
        return ""


def headline(task: str, scores: dict | None, model: str | None) -> list:
    """[(label, ours or None, paper or None)] for the task's headline metrics."""
    paper = PAPER.get(model or "", {})
    return [(label, None if scores is None else scores.get(key), paper.get(pkey) if pkey else None)
            for key, pkey, label in HEADLINE[task]]


def _fmt(x, digits=1) -> str:
    return "—" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def markdown(result: dict) -> str:
    r = result
    lines = [f"# {r['title']}: {r['model']}", ""]
    scope = f"{r['questions']} questions" + ("" if r["complete"] else f" of {r['split_size']} (--limit {r['limit']})")
    lines += [f"- model: `{r['model']}`" + (f" (released model {r['released_model']})" if r["released_model"] else ""),
              f"- template: {r['template']}; greedy; max new tokens {r['max_tokens']}",
              f"- data: {r['dataset']} @ {r['revision'][:12]}, {scope}",
              f"- reference: {r['source']}", ""]
    lines += ["| metric | mgm-mlx | paper |", "|---|---:|---:|"]
    for label, ours, paper in r["headline"]:
        lines.append(f"| {label} | {_fmt(ours)} | {_fmt(paper)} |")
    if r.get("note"):
        lines += ["", r["note"]]
    if not r["complete"] and any(p is not None for _, _, p in r["headline"]):
        lines += ["", "The paper's numbers are for the whole split; a --limit subset is only roughly comparable."]
    details = _details(r["task"], r.get("scores") or {})
    if details:
        lines += [""] + details
    t = r["timing"]
    lines += ["", f"Time: {_fmt(t['seconds_per_question'], 2)} s per question "
                  f"({_fmt(t['seconds_per_100'] / 60 if t['seconds_per_100'] is not None else None, 1)} min per 100), "
                  f"peak memory {_fmt(t['peak_memory_gb'], 2)} GB; "
                  f"{t['generated_now']} answers generated in this run, {t['errors']} failed.", ""]
    return "\n".join(lines)


def _details(task: str, scores: dict) -> list:
    if task == "mme" and scores.get("subtasks"):
        out = ["| subtask | acc | acc+ | score |", "|---|---:|---:|---:|"]
        for name, s in sorted(scores["subtasks"].items()):
            out.append(f"| {name} | {s['acc']:.2f} | {s['acc_plus']:.2f} | {s['score']:.2f} |")
        return out
    if task == "pope" and scores.get("categories"):
        out = ["| category | accuracy | precision | recall | F1 | yes ratio |", "|---|---:|---:|---:|---:|---:|"]
        for name, s in scores["categories"].items():
            out.append(f"| {name} | {100 * s['accuracy']:.2f} | {100 * s['precision']:.2f} | "
                       f"{100 * s['recall']:.2f} | {100 * s['f1']:.2f} | {100 * s['yes_ratio']:.2f} |")
        return out
    if task == "mmbench" and scores.get("categories"):
        out = ["| category | accuracy |", "|---|---:|"]
        out += [f"| {c} | {v:.2f} |" for c, v in scores["categories"].items()]
        return out + ["", f"{scores.get('unmatched', 0)} answers named no option by MMBench's rules (counted wrong)."]
    if task == "mmvet" and scores.get("capabilities"):
        out = ["| capability | score |", "|---|---:|"]
        return out + [f"| {c} | {v:.1f} |" for c, v in scores["capabilities"].items()]
    return []


def write(folder: Path, task: str, result: dict) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    js, md = folder / f"{task}-results.json", folder / f"{task}-results.md"
    js.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    md.write_text(markdown(result), encoding="utf-8")
    return js, md
