"""Where the time and memory go: MGM-2B / MGM-7B shapes, random weights, side by side with
mlx-lm and PyTorch in one run.

    python benchmarks/run.py --quick                 # MGM-2B, float32 + 4-bit, non-HD (< 15 min on 2 cores)
    python benchmarks/run.py --models 2b 7b --configs float16 bfloat16 float32 4bit --hd --json out.json

Writes a random checkpoint in the released layout (bf16 shards, towers inside) once under
--workdir, then per model and configuration: load time through mgm_mlx.load, CLIP /
ConvNeXt / mining ms, prefill and decode tokens-per-second (through Chat, as a user runs
it), decode of mlx-lm's stream_generate on the same weights, peak memory (MLX's, reset per
phase) against the bytes of the weights. Then PyTorch (transformers CLIP + timm ConvNeXt,
transformers Gemma; float32, same weights, same threads) when installed, and on Linux the
same MLX measurements again in a child process without the Linux CPU path
(MGM_MLX_NO_CPU_PATH=1: no OpenBLAS, no quantized-prefill route). Median of --runs after a
warm-up.
"""

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mgm_mlx  # noqa: F401  (first: on Linux it may load OpenBLAS before mlx)
from mgm_mlx import language, linux_cpu
from mgm_mlx.clip import VisionConfig
from mgm_mlx.convnext import ConvNeXtConfig
from mgm_mlx.generate import Chat
from mgm_mlx.loading import load
from mgm_mlx.model import Model
from mgm_mlx.vision import MGMVision, VisionArgs

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import tokenizer_folder

VISION = dict(image_aspect_ratio="pad", image_size_aux=768, image_grid=1, image_global=False, mm_hidden_size=1024,
              mm_hidden_size_aux=2880, mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
              mm_vision_select_feature="patch", tokenizer_model_max_length=4096)
HD = dict(image_size_aux=1536, image_grid=2, image_global=True)
MODELS = {
    "2b": dict(architectures=["MGMGemmaForCausalLM"], model_type="mgm_gemma", hidden_size=2048,
               intermediate_size=16384, num_hidden_layers=18, num_attention_heads=8, num_key_value_heads=1,
               head_dim=256, vocab_size=256000, rms_norm_eps=1e-6, rope_theta=10000.0, hidden_act="gelu",
               torch_dtype="bfloat16", **VISION),
    "7b": dict(architectures=["MGMLlamaForCausalLM"], model_type="mgm", hidden_size=4096, intermediate_size=11008,
               num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
               rms_norm_eps=1e-5, rope_theta=10000.0, hidden_act="silu", tie_word_embeddings=False,
               torch_dtype="bfloat16", **VISION),
}
HF = {"2b": "gemma", "7b": "llama"}
PARAMS = {"2b": 3.0e9, "7b": 7.3e9}  # LLM + image path


def load_gb(name: str, cfg: str) -> float:
    """Memory that loading the bf16 checkpoint takes: about the weights as loaded (load
    evaluates one tensor at a time and quantizes from the stored bf16), with some margin;
    on a CPU the image path is float32 whatever the LLM is."""
    cpu = mx.default_device().type == mx.cpu
    per_param = {"float32": 4.4, "float16": 2.2, "bfloat16": 2.2, "4bit": 1.2 if cpu else 0.8}[cfg]
    return PARAMS[name] * per_param / 1e9


# ---- the machine


def machine() -> dict:
    info = {"os": platform.platform(), "python": platform.python_version(), "cores": os.cpu_count()}
    try:
        cpu = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        info["cpu"] = cpu[0] if cpu else platform.processor()
        mem = [line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")]
        info["ram_gb"] = round(int(mem[0]) / 1e6, 1)
    except OSError:  # macOS
        def sysctl(key):
            return subprocess.run(["sysctl", "-n", key], capture_output=True, text=True, check=False).stdout.strip()

        info["cpu"] = sysctl("machdep.cpu.brand_string")
        info["ram_gb"] = round(int(sysctl("hw.memsize") or 0) / 1e9, 1)
    info["device"] = str(mx.default_device())
    info["versions"] = versions()
    info["linux_cpu_path"] = {"openblas": linux_cpu.OPENBLAS, "quantized_prefill_route": linux_cpu.enabled()}
    return info


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("mlx", "mlx-lm", "numpy", "torch", "transformers", "timm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            pass
    return out


def roofline(n=1024, runs=3) -> dict:
    """Measured matmul GFLOP/s: MLX float32 / bfloat16 and numpy float32, n x n x n."""
    def rate(f):
        f()
        times = []
        for _ in range(runs):
            tic = time.perf_counter()
            f()
            times.append(time.perf_counter() - tic)
        return round(2 * n**3 / statistics.median(times) / 1e9, 1)

    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    a16, b16 = a.astype(mx.bfloat16), b.astype(mx.bfloat16)
    mx.eval(a, b, a16, b16)
    na, nb = np.array(a), np.array(b)
    return {"mlx_float32": rate(lambda: mx.eval(a @ b)), "mlx_bfloat16": rate(lambda: mx.eval(a16 @ b16)),
            "numpy_float32": rate(lambda: na @ nb)}


# ---- a random checkpoint in the released layout


def write_checkpoint(folder: Path, config: dict):
    """bf16 shards of random weights under the released MGM key names, plus a tokenizer."""
    hidden = config["hidden_size"]
    model = Model(config, MGMVision(VisionArgs(), VisionConfig(), ConvNeXtConfig(), hidden), language.build(config))
    shapes = {released(k): v.shape for k, v in tree_flatten(model.parameters())}
    del model
    clip = "model.vision_tower.vision_tower.vision_model."
    shapes.update({clip + "post_layernorm.weight": (1024,), clip + "post_layernorm.bias": (1024,)})
    folder.mkdir(parents=True, exist_ok=True)
    shards, weight_map, size, total = [{}], {}, 0, 0
    for key, shape in shapes.items():
        if len(shape) == 4:  # MLX OHWI -> released OIHW
            shape = (shape[0], shape[3], shape[1], shape[2])
        if size > 2e9:
            shards.append({})
            size = 0
        shards[-1][key] = shape
        size += 2 * math.prod(shape)
    noise = np.random.default_rng(0).standard_normal(1 << 22).astype(np.float32)
    for i, shard in enumerate(shards):
        name = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {k: random_value(k, s, noise) for k, s in shard.items()}
        mx.save_safetensors(str(folder / name), tensors, metadata={"format": "pt"})
        total += sum(v.nbytes for v in tensors.values())
        weight_map.update(dict.fromkeys(tensors, name))
        del tensors
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    tok = tokenizer_folder(config["vocab_size"])
    for f in tok.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "config.json").write_text(json.dumps(config))


def released(key: str) -> str:
    if key.startswith("language_model."):
        return key[len("language_model.") :]
    key = key[len("vision.") :]
    if key.startswith("vision_tower."):
        key = "vision_tower." + key
    return "model." + key


def random_value(key: str, shape, noise: np.ndarray) -> mx.array:
    """Trained-like scales: norms near 1, small layer scales, weights ~ N(0, 0.02). The values
    cycle through `noise` from a random start (drawing billions of normals takes minutes)."""
    n = math.prod(shape)
    start = int(np.random.default_rng(n + len(key)).integers(len(noise)))
    r = mx.array(np.resize(np.roll(noise, start), n).reshape(shape))
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "gamma":
        v = mx.full(shape, 0.1)
    elif len(shape) == 1 and leaf == "weight" and ("layers." not in key or "layer_norm" in key):
        v = 1 + 0.02 * r
    else:
        v = 0.02 * r
    return v.astype(mx.bfloat16)


def checkpoint(workdir: Path, name: str) -> Path:
    folder = workdir / f"mgm-{name}-random"
    if not (folder / "config.json").exists():
        tic = time.perf_counter()
        write_checkpoint(folder, MODELS[name])
        print(f"wrote a random MGM-{name.upper()} checkpoint to {folder} in {time.perf_counter() - tic:.0f} s", file=sys.stderr)
    return folder


# ---- MLX: ours, and mlx-lm on the same weights


def median_runs(f, runs: int, warmup: int = 1) -> list:
    for _ in range(warmup):
        f()
    return [f() for _ in range(runs)]


def words(n: int) -> str:
    return " ".join(f"w{3 + (7 * i) % 997}" for i in range(n))


def bench_vision(model: Model, hd: bool, runs: int, warmup: int) -> dict:
    vision = model.vision
    if hd:
        vision = MGMVision(VisionArgs(**HD), model.vision.vision_tower.config, model.vision.vision_tower_aux.config,
                           model.config["hidden_size"])
        vision.update(model.vision.parameters())
    size = vision.args.image_size_aux
    pixels = mx.array(np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32))
    mx.reset_peak_memory()

    def once():
        timings = {}
        tic = time.perf_counter()
        vision(pixels, timings=timings)
        timings["total"] = 1000 * (time.perf_counter() - tic)
        return timings

    out = median_runs(once, runs, warmup)
    result = {k + "_ms": round(statistics.median(r[k] for r in out), 1) for k in out[0]}
    return {**result, "peak_gb": round(mx.get_peak_memory() / 1e9, 3)}


def bench_mlx(folder: Path, name: str, cfg: str, args, vision_done: set, compare: bool) -> dict:
    config = MODELS[name]
    bits = 4 if cfg == "4bit" else None
    dtype = mx.float32 if bits else getattr(mx, cfg)
    result = {"model": name, "config": cfg}
    mx.clear_cache()
    mx.reset_peak_memory()
    tic = time.perf_counter()
    model, processor = load(folder, dtype=dtype, vision_dtype=dtype, quantize_bits=bits)
    result["load_s"] = round(time.perf_counter() - tic, 2)
    result["load_peak_gb"] = round(mx.get_peak_memory() / 1e9, 3)
    weights = sum(v.nbytes for _, v in tree_flatten(model.parameters()))
    llm = sum(v.nbytes for _, v in tree_flatten(model.language_model.parameters()))
    result.update(weight_gb=round(weights / 1e9, 3), llm_weight_gb=round(llm / 1e9, 3))
    processor.tokenizer.eos_token_ids = set()  # always --tokens tokens

    for hd in ([False, True] if args.hd else [False]):
        key = (str(dtype), hd)
        if key not in vision_done and not args.no_vision:
            vision_done.add(key)
            result["vision_hd" if hd else "vision"] = bench_vision(model, hd, args.vision_runs, args.vision_warmup)
            print(f"  vision{' HD' if hd else ''} {dtype}: {result['vision_hd' if hd else 'vision']}", file=sys.stderr)

    def turn(prompt, tokens):
        last = list(Chat(model, processor).stream(prompt, max_tokens=tokens))[-1]
        return last.prompt_tokens, last.prompt_tps, last.generation_tps

    mx.reset_peak_memory()
    prefill = median_runs(lambda: turn(words(args.prompt), 1), args.runs, args.warmup)
    result["prompt_tokens"] = prefill[0][0]
    result["prefill_tps"] = round(statistics.median(p[1] for p in prefill), 2)
    result["prefill_peak_gb"] = round(mx.get_peak_memory() / 1e9, 3)

    # Decode: ours (Chat) and mlx-lm's stream_generate, alternating, same weights, same prompt.
    prompt = words(8)
    mx.reset_peak_memory()
    if compare:
        from mlx_lm.generate import stream_generate
        from mlx_lm.utils import load_tokenizer

        family = language.family(config)
        module = __import__(f"mlx_lm.models.{family}", fromlist=["Model"])
        theirs = module.Model(module.ModelArgs.from_dict({**config, "model_type": family}))
        if bits:
            nn.quantize(theirs, 64, bits)
        theirs.update(model.language_model.parameters())
        tokenizer = load_tokenizer(folder)
        tokenizer.eos_token_ids = set()
        ids = mx.array(processor.tokenizer.encode(prompt))

        def mlx_lm():
            return list(stream_generate(theirs, tokenizer, ids, max_tokens=args.tokens))[-1].generation_tps

        ours, lm = [], []
        if args.decode_warmup:
            turn(prompt, args.tokens), mlx_lm()
        for i in range(args.runs):  # alternate who goes first
            pair = (lambda: ours.append(turn(prompt, args.tokens)[2]), lambda: lm.append(mlx_lm()))
            for f in pair[:: -1 if i % 2 else 1]:
                f()
        result["mlx_lm_decode_tps"] = round(statistics.median(lm), 2)
        result["decode_vs_mlx_lm"] = round(statistics.median(ours) / statistics.median(lm), 3)
        del theirs
    else:
        ours = [t[2] for t in median_runs(lambda: turn(prompt, args.tokens), args.runs, 0)]
    result["decode_tps"] = round(statistics.median(ours), 2)
    result["decode_peak_gb"] = round(mx.get_peak_memory() / 1e9, 3)
    result["peak_over_weights"] = round(max(result["prefill_peak_gb"], result["decode_peak_gb"]) * 1e9 / weights, 3)
    return result


# ---- PyTorch: transformers CLIP + timm ConvNeXt + transformers Gemma/Llama, same weights


def bench_torch(folder: Path, name: str, args) -> dict:
    import torch

    torch.set_num_threads(os.cpu_count())
    result = {"model": name, "threads": torch.get_num_threads(), "dtype": "float32"}
    if not args.no_vision:
        result["vision"] = torch_vision(folder, MODELS[name]["hidden_size"], args)
        print(f"  torch vision: {result['vision']}", file=sys.stderr)
    result.update(torch_llm(folder, name, args))
    return result


def torch_vision(folder: Path, hidden: int, args) -> dict:
    """The reference's own pieces (tests/reference.py), full size, the tower weights of the checkpoint."""
    import timm.models.convnext as tc
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPVisionConfig, CLIPVisionModel

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import reference as ref

    sd = {}
    for f in sorted(folder.glob("*.safetensors")):
        sd.update({k: v.float() for k, v in load_file(str(f)).items() if not k.startswith(("model.layers", "model.embed", "model.norm", "lm_head"))})
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                                            num_attention_heads=16, image_size=336, patch_size=14,
                                            hidden_act="quick_gelu", layer_norm_eps=1e-5))
    trunk = tc.ConvNeXt(in_chans=3, num_classes=0, depths=(3, 3, 27, 3), dims=(192, 384, 768, 1536))
    mining = torch.nn.ModuleDict(dict(
        query=torch.nn.Sequential(torch.nn.LayerNorm(1024), torch.nn.Linear(1024, 1024)),
        aux=torch.nn.Sequential(torch.nn.LayerNorm(2880), torch.nn.Linear(2880, 1024)),
        val=torch.nn.Sequential(torch.nn.LayerNorm(2880), torch.nn.Linear(2880, 1024)),
        proj=torch.nn.Sequential(torch.nn.Linear(1024, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden)),
    ))
    clip, trunk, mining = ref.from_mgm_state_dict(sd, (clip, trunk, mining))
    del sd
    # The same work as ours: MGM takes hidden_states[-2], so the last CLIP layer is not run.
    encoder = getattr(clip, "vision_model", clip).encoder  # transformers 5 has no vision_model level
    encoder.layers = encoder.layers[:-1]
    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((1, 3, 768, 768)).astype(np.float32))

    @torch.inference_mode()
    def once():
        t0 = time.perf_counter()
        feats = ref.clip_features(clip, ref.lowres(pixels), select_layer=-1)
        t1 = time.perf_counter()
        aux = ref.convnext_concat(ref.convnext_stages(trunk, pixels))
        t2 = time.perf_counter()
        feats, mined = ref.unified_resampler(mining, feats, aux)
        mining["proj"](feats + mined)
        t3 = time.perf_counter()
        return {"clip": 1000 * (t1 - t0), "convnext": 1000 * (t2 - t1), "mining": 1000 * (t3 - t2), "total": 1000 * (t3 - t0)}

    out = median_runs(once, args.vision_runs, args.vision_warmup)
    return {k + "_ms": round(statistics.median(r[k] for r in out), 1) for k in out[0]}


def torch_llm(folder: Path, name: str, args) -> dict:
    import torch
    import transformers

    family = HF[name]
    config = {k: v for k, v in MODELS[name].items() if k not in VISION and k not in ("architectures", "torch_dtype")}
    hf = Path(tempfile.mkdtemp())
    (hf / "config.json").write_text(json.dumps({**config, "model_type": family, "torch_dtype": "float32"}))
    for f in folder.glob("*.safetensors*"):
        (hf / f.name).symlink_to(f)
    if (folder / "model.safetensors.index.json").exists():
        (hf / "model.safetensors.index.json").unlink()
        (hf / "model.safetensors.index.json").symlink_to(folder / "model.safetensors.index.json")
    cls = getattr(transformers, {"gemma": "GemmaForCausalLM", "llama": "LlamaForCausalLM"}[family])
    tic = time.perf_counter()
    model = cls.from_pretrained(hf, dtype=torch.float32).eval()
    load_s = time.perf_counter() - tic
    if family == "gemma":  # MGM-2B used the exact GELU (as tests/reference.py)
        for layer in model.model.layers:
            layer.mlp.act_fn = torch.nn.GELU()
    ids = torch.tensor([[1] + [3 + (7 * i) % 997 for i in range(args.prompt - 1)]])

    @torch.inference_mode()
    def prefill():
        tic = time.perf_counter()
        model(input_ids=ids, use_cache=True, logits_to_keep=1)
        return ids.shape[1] / (time.perf_counter() - tic)

    @torch.inference_mode()
    def decode():
        out = model(input_ids=ids[:, :16], use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1:].argmax(-1)
        tic = time.perf_counter()
        for _ in range(args.tokens):
            out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
            token = out.logits[:, -1:].argmax(-1)
        return args.tokens / (time.perf_counter() - tic)

    result = {"load_s": round(load_s, 2), "prompt_tokens": ids.shape[1],
              "prefill_tps": round(statistics.median(median_runs(prefill, args.runs, args.warmup)), 2),
              "decode_tps": round(statistics.median(median_runs(decode, args.runs, args.warmup)), 2)}
    return result


# ---- the report


def ratios(results: dict) -> list:
    """(what, figure) lines: ours / mlx-lm, ours / PyTorch with and without the CPU path."""
    lines = []
    torch_by_model = {t["model"]: t for t in results.get("torch", [])}
    without = {(r["model"], r["config"]): r for r in results.get("without_path", {}).get("configs", [])}
    for r in results["configs"]:
        tag = f"MGM-{r['model'].upper()} {r['config']}"
        if "decode_vs_mlx_lm" in r:
            lines.append((f"{tag}: decode ours / mlx-lm", r["decode_vs_mlx_lm"]))
        lines.append((f"{tag}: peak memory / weight bytes", r["peak_over_weights"]))
        t = torch_by_model.get(r["model"])
        w = without.get((r["model"], r["config"]))
        for label, ours in (("with", r), ("without", w)):
            if not ours or not t:
                continue
            for what in ("prefill", "decode"):
                lines.append((f"{tag}: {what} ours / PyTorch float32 ({label} the Linux CPU path)",
                              round(ours[f"{what}_tps"] / t[f"{what}_tps"], 3)))
            if "vision" in ours and "vision" in t:
                lines.append((f"{tag}: vision ours / PyTorch, time ({label} the Linux CPU path)",
                              round(ours["vision"]["total_ms"] / t["vision"]["total_ms"], 3)))
        if w:
            lines.append((f"{tag}: prefill with / without the Linux CPU path", round(r["prefill_tps"] / w["prefill_tps"], 2)))
    return lines


def table(results: dict) -> str:
    head = ("| model | config | load s | CLIP ms | ConvNeXt ms | mining ms | prefill tok/s | decode tok/s | "
            "mlx-lm decode tok/s | weights GB | peak GB | peak / weights |")
    rows = [head, "|" + "---|" * 12]
    for source, configs in (("", results["configs"]), (" (no CPU path)", results.get("without_path", {}).get("configs", []))):
        for r in configs:
            v = r.get("vision", {})
            rows.append(f"| MGM-{r['model'].upper()}{source} | {r['config']} | {r['load_s']} | {v.get('clip_ms', '-')} | "
                        f"{v.get('convnext_ms', '-')} | {v.get('mining_ms', '-')} | {r['prefill_tps']} | {r['decode_tps']} | "
                        f"{r.get('mlx_lm_decode_tps', '-')} | {r['weight_gb']} | "
                        f"{max(r['prefill_peak_gb'], r['decode_peak_gb'])} | {r['peak_over_weights']} |")
    for t in results.get("torch", []):
        v = t.get("vision", {})
        rows.append(f"| MGM-{t['model'].upper()} PyTorch | float32 | {t['load_s']} | {v.get('clip_ms', '-')} | "
                    f"{v.get('convnext_ms', '-')} | {v.get('mining_ms', '-')} | {t['prefill_tps']} | {t['decode_tps']} | - | - | - | - |")
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="MGM-2B, float32 + 4-bit, non-HD, short runs")
    parser.add_argument("--models", nargs="+", default=["2b"], choices=list(MODELS))
    parser.add_argument("--configs", nargs="+", default=["float32", "4bit"],
                        choices=["float16", "bfloat16", "float32", "4bit"], help="4bit: float32 activations")
    parser.add_argument("--hd", action="store_true", help="also the HD image path (1536, 2x2 tiles + global)")
    parser.add_argument("--prompt", type=int, default=600, help="prefill tokens (an MGM turn: 576 image tokens + text)")
    parser.add_argument("--tokens", type=int, default=32, help="decode tokens")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--decode-warmup", type=int, default=1, help="0: the prefill runs warm the model up")
    parser.add_argument("--vision-runs", type=int, default=3)
    parser.add_argument("--vision-warmup", type=int, default=1)
    parser.add_argument("--no-vision", action="store_true")
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run without the Linux CPU path")
    parser.add_argument("--baseline-prompt", type=int, help="prefill tokens without the CPU path (default --prompt); "
                        "there the cost per token is the same at any length")
    parser.add_argument("--baseline-vision", action="store_true",
                        help="time the image path without the Linux CPU path too (~12 min per 768 image on 2 cores)")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mgm-mlx-bench"))
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.models, args.configs, args.hd = ["2b"], ["float32", "4bit"], False
        args.prompt, args.baseline_prompt, args.tokens, args.runs, args.decode_warmup = 128, 16, 6, 2, 0
        args.vision_runs, args.vision_warmup = 1, 0
    start = time.perf_counter()
    workdir = Path(args.workdir)
    if "transformers" in sys.modules:  # quiet its notice about the tokenizer folder's model_type
        sys.modules["transformers"].logging.set_verbosity_error()

    results = {"machine": machine(), "args": {k: v for k, v in vars(args).items() if k != "child"}}
    m = results["machine"]
    print(f"# {m['cpu']} | {m['cores']} cores | {m['ram_gb']} GB | {m['os']} | {m['device']}", file=sys.stderr)
    print("# " + " | ".join(f"{k} {v}" for k, v in m["versions"].items()) + f" | Linux CPU path {m['linux_cpu_path']}",
          file=sys.stderr)
    results["roofline_gflops"] = roofline()
    print(f"# matmul GFLOP/s: {results['roofline_gflops']}", file=sys.stderr)

    if not args.child and linux_cpu.enabled() and mx.default_device().type == mx.cpu and not args.no_baseline:
        for name in args.models:
            if any(load_gb(name, cfg) < 0.8 * m["ram_gb"] for cfg in args.configs):
                checkpoint(workdir, name)
        results["without_path"] = without_path(args)  # first, while this process holds little memory

    results["configs"], vision_done = [], set()
    for name in args.models:
        for cfg in args.configs:
            if load_gb(name, cfg) > 0.8 * m["ram_gb"]:
                print(f"skipped: loading MGM-{name.upper()} {cfg} takes about {load_gb(name, cfg):.0f} GB "
                      f"({m['ram_gb']} GB here)", file=sys.stderr)
                continue
            folder = checkpoint(workdir, name)
            print(f"MGM-{name.upper()} {cfg} ...", file=sys.stderr)
            r = bench_mlx(folder, name, cfg, args, vision_done, compare=not args.child)
            mx.clear_cache()  # give the freed buffers back before the next model
            print("  " + json.dumps(r), file=sys.stderr)
            results["configs"].append(r)

    if not args.child:
        results["torch"] = []
        try:
            import timm  # noqa: F401
            import torch  # noqa: F401
            import transformers  # noqa: F401
        except ImportError:
            print("skipped: torch not installed (PyTorch side by side needs torch, transformers, timm)", file=sys.stderr)
        else:
            if not args.no_torch:
                for name in args.models:
                    if PARAMS[name] * 6 / 1e9 > 0.8 * m["ram_gb"]:
                        print(f"skipped: PyTorch MGM-{name.upper()} in float32 takes about "
                              f"{PARAMS[name] * 6 / 1e9:.0f} GB", file=sys.stderr)
                        continue
                    print(f"PyTorch MGM-{name.upper()} float32 ...", file=sys.stderr)
                    results["torch"].append(bench_torch(checkpoint(workdir, name), name, args))
                    gc.collect()
                    print("  " + json.dumps(results["torch"][-1]), file=sys.stderr)
    results["wall_s"] = round(time.perf_counter() - start, 1)
    results["ratios"] = dict(ratios(results))
    if args.child:
        Path(args.json).write_text(json.dumps(results))
        return
    print(table(results))
    print()
    for what, figure in results["ratios"].items():
        print(f"{what}: {figure}")
    print(f"\nroofline GFLOP/s: {results['roofline_gflops']} | wall {results['wall_s']:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


def without_path(args) -> dict:
    """The same MLX measurements in a child process with MGM_MLX_NO_CPU_PATH=1 (OpenBLAS must
    be loaded before MLX, so only a new process can do without it)."""
    out = Path(tempfile.mkdtemp()) / "without.json"
    cmd = [sys.executable, __file__, "--child", "--json", str(out), "--workdir", args.workdir,
           "--models", *args.models, "--configs", *args.configs, "--prompt", str(args.baseline_prompt or args.prompt),
           "--tokens", str(args.tokens), "--runs", "1", "--warmup", "0", "--vision-runs", "1", "--vision-warmup", "0"]
    if not args.baseline_vision or args.no_vision:
        cmd.append("--no-vision")
    print("without the Linux CPU path (child process) ...", file=sys.stderr)
    subprocess.run(cmd, check=True, env={**os.environ, "MGM_MLX_NO_CPU_PATH": "1"})
    return json.loads(out.read_text())


if __name__ == "__main__":
    main()
