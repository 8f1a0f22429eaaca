"""What the commands share: their common options, and one way to end on bad input.

Every command (generate, chat, convert, server, eval) is a plain argparse `main(argv)`,
reachable as `python -m mgm_mlx.NAME` and as `mgm-mlx NAME` (__main__.py); the options
declared here mean the same in each, `Parser` says a usage error in one line, `HelpFormatter`
shows every default in --help, and `run` turns an error into one line on stderr and exit
status 1 (130 on Ctrl-C), never a traceback.
"""

import argparse
import os
import sys
from dataclasses import fields

from .image import ImageError
from .imagegen import GenerationError

DTYPES = ("float16", "bfloat16", "float32")
Q_BITS = (2, 3, 4, 5, 6, 8)


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error in one line (what was wrong, where the help is)."""

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """--help shows each option's default, except where there is none or the help says it."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def prog(module: str) -> str:
    """The command as it was typed: `python -m mgm_mlx.generate`, `mgm-mlx-generate`, or
    through the umbrella `mgm-mlx generate` / `python -m mgm_mlx generate` (which puts that
    name in sys.argv[0], where argparse looks too)."""
    name = sys.argv[0] if sys.argv else ""
    if name.startswith(("mgm-mlx ", "python -m mgm_mlx ")):
        return name
    base = os.path.basename(name)
    return base if base.startswith("mgm-mlx") else f"python -m {module}"


def add_model_arguments(parser, q_bits_help: str = "quantize the LLM to this many bits while loading"):
    """--model (default: the default model, converted once into the cache) and --q-bits."""
    from .default_model import DEFAULT_BITS, DEFAULT_MODEL, converted_folder

    folder = str(converted_folder(DEFAULT_MODEL, DEFAULT_BITS)).replace("%", "%%")
    parser.add_argument("--model", help=f"converted folder, released folder or repo id (default: {DEFAULT_MODEL}, "
                                        f"downloaded and converted to {DEFAULT_BITS} bits once into {folder})")
    parser.add_argument("--q-bits", type=int, choices=Q_BITS,
                        help=f"{q_bits_help}; without --model, the default model converted to these bits "
                             f"(default: {DEFAULT_BITS} for the default model, else as stored)")


def model_path(args, progress: bool = False):
    """(what to load, bits to quantize to while loading): --model as given, else the default
    model's converted folder (downloaded and converted on the first run)."""
    if args.model is not None:
        return args.model, args.q_bits
    from .default_model import default_model

    return default_model(args.q_bits, progress=progress), None


def add_settings_arguments(parser, max_tokens: int = 256):
    """Every field of session.Settings as a flag (mlx-lm's names), checked by `settings`."""
    gen = parser.add_argument_group("sampling (as mlx-lm's)")
    gen.add_argument("--max-tokens", "-m", type=int, default=max_tokens, help="the longest reply, in tokens")
    gen.add_argument("--temp", "--temperature", dest="temp", type=float, default=0.0,
                     help="sampling temperature; 0 is greedy")
    gen.add_argument("--top-p", type=float, default=1.0,
                     help="sample only from the most likely tokens that make up this probability; 1 is off")
    gen.add_argument("--top-k", type=int, default=0, help="sample only from the k most likely tokens; 0 is off")
    gen.add_argument("--min-p", type=float, default=0.0,
                     help="drop tokens less likely than this fraction of the most likely one; 0 is off")
    gen.add_argument("--repetition-penalty", type=float,
                     help="make tokens already in the context less likely, e.g. 1.1 (default: off)")
    gen.add_argument("--seed", type=int, help="random seed (default: none; with --temp each run differs)")
    kv = parser.add_argument_group("KV cache and prompt processing (as mlx-lm's)")
    kv.add_argument("--max-kv-size", type=int, help="a rotating KV cache of this many tokens (default: all)")
    kv.add_argument("--kv-bits", type=int, help="quantize the KV cache to 2, 3, 4, 5, 6 or 8 bits (default: off)")
    kv.add_argument("--kv-group-size", type=int, default=64, help="group size of the quantized KV cache")
    kv.add_argument("--quantized-kv-start", type=int, default=0,
                    help="with --kv-bits, quantize the cache once it holds this many tokens")
    kv.add_argument("--prefill-step-size", type=int, default=2048,
                    help="prompt tokens processed per step (smaller: lower peak memory)")


def settings(args):
    """The Settings the flags of add_settings_arguments say, checked (one line when not)."""
    from .session import Settings

    return Settings(**{f.name: getattr(args, f.name) for f in fields(Settings) if hasattr(args, f.name)}).check()


def add_gen_arguments(parser, draw: bool = True):
    """The diffusion options (--gen-model, --gen-size, ...), for generate and the chat app."""
    gen = parser.add_argument_group("pictures (pip install 'mgm-mlx[gen]', see the README)")
    gen.add_argument("--gen-model", default="flux-schnell",
                     help="flux-schnell (4 steps), flux-schnell-4bit or sd3-medium (default: %(default)s)")
    gen.add_argument("--gen-size", default="1024", help="N or WIDTHxHEIGHT, multiples of 16 (default: %(default)s)")
    if draw:
        gen.add_argument("--gen", action="store_true", help="ask for a picture: draw the reply's <h>...</h> prompt")
        gen.add_argument("--gen-from-reply", action="store_true",
                         help="like --gen, but draw the reply text itself when it has no <h> block")
        gen.add_argument("--gen-steps", type=int, help="denoising steps (default: 4 for FLUX, 50 for SD3)")
        gen.add_argument("--gen-guidance", type=float, help="guidance for SD3 (default 5; FLUX.1-schnell takes none)")
        gen.add_argument("--gen-seed", type=int, help="seed for the picture (default: random, printed)")
        gen.add_argument("--output-image", help="PNG to write (default: the next free mgm-image-NNN.png here)")
    else:
        gen.add_argument("--gen-keep", action="store_true",
                         help="keep the diffusion model in memory between pictures (faster, needs more memory)")
    return gen


def run(body, args, group=None) -> None:
    """Run a command's body: bad input ends in one line and exit status 1. group: a model
    split across mlx.launch ranks (distributed.py), where each rank says only its own."""
    from . import distributed

    try:
        body(args)
    except BrokenPipeError:  # `| head` stopped reading: end quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    except (ImageError, FileNotFoundError, ValueError, OSError, GenerationError) as e:
        sys.exit(distributed.error_line(e, group, same_everywhere=not getattr(args, "in_load", False)))
    except RuntimeError as e:  # a split model whose ranks lost each other: one line, not a traceback
        if group is None:
            raise
        sys.exit(distributed.error_line(distributed.PeerLost(e), group))
