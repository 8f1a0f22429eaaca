"""Scores, as the reference scripts compute them; pure functions, no model, no files.

- TextVQA: MGM's mgm/eval/eval_textvqa.py -> m4c_evaluator.TextVQAAccuracyEvaluator (EvalAI's
  answer processor; accuracy = mean over the 10 leave-one-out subsets of min(#matching / 3, 1)).
- MME: MME's eval_tool/calculation.py (yes/no from the first 4 characters; per subtask
  acc + acc+ in percent; perception = 10 subtasks, cognition = 4).
- POPE: LLaVA's llava/eval/eval_pope.py (kept as mgm/eval/eval_pope.py).
- MMBench: the circular evaluation of MMBench's evaluator (rows index, index + 1e6, ... are
  the circular shifts of one question; it counts only when every shift is right) with its
  rule-based answer matching (can_infer_option, then can_infer_text).
- MathVista: mgm/eval/MathVista/calculate_score.py (normalize_extracted_answer, safe_equal).
- MM-Vet: the grader's reply parsed as MM-Vet's mm-vet_evaluator.py does.

Quirks of the reference are kept on purpose and marked "as the reference".
"""

import re
from collections import defaultdict

# ---------------------------------------------------------------- TextVQA / VQA answers

# EvalAI's contraction table (mmf's EvalAIAnswerProcessor), written as "without:with".
_CONTRACTIONS = """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't couldn'tve:couldn't've
couldnt've:couldn't've didnt:didn't doesnt:doesn't dont:don't hadnt:hadn't hadnt've:hadn't've
hadn'tve:hadn't've hasnt:hasn't havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's
howd:how'd howll:how'll hows:how's Id've:I'd've I'dve:I'd've Im:I'm Ive:I've isnt:isn't itd:it'd
itd've:it'd've it'dve:it'd've itll:it'll let's:let's maam:ma'am mightnt:mightn't
mightnt've:mightn't've mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't ow's'at:'ow's'at 'ows'at:'ow's'at
'ow'sat:'ow's'at shant:shan't shed've:she'd've she'dve:she'd've she's:she's shouldve:should've
shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've somebody'd:somebodyd
somebodyd've:somebody'd've somebody'dve:somebody'd've somebodyll:somebody'll somebodys:somebody's
someoned:someone'd someoned've:someone'd've someone'dve:someone'd've someonell:someone'll
someones:someone's somethingd:something'd somethingd've:something'd've
something'dve:something'd've somethingll:something'll thats:that's thered:there'd
thered've:there'd've there'dve:there'd've therere:there're theres:there's theyd:they'd
theyd've:they'd've they'dve:they'd've theyll:they'll theyre:they're theyve:they've twas:'twas
wasnt:wasn't wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll
whatre:what're whats:what's whatve:what've whens:when's whered:where'd wheres:where's
whereve:where've whod:who'd whod've:who'd've who'dve:who'd've wholl:who'll whos:who's
whove:who've whyll:why'll whyre:why're whys:why's wont:won't wouldve:would've wouldnt:wouldn't
wouldnt've:wouldn't've wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd youd've:you'd've
you'dve:you'd've youll:you'll youre:you're youve:you've
"""
CONTRACTIONS = dict(pair.split(":", 1) for pair in _CONTRACTIONS.split())
NUMBERS = {w: str(i) for i, w in enumerate("zero one two three four five six seven eight nine ten".split())}
NUMBERS["none"] = "0"
ARTICLES = {"a", "an", "the"}
PUNCTUATION = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
# As the reference: "(?!<=\d)" is a look-ahead (a typo for a look-behind), so a period goes
# whenever no digit follows it.
PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
COMMA_BETWEEN_DIGITS = re.compile(r"(?<=\d)(,)+(?=\d)")


def normalize_answer(text: str) -> str:
    """EvalAI's answer processing, step for step as m4c_evaluator.EvalAIAnswerProcessor."""
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    text = text.replace("\n", " ").replace("\t", " ").strip()
    # punctuation: dropped when it touches a space (or digits are comma-separated), else a space
    out = text
    drop_all = COMMA_BETWEEN_DIGITS.search(text) is not None
    for p in PUNCTUATION:
        if drop_all or p + " " in text or " " + p in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    # As the reference: re.UNICODE (32) is passed as sub()'s count, so at most 32 periods go.
    out = PERIOD.sub("", out, count=32)
    words = [NUMBERS.get(w, w) for w in out.lower().split()]
    words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
    return " ".join(words)


def vqa_accuracy(prediction: str, answers: list) -> float:
    """min(#other humans who gave this answer / 3, 1), averaged over leaving each human out."""
    if not answers:
        return 0.0
    gold = [normalize_answer(a) for a in answers]
    pred = normalize_answer(prediction)
    matches = gold.count(pred)
    if not matches:
        return 0.0
    # leaving out a matching human leaves matches - 1 others; leaving out another leaves matches
    total = sum(min(1.0, (matches - (g == pred)) / 3) for g in gold)
    return total / len(gold)


# ---------------------------------------------------------------- MME

MME_PERCEPTION = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                  "artwork", "OCR")
MME_COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")


def mme_label(answer: str) -> str:
    """'yes', 'no' or 'other' (calculation.py parse_pred_ans on the lower-cased answer)."""
    answer = answer.lower()
    if answer in ("yes", "no"):
        return answer
    head = answer[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def mme_scores(records) -> dict:
    """records: (category, image, gold 'Yes'/'No', answer). Per subtask: acc (% of questions
    right), acc_plus (% of images with every question right), score = acc + acc_plus;
    perception and cognition = sums of their subtask scores (those present)."""
    questions = defaultdict(lambda: [0, 0])  # category -> [right, total]
    images = defaultdict(lambda: defaultdict(list))  # category -> image -> [right?]
    for category, image, gold, answer in records:
        right = mme_label(answer) == gold.lower()
        questions[category][0] += right
        questions[category][1] += 1
        images[category][image].append(right)
    subtasks = {}
    for category, (right, total) in questions.items():
        acc = 100.0 * right / total
        acc_plus = 100.0 * sum(all(r) for r in images[category].values()) / len(images[category])
        subtasks[category] = {"acc": acc, "acc_plus": acc_plus, "score": acc + acc_plus,
                              "questions": total, "images": len(images[category])}
    return {
        "perception": sum(s["score"] for c, s in subtasks.items() if c in MME_PERCEPTION),
        "cognition": sum(s["score"] for c, s in subtasks.items() if c in MME_COGNITION),
        "subtasks": subtasks,
    }


# ---------------------------------------------------------------- POPE

def pope_label(answer: str) -> str:
    """eval_pope.py: first sentence, commas dropped, 'no' if a word is No / not / no."""
    if "." in answer:
        answer = answer.split(".")[0]
    words = answer.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


def pope_scores(pairs) -> dict:
    """pairs: (gold 'yes'/'no', answer). Accuracy, precision, recall, F1 (of 'yes'), and the
    ratio of 'yes' predictions, as eval_pope.py prints them (fractions, not percent)."""
    tp = fp = tn = fn = 0
    for gold, answer in pairs:
        pred_yes = pope_label(answer) == "yes"
        gold_yes = gold.strip().lower() != "no"  # as the reference: anything but 'no' is yes
        tp += pred_yes and gold_yes
        fp += pred_yes and not gold_yes
        tn += not pred_yes and not gold_yes
        fn += not pred_yes and gold_yes
    n = tp + fp + tn + fn
    precision = tp / (tp + fp) if tp + fp else 0.0  # the reference divides by zero here
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": (tp + tn) / n if n else 0.0, "precision": precision, "recall": recall, "f1": f1,
            "yes_ratio": (tp + fp) / n if n else 0.0, "tp": tp, "fp": fp, "tn": tn, "fn": fn, "questions": n}


# ---------------------------------------------------------------- MMBench

MMBENCH_LETTERS = "ABCDE"  # can_infer_option accepts E ("none of them") as well
_WRAPPINGS = [("", "."), ("", ","), ("", ":"), ("", ")"), ("", ")."), ("(", ")"), ("(", ")."), (":", ""),
              (":", ","), (":", "."), (":", ")"), (":", ").")]


def mmbench_letter(answer: str, options: dict):
    """The option an answer names, by MMBench's rules, or None when they cannot tell.

    options: letter -> option text (A-D that exist). First a lone letter among the words
    (bare, or wrapped as 'A.', '(A)', ':A', ...), then an option text inside the answer."""
    if "Failed to obtain answer via API" in answer:
        return None
    words = [w.strip() for w in answer.split()]
    if sum(c in words for c in MMBENCH_LETTERS) == 1:
        for c in MMBENCH_LETTERS:
            if "A" in words and len(words) > 3:  # 'A' may be an article: not a bare letter
                break
            if c in words:
                return c
    for before, after in _WRAPPINGS:
        if sum(before + c + after in words for c in MMBENCH_LETTERS) == 1:
            for c in MMBENCH_LETTERS:
                if before + c + after in words:
                    return c
    lowered = answer.lower()
    found = [k for k, text in options.items() if str(text).lower() in lowered]
    return found[0] if len(found) == 1 else None


def mmbench_circular(records) -> dict:
    """records: (index, category, gold letter, predicted letter or None). A question (index
    below 1e6) counts when it and each of its circular shifts (index + k * 1e6) is right."""
    groups = defaultdict(list)
    categories = {}
    for index, category, gold, pred in records:
        index = int(index)
        groups[index % 1_000_000].append(pred is not None and pred == gold)
        if index < 1_000_000:
            categories[index] = category
    hits = {i: all(groups[i]) for i in categories}
    per_category = defaultdict(list)
    for i, hit in hits.items():
        per_category[categories[i]].append(hit)
    return {
        "accuracy": 100.0 * sum(hits.values()) / len(hits) if hits else 0.0,
        "questions": len(hits),
        "rows": sum(len(groups[i]) for i in hits),
        "categories": {c: 100.0 * sum(v) / len(v) for c, v in sorted(per_category.items())},
    }


# ---------------------------------------------------------------- MathVista

def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance (python-Levenshtein's distance, which calculate_score.py uses)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        current = [i]
        for j, cb in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def mathvista_normalize(extraction, choices, question_type: str, answer_type: str, precision):
    """calculate_score.py normalize_extracted_answer: an option's text for multiple choice
    (by letter, else the nearest by edit distance), else a string of the number."""
    if question_type == "multi_choice":
        extraction = extraction.strip() if isinstance(extraction, str) else str(extraction)
        letters = re.findall(r"\(([a-zA-Z])\)", extraction)
        if letters:
            extraction = letters[0].upper()
        options = [chr(ord("A") + i) for i in range(len(choices))]
        if extraction in options:
            return choices[options.index(extraction)]
        if not choices:
            return extraction
        distances = [edit_distance(extraction, c) for c in choices]
        return choices[distances.index(min(distances))]
    try:
        if answer_type == "integer":
            return str(int(float(extraction)))
        if answer_type == "float":
            return str(round(float(extraction), int(precision or 0)))
        if answer_type == "list":
            return str(extraction)
    except (TypeError, ValueError, OverflowError):
        return None
    return extraction


def mathvista_quick_extract(response: str, problem: dict):
    """extract_answer.py's rule-based shortcuts, before it asks the LLM; None: ask the LLM."""
    if response == "":
        return ""
    if problem["question_type"] == "multi_choice" and response in (problem.get("choices") or []):
        return response
    if problem["answer_type"] == "integer":
        try:
            return str(int(response))
        except ValueError:
            pass
    if problem["answer_type"] == "float":
        try:
            return str(float(response))
        except ValueError:
            pass
    return None


# ---------------------------------------------------------------- MM-Vet

def mmvet_grade(reply: str):
    """The grader's score: its first word as a number in [0, 1], else None (ask again)."""
    try:
        score = float(reply.split(" ")[0].strip())
    except ValueError:
        return None
    return score if 0.0 <= score <= 1.0 else None
