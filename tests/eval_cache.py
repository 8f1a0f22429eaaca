"""Tiny copies of the benchmark datasets, as a Hugging Face cache (no network).

Each dataset is written the way the hub copies are: parquet files under the repo's own paths
(data/validation-00000-of-00002.parquet, en/dev-00000-of-00001.parquet, ...), the columns
the lmms-lab / AI4Math copies have, images as datasets' Image feature (a struct of PNG bytes
and a path), and huggingface_hub's cache layout: datasets--ORG--NAME/blobs/<sha256>,
snapshots/<revision>/<path> as a relative symlink to the blob, refs/main holding the revision.
"""

import hashlib
import io
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REVISION = "0123456789abcdef0123456789abcdef01234567"
IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


def png(seed: int, size=(40, 30)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def image(seed: int, size=(40, 30)) -> dict:
    return {"bytes": png(seed, size), "path": f"{seed}.png"}


def write_table(rows: list, image_columns=("image",)) -> bytes:
    columns = {}
    for name in rows[0]:
        values = [r[name] for r in rows]
        columns[name] = pa.array(values, type=IMAGE) if name in image_columns else pa.array(values)
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf, row_group_size=2)  # several row groups per file
    return buf.getvalue()


def add_dataset(cache: Path, repo: str, files: dict, revision: str = REVISION) -> Path:
    """files: path in the repo -> bytes. Returns the snapshot folder."""
    root = cache / ("datasets--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / revision
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / "main").write_text(revision)
    for name, data in files.items():
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    return snapshot


def textvqa_rows():
    base = dict(image_width=40, image_height=30, flickr_original_url="", flickr_300k_url="", image_classes=["Sign"],
                set_name="val", question_tokens=["what"])
    rows = [
        dict(question_id=34602, image_id="003a8ae2ef43b901", question="what is the brand of this camera?",
             answers=["nous les gosses", "dakota", "clos culombu", "dakota digital", "dakota", "dakota",
                      "dakota digital", "dakota digital", "dakota", "dakota"],
             ocr_tokens=["DAKOTA", "DIGITAL", "Single-Use", "Camera", "Pire", "digitat"]),
        dict(question_id=34603, image_id="b9dc400eb20bad64", question="what does the small white text spell?",
             answers=["copenhagen"] * 8 + ["thursday", "rupalcon"], ocr_tokens=["D", "RUPALCON", "PALCON", "COPENHAGEN"]),
        dict(question_id=34604, image_id="2b538a43dd933fc1", question="what kind of beer is this?",
             answers=["ale"] * 5 + ["sublimely self-righteous ale"] * 5, ocr_tokens=["NINK", "ALE"]),
        dict(question_id=34605, image_id="97b1112b17015396", question="whats the lowest number yard line that you can see?",
             answers=["10"] * 6 + ["ten"] * 4, ocr_tokens=[]),
        dict(question_id=34606, image_id="94ad4aad01e27a32", question="what number is on the player's jersey?",
             answers=["22"] * 10, ocr_tokens=["22"]),
    ]
    return [{**base, **r, "image": image(i)} for i, r in enumerate(rows)]


def mme_rows():
    qa = [
        ("existence", "000000006040.jpg", "Is there a train in this image? Please answer yes or no.", "Yes"),
        ("existence", "000000006040.jpg", "Is there a bed in this image? Please answer yes or no.", "No"),
        ("color", "000000055072.jpg", "Is there a brown giraffe in the image?  Please answer yes or no.", "Yes"),
        ("color", "000000055072.jpg", "Is there a black giraffe in the image? Please answer yes or no.", "No"),
        ("code_reasoning", "0020.png", "Is a python code shown in the picture? Please answer yes or no.", "Yes"),
        ("code_reasoning", "0020.png", "Is a c++ code shown in the picture? Please answer yes or no.", "No"),
    ]
    return [dict(question_id=f"{c}/{f}", image=image(10 + i // 2), question=q, answer=a, category=c)
            for i, (c, f, q, a) in enumerate(qa)]


def pope_rows():
    qa = [("adversarial", 1, "Is there a snowboard in the image?", "yes"),
          ("adversarial", 2, "Is there a backpack in the image?", "no"),
          ("random", 1, "Is there a dog in the image?", "no"),
          ("random", 2, "Is there a person in the image?", "yes")]
    return [dict(id=str(i), question_id=str(qid), question=q, answer=a, image_source="COCO_val2014_000000310196",
                 image=image(20 + i), category=c) for i, (c, qid, q, a) in enumerate(qa)]


def mmbench_rows():
    rows = []

    def add(index, question, options, answer, hint="nan", category="image_scene", seed=30):
        opts = {k: options[i] if i < len(options) else "nan" for i, k in enumerate("ABCD")}
        rows.append(dict(index=index, question=question, hint=hint, **opts, answer=answer, category=category,
                         image=image(seed), source="scienceqa", **{"l2-category": "attribute_reasoning"},
                         comment="nan", split="dev"))

    q = "Which material is this spatula made of?"
    add(293, q, ["rubber", "cotton"], "A")
    add(1000293, q, ["cotton", "rubber"], "B")
    hint = "Figure: Great Victoria Desert.\nThe Great Victoria Desert is a hot desert ecosystem."
    q2 = "Which statement describes the Great Victoria Desert ecosystem?"
    four = ["It has thick, moist soil.", "It has dry, thin soil.", "It is cold.", "It is wet."]
    for k in range(4):
        add(261 + k * 1_000_000, q2, four[k:] + four[:k], "ABCD"[(1 - k) % 4], hint=hint, category="nature", seed=31)
    return rows


def mmvet_rows():
    return [dict(question_id="v1_0", image=image(40), question="What is x in the equation?", answer="-1<AND>-5",
                 image_source="v1_0.png", capability="ocr,math"),
            dict(question_id="v1_1", image=image(41), question="What is d in the last equation?", answer="=0",
                 image_source="v1_1.png", capability="ocr,math")]


def mathvista_rows():
    return [
        dict(pid="1", question="What fraction of the shape is blue?", image="images/1.jpg", decoded_image=image(50),
             choices=["3/11", "8/11", "6/11", "3/5"], unit=None, precision=None, answer="8/11",
             question_type="multi_choice", answer_type="text", query="(the dataset's own query)"),
        dict(pid="2", question="Which number is missing?", image="images/2.jpg", decoded_image=image(51),
             choices=None, unit=None, precision=None, answer="14", question_type="free_form",
             answer_type="integer", query="(the dataset's own query)"),
        dict(pid="3", question="How much money does Luca need to buy a sour apple candy and a butterscotch candy?",
             image="images/3.jpg", decoded_image=image(52), choices=None, unit="$", precision=2.0, answer="1.45",
             question_type="free_form", answer_type="float", query="(the dataset's own query)"),
    ]


def make_cache(cache: Path) -> dict:
    """All six tiny datasets; returns repo -> rows."""
    tv = textvqa_rows()
    data = {
        "lmms-lab/textvqa": ({"data/validation-00000-of-00002.parquet": write_table(tv[:3]),
                              "data/validation-00001-of-00002.parquet": write_table(tv[3:]),
                              "data/test-00000-of-00001.parquet": write_table(tv[:1])}, tv),
        "lmms-lab/MME": ({"data/test-00000-of-00001-a25dbe3b44c4fda6.parquet": write_table(mme_rows())}, mme_rows()),
        "lmms-lab/POPE": ({"data/test-00000-of-00001.parquet": write_table(pope_rows())}, pope_rows()),
        "lmms-lab/MMBench_EN": ({"data/dev-00000-of-00001-75b6649fb044d38b.parquet": write_table(mmbench_rows())},
                                mmbench_rows()),
        "lmms-lab/MMVet": ({"data/test-00000-of-00001.parquet": write_table(mmvet_rows())}, mmvet_rows()),
        "AI4Math/MathVista": ({"data/testmini-00000-of-00001-725687bf7a18d64b.parquet":
                               write_table(mathvista_rows(), image_columns=("decoded_image",))}, mathvista_rows()),
    }
    for repo, (files, _) in data.items():
        add_dataset(cache, repo, files)
    return {repo: rows for repo, (_, rows) in data.items()}
