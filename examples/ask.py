"""One question about one image.

    python examples/ask.py --model mgm-2b-4bit --image examples/house.png "What is in the picture?"
"""

import argparse

import mgm_mlx

parser = argparse.ArgumentParser()
parser.add_argument("--model", required=True, help="a converted folder, a released folder or a repo id")
parser.add_argument("--image", default="examples/house.png")
parser.add_argument("question", nargs="?", default="What is in the picture?")
args = parser.parse_args()

model, processor = mgm_mlx.load(args.model)
mgm_mlx.generate(model, processor, args.question, [args.image], max_tokens=200, verbose=True)
