"""The benchmarks: where each one's data lives on the hub, its columns, the prompt the
reference feeds the model, its max new tokens, and how its answers are scored.

Prompts follow MGM's eval scripts (dvlab-research/MGM scripts/gemma/eval/*.sh and the same for
every model) and the question files they read (LLaVA's playground/data/eval/*):

- textvqa: mgm.eval.model_vqa_loader over llava_textvqa_val_v051_ocr.jsonl, whose texts are
  "<Question>\\nReference OCR token: <t1>, <t2>, ...\\nAnswer the question using a single word
  or phrase."; max_new_tokens 128 (model_vqa_loader's default; the script sets none);
- mme: model_vqa_loader over llava_mme.jsonl: MME's question without " Please answer yes or
  no." plus "\\nAnswer the question using a single word or phrase."; 128;
- pope: LLaVA's llava_pope_test.jsonl through model_vqa_loader (MGM ships eval_pope.py but no
  script): "<question>\\nAnswer the question using a single word or phrase."; 128;
- mmbench: mgm.eval.model_vqa_mmbench --single-pred-prompt (no --all-rounds): hint, question,
  "A. ..." lines, "Answer with the option's letter from the given choices directly."; 1024;
- mmvet: mgm.eval.model_vqa over llava-mm-vet.jsonl: the question alone; 1024;
- mathvista: mgm.eval.model_math_vista: create_one_query (zero-shot, "solution" hints); 1024.

Every prompt is sent as "<image>\\n" + prompt in the model's template, one image, greedy.
"""

import hashlib
import math
from collections import Counter
from dataclasses import dataclass, field

from . import scoring

SHORT = "\nAnswer the question using a single word or phrase."
MME_SUFFIX = "Please answer yes or no."
MMBENCH_SUFFIX = "\nAnswer with the option's letter from the given choices directly."
OPTION_LETTERS = "ABCD"  # model_vqa_mmbench.py all_options


@dataclass
class Item:
    key: str  # unique within the task: the answers file's id
    unit: str  # what --limit counts; items of one unit are asked together
    prompt: str
    ref: tuple  # where the image is in the data
    gold: dict = field(default_factory=dict)


# ---------------------------------------------------------------- prompts

def textvqa_prompt(question: str, ocr_tokens) -> str:
    return f"{question.capitalize()}\nReference OCR token: {', '.join(ocr_tokens or [])}{SHORT}"


def mme_prompt(question: str) -> str:
    question = question.strip()
    if question.endswith(MME_SUFFIX):  # some MME questions have two spaces before it
        question = question[: -len(MME_SUFFIX)].rstrip()
    return question + SHORT


def pope_prompt(question: str) -> str:
    return question.strip() + SHORT


def is_none(value) -> bool:
    """model_vqa_mmbench.py is_none: None, NaN, 'nan' or 'none' (any case)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")


def mmbench_options(row: dict) -> dict:
    """A, B, ... up to the first missing option."""
    options = {}
    for letter in OPTION_LETTERS:
        if is_none(row.get(letter)):
            break
        options[letter] = row[letter]
    return options


def mmbench_prompt(row: dict) -> str:
    question = row["question"]
    if not is_none(row.get("hint")):
        question = f"{row['hint']}\n{question}"
    for letter, option in mmbench_options(row).items():
        question += f"\n{letter}. {option}"
    return question + MMBENCH_SUFFIX


MATHVISTA_HINTS = {
    "multi_choice": "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, "
                    "at the end.",
    "integer": "Hint: Please answer the question requiring an integer answer and provide the final value, "
               "e.g., 1, 2, 3, at the end.",
    "float1": "Hint: Please answer the question requiring a floating-point number with one decimal place and provide the "
              "final value, e.g., 1.2, 1.3, 1.4, at the end.",
    "float2": "Hint: Please answer the question requiring a floating-point number with two decimal places and provide the "
              "final value, e.g., 1.23, 1.34, 1.45, at the end.",
    "list": "Hint: Please answer the question requiring a Python list as an answer and provide the final list, "
            "e.g., [1, 2, 3], [1.2, 1.3, 1.4], at the end.",
}


def mathvista_prompt(row: dict) -> str:
    """model_math_vista.py create_one_query(shot_num=0, shot_type='solution')."""
    if row["question_type"] == "multi_choice":
        hint = MATHVISTA_HINTS["multi_choice"]
    elif row["answer_type"] == "float":
        hint = MATHVISTA_HINTS.get(f"float{int(row.get('precision') or 0)}", "")
    else:
        hint = MATHVISTA_HINTS.get(row["answer_type"], "")
    question = f"Question: {row['question']}"
    if row.get("unit"):
        question += f" (Unit: {row['unit']})"
    choices = ""
    if row.get("choices"):
        choices = "\n".join(["Choices:"] + [f"({chr(ord('A') + i)}) {c}" for i, c in enumerate(row["choices"])])
    return "\n".join(e for e in (hint, question, choices) if e != "").strip()


# ---------------------------------------------------------------- tasks

class Task:
    name = ""
    title = ""
    repo = ""
    files = ""  # glob of the split's parquet files in the dataset repo
    size = 0  # questions in the whole split (for the docs and the report)
    max_tokens = 128
    columns = ()  # "name!" = required
    image_column = "image"
    judge = False
    source = ""

    def items(self, rows) -> list:
        bases = [self.key(row) for row in rows]
        counts, seen = Counter(bases), Counter()
        out = []
        for row, base in zip(rows, bases):
            seen[base] += 1
            key = base if counts[base] == 1 else f"{base}#{seen[base]}"
            out.append(Item(key, self.unit(row, key), self.prompt(row), row["_ref"], self.gold(row)))
        return out

    def key(self, row) -> str:
        return str(row["question_id"])

    def unit(self, row, key) -> str:
        return key

    def prompt(self, row) -> str:
        raise NotImplementedError

    def gold(self, row) -> dict:
        return {}

    def quick(self, item, answer: str):
        """This answer's score while running (for the progress line), or None."""
        return None

    def score(self, pairs) -> dict:
        """pairs: [(item, answer)] -> the scores (percent where the reference prints percent)."""
        raise NotImplementedError


class TextVQA(Task):
    name, title = "textvqa", "TextVQA (val)"
    repo, files, size = "lmms-lab/textvqa", "data/validation-*.parquet", 5000
    columns = ("question_id!", "question!", "answers!", "ocr_tokens!", "image_id")
    source = "mgm/eval/model_vqa_loader.py + eval_textvqa.py (m4c TextVQAAccuracyEvaluator)"

    def prompt(self, row):
        return textvqa_prompt(row["question"], row["ocr_tokens"])

    def gold(self, row):
        return {"answers": list(row["answers"] or [])}

    def quick(self, item, answer):
        return scoring.vqa_accuracy(answer, item.gold["answers"])

    def score(self, pairs):
        accs = [scoring.vqa_accuracy(a, item.gold["answers"]) for item, a in pairs]
        return {"accuracy": 100.0 * sum(accs) / len(accs) if accs else 0.0}


class MME(Task):
    name, title = "mme", "MME"
    repo, files, size = "lmms-lab/MME", "data/test-*.parquet", 2374
    columns = ("question_id!", "question!", "answer!", "category!")
    source = "mgm/eval/model_vqa_loader.py + MME eval_tool/calculation.py"

    def unit(self, row, key):
        return str(row["question_id"])  # an image: its two questions go together (acc+)

    def prompt(self, row):
        return mme_prompt(row["question"])

    def gold(self, row):
        return {"answer": row["answer"], "category": row["category"], "image": str(row["question_id"])}

    def quick(self, item, answer):
        return float(scoring.mme_label(answer) == item.gold["answer"].lower())

    def score(self, pairs):
        return scoring.mme_scores([(i.gold["category"], i.gold["image"], i.gold["answer"], a) for i, a in pairs])


class POPE(Task):
    name, title = "pope", "POPE (adversarial, popular, random)"
    repo, files, size = "lmms-lab/POPE", "data/test-*.parquet", 9000
    columns = ("question_id!", "question!", "answer!", "category")
    source = "LLaVA's llava_pope_test.jsonl prompt + mgm/eval/eval_pope.py"

    def key(self, row):  # question ids may restart in each category
        return f"{row.get('category') or 'all'}/{row['question_id']}"

    def prompt(self, row):
        return pope_prompt(row["question"])

    def gold(self, row):
        return {"answer": row["answer"], "category": row.get("category") or "all"}

    def quick(self, item, answer):
        return float(scoring.pope_label(answer) == item.gold["answer"].strip().lower())

    def score(self, pairs):
        categories = {}
        for item, answer in pairs:
            categories.setdefault(item.gold["category"], []).append((item.gold["answer"], answer))
        out = {c: scoring.pope_scores(v) for c, v in sorted(categories.items())}
        # LLaVA reports F1 and accuracy per category; their means summarise the three
        return {"f1": 100.0 * sum(s["f1"] for s in out.values()) / len(out) if out else 0.0,
                "accuracy": 100.0 * sum(s["accuracy"] for s in out.values()) / len(out) if out else 0.0,
                "categories": out}


class MMBench(Task):
    name, title = "mmbench", "MMBench (dev, English)"
    # lmms-lab/MMBench_EN's dev split has the 4,377 rows of mmbench_dev_20230712.tsv, the file MGM
    # scored (lmms-lab/MMBench "en" holds the later 4,329-row dev set)
    repo, files, size = "lmms-lab/MMBench_EN", "data/dev-*.parquet", 4377
    max_tokens = 1024
    columns = ("index!", "question!", "hint", "A!", "B!", "C", "D", "answer!", "category")
    source = "mgm/eval/model_vqa_mmbench.py --single-pred-prompt + MMBench circular evaluation"

    def key(self, row):
        return str(int(row["index"]))

    def unit(self, row, key):
        return str(int(row["index"]) % 1_000_000)  # a question and its circular shifts

    def prompt(self, row):
        return mmbench_prompt(row)

    def gold(self, row):
        return {"answer": str(row["answer"]).strip(), "index": int(row["index"]),
                "category": row.get("category") or "", "options": {k: str(v) for k, v in mmbench_options(row).items()}}

    def quick(self, item, answer):
        return float(scoring.mmbench_letter(answer, item.gold["options"]) == item.gold["answer"])

    def score(self, pairs):
        records = [(i.gold["index"], i.gold["category"], i.gold["answer"], scoring.mmbench_letter(a, i.gold["options"]))
                   for i, a in pairs]
        out = scoring.mmbench_circular(records)
        out["unmatched"] = sum(r[3] is None for r in records)  # answers the rules could not read
        return out


class MMVet(Task):
    name, title = "mmvet", "MM-Vet"
    repo, files, size = "lmms-lab/MMVet", "data/test-*.parquet", 218
    max_tokens = 1024
    columns = ("question_id!", "question!", "answer!", "capability")
    judge = True
    source = "mgm/eval/model_vqa.py + MM-Vet's mm-vet_evaluator.py (LLM grader)"

    def prompt(self, row):
        return row["question"]

    def gold(self, row):
        cap = row.get("capability")  # "rec,ocr" in lmms-lab/MMVet
        caps = list(cap) if isinstance(cap, (list, tuple)) else [c.strip() for c in str(cap or "").split(",")]
        return {"question": row["question"], "answer": row["answer"], "capability": [c for c in caps if c]}


class MathVista(Task):
    name, title = "mathvista", "MathVista (testmini)"
    repo, files, size = "AI4Math/MathVista", "data/testmini-*.parquet", 1000
    max_tokens = 1024
    columns = ("pid!", "question!", "choices", "unit", "precision", "answer!", "question_type!", "answer_type!")
    image_column = "decoded_image"
    judge = True
    source = "mgm/eval/model_math_vista.py + MathVista/extract_answer.py (LLM extraction) + calculate_score.py"

    def key(self, row):
        return str(row["pid"])

    def prompt(self, row):
        return mathvista_prompt(row)

    def gold(self, row):
        return {k: row.get(k) for k in ("answer", "question_type", "answer_type", "choices", "precision")} | {
            "query": mathvista_prompt(row)}


TASKS = {t.name: t for t in (TextVQA(), MME(), POPE(), MMBench(), MMVet(), MathVista())}


def select(task: Task, items: list, limit: int | None) -> list:
    """The items of the first `limit` units in a fixed pseudo-random order (units sorted by
    the SHA-256 of "task:unit"), in dataset order; all items without a limit. The order does
    not depend on the machine or Python version, and a larger limit keeps a smaller one's
    questions, so runs with the same --limit are comparable and a resumed run adds to one."""
    if limit is None:
        return items
    units = sorted({i.unit for i in items}, key=lambda u: hashlib.sha256(f"{task.name}:{u}".encode()).hexdigest())
    chosen = set(units[:limit])
    return [i for i in items if i.unit in chosen]
