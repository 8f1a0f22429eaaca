"""Chat with MGM in the terminal (a Textual app).

    python -m mgm_mlx.chat --model mgm-2b-4bit
"""

import argparse


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m mgm_mlx.chat", description="Chat with MGM about images.")
    parser.add_argument("--model", required=True, help="converted folder, released folder or repo id")
    parser.add_argument("--max-tokens", "-m", type=int, default=512)
    parser.add_argument("--temp", type=float, default=0.0)
    args = parser.parse_args(argv)

    from .tui.app import ChatApp
    from .tui.engine import MLXEngine

    app = ChatApp(lambda post: MLXEngine(post, args.model, args.max_tokens, args.temp), args.model)
    app.run()


if __name__ == "__main__":
    main()
