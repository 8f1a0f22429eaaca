"""Ask the same question about every image in a folder; one line of output each.

    python examples/batch.py --folder photos/ "Describe it in one sentence."   # the default model
    python examples/batch.py --model mgm-2b-4bit --folder photos/
"""

import argparse
import sys
from pathlib import Path

import mgm_mlx
from mgm_mlx.default_model import default_model

parser = argparse.ArgumentParser()
parser.add_argument("--model", help="a converted folder, a released folder or a repo id "
                    "(default: MGM-2B, downloaded and converted to 4 bits once)")
parser.add_argument("--folder", default=str(Path(__file__).parent))
parser.add_argument("question", nargs="?", default="Describe the picture in one sentence.")
args = parser.parse_args()

try:
    model, processor = mgm_mlx.load(args.model or default_model())
except (FileNotFoundError, ValueError, OSError) as e:
    sys.exit(f"error: {e}")
suffixes = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
for path in sorted(p for p in Path(args.folder).iterdir() if p.suffix.lower() in suffixes):
    try:
        answer = mgm_mlx.generate(model, processor, args.question, [path], max_tokens=100)
    except mgm_mlx.ImageError as e:
        answer = f"(skipped: {e})"
    print(f"{path.name}: {' '.join(answer.split())}")
