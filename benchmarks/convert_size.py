"""Size, time and memory of converting an MGM-2B-shaped checkpoint (random weights, written
in the released layout: bf16 shards with an index, towers inside, untied lm_head copy).

    python benchmarks/convert_size.py --workdir /tmp/mgm2b [--bits 4 8] [--keep]

Needs about 10 GB of free disk and 12 GB of memory.
"""

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import mgm_mlx  # noqa: F401  (first: on Linux it may load OpenBLAS before mlx)
from mgm_mlx.clip import VisionConfig
from mgm_mlx.convert.convert import convert
from mgm_mlx.convnext import ConvNeXtConfig
from mgm_mlx.loading import load, load_weights

import mlx.core as mx

GEMMA_2B = dict(
    architectures=["MGMGemmaForCausalLM"], model_type="mgm_gemma", hidden_size=2048, intermediate_size=16384,
    num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1, head_dim=256, vocab_size=256000,
    rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="gelu", torch_dtype="bfloat16",
    image_size_aux=768, image_grid=1, image_global=False, image_aspect_ratio="pad", mm_hidden_size=1024,
    mm_hidden_size_aux=2880, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
    mm_vision_select_feature="patch", tokenizer_model_max_length=2048,
)


def released_shapes() -> dict:
    """Key -> shape of an MGM-2B checkpoint (LLM, CLIP-L/336 all 24 layers, ConvNeXt-L, mining)."""
    h, v, i = 2048, 256000, 16384
    s = {"model.embed_tokens.weight": (v, h), "lm_head.weight": (v, h), "model.norm.weight": (h,)}
    for n in range(18):
        p = f"model.layers.{n}."
        s.update({p + "self_attn.q_proj.weight": (2048, h), p + "self_attn.k_proj.weight": (256, h),
                  p + "self_attn.v_proj.weight": (256, h), p + "self_attn.o_proj.weight": (h, 2048),
                  p + "mlp.gate_proj.weight": (i, h), p + "mlp.up_proj.weight": (i, h),
                  p + "mlp.down_proj.weight": (h, i), p + "input_layernorm.weight": (h,),
                  p + "post_attention_layernorm.weight": (h,)})
    c = VisionConfig()
    p = "model.vision_tower.vision_tower.vision_model."
    s.update({p + "embeddings.class_embedding": (1024,), p + "embeddings.patch_embedding.weight": (1024, 3, 14, 14),
              p + "embeddings.position_embedding.weight": (577, 1024)})
    for name in ("pre_layrnorm", "post_layernorm"):
        s.update({p + f"{name}.weight": (1024,), p + f"{name}.bias": (1024,)})
    for n in range(c.num_hidden_layers):
        q = p + f"encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            s.update({q + f"self_attn.{proj}.weight": (1024, 1024), q + f"self_attn.{proj}.bias": (1024,)})
        s.update({q + "mlp.fc1.weight": (4096, 1024), q + "mlp.fc1.bias": (4096,), q + "mlp.fc2.weight": (1024, 4096),
                  q + "mlp.fc2.bias": (1024,)})
        for ln in ("layer_norm1", "layer_norm2"):
            s.update({q + f"{ln}.weight": (1024,), q + f"{ln}.bias": (1024,)})
    n = ConvNeXtConfig()
    p = "model.vision_tower_aux."
    s.update({p + "vision_stem.0.weight": (192, 3, 4, 4), p + "vision_stem.0.bias": (192,),
              p + "vision_stem.1.weight": (192,), p + "vision_stem.1.bias": (192,)})
    prev = 192
    for st, (d, depth) in enumerate(zip(n.dims, n.depths)):
        q = p + f"vision_stages.{st}."
        if st:
            s.update({q + "downsample.0.weight": (prev,), q + "downsample.0.bias": (prev,),
                      q + "downsample.1.weight": (d, prev, 2, 2), q + "downsample.1.bias": (d,)})
        for b in range(depth):
            r = q + f"blocks.{b}."
            s.update({r + "conv_dw.weight": (d, 1, 7, 7), r + "conv_dw.bias": (d,), r + "norm.weight": (d,),
                      r + "norm.bias": (d,), r + "mlp.fc1.weight": (4 * d, d), r + "mlp.fc1.bias": (4 * d,),
                      r + "mlp.fc2.weight": (d, 4 * d), r + "mlp.fc2.bias": (d,), r + "gamma": (d,)})
        prev = d
    for name, ind in (("query", 1024), ("aux", 2880), ("val", 2880)):
        q = f"model.vlm_uni_{name}_projector."
        s.update({q + "0.weight": (ind,), q + "0.bias": (ind,), q + "1.weight": (1024, ind), q + "1.bias": (1024,)})
    s.update({"model.mm_projector.0.weight": (h, 1024), "model.mm_projector.0.bias": (h,),
              "model.mm_projector.2.weight": (h, h), "model.mm_projector.2.bias": (h,)})
    return s


def write_released(folder: Path):
    from tokenizers import Tokenizer, models

    folder.mkdir(parents=True)
    shapes = released_shapes()
    shards, size = [[]], 0
    for key, shape in shapes.items():
        n = 2 * math.prod(shape)
        if size + n > 4.95e9:
            shards.append([])
            size = 0
        shards[-1].append(key)
        size += n
    weight_map, total = {}, 0
    for i, keys in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: (0.02 * mx.random.normal(shapes[k])).astype(mx.bfloat16) for k in keys}
        mx.save_safetensors(str(folder / name), tensors, metadata={"format": "pt"})
        total += sum(v.nbytes for v in tensors.values())
        weight_map.update({k: name for k in tensors})
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(GEMMA_2B))
    Tokenizer(models.WordLevel({"<unk>": 0, "<bos>": 1, "<eos>": 2}, unk_token="<unk>")).save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<bos>", "eos_token": "<eos>"}))


def part_bytes(weights: dict, llm: bool) -> int:
    vision = ("vision.", "model.vision_tower", "model.vlm_uni", "model.mm_projector")
    return sum(v.nbytes for k, v in weights.items() if k.startswith(vision) != llm)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="/tmp/mgm2b-bench")
    parser.add_argument("--bits", type=int, nargs="+", default=[4])
    parser.add_argument("--keep", action="store_true", help="keep the files afterwards")
    args = parser.parse_args()
    work = Path(args.workdir)
    raw = work / "MGM-2B-random"
    if not raw.exists():
        tic = time.perf_counter()
        write_released(raw)
        print(f"wrote the random checkpoint in {time.perf_counter() - tic:.0f} s")
    weights = load_weights(raw)
    llm_bf16 = part_bytes({k: v for k, v in weights.items() if k != "lm_head.weight"}, True)
    print(f"released: {sum(v.nbytes for v in weights.values()) / 1e9:.2f} GB in all; "
          f"LLM part (bf16, without the lm_head copy) {llm_bf16 / 1e9:.2f} GB; "
          f"image path {part_bytes(weights, False) / 1e9:.2f} GB")
    del weights

    mx.reset_peak_memory()
    tic = time.perf_counter()
    model, _ = load(raw, dtype=mx.bfloat16, vision_dtype=mx.bfloat16)
    print(f"load (bf16): {time.perf_counter() - tic:.1f} s, peak memory {mx.get_peak_memory() / 1e9:.2f} GB")
    del model

    print("| output | LLM part | / bf16 LLM | image path | total on disk | convert time | peak memory |")
    print("|---|---|---|---|---|---|---|")
    for bits in args.bits:
        out = work / f"mgm2b-{bits}bit"
        mx.reset_peak_memory()
        tic = time.perf_counter()
        convert(raw, out, quantize=True, q_bits=bits, force=True)
        seconds = time.perf_counter() - tic
        w = load_weights(out)
        llm, vis = part_bytes(w, True), part_bytes(w, False)
        disk = sum(f.stat().st_size for f in out.glob("*.safetensors"))
        print(f"| {bits}-bit g64 | {llm / 1e9:.2f} GB | {llm / llm_bf16:.3f}x | {vis / 1e9:.2f} GB (fp16) | "
              f"{disk / 1e9:.2f} GB | {seconds:.0f} s | {mx.get_peak_memory() / 1e9:.2f} GB |")
    if not args.keep:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
