"""The generation core that every front-end drives: the CLI, the chat app, the server, eval.

A Session owns the model, one KV cache and an image cache. `stream(turns)` renders the whole
conversation with MGM's template (as the reference does at every turn), turns each image
into tokens once (the cache is keyed by the image's content, not its name), runs the LLM
only on the tokens that differ from what the KV cache already holds (the next turn, a
regenerate, a client resending the history) and streams the reply through mlx-lm's loop.
`Chat` keeps one conversation on top of it.
"""

import hashlib
import os
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from pathlib import Path

import mlx.core as mx
import numpy as np
from mlx_lm.generate import GenerationResponse
from mlx_lm.generate import stream_generate as lm_stream_generate
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import make_logits_processors, make_sampler
from mlx_lm.utils import common_prefix_len
from PIL import Image as PILImage

from . import distributed
from .image import fetch, is_url, load_image
from .prompt import IMAGE, IMAGE_TOKEN_INDEX, system_text

IMAGE_SOURCES = (str, os.PathLike, bytes, np.ndarray, PILImage.Image)


class ContextFull(ValueError):
    """The conversation (text and image tokens) no longer fits the model's context."""


@dataclass
class Settings:
    """How a reply is generated (mlx-lm's names and meanings)."""

    max_tokens: int = 256
    temp: float = 0.0  # 0: greedy, as the reference's evaluation
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float | None = None
    seed: int | None = None
    max_kv_size: int | None = None  # a rotating KV cache of this many tokens
    kv_bits: int | None = None  # a quantized KV cache
    kv_group_size: int = 64
    quantized_kv_start: int = 0  # mlx-lm waits 5000 tokens; MGM's context is 2048 or 4096
    prefill_step_size: int = 2048

    def check(self) -> "Settings":
        """Refuse values that would fail deep inside MLX or silently do something else."""
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1 (got {self.max_tokens})")
        if not 0 <= self.temp < float("inf"):
            raise ValueError(f"the temperature must be 0 (greedy) or more (got {self.temp})")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be above 0 and at most 1 (got {self.top_p})")
        if self.top_k < 0:
            raise ValueError(f"top_k must be 0 (off) or more (got {self.top_k})")
        if not 0 <= self.min_p < 1:
            raise ValueError(f"min_p must be from 0 to below 1 (got {self.min_p})")
        if self.repetition_penalty is not None and not 0 < self.repetition_penalty < float("inf"):
            raise ValueError(f"the repetition penalty must be above 0 (got {self.repetition_penalty})")
        if self.seed is not None and not 0 <= self.seed < 2**64:
            raise ValueError(f"the seed must be from 0 to 2**64 - 1 (got {self.seed})")
        if self.max_kv_size is not None and self.max_kv_size < 1:
            raise ValueError(f"max_kv_size must be at least 1 (got {self.max_kv_size})")
        if self.kv_bits is not None and self.kv_bits not in (2, 3, 4, 5, 6, 8):
            raise ValueError(f"kv_bits must be one of 2, 3, 4, 5, 6, 8 (got {self.kv_bits})")
        if self.kv_group_size not in (32, 64, 128):
            raise ValueError(f"kv_group_size must be 32, 64 or 128 (got {self.kv_group_size})")
        if self.quantized_kv_start < 0:
            raise ValueError(f"quantized_kv_start must be 0 or more (got {self.quantized_kv_start})")
        if self.prefill_step_size < 1:
            raise ValueError(f"prefill_step_size must be at least 1 (got {self.prefill_step_size})")
        return self


@dataclass
class EncodedImage:
    """An image as the LLM takes it: its tokens [T, hidden], named by its content."""

    key: str
    tokens: mx.array


@dataclass
class Turn:
    """One exchange: the user's text and images, and the reply (None: to be generated)."""

    user: str
    images: list = field(default_factory=list)  # paths, bytes, PIL images, arrays or EncodedImage
    assistant: str | None = None


@dataclass
class Response(GenerationResponse):
    """One streamed piece of a reply: mlx-lm's fields, plus MGM's image statistics and how
    much of the context the conversation takes."""

    image_tokens: int = 0  # in the last user turn
    vision_ms: dict = field(default_factory=dict)  # CLIP / ConvNeXt / mining time spent now
    context_tokens: int = 0
    context_max: int = 0


def valid_text(text: str) -> str:
    """Text as valid Unicode: undecodable bytes (from a terminal or a file that is not
    UTF-8) become U+FFFD instead of failing in the tokenizer."""
    try:
        data = text.encode("utf-8", "surrogateescape")  # the bytes Python could not decode, back
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "replace")


def image_key(source) -> str:
    """A content hash: the same picture is the same key whatever its path or URL."""
    h = hashlib.sha256()
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            load_image(path)  # raises the one-line ImageError (not found, a folder, ...)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    elif isinstance(source, bytes):
        h.update(source)
    elif isinstance(source, np.ndarray):
        h.update(f"{source.shape}{source.dtype}".encode())
        h.update(np.ascontiguousarray(source).tobytes())
    elif isinstance(source, PILImage.Image):
        h.update(f"{source.mode}{source.size}".encode())
        h.update(source.tobytes())
    else:
        load_image(source)  # the one-line error for what cannot be an image
    return h.hexdigest()


def _marker(key: str) -> int:
    # stands for one image token position in the ids compared with the KV cache: equal only
    # for the same image (a position-based marker would reuse the cache for another picture)
    return -(1 + int(key[:15], 16))


class Session:
    """The model with its KV cache and image cache, for one conversation at a time."""

    def __init__(self, model, processor, template: str | None = None, system: str | None = None,
                 vision_cache: int = 16):
        self.model = model
        self.processor = processor
        self.template = template or processor.template
        processor.use_template(self.template)  # also refuses an unknown template
        self.system = None if system is None else valid_text(system)
        system_text(self.template, self.system)  # refuse a system prompt the template cannot take
        self.vision_cache = OrderedDict()
        self.vision_cache_size = vision_cache
        self.vision_runs = 0  # how often the image path ran (a cache miss)
        self.reset()

    def set_system(self, system: str | None):
        """Another system prompt (None: the template's); the next reply re-reads from there."""
        system = None if system is None else valid_text(system)
        system_text(self.template, system)  # refuse a system prompt the template cannot take
        self.system = system

    def reset(self):
        """Forget the KV cache (the image cache stays)."""
        self.cache, self._kind = None, None
        self.cached = []  # the ids the KV cache holds, an image token as its image's marker
        self.reply = None  # the token ids of the last reply, once one started

    @property
    def context_used(self) -> int:
        return len(self.cached)

    def encode(self, image, timings: dict | None = None) -> EncodedImage:
        """An image -> its tokens, through the LRU cache keyed by the image's content."""
        if isinstance(image, EncodedImage):
            return image
        if is_url(image):
            image = fetch(image)  # once: the key and the pixels come from the same bytes
        key = distributed.shared_key(self.model, image_key(image))  # split model: rank 0 reads the image
        hit = self.vision_cache.get(key)
        if hit is not None:
            self.vision_cache.move_to_end(key)
            return hit
        pixels = self.processor.images([image])
        encoded = EncodedImage(key, self.model.vision(pixels, timings=timings)[0])
        self.vision_runs += 1
        if self.vision_cache_size > 0:
            self.vision_cache[key] = encoded
            while len(self.vision_cache) > self.vision_cache_size:
                self.vision_cache.popitem(last=False)
        return encoded

    def stream(self, turns: list, settings: Settings | None = None, progress=None, vision_ms: dict | None = None,
               system: str | None = None):
        """The reply to the last turn of `turns` (whose assistant is None), as Response pieces.

        progress(processed, total) reports the prompt being processed (mlx-lm's callback).
        system: this conversation's system prompt (None: the session's), for front-ends that
        serve many conversations with one session (the server); the KV cache is reused only
        as far as the rendered prompts agree, so a different system prompt costs a prefill."""
        settings = (settings or Settings()).check()
        if system is None:
            system = self.system
        else:
            system = valid_text(system)
            system_text(self.template, system)  # refuse one the template cannot take
        if not turns or turns[-1].assistant is not None:
            raise ValueError("the conversation must end with a user turn to answer")
        timings = dict(vision_ms or {})
        messages, images = [], []
        for turn in turns:
            encoded = [self.encode(im, timings) for im in _as_list(turn.images)]
            images += encoded
            messages.append((IMAGE + "\n") * len(encoded) + valid_text(turn.user))
            if turn.assistant is not None:
                messages.append(valid_text(turn.assistant))
        image_tokens = sum(im.tokens.shape[0] for im in encoded)  # the last turn's

        limit = self.model.max_length
        chars = sum(len(m) for m in messages) + len(system or "")
        if chars > self.processor.max_chars(limit):  # tokenizing megabytes first would take GBs
            raise ContextFull(f"the prompt is {chars} characters, far more than the {limit} tokens the model takes")
        ids = self.processor.prompt_ids(self.template, messages, system)
        if ids.count(IMAGE_TOKEN_INDEX) != len(images):
            raise ValueError(f"the text has {ids.count(IMAGE_TOKEN_INDEX) - len(images)} '{IMAGE}' too many; "
                             "attach images instead of writing the tag")
        expanded, k = [], 0
        for i in ids:
            if i >= 0:
                expanded.append(i)
            else:
                expanded += [_marker(images[k].key)] * images[k].tokens.shape[0]
                k += 1
        if len(expanded) > limit:
            raise ContextFull(f"the prompt is {len(expanded)} tokens ({sum(im.tokens.shape[0] for im in images)} "
                              f"for images); the model takes at most {limit}")
        embeddings = self.model.embed(ids, [im.tokens for im in images])[0]
        max_tokens = min(settings.max_tokens, limit - len(expanded))  # the answer fits too

        kind = (settings.max_kv_size, settings.kv_bits)
        if (self.cache is None or kind != self._kind
                or (self.cache[0].offset and not can_trim_prompt_cache(self.cache))):
            self.cache, self.cached, self._kind = make_prompt_cache(self.model.language_model, settings.max_kv_size), [], kind
        common = min(common_prefix_len(self.cached, expanded), len(expanded) - 1)
        if self.cache[0].offset > common:
            trim_prompt_cache(self.cache, self.cache[0].offset - common)
        self.cached = self.cached[:common]

        if settings.seed is not None:
            mx.random.seed(settings.seed)
        sampler = make_sampler(settings.temp, settings.top_p if settings.top_p < 1 else 0.0, settings.min_p,
                               top_k=settings.top_k)
        sampler = distributed.shared_sampler(self.model, sampler)  # split model: rank 0's token everywhere
        processors = make_logits_processors(repetition_penalty=settings.repetition_penalty)
        tokens = []
        self.reply = tokens
        try:
            for r in lm_stream_generate(
                self.model.language_model, self.processor.tokenizer, mx.array([max(i, 0) for i in expanded[common:]]),
                max_tokens=max_tokens, input_embeddings=embeddings[common:], prompt_cache=self.cache, sampler=sampler,
                logits_processors=processors, kv_bits=settings.kv_bits, kv_group_size=settings.kv_group_size,
                quantized_kv_start=settings.quantized_kv_start, prefill_step_size=settings.prefill_step_size,
                prompt_progress_callback=progress,
            ):
                tokens.append(r.token)
                yield Response(**{f.name: getattr(r, f.name) for f in fields(GenerationResponse)},
                               image_tokens=image_tokens, vision_ms=timings,
                               context_tokens=len(expanded) + len(tokens), context_max=limit)
        finally:
            # Also when the caller stops early: `cached` says exactly what the cache holds
            # (the prompt and the tokens fed back so far).
            self.cached = (expanded + tokens)[: self.cache[0].offset]


def _as_list(images) -> list:
    return [images] if isinstance(images, IMAGE_SOURCES + (EncodedImage,)) else list(images)


class Chat:
    """A conversation that keeps the KV cache between turns and encodes each image once."""

    def __init__(self, model, processor, system: str | None = None, template: str | None = None,
                 session: Session | None = None):
        self.session = session or Session(model, processor, template, system)
        self.model, self.processor = self.session.model, self.session.processor
        self.template = self.session.template
        self.turns = []

    @property
    def system(self) -> str | None:
        return self.session.system

    def drop_oldest_image(self) -> bool:
        """Take the conversation's first image out (to make room); False if it has none."""
        for i, turn in enumerate(self.turns):
            if turn.images:
                self.turns[i] = Turn(turn.user, turn.images[1:], turn.assistant)
                return True
        return False

    def reset(self):
        """Start a new conversation (same model, same settings)."""
        self.turns = []
        self.session.reset()

    def stream(self, text: str, images=(), progress=None, **settings):
        """Send a user turn; yields Response pieces of the reply (settings: see Settings)."""
        settings = Settings(**settings).check()
        timings = {}
        turn = Turn(text, [self.session.encode(im, timings) for im in _as_list(images)])
        yield from self._reply(self.turns + [turn], settings, progress, timings)

    def regenerate(self, progress=None, **settings):
        """Answer the last user turn again (its images stay encoded)."""
        if not self.turns:
            raise ValueError("there is no reply to regenerate")
        last = self.turns[-1]
        yield from self._reply(self.turns[:-1] + [Turn(last.user, last.images)], Settings(**settings).check(), progress)

    def add_turn(self, text: str, images=(), answer: str = ""):
        """Put a past turn back (a reopened conversation) without generating."""
        self.turns = self.turns + [Turn(text, [self.session.encode(im) for im in _as_list(images)], answer)]

    def send(self, text: str, images=(), **settings) -> str:
        """Send a user turn and return the whole reply."""
        return "".join(r.text for r in self.stream(text, images, **settings))

    def _reply(self, turns, settings, progress=None, timings=None):
        self.session.reply = None
        try:
            yield from self.session.stream(turns, settings, progress, timings)
        finally:
            if self.session.reply is not None:  # the reply started: the turn counts with what was said
                # the reference keeps decode(skip_special_tokens=True).strip() as the history
                turns[-1].assistant = self.processor.decode(self.session.reply)
                self.turns = turns

    @property
    def context_used(self) -> int:
        """Tokens the conversation takes now (image tokens included)."""
        return self.session.context_used

    # The conversation as the reference holds it (the tests and front-ends read these).
    @property
    def messages(self) -> list:
        out = []
        for t in self.turns:
            out += [(IMAGE + "\n") * len(t.images) + t.user, t.assistant]
        return out

    @property
    def images(self) -> list:
        return [im.tokens for t in self.turns for im in t.images]

    @property
    def cached(self) -> list:
        return self.session.cached

    @property
    def cache(self):
        return self.session.cache


def stream_generate(model, processor, prompt: str, images=(), system=None, template=None, **settings):
    """One question (with images) -> streamed Response pieces of the answer."""
    yield from Chat(model, processor, system, template).stream(prompt, images, **settings)


def generate(model, processor, prompt: str, images=(), system=None, template=None, verbose=False, **settings) -> str:
    """One question (with images) -> the answer. verbose streams it and prints statistics."""
    text, response = [], None
    for response in stream_generate(model, processor, prompt, images, system, template, **settings):
        text.append(response.text)
        if verbose:
            print(response.text, end="", flush=True)
    if verbose and response is not None:
        print()
        print_stats(response)
    return "".join(text)


def print_stats(r: Response, file=None):
    import sys

    file = file or sys.stderr
    print("=" * 10, file=file)
    if r.image_tokens:
        v = r.vision_ms
        print(f"Image tokens: {r.image_tokens}; vision: CLIP {v.get('clip', 0):.0f} ms, "
              f"ConvNeXt {v.get('convnext', 0):.0f} ms, mining {v.get('mining', 0):.0f} ms", file=file)
    print(f"Prompt: {r.prompt_tokens} tokens, {r.prompt_tps:.3f} tokens-per-sec", file=file)
    print(f"Generation: {r.generation_tokens} tokens, {r.generation_tps:.3f} tokens-per-sec", file=file)
    print(f"Peak memory: {r.peak_memory:.3f} GB", file=file)
