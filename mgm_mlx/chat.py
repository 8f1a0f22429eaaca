"""`python -m mgm_mlx.chat`: the terminal chat app (a Textual app, in tui/).

    python -m mgm_mlx.chat --model mgm-2b-4bit
    python -m mgm_mlx.chat --model mgm-7b-4bit --gen-size 768      # /gen draws 768x768 pictures
"""

import argparse
import sys

from . import cli


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mgm_mlx.chat", description="Chat with MGM about images.")
    parser.add_argument("--model", required=True, help="converted folder, released folder or repo id")
    parser.add_argument("--max-tokens", "-m", type=int, default=512)
    parser.add_argument("--temp", type=float, default=0.0)
    cli.add_gen_arguments(parser, draw=False)
    args = parser.parse_args(argv)

    from .diffusion import check_size, spec
    from .imagegen import GenerationError, parse_size

    try:  # checked here: the app would only find out at the first picture
        size = parse_size(args.gen_size)
        check_size(spec(args.gen_model).title, *size)
    except GenerationError as e:
        sys.exit(f"error: {e}")

    from .tui.app import ChatApp
    from .tui.engine import MLXEngine

    def engine(post):
        return MLXEngine(post, args.model, args.max_tokens, args.temp, args.gen_model, size, args.gen_keep)

    error = ChatApp(engine, args.model).run()  # "error: ..." when the model did not load
    if error:
        sys.exit(error)


if __name__ == "__main__":
    main()
