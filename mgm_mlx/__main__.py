"""`python -m mgm_mlx` / `mgm-mlx`: one command with the others as subcommands.

    mgm-mlx generate --image photo.jpg --prompt "What is in the picture?"
    mgm-mlx chat
    mgm-mlx convert --hf-path YanweiLi/MGM-2B --mlx-path mgm-2b-4bit -q
    mgm-mlx eval --model mgm-2b-4bit --task textvqa --limit 200
    mgm-mlx --version

A subcommand is a module whose `main(argv)` takes the rest of the arguments; adding one
(a server, eval) is one line in COMMANDS.
"""

import importlib
import os
import sys

# name: (module with main(argv), what it does)
COMMANDS = {
    "generate": ("mgm_mlx.generate", "ask MGM about images (one question, the answer streams)"),
    "chat": ("mgm_mlx.chat", "chat with MGM in the terminal (a Textual app)"),
    "convert": ("mgm_mlx.convert.convert", "convert a checkpoint to a compact MLX folder (4-bit with -q)"),
    "server": ("mgm_mlx.server", "serve the OpenAI chat API (127.0.0.1:8080 by default)"),
    "eval": ("mgm_mlx.eval.__main__", "score a model on MGM's benchmarks (TextVQA, MME, POPE, MMBench, ...)"),
}


def _name() -> str:
    """How this was started: `python -m mgm_mlx` or the console script `mgm-mlx`."""
    first = os.path.basename(sys.argv[0]) if sys.argv else ""
    return "python -m mgm_mlx" if first in ("__main__.py", "-m", "") else "mgm-mlx"


def usage(name: str) -> str:
    from .default_model import DEFAULT_MODEL

    width = max(map(len, COMMANDS))
    lines = [f"usage: {name} COMMAND [options]   ({name} COMMAND --help for its options)", "",
             "Mini-Gemini (MGM) vision-language models with MLX.", "", "commands:"]
    lines += [f"  {command:<{width}}  {about}" for command, (_, about) in COMMANDS.items()]
    lines += ["", "options:", "  -h, --help  show this help", "  --version   show the version", "",
              f"Without --model, generate and chat run {DEFAULT_MODEL}, downloaded and converted to 4 bits on "
              "the first run."]
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    name = _name()
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(name), file=sys.stdout if argv else sys.stderr)
        sys.exit(0 if argv else 2)
    if argv[0] in ("--version", "-V"):
        from . import __version__

        print(f"mgm-mlx {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        sys.exit(f"error: unknown command {command!r}; choose from {', '.join(COMMANDS)} (see {name} --help)")
    module = importlib.import_module(COMMANDS[command][0])
    saved = sys.argv[0] if sys.argv else None
    # the subcommand's argparse reads its name from here: "mgm-mlx generate" in its --help
    sys.argv[:1] = [f"{name} {command}"]
    try:
        module.main(rest)
    finally:
        if saved is not None:
            sys.argv[0] = saved


if __name__ == "__main__":
    main()
