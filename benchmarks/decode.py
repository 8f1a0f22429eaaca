"""Decode speed through mgm-mlx's Chat against mlx-lm's own stream_generate, side by side
on the same random LLM weights (no download), alternating runs in one process.

    python benchmarks/decode.py                 # Gemma-2B shapes (MGM-2B), 4-bit
    python benchmarks/decode.py --small --runs 3 --tokens 32

Prints tokens-per-second for both (median of --runs) and ours / mlx-lm.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import mgm_mlx  # noqa: F401  (first: on Linux it may load OpenBLAS before mlx)
from mgm_mlx import linux_cpu
from mgm_mlx.generate import Chat
from mgm_mlx.language import build
from mgm_mlx.processor import Processor

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm.generate import stream_generate
from mlx_lm.models import gemma
from mlx_lm.utils import load_tokenizer

GEMMA_2B = dict(model_type="mgm_gemma", architectures=["MGMGemmaForCausalLM"], hidden_size=2048,
                intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1,
                head_dim=256, rms_norm_eps=1e-6, vocab_size=256000, rope_theta=10000.0)
SMALL = {**GEMMA_2B, "hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 4, "head_dim": 64,
         "vocab_size": 32000}


class _Stub:
    """Just what Chat needs from an MGM model for a text-only turn."""

    def __init__(self, lm, config):
        self.language_model, self.config, self.max_length = lm, config, 1 << 20

    def embed(self, ids, images):
        return self.language_model.model.embed_tokens(mx.array(ids))[None]


def tokenizer_folder(vocab: int) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    folder = Path(tempfile.mkdtemp())
    words = {"<unk>": 0, "<bos>": 1, "<eos>": 2, **{f"w{i}": i for i in range(3, vocab)}}
    tokenizer = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()  # "w3 w4" -> two tokens
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>"}))
    return folder


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="a 4-layer 512-wide Gemma (quick on a CPU)")
    parser.add_argument("--bits", type=int, default=4, choices=[0, 4, 8], help="0: no quantization")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"],
                        help="activations and unquantized weights (float32 is the fast one on a CPU)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()

    config = SMALL if args.small else GEMMA_2B
    ours = build(config)
    theirs = gemma.Model(gemma.ModelArgs.from_dict({**config, "model_type": "gemma"}))
    ours.set_dtype(getattr(mx, args.dtype))
    if args.bits:
        import mlx.nn as nn

        nn.quantize(ours, 64, args.bits)
        nn.quantize(theirs, 64, args.bits)
        linux_cpu.route_quantized_prefill(ours)  # as mgm_mlx.load does (decode keeps quantized_matmul)
    theirs.update(ours.parameters())  # the very same weights
    mx.eval(ours.parameters(), theirs.parameters())
    folder = tokenizer_folder(config["vocab_size"])
    processor = Processor.from_folder(folder, config, 768, "gemma")
    tokenizer = load_tokenizer(folder)
    tokenizer.eos_token_ids = set()  # decode exactly --tokens tokens on both sides
    prompt = " ".join(f"w{i}" for i in range(3, 11))  # 8 tokens: decode is what is timed

    def run_ours():
        chat = Chat(_Stub(ours, config), processor)
        processor.tokenizer.eos_token_ids = set()
        return list(chat.stream(prompt, max_tokens=args.tokens))[-1].generation_tps

    def run_theirs():
        ids = processor.tokenizer.encode(prompt)
        return list(stream_generate(theirs, tokenizer, mx.array(ids), max_tokens=args.tokens))[-1].generation_tps

    run_ours(), run_theirs()  # warm-up
    a, b = [], []
    for i in range(args.runs):  # alternate who goes first
        if i % 2:
            b.append(run_theirs())
            a.append(run_ours())
        else:
            a.append(run_ours())
            b.append(run_theirs())
    size = sum(v.nbytes for _, v in tree_flatten(ours.parameters())) / 1e9
    print(f"# mlx {mx.__version__} | {mx.default_device()} | {'small' if args.small else 'Gemma-2B'} "
          f"{f'{args.bits}-bit ' if args.bits else ''}{args.dtype} ({size:.2f} GB) | {args.tokens} tokens x {args.runs}",
          file=sys.stderr)
    ra, rb = statistics.median(a), statistics.median(b)
    print(f"mgm-mlx Chat: {ra:.2f} tok/s | mlx-lm stream_generate: {rb:.2f} tok/s | ratio {ra / rb:.3f}")
    print(f"  runs: ours {[round(x, 2) for x in a]} | mlx-lm {[round(x, 2) for x in b]}")


if __name__ == "__main__":
    main()
