"""A multi-turn chat in the terminal. The image is encoded once; the KV cache carries over.

    python examples/chat.py --image examples/house.png      # the default model (MGM-2B, 4-bit)
    python examples/chat.py --model mgm-2b-4bit
"""

import argparse
import sys
from pathlib import Path

import mgm_mlx
from mgm_mlx.default_model import default_model

parser = argparse.ArgumentParser()
parser.add_argument("--model", help="a converted folder, a released folder or a repo id "
                    "(default: MGM-2B, downloaded and converted to 4 bits once)")
parser.add_argument("--image", default=str(Path(__file__).with_name("house.png")))
args = parser.parse_args()

try:
    model, processor = mgm_mlx.load(args.model or default_model())
except (FileNotFoundError, ValueError, OSError) as e:
    sys.exit(f"error: {e}")
chat = mgm_mlx.Chat(model, processor)
images = [args.image]
print("Ask about the picture; an empty line quits, /new starts over.")
while True:
    try:
        text = input("> ").strip()
    except EOFError:
        break
    if not text:
        break
    if text == "/new":
        chat.reset()
        images = [args.image]
        continue
    try:
        for piece in chat.stream(text, images, max_tokens=300):
            print(piece.text, end="", flush=True)
    except (ValueError, mgm_mlx.ImageError) as e:  # e.g. the conversation outgrew the context
        print(f"({e}; /new starts over)")
        continue
    print()
    images = []  # the picture is already in the conversation
