"""Run a benchmark as MGM's eval scripts do, on this machine:

    python -m mgm_mlx.eval --model mgm-2b-4bit --task textvqa --limit 200

The data comes from the Hugging Face hub (downloaded once into its cache); answers go to
OUTPUT/TASK-answers.jsonl as they are produced (run the same command again to resume);
scores, the paper's numbers, time and memory to OUTPUT/TASK-results.json and .md.
"""

import json
import os
import sys
import time
from pathlib import Path

from mgm_mlx import cli

from .tasks import TASKS


def main(argv=None):
    parser = cli.Parser(prog=cli.prog("mgm_mlx.eval"), formatter_class=cli.HelpFormatter, description=(
        "Score an MGM model on a benchmark as the MGM paper does (prompts, greedy decoding, max new tokens and "
        "scorers of the reference eval scripts)."))
    cli.add_model_arguments(parser)
    parser.add_argument("--task", required=True, help=", ".join(TASKS))
    parser.add_argument("--limit", help="only N questions (MME: images, MMBench: questions with their circular "
                        "shifts), a fixed subset: the same N gives the same questions on every run and machine")
    parser.add_argument("--output", help="folder for answers and results (default: eval-results/MODEL-NAME)")
    parser.add_argument("--template", help="conversation template (default: from the model's config)")
    judge = parser.add_argument_group("LLM judge (mmvet and mathvista only)")
    judge.add_argument("--judge-url", help="an OpenAI-compatible endpoint, e.g. https://api.openai.com/v1 or "
                       "http://localhost:8080/v1")
    judge.add_argument("--judge-model", help="the judge's model name (the reference used gpt-4-0613)")
    judge.add_argument("--judge-key", help="API key (default: $OPENAI_API_KEY; a local server may need none)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        _main(args)
    except KeyboardInterrupt:
        print("\ninterrupted; the answers so far are saved; run the same command again to go on", file=sys.stderr)
        sys.exit(130)
    except (OSError, ValueError, RuntimeError) as e:  # DataError, JudgeError, ImageError are among these
        sys.exit(f"error: {str(e).splitlines()[0] if str(e) else type(e).__name__}")


def _limit(text):
    if text is None:
        return None
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise ValueError(f"--limit must be a whole number of at least 1 (got {text!r})")
    return n


def _main(args):
    from mgm_mlx.prompt import TEMPLATES

    task = TASKS.get(args.task)
    if task is None:
        raise ValueError(f"unknown task {args.task!r}; choose from {', '.join(TASKS)}")
    limit = _limit(args.limit)
    if args.template is not None and args.template not in TEMPLATES:
        raise ValueError(f"unknown template {args.template!r}; choose from {', '.join(TEMPLATES)}")
    if bool(args.judge_url) != bool(args.judge_model):
        raise ValueError("give --judge-url and --judge-model together")
    if args.judge_url and not task.judge:
        judged = ", ".join(t for t in TASKS if TASKS[t].judge)
        raise ValueError(f"{task.name} is scored by rules; --judge-url is for {judged}")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        raise ValueError("the benchmark extra is not installed: pip install 'mgm-mlx[eval]'") from None
    if args.model is None:  # the default model: downloaded and converted once, then named by its folder
        path, args.q_bits = cli.model_path(args, sys.stderr.isatty())
        args.model = str(path)
    from .data import Table, locate
    from .judge import Judge
    from .runner import read_answers, run
    from .tasks import select

    judge = Judge(args.judge_url, args.judge_model, args.judge_key or os.environ.get("OPENAI_API_KEY")) \
        if args.judge_url else None
    output = Path(args.output) if args.output else Path("eval-results") / _default_name(args)
    if output.exists() and not output.is_dir():
        raise ValueError(f"--output {output} is a file; give a folder")

    files, revision = locate(task.repo, task.files)
    table = Table(files)
    items = task.items(table.rows(task.columns))
    selected = select(task, items, limit)
    answers_path = output / f"{task.name}-answers.jsonl"
    meta_path = output / f"{task.name}-run.json"
    meta = _read_meta(meta_path)
    setting = {"model": args.model, "template_option": args.template, "q_bits": args.q_bits}
    if meta and any(meta.get(k) != v for k, v in setting.items()):
        raise ValueError(f"{answers_path} holds answers of another setting ({_setting(meta)}); give another "
                         "--output or move the folder away")
    done = read_answers(answers_path)
    pending = [i for i in selected if i.key not in done]
    generated, errors, peak = 0, 0, meta.get("peak_memory_gb")
    template = meta.get("template")
    if pending:
        from mgm_mlx.loading import load

        import mlx.core as mx

        print(f"{task.title}: {len(selected) - len(pending)} of {len(selected)} questions answered already; "
              f"loading {args.model}", file=sys.stderr)
        model, processor = load(args.model, quantize_bits=args.q_bits, template=args.template)
        template = processor.template
        _write_meta(meta_path, {**setting, "template": template, "peak_memory_gb": peak})
        mx.reset_peak_memory()
        new = run(task, selected, table, model, processor, answers_path, done, args.template, not args.quiet)
        peak = max(peak or 0.0, mx.get_peak_memory() / 1e9)
        _write_meta(meta_path, {**setting, "template": template, "peak_memory_gb": peak})
        done.update(new)
        generated = len(new)
    records = [done[i.key] for i in selected if i.key in done]
    errors = sum(1 for r in records if r.get("error"))
    pairs = [(i, done[i.key]["answer"]) for i in selected if i.key in done]

    note = None
    if not task.judge:
        scores = task.score(pairs)
    elif judge is None:
        scores = None
        note = (f"{task.name}: scoring needs an LLM judge (--judge-url, --judge-model); "
                f"the answers are in {answers_path}")
        print(note, file=sys.stderr)
    else:
        scores = _judged(task, pairs, judge, output / f"{task.name}-judged.jsonl", not args.quiet)

    from . import report

    local = Path(args.model).expanduser()
    hd = None
    if (local / "config.json").is_file():
        try:
            hd = int(json.loads((local / "config.json").read_text()).get("image_grid", 1) or 1) >= 2
        except (ValueError, OSError, TypeError, AttributeError):
            hd = None
    released = report.released_name(args.model, local.name, report.model_card_title(local) if local.is_dir() else "",
                                    hd=hd)
    seconds = [r["seconds"] for r in records if isinstance(r.get("seconds"), (int, float))]
    per_question = sum(seconds) / len(seconds) if seconds else None
    result = {
        "task": task.name, "title": task.title, "model": args.model, "released_model": released,
        "template": template, "q_bits": args.q_bits, "max_tokens": task.max_tokens,
        "dataset": task.repo, "files": task.files, "revision": revision, "source": task.source,
        "limit": limit, "questions": len(selected), "answered": len(records), "split_size": len(items),
        "complete": limit is None or len(selected) == len(items),
        "scores": scores, "headline": report.headline(task.name, scores, released), "note": note,
        "timing": {"seconds_per_question": per_question,
                   "seconds_per_100": None if per_question is None else 100 * per_question,
                   "peak_memory_gb": peak, "generated_now": generated, "errors": errors},
        "judge": {"url": judge.url, "model": judge.model} if judge else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    js, md = report.write(output, task.name, result)
    print(report.markdown(result))
    print(f"Wrote {js} and {md}", file=sys.stderr)


def _default_name(args) -> str:
    name = Path(str(args.model).rstrip("/\\")).name or "model"
    return name + (f"-q{args.q_bits}bit" if args.q_bits else "")


def _read_meta(path: Path) -> dict:
    try:
        meta = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        meta = {}
    return meta if isinstance(meta, dict) else {}


def _write_meta(path: Path, meta: dict):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")


def _setting(meta: dict) -> str:
    parts = [f"model {meta.get('model')}"]
    if meta.get("template_option"):
        parts.append(f"template {meta['template_option']}")
    if meta.get("q_bits"):
        parts.append(f"--q-bits {meta['q_bits']}")
    return ", ".join(parts)


def _judged(task, pairs, judge, path: Path, progress: bool) -> dict:
    """MM-Vet grades or MathVista extractions from the judge, kept in TASK-judged.jsonl."""
    from tqdm import tqdm

    from . import scoring
    from .judge import extract_mathvista, grade_mmvet
    from .runner import read_answers

    cache = {k: v for k, v in read_answers(path).items() if v.get("judge") == judge.model}
    results = {}
    with open(path, "a", encoding="utf-8") as out:
        for item, answer in tqdm(pairs, desc=f"{task.name} judge", unit="q", disable=not progress, file=sys.stderr):
            if item.key in cache:
                results[item.key] = cache[item.key]
                continue
            if task.name == "mmvet":
                score, reply = grade_mmvet(judge, item.gold["question"], item.gold["answer"], answer)
                record = {"id": item.key, "judge": judge.model, "score": score, "reply": reply}
            else:
                record = {"id": item.key, "judge": judge.model, "extraction": extract_mathvista(judge, answer, item.gold)}
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
            results[item.key] = record
    if task.name == "mmvet":
        total = [results[i.key]["score"] for i, _ in pairs]
        per_cap = {}
        for item, _ in pairs:
            for cap in item.gold["capability"]:
                per_cap.setdefault(cap, []).append(results[item.key]["score"])
        return {"score": 100.0 * sum(total) / len(total) if total else 0.0,
                "capabilities": {c: 100.0 * sum(v) / len(v) for c, v in sorted(per_cap.items())}}
    right = []
    for item, _ in pairs:
        g = item.gold
        prediction = scoring.mathvista_normalize(results[item.key]["extraction"], g["choices"] or [], g["question_type"],
                                                 g["answer_type"], g["precision"])
        right.append(prediction == g["answer"])
    return {"accuracy": 100.0 * sum(right) / len(right) if right else 0.0}


if __name__ == "__main__":
    main()
