"""Image chat: template -> tokens around <image> -> spliced embeddings -> mlx-lm's loop.

    python -m mgm_mlx.generate --model mgm-2b-4bit --image photo.jpg --prompt "What is here?"
    python -m mgm_mlx.generate --model mgm-7b-4bit --prompt "Draw a cat in a spacesuit" --gen

The answer streams to stdout; statistics go to stderr. With --gen the model also writes a
picture prompt inside <h>...</h>, which a diffusion model draws (imagegen.py, diffusion.py).
"""

import argparse
import gc
import os
import re
import sys
import time
import types
from dataclasses import dataclass, field, replace

import mlx.core as mx
import numpy as np
from mlx_lm.generate import stream_generate as lm_stream_generate
from mlx_lm.models.cache import can_trim_prompt_cache, make_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import make_sampler
from PIL import Image as PILImage

from .image import ImageError, load_image
from .imagegen import (NO_PROMPT, GenerationError, ImageRequest, check_output, extract_prompt, get_generator, parse_size,
                       reply_prompt, save_png, with_gen)
from .prompt import IMAGE, IMAGE_TOKEN_INDEX, STOP_TOKENS, TEMPLATES, format_prompt, label_images, system_text, tokenize


@dataclass
class Response:
    """One streamed piece of a reply, with running statistics (mlx-lm's fields + MGM's)."""

    text: str
    token: int
    prompt_tokens: int
    prompt_tps: float
    generation_tokens: int
    generation_tps: float
    peak_memory: float
    finish_reason: str | None
    image_tokens: int = 0
    vision_ms: dict = field(default_factory=dict)


class Chat:
    """A conversation that keeps the KV cache between turns and encodes each image once.

    Each turn renders the whole conversation with the template, as the reference does, and
    runs the LLM only on what differs from what the cache already holds."""

    def __init__(self, model, processor, system: str | None = None, template: str | None = None):
        self.model = model
        self.processor = processor
        self.template = template or processor.template
        if self.template not in TEMPLATES:
            raise ValueError(f"unknown template {self.template!r}; choose from {', '.join(TEMPLATES)}")
        system = None if system is None else valid_text(system)
        system_text(self.template, system)  # refuse a system prompt the template cannot take
        self.system = system
        tokenizer = processor.tokenizer
        vocab = tokenizer.get_vocab()
        for token in STOP_TOKENS[self.template]:
            if token in vocab:
                tokenizer.add_eos_token(token)
        self.reset()

    def reset(self):
        """Start a new conversation (same model, same settings)."""
        self.messages = []  # user, assistant, user, ... (user texts carry their <image>s)
        self.images = []  # one [T, H] block per image, in prompt order
        self.cache = None
        self.cached = []  # the token ids the cache holds, image tokens expanded

    def stream(self, text: str, images=(), max_tokens: int = 256, temp: float = 0.0,
               top_p: float = 1.0, seed: int | None = None, max_kv_size: int | None = None):
        """Send a user turn; yields Response pieces of the reply."""
        check_sampling(max_tokens, temp, top_p, seed)
        text = valid_text(text)
        if seed is not None:
            mx.random.seed(seed)
        if isinstance(images, (str, os.PathLike, np.ndarray, PILImage.Image)):
            images = [images]  # one image given on its own
        vision_ms = {}
        new_images = [self._encode(image, vision_ms) for image in images]
        user = (IMAGE + "\n") * len(new_images) + text
        image_tokens = sum(im.shape[0] for im in new_images)
        yield from self._reply(self.messages + [user], self.images + new_images, image_tokens, vision_ms,
                               max_tokens, temp, top_p, max_kv_size)

    def regenerate(self, max_tokens: int = 256, temp: float = 0.0, top_p: float = 1.0,
                   seed: int | None = None, max_kv_size: int | None = None):
        """Answer the last user turn again (its images stay encoded)."""
        if len(self.messages) < 2:
            raise ValueError("there is no reply to regenerate")
        check_sampling(max_tokens, temp, top_p, seed)
        if seed is not None:
            mx.random.seed(seed)
        yield from self._reply(self.messages[:-1], self.images, 0, {}, max_tokens, temp, top_p, max_kv_size)

    def add_turn(self, text: str, images=(), answer: str = ""):
        """Put a past turn back (a reopened conversation) without generating."""
        self.images = self.images + [self._encode(image, {}) for image in images]
        self.messages = self.messages + [(IMAGE + "\n") * len(images) + text, answer]

    def _reply(self, messages, images_all, image_tokens, vision_ms, max_tokens, temp, top_p, max_kv_size):
        chars = sum(len(m) for m in messages) + len(self.system or "")
        if chars > self.processor.max_chars(self.model.max_length):  # tokenizing megabytes takes GBs
            raise ValueError(f"the prompt is {chars} characters, far more than the {self.model.max_length} "
                             "tokens the model takes")
        prompt = label_images(format_prompt(self.template, messages + [None], self.system))
        ids = tokenize(self.processor.tokenizer._tokenizer, prompt)
        if ids.count(IMAGE_TOKEN_INDEX) != len(images_all):
            raise ValueError(f"the text has {ids.count(IMAGE_TOKEN_INDEX) - len(images_all)} '{IMAGE}' too many; "
                             "attach images instead of writing the tag")
        expanded = _expand(ids, [im.shape[0] for im in images_all])
        if len(expanded) > self.model.max_length:
            raise ValueError(
                f"the prompt is {len(expanded)} tokens ({sum(im.shape[0] for im in images_all)} for images); "
                f"the model takes at most {self.model.max_length}"
            )
        embeddings = self.model.embed(ids, images_all)[0]
        max_tokens = min(max_tokens, self.model.max_length - len(expanded))  # the answer fits too

        if self.cache is None or (self.cache[0].offset and not can_trim_prompt_cache(self.cache)):
            self.cache, self.cached = make_prompt_cache(self.model.language_model, max_kv_size), []
        common = min(_common_prefix(self.cached, expanded), len(expanded) - 1)
        if self.cache[0].offset > common:
            trim_prompt_cache(self.cache, self.cache[0].offset - common)
        self.cached = self.cached[:common]

        sampler = make_sampler(temp, top_p if 0 < top_p < 1 else 0.0)
        tokens = []
        try:
            for r in lm_stream_generate(
                self.model.language_model, self.processor.tokenizer,
                mx.array([max(i, 0) for i in expanded[common:]]), max_tokens=max_tokens,
                input_embeddings=embeddings[common:], prompt_cache=self.cache, sampler=sampler,
            ):
                tokens.append(r.token)
                yield Response(
                    r.text, r.token, r.prompt_tokens, r.prompt_tps, r.generation_tokens, r.generation_tps,
                    r.peak_memory, r.finish_reason, image_tokens, vision_ms,
                )
        finally:
            # Also when the caller stops early: the turn counts with what was said so far,
            # and `cached` says exactly what the cache holds (the prompt and the tokens fed back).
            self.cached = (expanded + tokens)[: self.cache[0].offset]
            self.images = images_all
            stops = self.processor.tokenizer.eos_token_ids
            answer = [t for t in tokens if t not in stops]
            # the reference keeps decode(skip_special_tokens=True).strip() as the history
            self.messages = messages + [self.processor.tokenizer.decode(answer, skip_special_tokens=True).strip()]

    def send(self, text: str, images=(), **kwargs) -> str:
        """Send a user turn and return the whole reply."""
        return "".join(r.text for r in self.stream(text, images, **kwargs))

    @property
    def context_used(self) -> int:
        """Tokens the conversation takes now (image tokens included)."""
        return len(self.cached)

    def _encode(self, image, timings: dict) -> mx.array:
        pixels = self.processor.images([image])
        return self.model.vision(pixels, timings=timings)[0]


def check_sampling(max_tokens: int, temp: float, top_p: float, seed: int | None):
    """Refuse settings that would fail deep inside MLX or silently do something else."""
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1 (got {max_tokens})")
    if not 0 <= temp < float("inf"):
        raise ValueError(f"the temperature must be 0 (greedy) or more (got {temp})")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be above 0 and at most 1 (got {top_p})")
    if seed is not None and not 0 <= seed < 2**64:
        raise ValueError(f"the seed must be from 0 to 2**64 - 1 (got {seed})")


def valid_text(text: str) -> str:
    """Text as valid Unicode: undecodable bytes (from a terminal or a file that is not
    UTF-8) become U+FFFD instead of failing in the tokenizer."""
    try:
        data = text.encode("utf-8", "surrogateescape")  # the bytes Python could not decode, back
    except UnicodeEncodeError:
        data = text.encode("utf-8", "surrogatepass")
    return data.decode("utf-8", "replace")


# C0 controls but newline and tab, DEL, C1 controls
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Control characters shown as ^X (C1 as \\x9b): escape sequences in a reply could move
    the cursor, clear or retitle the terminal, or write its clipboard."""
    return CONTROL.sub(lambda m: "^" + chr(ord(m.group()) ^ 0x40) if m.group() < "\x80" else
                       f"\\x{ord(m.group()):02x}", text)


def _expand(ids: list, sizes: list) -> list:
    """One id per position: image k becomes sizes[k] copies of a marker -(k + 1)."""
    out, k = [], 0
    for i in ids:
        if i >= 0:
            out.append(i)
        else:
            out.extend([-(k + 1)] * sizes[k])
            k += 1
    return out


def _common_prefix(a: list, b: list) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def stream_generate(model, processor, prompt: str, images=(), system=None, template=None, **kwargs):
    """One question (with images) -> streamed Response pieces of the answer."""
    yield from Chat(model, processor, system, template).stream(prompt, images, **kwargs)


def generate(model, processor, prompt: str, images=(), system=None, template=None, verbose=False, **kwargs) -> str:
    """One question (with images) -> the answer. verbose streams it and prints statistics."""
    text, response = [], None
    for response in stream_generate(model, processor, prompt, images, system, template, **kwargs):
        text.append(response.text)
        if verbose:
            print(response.text, end="", flush=True)
    if verbose and response is not None:
        print()
        print_stats(response)
    return "".join(text)


def print_stats(r: Response, file=sys.stderr):
    print("=" * 10, file=file)
    if r.image_tokens:
        v = r.vision_ms
        print(f"Image tokens: {r.image_tokens}; vision: CLIP {v.get('clip', 0):.0f} ms, "
              f"ConvNeXt {v.get('convnext', 0):.0f} ms, mining {v.get('mining', 0):.0f} ms", file=file)
    print(f"Prompt: {r.prompt_tokens} tokens, {r.prompt_tps:.3f} tokens-per-sec", file=file)
    print(f"Generation: {r.generation_tokens} tokens, {r.generation_tps:.3f} tokens-per-sec", file=file)
    print(f"Peak memory: {r.peak_memory:.3f} GB", file=file)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mgm_mlx.generate", description="Ask MGM about images.")
    parser.add_argument("--model", required=True, help="converted folder, released folder or repo id")
    parser.add_argument("--image", action="append", default=[], help="an image (repeat for several)")
    parser.add_argument("--prompt", required=True, help="the question; - reads it from stdin")
    parser.add_argument("--max-tokens", "-m", type=int, default=256)
    parser.add_argument("--temp", type=float, default=0.0, help="sampling temperature (0: greedy)")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--template", help=f"{', '.join(TEMPLATES)} (default: from the model's config)")
    parser.add_argument("--system", help="system prompt (templates that have one)")
    parser.add_argument("--q-bits", type=int, choices=[4, 8], help="quantize the LLM while loading")
    parser.add_argument("--verbose", action="store_true", help="also print load time and the formatted prompt")
    parser.add_argument("--quiet", action="store_true", help="print only the answer")
    gen = parser.add_argument_group("image generation (pip install 'mgm-mlx[gen]', see the README)")
    gen.add_argument("--gen", action="store_true", help="ask for a picture: draw the reply's <h>...</h> prompt")
    gen.add_argument("--gen-from-reply", action="store_true",
                     help="like --gen, but draw the reply text itself when it has no <h> block")
    gen.add_argument("--gen-model", default="flux-schnell",
                     help="flux-schnell (default, 4 steps), flux-schnell-4bit or sd3-medium")
    gen.add_argument("--gen-size", default="1024", help="N or WIDTHxHEIGHT, multiples of 16 (default 1024)")
    gen.add_argument("--gen-steps", type=int, help="denoising steps (default: 4 for FLUX, 50 for SD3)")
    gen.add_argument("--gen-guidance", type=float, help="guidance for SD3 (default 5; FLUX.1-schnell takes none)")
    gen.add_argument("--gen-seed", type=int, help="seed for the picture (default: random, printed)")
    gen.add_argument("--output-image", help="PNG to write (default: the next free mgm-image-NNN.png here)")
    args = parser.parse_args(argv)
    args.gen = args.gen or args.gen_from_reply
    try:
        _main(args)
    except BrokenPipeError:  # `| head` stopped reading: end quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    except (ImageError, FileNotFoundError, ValueError, OSError, GenerationError) as e:
        sys.exit(f"error: {e}")


def _main(args):
    from .loading import load

    show = printable if sys.stdout.isatty() else str  # a reply never drives the terminal
    check_sampling(args.max_tokens, args.temp, args.top_p, args.seed)
    if args.template is not None and args.template not in TEMPLATES:
        raise ValueError(f"unknown template {args.template!r}; choose from {', '.join(TEMPLATES)}")
    # as input() would: no trailing newline; bytes that are not UTF-8 become U+FFFD
    prompt = sys.stdin.buffer.read().decode("utf-8", "replace").rstrip("\n") if args.prompt == "-" else args.prompt
    prompt = valid_text(prompt)
    args.system = None if args.system is None else valid_text(args.system)
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    images = [load_image(path) for path in args.image]  # bad images fail before the model loads
    if args.gen:  # and so does anything that would stop the picture
        generator, request = _gen_setup(args)
        prompt = with_gen(prompt)
    tic = time.perf_counter()
    model, processor = load(args.model, quantize_bits=args.q_bits, template=args.template)
    if args.verbose:
        print(f"Loaded {args.model} in {time.perf_counter() - tic:.1f} s (template {processor.template})", file=sys.stderr)
    chat = Chat(model, processor, args.system, args.template)
    if args.verbose:
        user = (IMAGE + "\n") * len(args.image) + prompt
        print(label_images(format_prompt(chat.template, [user, None], args.system)), file=sys.stderr)
    response, answer = None, []
    for response in chat.stream(prompt, images, max_tokens=args.max_tokens, temp=args.temp,
                                top_p=args.top_p, seed=args.seed):
        print(show(response.text), end="", flush=True)
        answer.append(response.text)
    print(flush=True)
    if response is not None and not args.quiet:
        print_stats(response)
    if args.gen:
        del chat, model  # room for the diffusion model
        _draw(args, generator, request, "".join(answer))


def _gen_setup(args):
    generator = get_generator(model=args.gen_model)
    width, height = parse_size(args.gen_size)
    request = ImageRequest("placeholder", width, height, args.gen_steps, args.gen_guidance, args.gen_seed)
    generator.check(request)
    generator.check_weights()
    check_output(args.output_image)
    return generator, request


def _draw(args, generator, request, reply: str):
    text = extract_prompt(reply) or (reply_prompt(reply) if args.gen_from_reply else None)
    if text is None:
        sys.exit(f"error: {NO_PROMPT}")
    gc.collect()
    mx.clear_cache()
    request = replace(request, prompt=text)
    if not args.quiet:
        seed = "random seed" if request.seed is None else f"seed {request.seed}"
        print(f"Drawing with {generator.name} ({request.width}x{request.height}, {seed}): {text}", file=sys.stderr)
    picture = generator.generate(request, progress=(lambda step, total: None) if args.quiet else None)
    path = save_png(picture.image, args.output_image)
    print(f"Saved image to {path}")
    if not args.quiet:
        r = picture.request
        print(f"Image: {r.width}x{r.height}, {r.steps} steps, guidance {r.guidance:g}, seed {r.seed}, "
              f"{picture.seconds:.1f} s, peak memory {picture.peak_memory:.3f} GB", file=sys.stderr)


class _CallableModule(types.ModuleType):
    """`mgm_mlx.generate` is this module (the command; `import mgm_mlx.generate as cli`) and
    also what `mgm_mlx.generate(model, processor, ...)` calls: the import system puts the
    module there whenever it is first imported, so the module itself answers the call."""

    def __call__(self, *args, **kwargs):
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule

if __name__ == "__main__":
    main()
