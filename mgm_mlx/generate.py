"""`python -m mgm_mlx.generate`: ask MGM about images from the command line.

    python -m mgm_mlx.generate --image photo.jpg --prompt "What is in the picture?"
    python -m mgm_mlx.generate --model mgm-7b-4bit --prompt "Draw a cat in a spacesuit" --gen

Without --model it runs the default model (default_model.py: MGM-2B, converted to 4 bits
once into a cache folder).
The answer streams to stdout; statistics go to stderr. With --gen the model also writes a
picture prompt inside <h>...</h>, which a diffusion model draws (imagegen.py, diffusion.py).
The turn itself is the library's (session.py); this file only reads options and prints.
`mgm_mlx.generate`, `stream_generate` and `Chat` are importable from here too, as in mlx-lm.
"""

import gc
import os
import re
import sys
import time
import types
from dataclasses import replace

import mlx.core as mx

from . import cli, distributed, imagegen
from .image import load_image
from .prompt import IMAGE, TEMPLATES, format_prompt, label_images
from .session import Chat, Response, generate, print_stats, stream_generate, valid_text

__all__ = ["Chat", "Response", "generate", "main", "stream_generate"]

# C0 controls but newline and tab, DEL, C1 controls
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """Control characters shown as ^X (C1 as \\x9b): escape sequences in a reply could move
    the cursor, clear or retitle the terminal, or write its clipboard."""
    return CONTROL.sub(lambda m: "^" + chr(ord(m.group()) ^ 0x40) if m.group() < "\x80" else
                       f"\\x{ord(m.group()):02x}", text)


def parser():
    parser = cli.Parser(prog=cli.prog("mgm_mlx.generate"), description="Ask MGM about images.",
                        formatter_class=cli.HelpFormatter)
    cli.add_model_arguments(parser)
    parser.add_argument("--image", action="append", default=[],
                        help="an image file or http(s) URL (repeat for several; default: none, a text-only question)")
    parser.add_argument("--prompt", "-p", required=True, help="the question; - reads it from stdin")
    parser.add_argument("--system", "--system-prompt", dest="system",
                        help="system prompt (templates that have one; default: the template's)")
    parser.add_argument("--template", help=f"{', '.join(TEMPLATES)} (default: from the model's config)")
    parser.add_argument("--dtype", choices=cli.DTYPES,
                        help="the LLM's compute dtype (default: float32 on a CPU, else as stored)")
    cli.add_settings_arguments(parser)
    parser.add_argument("--verbose", action="store_true", help="also print load time and the formatted prompt")
    parser.add_argument("--quiet", action="store_true", help="print only the answer")
    cli.add_gen_arguments(parser)
    return parser


def main(argv=None):
    args = parser().parse_args(argv)
    args.gen = args.gen or args.gen_from_reply
    args.group = distributed.init()  # under mlx.launch: the model is split across the ranks
    cli.run(_generate, args, args.group)


def _generate(args):
    from .loading import load

    show = printable if sys.stdout.isatty() else str  # a reply never drives the terminal
    settings = cli.settings(args)  # bad numbers fail in a second, before anything loads
    if args.template is not None and args.template not in TEMPLATES:
        raise ValueError(f"unknown template {args.template!r}; choose from {', '.join(TEMPLATES)}")
    # as input() would: no trailing newline; bytes that are not UTF-8 become U+FFFD
    prompt = sys.stdin.buffer.read().decode("utf-8", "replace").rstrip("\n") if args.prompt == "-" else args.prompt
    prompt = valid_text(prompt)
    if not prompt.strip():
        raise ValueError("the prompt is empty")
    group = args.group
    rank = distributed.rank(group)
    if rank > 0:  # a split model (mlx.launch): rank 0 reads the images and prints; the others compute
        sys.stdout = open(os.devnull, "w")
        args.quiet, args.verbose = True, False
    # bad images fail before the model loads
    images = [load_image(path) if rank == 0 else distributed.PLACEHOLDER for path in args.image]
    if args.gen:  # and so does anything that would stop the picture (rank 0 draws it)
        if rank == 0:
            generator, request = imagegen.prepare(args.gen_model, args.gen_size, args.gen_steps,
                                                  args.gen_guidance, args.gen_seed)
            imagegen.check_output(args.output_image)
        prompt = imagegen.with_gen(prompt)
    progress = sys.stderr.isatty() and not args.quiet
    path, q_bits = model_path(args, progress, group)  # the first run without --model: download, convert
    tic = time.perf_counter()
    dtype = getattr(mx, args.dtype) if args.dtype else None
    args.in_load = True  # an error here may be one rank's own (a folder missing on one Mac)
    model, processor = load(path, dtype=dtype, quantize_bits=q_bits, template=args.template, progress=progress,
                            group=group)
    args.in_load = False
    if args.verbose:
        print(f"Loaded {path} in {time.perf_counter() - tic:.1f} s (template {processor.template})", file=sys.stderr)
    chat = Chat(model, processor, args.system, args.template)
    if args.verbose:
        user = (IMAGE + "\n") * len(args.image) + prompt
        print(label_images(format_prompt(chat.template, [user, None], chat.system)), file=sys.stderr)
    response, answer = None, []
    for response in chat.stream(prompt, images, **vars(settings)):
        print(show(response.text), end="", flush=True)
        answer.append(response.text)
    print(flush=True)
    if response is not None and not args.quiet:
        print_stats(response)
    distributed.finish(group)  # a split model: every rank done before any exits
    if args.gen and rank == 0:
        del chat, model  # room for the diffusion model
        _draw(args, generator, request, "".join(answer))


def model_path(args, progress: bool, group):
    """cli.model_path; under mlx.launch the ranks take turns, so that ranks on one Mac do
    not convert the default model into the same folder at once (later ranks find it)."""
    for turn in range(group.size() if group is not None else 1):
        if distributed.rank(group) == turn:
            found = cli.model_path(args, progress)
        if group is not None:
            distributed.barrier(group)
    return found


def _draw(args, generator, request, reply: str):
    try:
        text = imagegen.picture_prompt(reply, args.gen_from_reply)
    except imagegen.NoPicturePrompt as e:
        raise imagegen.GenerationError(f"{e}; use --gen-from-reply to draw the reply text itself") from None
    gc.collect()
    mx.clear_cache()
    request = replace(request, prompt=text)
    if not args.quiet:
        seed = "random seed" if request.seed is None else f"seed {request.seed}"
        print(f"Drawing with {generator.name} ({request.width}x{request.height}, {seed}): {text}", file=sys.stderr)
    picture = generator.generate(request, progress=(lambda step, total: None) if args.quiet else None)
    path = imagegen.save_png(picture.image, args.output_image)
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
