"""The LLM grader that MM-Vet and MathVista need: any OpenAI-compatible chat-completions
endpoint (OpenAI itself, or a local server such as mlx_lm.server, llama.cpp, vLLM, Ollama).

- MM-Vet: the few-shot correctness prompt of MM-Vet's mm-vet_evaluator.py (yuweihao/MM-Vet),
  max_tokens 3, temperature 0; a reply that is not a number in [0, 1] is asked again with
  "Predict the correctness of the answer (digit): " and a rising temperature, at most 5 times,
  then scores 0. The reference grades with gpt-4-0613 (one run; the paper averages 5).
- MathVista: extract_answer.py's quick rules, then its few-shot extraction prompt
  (prompts/ext_ans.py) with temperature 0 (the reference uses gpt-4-0613 too).

Only the standard library is used (urllib), so the extra needs no client package.
"""

import json
import time
import urllib.error
import urllib.request

# MM-Vet's grading prompt (mm-vet_evaluator.py), as data.
MMVET_PROMPT = """Compare the ground truth and prediction from AI models, to give a correctness score for the prediction. \
<AND> in the ground truth means it is totally right only when all elements in the ground truth are present in the \
prediction, and <OR> means it is totally right when any one element in the ground truth is present in the prediction. \
The correctness score is 0.0 (totally wrong), 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, or 1.0 (totally right). \
Just complete the last space of the correctness score.

Question | Ground truth | Prediction | Correctness
--- | --- | --- | ---
What is x in the equation? | -1 <AND> -5 | x = 3 | 0.0
What is x in the equation? | -1 <AND> -5 | x = -1 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -5 or 5 | 0.5
What is x in the equation? | -1 <AND> -5 | x = -1 or x = -5 | 1.0
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and \
Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is \
mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these \
countries do not accurately represent their landscapes. | The meme talks about Iceland and Greenland. It's pointing \
out that despite their names, Iceland is not very icy and Greenland isn't very green. | 0.4
Can you explain this meme? | This meme is poking fun at the fact that the names of the countries Iceland and \
Greenland are misleading. Despite its name, Iceland is known for its beautiful green landscapes, while Greenland is \
mostly covered in ice and snow. The meme is saying that the person has trust issues because the names of these \
countries do not accurately represent their landscapes. | The meme is using humor to point out the misleading nature \
of Iceland's and Greenland's names. Iceland, despite its name, has lush green landscapes while Greenland is mostly \
covered in ice and snow. The text 'This is why I have trust issues' is a playful way to suggest that these \
contradictions can lead to distrust or confusion. The humor in this meme is derived from the unexpected contrast \
between the names of the countries and their actual physical characteristics. | 1.0
"""
MMVET_RETRY = "\nPredict the correctness of the answer (digit): "

# MathVista's answer-extraction examples (mgm/eval/MathVista/prompts/ext_ans.py), as data.
MATHVISTA_DEMO = """Please read the following example. Then extract the answer from the model response and type it \
at the end of the prompt.

Hint: Please answer the question requiring an integer answer and provide the final value, e.g., 1, 2, 3, at the end.
Question: Which number is missing?

Model response: The number missing in the sequence is 14.

Extracted answer: 14

Hint: Please answer the question requiring a floating-point number with one decimal place and provide the final \
value, e.g., 1.2, 1.3, 1.4, at the end.
Question: What is the fraction of females facing the camera?

Model response: The fraction of females facing the camera is 0.6, which means that six out of ten females in the \
group are facing the camera.

Extracted answer: 0.6

Hint: Please answer the question requiring a floating-point number with two decimal places and provide the final \
value, e.g., 1.23, 1.34, 1.45, at the end.
Question: How much money does Luca need to buy a sour apple candy and a butterscotch candy? (Unit: $)

Model response: Luca needs $1.45 to buy a sour apple candy and a butterscotch candy.

Extracted answer: 1.45

Hint: Please answer the question requiring a Python list as an answer and provide the final list, e.g., [1, 2, 3], \
[1.2, 1.3, 1.4], at the end.
Question: Between which two years does the line  graph saw its maximum peak?

Model response: The line graph saw its maximum peak between 2007 and 2008.

Extracted answer: [2007, 2008]

Hint: Please answer the question and provide the correct option letter, e.g., A, B, C, D, at the end.
Question: What fraction of the shape is blue?
Choices:
(A) 3/11
(B) 8/11
(C) 6/11
(D) 3/5

Model response: The correct answer is (B) 8/11.

Extracted answer: B"""


class JudgeError(RuntimeError):
    """The grader could not be reached or gave no usable reply (one line)."""


class Judge:
    """POST {url}/chat/completions with one user message; returns the reply's text. A busy
    or failing server is tried RETRIES times, WAIT, 2 * WAIT, ... seconds apart."""

    RETRIES = 3
    WAIT = 2.0

    def __init__(self, url: str, model: str, key: str | None = None, timeout: float = 120.0):
        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model, self.key, self.timeout = model, key, timeout

    def ask(self, prompt: str, temperature: float = 0.0, max_tokens: int = 256) -> str:
        body = json.dumps({"model": self.model, "messages": [{"role": "user", "content": prompt}],
                           "temperature": temperature, "max_tokens": max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        problem = ""
        for attempt in range(self.RETRIES):
            if attempt:
                time.sleep(self.WAIT * attempt)
            request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    reply = json.loads(response.read().decode("utf-8"))
                return str(reply["choices"][0]["message"]["content"] or "").strip()
            except urllib.error.HTTPError as e:
                problem = f"HTTP {e.code} {e.reason}"
                if e.code not in (408, 409, 429) and e.code < 500:  # a wrong model, key or URL: stop
                    break
            except (urllib.error.URLError, TimeoutError, ConnectionError) as e:
                problem = str(getattr(e, "reason", e))
            except (ValueError, KeyError, IndexError, TypeError):
                problem = "the reply is not an OpenAI chat completion"
        raise JudgeError(f"the judge at {self.url} failed ({problem})")


def mmvet_query(question: str, answer: str, prediction: str) -> str:
    answer = answer.replace("<AND>", " <AND> ").replace("<OR>", " <OR> ")
    return MMVET_PROMPT + "\n" + " | ".join([question, answer, prediction, ""])


def grade_mmvet(judge: Judge, question: str, answer: str, prediction: str) -> tuple[float, str]:
    """(score in [0, 1], the grader's last reply), as mm-vet_evaluator.py asks."""
    from .scoring import mmvet_grade

    query = mmvet_query(question, answer, prediction)
    reply = judge.ask(query, temperature=0.0, max_tokens=3)
    temperature = 0.0
    for _ in range(5):
        score = mmvet_grade(reply)
        if score is not None:
            return score, reply
        reply = judge.ask(query + MMVET_RETRY, temperature=temperature, max_tokens=3)
        temperature += 0.5
    return 0.0, reply


def mathvista_query(query: str, response: str) -> str:
    return f"{MATHVISTA_DEMO.strip()}\n\n{query}\n\n{response}\n\nExtracted answer: "


def extract_mathvista(judge: Judge | None, response: str, problem: dict):
    """The extracted answer (extract_answer.py): rules first; the judge only when they fail.
    Returns None when the judge is needed but missing."""
    from .scoring import mathvista_quick_extract

    quick = mathvista_quick_extract(response, problem)
    if quick is not None:
        return quick
    if judge is None:
        return None
    return judge.ask(mathvista_query(problem["query"], response), temperature=0.0, max_tokens=256)
