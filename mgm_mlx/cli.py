"""What the commands share: their common options, and one way to end on bad input.

Every command (generate, chat, convert, server, eval) is a plain argparse `main()`; the
options declared here mean the same in each, and `run` turns an error into one line on
stderr and exit status 1 (130 on Ctrl-C), never a traceback.
"""

import os
import sys

from .image import ImageError
from .imagegen import GenerationError


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


def run(body, args) -> None:
    """Run a command's body: bad input ends in one line and exit status 1."""
    try:
        body(args)
    except BrokenPipeError:  # `| head` stopped reading: end quietly, as other Unix tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(141)
    except KeyboardInterrupt:
        print(file=sys.stderr)
        sys.exit(130)
    except (ImageError, FileNotFoundError, ValueError, OSError, GenerationError) as e:
        sys.exit(f"error: {e}")
