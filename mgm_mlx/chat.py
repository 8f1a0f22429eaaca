"""Chat with MGM in the terminal (a Textual app).

    python -m mgm_mlx.chat                                          # the default model (MGM-2B, 4-bit)
    python -m mgm_mlx.chat --model mgm-7b-4bit --gen-size 768      # /gen draws 768x768 pictures

Every flag is checked before the app starts; the reply settings reach the engine as one
dict (session.Settings' fields).
"""

import sys
from pathlib import Path

from . import cli


def parser():
    p = cli.Parser(prog=cli.prog("mgm_mlx.chat"), description="Chat with MGM about images (a terminal app).",
                   formatter_class=cli.HelpFormatter)
    cli.add_model_arguments(p)
    p.add_argument("--system", "--system-prompt", dest="system",
                   help="system prompt for every chat (templates that have one; default: the template's)")
    cli.add_settings_arguments(p, max_tokens=512)
    gen = cli.add_gen_arguments(p, draw=False)
    gen.title = "pictures (/gen, /draw; pip install 'mgm-mlx[gen]', see the README)"
    return p


def main(argv=None):
    args = parser().parse_args(argv)
    cli.run(_chat, args)


def prepare(args) -> dict:
    """Everything the app needs, checked, and the model resolved (the default model is
    downloaded and converted here on the first run, with progress, before the app starts):
    the MLXEngine keyword arguments plus "name" (what the app shows)."""
    from .default_model import DEFAULT_MODEL
    from .diffusion import check_size, spec
    from .imagegen import parse_size

    settings = cli.settings(args)  # one line for nonsense, before anything loads
    size = parse_size(args.gen_size)  # checked here: the app would only find out at the first picture
    check_size(spec(args.gen_model).title, *size)
    path, q_bits = cli.model_path(args, progress=sys.stderr.isatty())
    if args.system is not None and Path(path).is_dir():  # gemma (MGM-2B) has none: say so before the app
        from .loading import load_config
        from .prompt import pick_template, system_text

        config = load_config(path)
        system_text(config.get("mgm_template") or pick_template(config), args.system)
    return dict(name=str(args.model or DEFAULT_MODEL), model_path=str(path), quantize_bits=q_bits,
                system=args.system, settings=vars(settings), gen_model=args.gen_model, gen_size=size,
                gen_keep=args.gen_keep)


def _chat(args):
    options = prepare(args)
    name = options.pop("name")

    from .tui.app import ChatApp
    from .tui.engine import MLXEngine

    def engine(post):
        return MLXEngine(post, **options)

    error = ChatApp(engine, name).run()  # "error: ..." when the model did not load
    if error:
        sys.exit(error)


if __name__ == "__main__":
    main()
