"""python -m mgm_mlx.eval: prompts string for string against the reference question files,
max new tokens as the reference scripts, scorers against values the original scoring code
gives, and every task end to end on a tiny checkpoint with tiny datasets in a Hugging Face
cache laid out as huggingface_hub lays it out (tests/eval_cache.py; no network).

The expected scores below were produced by running the original code on the same inputs:
mgm/eval/m4c_evaluator.py (TextVQA), MME's eval_tool/calculation.py (on files written as
convert_answer_to_mme.py writes them), mgm/eval/eval_pope.py, MMBench's evaluator as kept in
lmms-eval (mmbench_evals.py: can_infer, eval_sub_data) and mgm/eval/MathVista/calculate_score.py.
"""

import http.server
import json
import subprocess
import sys
import threading

import pytest

pytest.importorskip("pyarrow")

from mgm_mlx.eval import report, runner, scoring, tasks  # noqa: E402
from mgm_mlx.eval.__main__ import main  # noqa: E402
from mgm_mlx.eval.judge import MMVET_PROMPT, mathvista_query, mmvet_query  # noqa: E402

from PIL import Image  # noqa: E402

from checkpoints import make_checkpoint  # noqa: E402
from eval_cache import make_cache  # noqa: E402

SHORT = "\nAnswer the question using a single word or phrase."


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-eval")
    return root, make_cache(root)


@pytest.fixture
def offline(cache, monkeypatch):
    """The hub reads only the tiny cache and never the network."""
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(cache[0]))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache[0]))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    # named as a release, so the report puts the paper's MGM-2B numbers beside ours
    return make_checkpoint(tmp_path_factory.mktemp("models") / "MGM-2B", "gemma")[0]


def run(*argv):
    """main() -> its exit status; a sys.exit("error: ...") message goes to stderr, as Python does."""
    try:
        main([str(a) for a in argv])
    except SystemExit as e:
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
            return 1
        return e.code
    return 0


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# ---------------------------------------------------------------- prompts and settings

def test_prompts_match_the_reference_question_files():
    # llava_textvqa_val_v051_ocr.jsonl, first line (haotian-liu/LLaVA playground/data/eval/textvqa)
    assert tasks.textvqa_prompt("what is the brand of this camera?",
                                ["DAKOTA", "DIGITAL", "Single-Use", "Camera", "Pire", "digitat"]) == (
        "What is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL, Single-Use, Camera, Pire, "
        "digitat\nAnswer the question using a single word or phrase.")
    # ... and a question without OCR tokens keeps the label (question 97b1112b17015396)
    assert tasks.textvqa_prompt("whats the lowest number yard line that you can see?", []) == (
        "Whats the lowest number yard line that you can see?\nReference OCR token: \n"
        "Answer the question using a single word or phrase.")
    # llava_mme.jsonl: MME's "... Please answer yes or no." replaced, also after two spaces (color/000000055072.jpg)
    assert tasks.mme_prompt("Is a python code shown in the picture? Please answer yes or no.") == (
        "Is a python code shown in the picture?\nAnswer the question using a single word or phrase.")
    assert tasks.mme_prompt("Is there a brown giraffe in the image?  Please answer yes or no.") == (
        "Is there a brown giraffe in the image?\nAnswer the question using a single word or phrase.")
    # llava_pope_test.jsonl, question 1
    assert tasks.pope_prompt("Is there a snowboard in the image?") == (
        "Is there a snowboard in the image?\nAnswer the question using a single word or phrase.")
    # model_vqa_mmbench.py: the answers file's "prompt" (question 261 of mmbench_dev_20230712, LLaVA's
    # answers/mmbench_dev_20230712/llava-v1.5-13b.jsonl) + --single-pred-prompt's line
    row = {"question": "Which statement describes the Great Victoria Desert ecosystem?",
           "hint": "Figure: Great Victoria Desert.\nThe Great Victoria Desert is a hot desert ecosystem located in "
                   "Western Australia and South Australia. It is the largest desert in Australia! The Great Victoria "
                   "Desert is home to the rare great desert skink. To stay cool during the day, great desert skinks "
                   "live in holes they dig in the ground.",
           "A": "It has thick, moist soil.", "B": "It has dry, thin soil.", "C": "nan", "D": None}
    assert tasks.mmbench_prompt(row) == (
        "Figure: Great Victoria Desert.\nThe Great Victoria Desert is a hot desert ecosystem located in Western "
        "Australia and South Australia. It is the largest desert in Australia! The Great Victoria Desert is home to "
        "the rare great desert skink. To stay cool during the day, great desert skinks live in holes they dig in the "
        "ground.\nWhich statement describes the Great Victoria Desert ecosystem?\nA. It has thick, moist soil.\n"
        "B. It has dry, thin soil.\nAnswer with the option's letter from the given choices directly.")
    # question 293: no hint (NaN in the tsv)
    assert tasks.mmbench_prompt({"question": "Which material is this spatula made of?", "hint": float("nan"),
                                 "A": "rubber", "B": "cotton", "C": float("nan"), "D": float("nan")}) == (
        "Which material is this spatula made of?\nA. rubber\nB. cotton\n"
        "Answer with the option's letter from the given choices directly.")
    # MathVista: queries as create_one_query builds them; these three are the examples of
    # mgm/eval/MathVista/prompts/ext_ans.py, which show the same queries
    assert tasks.mathvista_prompt({"question": "What fraction of the shape is blue?", "question_type": "multi_choice",
                                   "answer_type": "text", "choices": ["3/11", "8/11", "6/11", "3/5"]}) == (
        "Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.\n"
        "Question: What fraction of the shape is blue?\nChoices:\n(A) 3/11\n(B) 8/11\n(C) 6/11\n(D) 3/5")
    assert tasks.mathvista_prompt({"question": "Which number is missing?", "question_type": "free_form",
                                   "answer_type": "integer", "choices": None}) == (
        "Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, "
        "at the end.\nQuestion: Which number is missing?")
    assert tasks.mathvista_prompt({"question": "How much money does Luca need to buy a sour apple candy and a "
                                   "butterscotch candy?", "question_type": "free_form", "answer_type": "float",
                                   "precision": 2.0, "unit": "$", "choices": None}) == (
        "Hint: Please answer the question requiring a floating-point number with two decimal places and provide the "
        "final value, e.g., 1.23, 1.34, 1.45, at the end.\nQuestion: How much money does Luca need to buy a sour "
        "apple candy and a butterscotch candy? (Unit: $)")


def test_max_new_tokens_and_data_as_the_reference():
    # model_vqa_loader's default 128 (textvqa.sh / mme.sh set none), 1024 hard-coded in
    # model_vqa_mmbench.py, model_vqa.py (MM-Vet) and model_math_vista.py
    assert {n: t.max_tokens for n, t in tasks.TASKS.items()} == {
        "textvqa": 128, "mme": 128, "pope": 128, "mmbench": 1024, "mmvet": 1024, "mathvista": 1024}
    assert tasks.TASKS["textvqa"].repo == "lmms-lab/textvqa" and tasks.TASKS["mmbench"].repo == "lmms-lab/MMBench_EN"


def test_judge_prompts_follow_the_graders():
    q = mmvet_query("What is x in the equation?", "-1<AND>-5", "x = 3")
    assert q == MMVET_PROMPT + "\nWhat is x in the equation? | -1 <AND> -5 | x = 3 | "
    assert MMVET_PROMPT.startswith("Compare the ground truth and prediction from AI models, to give a correctness")
    assert "\n\nQuestion | Ground truth | Prediction | Correctness\n--- | --- | --- | ---\n" in MMVET_PROMPT
    assert mathvista_query("Q", "R").endswith("Extracted answer: B\n\nQ\n\nR\n\nExtracted answer: ")


# ---------------------------------------------------------------- scorers (values from the original code)

@pytest.mark.parametrize("text, normalized", [
    ("Dakota", "dakota"), ("the Dakota.", "dakota"), ("Two", "2"), ("dont", "don't"), ("Denny's", "denny 's"),
    ("a cat, a dog", "cat dog"), ("1,000", "1000"), ("3.5", "3.5"), ("e.g. this", "eg this"),
    ("hello-world", "hello world"), ("(yes)", "yes"), ("x = 3 ; y", "x 3 y"), ("It's  here\nnow", "it 's here now"),
    ("None", "0"), ("THE END!", "end"), ("u.s.a.", "usa"), ("$1.99", "$1.99"), ("yes/no", "yes no"),
    ("a-b -c", "ab c"), ("whats up?", "what's up"), ("Im fine", "im fine"),
])
def test_answer_normalisation_as_evalai(text, normalized):
    assert scoring.normalize_answer(text) == normalized


def test_textvqa_accuracy_as_m4c_evaluator():
    assert scoring.vqa_accuracy("dakota", ["dakota"] * 10) == 1.0
    assert scoring.vqa_accuracy("Dakota", ["dakota"] * 2 + ["kodak"] * 8) == pytest.approx(0.6)
    assert scoring.vqa_accuracy("dakota", ["dakota"] * 3 + ["kodak"] * 7) == pytest.approx(0.9)
    assert scoring.vqa_accuracy("dakota", ["dakota"] * 4 + ["kodak"] * 6) == 1.0
    assert scoring.vqa_accuracy("dakota", ["dakota"] + ["kodak"] * 9) == pytest.approx(0.3)
    assert scoring.vqa_accuracy("Two", ["2", "two", "2", "two"] + ["3"] * 6) == 1.0
    assert scoring.vqa_accuracy("the cat", ["cat", "a cat", "cat!", "dog"] + ["x"] * 6) == pytest.approx(0.9)
    assert scoring.vqa_accuracy("nothing", ["a"] * 10) == 0.0


def test_mme_acc_plus_as_calculation_py():
    records = [("existence", "a.jpg", "Yes", "Yes"), ("existence", "a.jpg", "No", "No"),
               ("existence", "b.jpg", "Yes", "Yes, there is."), ("existence", "b.jpg", "No", "Yes"),
               ("existence", "c.jpg", "Yes", "no"), ("existence", "c.jpg", "No", "Not at all"),
               ("code_reasoning", "d.png", "Yes", "The answer is yes"), ("code_reasoning", "d.png", "No", "n"),
               ("code_reasoning", "e.png", "Yes", "y"), ("code_reasoning", "e.png", "No", "nope"),
               ("OCR", "f.jpg", "No", "NO."), ("OCR", "f.jpg", "Yes", "yes.")]
    s = scoring.mme_scores(records)
    # calculation.py: existence 4/6 right (66.67) + 1/3 images (33.33) = 100; OCR 200; code_reasoning 25
    assert s["subtasks"]["existence"]["score"] == pytest.approx(100.0)
    assert s["subtasks"]["OCR"]["score"] == pytest.approx(200.0)
    assert s["subtasks"]["code_reasoning"]["score"] == pytest.approx(25.0)
    assert s["perception"] == pytest.approx(300.0) and s["cognition"] == pytest.approx(25.0)
    # only the first 4 characters count: "The answer is yes" is 'other', "nope" is 'no'
    assert [scoring.mme_label(a) for a in ("Yes", "No.", "Not sure", "ye", "n", "I think yes", "know", "")] == [
        "yes", "no", "no", "other", "other", "other", "no", "other"]


def test_pope_f1_as_eval_pope():
    answers = ["Yes", "No", "yes, there is a dog.", "No, there is not.", "There is no car.", "I do not see one",
               "Yes.", "no", "Yes, a cat. No dog.", "Nope", "NO", "Not really", "yes"]
    labels = ["yes", "no", "yes", "no", "yes", "no", "no", "yes", "yes", "no", "no", "no", "yes"]
    s = scoring.pope_scores(list(zip(labels, answers)))
    # eval_pope.py prints "F1, acc, precision, recall, yes_ratio": 0.571, 0.538, 0.500, 0.667, 0.615
    assert (s["tp"], s["fp"], s["tn"], s["fn"]) == (4, 4, 3, 2)
    assert [round(s[k], 3) for k in ("f1", "accuracy", "precision", "recall", "yes_ratio")] == [
        0.571, 0.538, 0.5, 0.667, 0.615]
    # "NO" and "Nope" are not the word 'No'/'no'/'not': they count as yes
    assert scoring.pope_label("NO") == "yes" and scoring.pope_label("Nope") == "yes"


def test_mmbench_matching_and_circular_as_mmbench():
    two = {"A": "cat", "B": "dog"}
    cases = [("A", two, "A"), ("B.", two, "B"), ("(C)", {"A": "x", "B": "y", "C": "z"}, "C"),
             ("The answer is B", {"A": "x", "B": "y"}, "B"), ("A cat is in the picture", two, "A"),
             ("A dog", two, "A"), ("dog", two, "B"), ("cat and dog", two, None),
             ("Answer: D", {"A": "1", "B": "2", "C": "3", "D": "4"}, "D"), ("A B", {"A": "a1", "B": "b1"}, None),
             ("E", {"A": "a1", "B": "b1"}, "E"), ("I think the answer is (A).", {"A": "red", "B": "blue"}, "A"),
             ("blue", {"A": "red", "B": "blue"}, "B"), ("B:", {"A": "p", "B": "q"}, "B"),
             (":C", {"A": "p", "B": "q", "C": "r"}, "C"), ("", {"A": "p", "B": "q"}, None),
             ("The answer is A", {"A": "p", "B": "q"}, None), ("The answer is B.", {"A": "p", "B": "q"}, "B")]
    for answer, options, letter in cases:
        assert scoring.mmbench_letter(answer, options) == letter, answer
    rows = [(1, "c1", "A", "A"), (1000001, "c1", "B", "B"),
            (2, "c2", "C", "C"), (1000002, "c2", "B", "B"), (2000002, "c2", "A", "D"), (3000002, "c2", "D", "D"),
            (3, "c2", "B", "B"), (1000003, "c2", "A", "A"), (2000003, "c2", "D", "D"), (3000003, "c2", "C", "C"),
            (4, "c1", "A", "B"), (5, "c1", "A", "A"), (1000005, "c1", "B", "B")]
    s = scoring.mmbench_circular(rows)
    # eval_sub_data: questions 1, 3, 5 hit; 2 (one shift wrong) and 4 miss
    assert s["accuracy"] == pytest.approx(60.0) and s["questions"] == 5 and s["rows"] == 13
    assert s["categories"] == {"c1": pytest.approx(200 / 3), "c2": pytest.approx(50.0)}
    assert scoring.mmbench_circular([(7, "c", "A", None)])["accuracy"] == 0.0  # unmatched counts wrong


def test_mathvista_normalisation_as_calculate_score():
    four = ["3/11", "8/11", "6/11", "3/5"]
    assert scoring.mathvista_normalize("B", four, "multi_choice", "text", None) == "8/11"
    assert scoring.mathvista_normalize("(C) 6/11", four, "multi_choice", "text", None) == "6/11"
    assert scoring.mathvista_normalize("8/1", four, "multi_choice", "text", None) == "8/11"  # nearest by edits
    assert scoring.mathvista_normalize("14.7", [], "free_form", "integer", None) == "14"
    assert scoring.mathvista_normalize("abc", [], "free_form", "integer", None) is None
    assert scoring.mathvista_normalize("0.666", [], "free_form", "float", 2) == "0.67"
    assert scoring.mathvista_normalize("1.25", [], "free_form", "float", 1.0) == "1.2"
    assert scoring.mathvista_quick_extract("14", {"question_type": "free_form", "answer_type": "integer"}) == "14"
    assert scoring.mathvista_quick_extract("It is 14", {"question_type": "free_form", "answer_type": "integer"}) is None
    assert scoring.edit_distance("kitten", "sitting") == 3


def test_mmvet_grade_parsing():
    assert scoring.mmvet_grade("0.5") == 0.5 and scoring.mmvet_grade("1.0 because") == 1.0
    assert scoring.mmvet_grade("Score: 0.5") is None and scoring.mmvet_grade("1.5") is None


# ---------------------------------------------------------------- subsets, report

def test_limit_is_a_fixed_nested_subset():
    items = [tasks.Item(str(i), str(i // 2), "p", (0, i)) for i in range(40)]
    four = tasks.select(tasks.TASKS["mme"], items, 4)
    assert len({i.unit for i in four}) == 4 and len(four) == 8  # whole units
    assert [i.key for i in four] == sorted((i.key for i in four), key=int)  # asked in dataset order
    assert {i.key for i in four} <= {i.key for i in tasks.select(tasks.TASKS["mme"], items, 9)}
    assert four == tasks.select(tasks.TASKS["mme"], items, 4)
    assert [i.key for i in four] != [str(i) for i in range(8)]  # spread, not the first N
    assert tasks.select(tasks.TASKS["mme"], items, None) == items


def test_released_model_names():
    assert report.released_name("YanweiLi/MGM-2B") == "MGM-2B"
    assert report.released_name("mgm-7b-hd-4bit") == "MGM-7B-HD"
    assert report.released_name("YanweiLi/MGM-8x7B-HD") == "MGM-8x7B-HD"
    assert report.released_name("my-model", "# MGM-34B for mgm-mlx") == "MGM-34B"
    assert report.released_name("folder/MGM-13B", hd=True) == "MGM-13B-HD"
    assert report.released_name("MGM-2Bx", "my-mgm") is None
    assert report.headline("mme", {"perception": 1300.0, "cognition": 300.0}, "MGM-2B") == [
        ("MME perception", 1300.0, 1341), ("MME cognition", 300.0, 312)]


# ---------------------------------------------------------------- data

def test_rows_and_images_come_from_the_cache(offline):
    from mgm_mlx.eval.data import Table, decode_image, locate
    from mgm_mlx.image import ImageError

    import numpy as np

    from eval_cache import png

    files, revision = locate("lmms-lab/textvqa", tasks.TASKS["textvqa"].files)
    assert [f.name for f in files] == ["validation-00000-of-00002.parquet", "validation-00001-of-00002.parquet"]
    assert revision.startswith("0123") and all(f.is_symlink() for f in files)  # snapshot links into blobs/
    table = Table(files)
    rows = table.rows(tasks.TASKS["textvqa"].columns)
    assert [r["question_id"] for r in rows] == [34602, 34603, 34604, 34605, 34606]
    for seed, row in enumerate(rows):  # two files, row groups of two rows: each image is its own row's
        expected = np.asarray(Image.open(__import__("io").BytesIO(png(seed))))
        assert np.array_equal(np.asarray(table.image(row["_ref"])), expected)
    with pytest.raises(ImageError, match="not a readable image"):
        decode_image({"bytes": b"GIF89a broken", "path": "x.gif"}, "row 3")
    with pytest.raises(ImageError, match="no image bytes"):
        decode_image({"bytes": None, "path": "x.jpg"})


# ---------------------------------------------------------------- end to end on a tiny model

@pytest.mark.parametrize("task", ["textvqa", "mme", "pope", "mmbench", "mmvet", "mathvista"])
def test_each_task_end_to_end(offline, checkpoint, tmp_path, monkeypatch, capsys, task):
    monkeypatch.setattr(tasks.TASKS[task], "max_tokens", min(tasks.TASKS[task].max_tokens, 16))  # a random model
    asked = []
    real = runner.answer
    monkeypatch.setattr(runner, "answer", lambda *a, **k: asked.append(a[2]) or real(*a, **k))
    assert run("--model", checkpoint, "--task", task, "--limit", 1, "--output", tmp_path, "--quiet") == 0
    answers = lines(tmp_path / f"{task}-answers.jsonl")
    assert [a["prompt"] for a in answers] == asked and len(asked) == {"mme": 2, "mmbench": len(asked)}.get(task, 1)
    assert all(isinstance(a["answer"], str) and "error" not in a and a["seconds"] > 0 for a in answers)
    result = json.loads((tmp_path / f"{task}-results.json").read_text())
    assert result["released_model"] == "MGM-2B" and result["template"] == "gemma"
    assert result["questions"] == len(asked) and not result["complete"] and result["revision"].startswith("0123")
    assert result["timing"]["peak_memory_gb"] > 0 and result["timing"]["seconds_per_question"] > 0
    md = (tmp_path / f"{task}-results.md").read_text()
    assert "| metric | mgm-mlx | paper |" in md
    out, err = capsys.readouterr()
    assert "| metric | mgm-mlx | paper |" in out
    if task in ("mmvet", "mathvista"):
        assert result["scores"] is None and "scoring needs an LLM judge" in err
    else:
        assert result["scores"] is not None
    if task == "textvqa":
        assert "| TextVQA accuracy |" in md and "| 56.2 |" in md


def scripted(monkeypatch, replies):
    """runner.answer replaced by replies[prompt]; returns the list of prompts asked."""
    asked = []

    def fake(session, image, prompt, max_tokens):
        assert isinstance(image, Image.Image) and image.size == (40, 30)
        asked.append(prompt)
        reply = replies(prompt) if callable(replies) else replies[prompt]
        if isinstance(reply, BaseException):
            raise reply
        return reply

    monkeypatch.setattr(runner, "answer", fake)
    return asked


def test_scores_end_to_end(offline, checkpoint, tmp_path, monkeypatch):
    tv = {tasks.textvqa_prompt(r["question"], r["ocr_tokens"]): a for r, a in
          zip(offline["lmms-lab/textvqa"], ["Dakota", "Copenhagen", "ale", "10", "23"])}
    scripted(monkeypatch, tv)
    assert run("--model", checkpoint, "--task", "textvqa", "--output", tmp_path, "--quiet") == 0
    r = json.loads((tmp_path / "textvqa-results.json").read_text())
    # per question: dakota 5 of 10 -> 1.0, copenhagen 8 -> 1.0, ale 5 -> 1.0, "10" = 10 of 10 (ten -> 10), 23 -> 0
    assert r["complete"] and r["questions"] == 5 and r["scores"]["accuracy"] == pytest.approx(80.0)
    assert r["headline"] == [["TextVQA accuracy", pytest.approx(80.0), 56.2]]

    mme = {tasks.mme_prompt(x["question"]): ("Yes" if x["answer"] == "Yes" else "No, it is not")
           for x in offline["lmms-lab/MME"]}
    mme[tasks.mme_prompt("Is there a black giraffe in the image?")] = "Yes"  # one wrong: color acc 50, acc+ 0
    scripted(monkeypatch, mme)
    assert run("--model", checkpoint, "--task", "mme", "--output", tmp_path, "--quiet") == 0
    s = json.loads((tmp_path / "mme-results.json").read_text())["scores"]
    assert s["perception"] == pytest.approx(200.0 + 50.0) and s["cognition"] == pytest.approx(200.0)

    pope = dict(zip([tasks.pope_prompt(x["question"]) for x in offline["lmms-lab/POPE"]], ["Yes", "Yes", "No", "No"]))
    scripted(monkeypatch, pope)
    assert run("--model", checkpoint, "--task", "pope", "--output", tmp_path, "--quiet") == 0
    s = json.loads((tmp_path / "pope-results.json").read_text())["scores"]
    assert s["categories"]["adversarial"]["accuracy"] == 0.5 and s["categories"]["random"]["accuracy"] == 0.5
    assert s["categories"]["adversarial"]["yes_ratio"] == 1.0 and s["categories"]["random"]["f1"] == 0.0

    rows = offline["lmms-lab/MMBench_EN"]
    mmb = {tasks.mmbench_prompt(x): x["answer"] for x in rows}
    wrong = next(x for x in rows if x["index"] == 2000261)
    mmb[tasks.mmbench_prompt(wrong)] = "The answer is " + ("B." if wrong["answer"] != "B" else "C.")
    asked = scripted(monkeypatch, mmb)
    assert run("--model", checkpoint, "--task", "mmbench", "--output", tmp_path, "--quiet") == 0
    assert len(asked) == 6
    s = json.loads((tmp_path / "mmbench-results.json").read_text())["scores"]
    assert s["accuracy"] == pytest.approx(50.0) and s["questions"] == 2 and s["rows"] == 6  # 293 hits, 261 misses
    assert s["categories"] == {"image_scene": 100.0, "nature": 0.0} and s["unmatched"] == 0


def test_resume_asks_only_new_questions(offline, checkpoint, tmp_path, monkeypatch):
    asked = scripted(monkeypatch, lambda p: "dakota")
    assert run("--model", checkpoint, "--task", "textvqa", "--limit", 2, "--output", tmp_path, "--quiet") == 0
    assert len(asked) == 2
    first = [a["id"] for a in lines(tmp_path / "textvqa-answers.jsonl")]
    assert run("--model", checkpoint, "--task", "textvqa", "--limit", 4, "--output", tmp_path, "--quiet") == 0
    assert len(asked) == 4  # only 2 new answers
    ids = [a["id"] for a in lines(tmp_path / "textvqa-answers.jsonl")]
    assert ids[:2] == first and len(set(ids)) == 4
    assert run("--model", checkpoint, "--task", "textvqa", "--limit", 4, "--output", tmp_path, "--quiet") == 0
    assert len(asked) == 4  # nothing left to ask: the model is not even loaded
    r = json.loads((tmp_path / "textvqa-results.json").read_text())
    assert r["answered"] == 4 and r["timing"]["generated_now"] == 0


def test_interrupted_run_resumes(offline, checkpoint, tmp_path, monkeypatch, capsys):
    calls = []

    def reply(prompt):
        calls.append(prompt)
        return KeyboardInterrupt() if len(calls) == 3 else "yes"

    scripted(monkeypatch, reply)
    assert run("--model", checkpoint, "--task", "pope", "--output", tmp_path, "--quiet") == 130
    assert "run the same command again" in capsys.readouterr().err
    path = tmp_path / "pope-answers.jsonl"
    assert len(lines(path)) == 2
    with open(path, "a") as f:
        f.write('{"id": "torn li')  # a run killed while writing
    assert run("--model", checkpoint, "--task", "pope", "--output", tmp_path, "--quiet") == 0
    assert len(calls) == 5 and len(lines(path)) == 4


def test_other_settings_are_not_mixed(offline, checkpoint, tmp_path, monkeypatch, capsys):
    scripted(monkeypatch, lambda p: "yes")
    assert run("--model", checkpoint, "--task", "pope", "--limit", 1, "--output", tmp_path, "--quiet") == 0
    capsys.readouterr()
    assert run("--model", checkpoint, "--task", "pope", "--limit", 1, "--output", tmp_path, "--q-bits", 4) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "another setting" in err and len(err.splitlines()) == 1


def test_a_failing_question_is_recorded_and_the_run_goes_on(offline, checkpoint, tmp_path, monkeypatch):
    scripted(monkeypatch, lambda p: ValueError("the prompt is 5000 tokens") if "backpack" in p else "no")
    assert run("--model", checkpoint, "--task", "pope", "--output", tmp_path, "--quiet") == 0
    failed = [a for a in lines(tmp_path / "pope-answers.jsonl") if a.get("error")]
    assert len(failed) == 1 and failed[0]["answer"] == ""
    assert json.loads((tmp_path / "pope-results.json").read_text())["timing"]["errors"] == 1


# ---------------------------------------------------------------- the judge, over HTTP

class FakeJudge(http.server.BaseHTTPRequestHandler):
    requests = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        FakeJudge.requests.append((self.path, self.headers.get("Authorization"), body))
        prompt = body["messages"][0]["content"]
        if prompt.startswith(MMVET_PROMPT):  # MM-Vet: never a number for v1_1; 1.0 for the full answer
            query = prompt[len(MMVET_PROMPT):]
            text = "unsure" if "| =0 |" in query else "1.0" if "x = -1 or x = -5" in query else "0.2"
        else:  # MathVista extraction: what follows the examples
            text = "1.45" if "Luca" in prompt.split("Extracted answer: B", 1)[1] else "B"
        reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    FakeJudge.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_mmvet_and_mathvista_with_a_judge(offline, checkpoint, tmp_path, monkeypatch, judge_url):
    scripted(monkeypatch, {"What is x in the equation?": "x = -1 or x = -5", "What is d in the last equation?": "d = 0"})
    assert run("--model", checkpoint, "--task", "mmvet", "--output", tmp_path, "--quiet",
               "--judge-url", judge_url, "--judge-model", "grader-1", "--judge-key", "sk-test") == 0
    path, auth, body = FakeJudge.requests[0]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
    assert body["model"] == "grader-1" and body["temperature"] == 0.0 and body["max_tokens"] == 3
    assert body["messages"][0]["content"] == mmvet_query("What is x in the equation?", "-1<AND>-5", "x = -1 or x = -5")
    retry = [b["messages"][0]["content"] for _, _, b in FakeJudge.requests if "(digit)" in b["messages"][0]["content"]]
    assert len(retry) == 5  # v1_1: asked again 5 times for a number, then graded 0
    s = json.loads((tmp_path / "mmvet-results.json").read_text())["scores"]
    assert s["score"] == pytest.approx(50.0) and s["capabilities"] == {"math": 50.0, "ocr": 50.0}
    n = len(FakeJudge.requests)
    assert run("--model", checkpoint, "--task", "mmvet", "--output", tmp_path, "--quiet",
               "--judge-url", judge_url, "--judge-model", "grader-1") == 0
    assert len(FakeJudge.requests) == n  # grades are kept in mmvet-judged.jsonl

    rows = offline["AI4Math/MathVista"]
    scripted(monkeypatch, {tasks.mathvista_prompt(rows[0]): "The answer is (B) 8/11.", tasks.mathvista_prompt(rows[1]): "14",
                           tasks.mathvista_prompt(rows[2]): "Luca needs $1.45."})
    FakeJudge.requests = []
    assert run("--model", checkpoint, "--task", "mathvista", "--output", tmp_path, "--quiet",
               "--judge-url", judge_url, "--judge-model", "grader-1") == 0
    assert len(FakeJudge.requests) == 2  # "14" is read by the rules, without the judge
    assert FakeJudge.requests[0][2]["messages"][0]["content"] == mathvista_query(
        tasks.mathvista_prompt(rows[0]), "The answer is (B) 8/11.")
    assert json.loads((tmp_path / "mathvista-results.json").read_text())["scores"]["accuracy"] == pytest.approx(100.0)


def test_judge_errors_are_one_line(offline, checkpoint, tmp_path, monkeypatch, capsys):
    scripted(monkeypatch, lambda p: "x")
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr("mgm_mlx.eval.judge.Judge.WAIT", 0.0)
    assert run("--model", checkpoint, "--task", "mmvet", "--output", tmp_path, "--quiet",
               "--judge-url", f"http://127.0.0.1:{port}/v1", "--judge-model", "g") == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert len(err) == 1 and err[0].startswith("error: the judge at http://127.0.0.1:") and "failed" in err[0]
    assert len(lines(tmp_path / "mmvet-answers.jsonl")) == 2  # the answers are kept


# ---------------------------------------------------------------- bad input

@pytest.mark.parametrize("argv, message", [
    (["--task", "vqav2"], "unknown task 'vqav2'; choose from textvqa, mme, pope, mmbench, mmvet, mathvista"),
    (["--task", "mme", "--limit", "0"], "--limit must be a whole number of at least 1 (got '0')"),
    (["--task", "mme", "--limit", "ten"], "--limit must be a whole number of at least 1 (got 'ten')"),
    (["--task", "mme", "--template", "chatgpt"], "unknown template 'chatgpt'"),
    (["--task", "mmvet", "--judge-url", "http://localhost:1/v1"], "give --judge-url and --judge-model together"),
    (["--task", "mme", "--judge-url", "http://x/v1", "--judge-model", "g"], "mme is scored by rules"),
])
def test_bad_options(offline, checkpoint, tmp_path, capsys, argv, message):
    assert run("--model", checkpoint, "--output", tmp_path, *argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_missing_dataset_offline(tmp_path, checkpoint, monkeypatch, capsys):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert run("--model", checkpoint, "--task", "textvqa", "--output", tmp_path / "out") == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == ("error: lmms-lab/textvqa: it is not in the Hugging Face cache and the hub can't be reached; "
                       "run once online")


def test_incomplete_download_is_not_used(tmp_path, checkpoint, monkeypatch, capsys):
    import huggingface_hub.constants as hub

    from eval_cache import add_dataset, textvqa_rows, write_table

    add_dataset(tmp_path / "hub", "lmms-lab/textvqa", {"data/validation-00001-of-00002.parquet": write_table(textvqa_rows())})
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    assert run("--model", checkpoint, "--task", "textvqa", "--output", tmp_path / "out") == 1
    assert "the Hugging Face cache holds only part of data/validation-*.parquet" in capsys.readouterr().err


def test_python_m_with_the_cache_from_the_environment(cache, checkpoint, tmp_path):
    import os

    env = {**os.environ, "HF_HUB_CACHE": str(cache[0]), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-m", "mgm_mlx.eval", "--model", str(checkpoint), "--task", "pope",
                          "--limit", "1", "--output", str(tmp_path), "--quiet"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr
    assert "| POPE F1 (mean of categories) |" in out.stdout and len(lines(tmp_path / "pope-answers.jsonl")) == 1


def test_module_and_console_script(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mgm_mlx.eval", "--model", "x", "--task", "nope"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.strip().startswith("error: unknown task 'nope'")
    import shutil

    script = shutil.which("mgm-mlx-eval", path=str(__import__("pathlib").Path(sys.executable).parent))
    if script:
        out = subprocess.run([script, "--help"], capture_output=True, text=True, cwd=tmp_path)
        assert out.returncode == 0 and "--judge-url" in out.stdout
