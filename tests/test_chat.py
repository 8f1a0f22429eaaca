"""Image chat against the reference: templates string for string (made by MGM's own
mgm/conversation.py), tokens around <image> (mm_utils.tokenizer_image_token), and first-step
logits (fp32 max-abs <= 1e-3) and 32 greedy tokens against transformers LLMs fed the spliced
inputs_embeds (Gemma, Llama, Mixtral; non-HD and HD). Then Chat, the CLI and bad input."""

import json
import subprocess
import sys

import mgm_mlx
from mgm_mlx.generate import Chat, generate, main, stream_generate
from mgm_mlx.prompt import IMAGE, format_prompt, label_images, system_text, tokenize
from mgm_mlx.vision import MGMVision

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.generate import stream_generate as lm_stream_generate

from checkpoints import make_checkpoint
from common import GOLDENS, mode_variants
from conftest import assert_close

TEMPLATES = json.loads((GOLDENS / "templates.json").read_text())
CHATS = json.loads((GOLDENS / "chat.json").read_text())
QUESTION = "What is in the picture?"


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat")
    out = {}
    for name, info in CHATS.items():
        llm = name.split("-")[0]
        out[name] = make_checkpoint(root / name, llm, hd=info["hd"])[0]
    return out


@pytest.fixture(scope="module")
def gemma(released):
    return mgm_mlx.load(released["gemma"], dtype=mx.float32, vision_dtype=mx.float32)


@pytest.mark.parametrize("template", list(TEMPLATES))
def test_templates_match_the_reference(template):
    gold = TEMPLATES[template]
    assert format_prompt(template, [IMAGE + "\n" + QUESTION, None]) == gold["one"]
    assert format_prompt(template, [IMAGE + "\n" + QUESTION, "A red house.", "And the sky?", None]) == gold["two"]
    assert format_prompt(template, [IMAGE + "\n" + IMAGE + "\nCompare them.", None]) == gold["images"]


def test_image_labels():
    assert label_images("a<image>\nb") == "a<image>\nb"
    assert label_images("x<image>\n<image>\nq") == "xImage 1:<image>\nImage 2:<image>\nq"


def test_system_prompts():
    assert format_prompt("vicuna_v1", ["hi", None], system="Be brief.") == "Be brief. USER: hi ASSISTANT:"
    assert format_prompt("llama_3", ["hi", None], system="Be brief.").startswith(
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>")
    assert format_prompt("chatml_direct", ["hi", None], system="Be brief.").startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert format_prompt("mistral_instruct", ["hi", None], system="Be brief.") == "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nhi [/INST]"
    with pytest.raises(ValueError, match="no system prompt"):
        system_text("gemma", "Be brief.")


@pytest.mark.parametrize("name", list(CHATS))
def test_tokens_around_image_match_the_reference(released, name):
    _, processor = mgm_mlx.load(released[name], lazy=True)
    ids = tokenize(processor.tokenizer._tokenizer, CHATS[name]["prompt"])
    assert ids == CHATS[name]["ids"]
    assert ids[0] == processor.tokenizer.bos_token_id and ids.count(-200) == 1


@pytest.mark.parametrize("name", list(CHATS))
def test_logits_and_greedy_tokens_match_transformers(released, name):
    gold = CHATS[name]
    model, processor = mgm_mlx.load(released[name], dtype=mx.float32, vision_dtype=mx.float32)
    image = mode_variants()["rgb"]
    features = model.vision(processor.images([image]))[0]
    assert features.shape[0] == (2880 if gold["hd"] else 576)
    embeddings = model.embed(gold["ids"], [features])
    logits = model.language_model(mx.zeros((1, embeddings.shape[1]), mx.int32), input_embeddings=embeddings)
    assert_close(logits[0, -1], np.load(GOLDENS / "chat.npz")[f"{name}/logits"], tol=1e-3)
    tokens = [r.token for r in stream_generate(model, processor, QUESTION, [image], max_tokens=32)]
    assert tokens == gold["tokens"][: len(tokens)]
    assert len(tokens) == 32 or tokens[-1] in processor.tokenizer.eos_token_ids


def _from_scratch(model, processor, messages, images, max_tokens):
    """The whole conversation recomputed, no cache reuse."""
    prompt = label_images(format_prompt(processor.template, messages))
    ids = tokenize(processor.tokenizer._tokenizer, prompt)
    features = [model.vision(processor.images([im]))[0] for im in images]
    emb = model.embed(ids, features)[0]
    return [r.token for r in lm_stream_generate(model.language_model, processor.tokenizer,
                                                mx.zeros((emb.shape[0],), mx.int32), max_tokens=max_tokens,
                                                input_embeddings=emb)]


def test_chat_reuses_the_cache_and_encodes_images_once(gemma, monkeypatch):
    model, processor = gemma
    image = mode_variants()["rgb"]
    calls = []
    original = MGMVision.__call__
    monkeypatch.setattr(MGMVision, "__call__", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    chat = Chat(model, processor)
    first = [r for r in chat.stream(QUESTION, [image], max_tokens=12)]
    second = [r for r in chat.stream("And the sky?", max_tokens=12)]
    assert len(calls) == 1  # the second turn ran no vision tower
    assert second[-1].prompt_tokens < len(chat.cached) - 12 - 576  # only the new turn was prefilled
    answer1 = "".join(r.text for r in first).strip()
    monkeypatch.setattr(MGMVision, "__call__", original)
    messages = [IMAGE + "\n" + QUESTION, answer1, "And the sky?", None]
    assert [r.token for r in second] == _from_scratch(model, processor, messages, [image], 12)


def test_stopping_a_reply_early_keeps_the_chat_right(gemma):
    model, processor = gemma
    image = mode_variants()["rgb"]
    chat = Chat(model, processor)
    for n, _ in enumerate(chat.stream(QUESTION, [image], max_tokens=20)):
        if n == 2:
            break  # a stop button
    assert len(chat.cached) == chat.cache[0].offset
    partial = chat.messages[-1]
    second = [r.token for r in chat.stream("And the sky?", max_tokens=10)]
    messages = [IMAGE + "\n" + QUESTION, partial, "And the sky?", None]
    assert second == _from_scratch(model, processor, messages, [image], 10)


def test_literal_image_tag_and_single_image(gemma):
    model, processor = gemma
    with pytest.raises(ValueError, match="too many"):
        generate(model, processor, "what is <image> here", max_tokens=2)
    # one image may be passed on its own, not in a list
    assert isinstance(generate(model, processor, QUESTION, mode_variants()["rgb"], max_tokens=2), str)


def test_chat_reset_and_images_in_later_turns(gemma):
    model, processor = gemma
    chat = Chat(model, processor)
    chat.send("Hello", max_tokens=4)
    assert chat.images == []
    chat.send("Now look", [mode_variants()["gray"]], max_tokens=4)
    assert len(chat.images) == 1 and chat.messages[2].startswith(IMAGE + "\n")
    chat.reset()
    assert chat.messages == [] and chat.cached == []


def test_prompt_over_the_limit_is_refused(gemma):
    model, processor = gemma
    with pytest.raises(ValueError, match="at most 2048"):
        generate(model, processor, "house " * 2000, [mode_variants()["rgb"]], max_tokens=2)


def test_the_answer_stops_at_the_context_limit(gemma, monkeypatch):
    model, processor = gemma
    chat = Chat(model, processor)
    prompt_tokens = len(tokenize(processor.tokenizer._tokenizer, format_prompt("gemma", ["Hello there", None])))
    monkeypatch.setitem(model.config, "tokenizer_model_max_length", prompt_tokens + 3)
    processor.tokenizer.eos_token_ids = set()  # no early stop: only the limit ends it
    try:
        replies = list(chat.stream("Hello there", max_tokens=50))
    finally:
        Chat(model, processor)  # puts the template's stop tokens back
    assert len(replies) <= 3 and len(chat.cached) <= prompt_tokens + 3


def test_sampling_with_a_seed_repeats(gemma):
    model, processor = gemma
    a = generate(model, processor, QUESTION, max_tokens=8, temp=1.0, top_p=0.9, seed=3)
    b = generate(model, processor, QUESTION, max_tokens=8, temp=1.0, top_p=0.9, seed=3)
    assert a == b


# ---- the command line

def _run(args, stdin=None):
    return subprocess.run([sys.executable, "-m", "mgm_mlx.generate", *args], capture_output=True, text=True, input=stdin)


def test_cli_streams_answer_and_stats(released, tmp_path):
    image = tmp_path / "house.png"
    mode_variants()["rgb"].save(image)
    out = _run(["--model", str(released["gemma"]), "--image", str(image), "--prompt", QUESTION, "-m", "8"])
    assert out.returncode == 0, out.stderr
    for line in ("Image tokens: 576", "Prompt:", "Generation:", "Peak memory:", "CLIP", "ConvNeXt", "mining"):
        assert line in out.stderr
    out = _run(["--model", str(released["gemma"]), "--prompt", "-", "-m", "4", "--quiet"], stdin="Just text?")
    assert out.returncode == 0 and out.stderr == ""


@pytest.mark.parametrize("args, words", [
    (["--image", "missing.png"], "image not found"),
    (["--image", __file__], "not an image file"),
    (["--prompt", "house " * 3000], "at most 2048"),
    (["--template", "alpaca"], "unknown template 'alpaca'"),
    (["--system", "Be brief."], "no system prompt"),
])
def test_cli_bad_input_is_one_line(released, args, words):
    base = ["--model", str(released["gemma"]), "--prompt", QUESTION, "-m", "2"]
    # later flags win with argparse, so the bad value replaces the good one
    out = _run(base + args)
    assert out.returncode == 1
    assert words in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr


def test_cli_missing_model(tmp_path):
    out = _run(["--model", str(tmp_path / "nope"), "--prompt", QUESTION])
    assert out.returncode == 1 and out.stderr.strip() == f"error: model folder not found: {tmp_path / 'nope'}"


def test_main_is_importable_for_console_scripts():
    assert callable(main)
