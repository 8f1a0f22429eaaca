"""MGM split across two ranks (`mlx.launch -n 2`, ring backend on localhost) against one
process: memory per rank and decode speed on a full-size MGM-7B-shaped 4-bit model, and
where the image path should run.

    python benchmarks/distributed.py                       # both parts
    python benchmarks/distributed.py --part llm --tokens 8 --runs 2 --json dist.json
    python benchmarks/distributed.py --part vision --pin   # tiny + full-size image path, a core per process

llm: writes (or reuses, under --workdir) MGM-7B-shaped random weights in the released layout
(benchmarks/run.py, bf16, 15 GB) and converts them once to 4-bit with mgm_mlx.convert (3.9
GB); then loads it through `mgm_mlx.load` in one process and under `mlx.launch -n 2`
(`load(..., group=...)`), and reports per rank: MLX peak memory after loading and after a
text turn (the image path's weights are loaded on rank 0, as the CLI does), the bytes of the
weights it holds, and decode tokens-per-second through Chat (median of --runs). With
--image, one full-size image turn too (peak with the image path's activations).

vision: times the image path (tests' tiny one, and full size with random weights as in
benchmarks/vision.py, MGM-7B width) run three ways: one process; two ranks that each run
it; rank 0 runs it and sends the tokens to the other (mgm_mlx.distributed.SharedVision,
what load(group=...) sets up).

On one machine the ranks share its cores, and MLX's ring backend waits for data by
spinning a thread per socket (mlx.launch's own loop takes some CPU too), so two ranks here
compete with each other. --pin puts each process on a core of its own (the single process
on one core too; one BLAS thread each): one "machine" against two.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mgm_mlx  # noqa: F401  (first: on Linux it may load OpenBLAS before mlx)
from mgm_mlx import distributed

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten

HERE = Path(__file__).resolve().parent
GB = 1e9


def words(n: int) -> str:
    return " ".join(f"w{3 + (7 * i) % 997}" for i in range(n))


# ---- the checkpoint


def checkpoint_4bit(workdir: Path) -> Path:
    target = workdir / "mgm-7b-random-4bit"
    if (target / "config.json").exists():
        return target
    sys.path.insert(0, str(HERE))
    from mgm_mlx.convert.convert import convert

    import run

    source = run.checkpoint(workdir, "7b")  # bf16 in the released layout (shared with run.py)
    tic = time.perf_counter()
    convert(source, target, quantize=True, q_bits=4, q_group_size=64)
    print(f"converted to 4-bit in {time.perf_counter() - tic:.0f} s: {target}", file=sys.stderr)
    return target


# ---- what each rank runs


def worker_llm(args):
    from mgm_mlx.generate import Chat
    from mgm_mlx.loading import load

    group = distributed.init()
    rank = distributed.rank(group)
    mx.reset_peak_memory()
    tic = time.perf_counter()
    model, processor = load(args.model, group=group)
    result = {"rank": rank, "ranks": group.size() if group else 1, "load_s": round(time.perf_counter() - tic, 1),
              "load_peak_gb": round(mx.get_peak_memory() / GB, 3)}
    params = tree_flatten(model.parameters())
    result["llm_weights_gb"] = round(sum(v.nbytes for k, v in params if k.startswith("language_model.")) / GB, 3)
    result["vision_weights_gb"] = round(sum(v.nbytes for k, v in params if k.startswith("vision.")) / GB, 3)
    embed = [v.nbytes for k, v in params if ".embed_tokens." in k or ".lm_head." in k]
    result["embed_and_head_gb"] = round(sum(embed) / GB, 3)
    processor.tokenizer.eos_token_ids = set()  # always --tokens tokens
    prompt = words(args.prompt)
    decode = []
    for i in range(args.warmup + args.runs):
        last = list(Chat(model, processor).stream(prompt, max_tokens=args.tokens if i >= args.warmup else 2))[-1]
        if i >= args.warmup:
            decode.append(last.generation_tps)
        print(f"  rank {rank}: turn {i}: prefill {last.prompt_tps:.2f} tok/s, decode {last.generation_tps:.3f} tok/s",
              file=sys.stderr, flush=True)
    result["decode_tps"] = round(statistics.median(decode), 3)
    result["decode_runs"] = [round(d, 3) for d in decode]
    result["text_peak_gb"] = round(mx.get_peak_memory() / GB, 3)
    if args.image:
        pixels = np.random.default_rng(0).integers(0, 256, (768, 768, 3), dtype=np.uint8)
        from PIL import Image

        image = Image.fromarray(pixels) if rank == 0 else distributed.PLACEHOLDER
        tic = time.perf_counter()
        last = list(Chat(model, processor).stream("Describe it.", [image], max_tokens=2))[-1]
        result["image_turn_s"] = round(time.perf_counter() - tic, 1)
        result["vision_ms"] = {k: round(v) for k, v in last.vision_ms.items()}
        result["image_prefill_tps"] = round(last.prompt_tps, 2)
        result["image_peak_gb"] = round(mx.get_peak_memory() / GB, 3)
    result["peak_gb"] = round(mx.get_peak_memory() / GB, 3)
    Path(args.out, f"llm-{result['ranks']}-{rank}.json").write_text(json.dumps(result))
    distributed.finish(group)


def worker_vision(args):
    from mgm_mlx.clip import VisionConfig
    from mgm_mlx.convnext import ConvNeXtConfig
    from mgm_mlx.vision import MGMVision, VisionArgs

    group = distributed.init()
    rank = distributed.rank(group)
    if args.size == "tiny":
        from mgm_mlx.loading import load_vision

        tiny = HERE.parent / "tests" / "goldens" / "tiny-mgm"
        vision = load_vision(tiny, dtype=mx.float32)
        hidden = json.loads((tiny / "config.json").read_text())["hidden_size"]
    else:  # random full-size weights as benchmarks/vision.py makes them, evaluated after the split
        hidden = 4096
        vision = MGMVision(VisionArgs(), VisionConfig(), ConvNeXtConfig(), hidden)
        for stage in vision.vision_tower_aux.vision_stages:
            for block in stage.blocks:
                block.gamma = mx.full(block.gamma.shape, 0.1)
    if group is not None and args.mode in distributed.VISION:
        vision = distributed.VISION[args.mode](vision, group, mx.float32, hidden)
    mx.eval(vision.parameters())
    size = vision.args.image_size_aux
    pixels = mx.array(np.random.default_rng(0).standard_normal((1, size, size, 3)).astype(np.float32))
    times, stages = [], []
    for i in range(args.warmup + args.runs):
        if group is not None:
            distributed.barrier(group)
        tic = time.perf_counter()
        timings = {}  # as Chat asks for them: each stage evaluated on its own
        tokens = vision(pixels, timings=timings)
        mx.eval(tokens)
        if group is not None:
            distributed.barrier(group)  # done when every rank has the tokens
        if i >= args.warmup:
            times.append(time.perf_counter() - tic)
            stages.append(timings)
    out = {"rank": rank, "ranks": group.size() if group else 1, "mode": args.mode, "size": args.size,
           "seconds": round(statistics.median(times), 3), "runs": [round(t, 3) for t in times],
           "stages_ms": {k: round(statistics.median(t[k] for t in stages)) for k in stages[0]},
           "tokens": list(tokens.shape), "peak_gb": round(mx.get_peak_memory() / GB, 3)}
    Path(args.out, f"vision-{args.size}-{args.mode}-{out['ranks']}-{rank}.json").write_text(json.dumps(out))
    distributed.finish(group)


# ---- the orchestra


def free_port() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no two free ports in a row")


def run(worker_args: list, ranks: int, pin: bool = False):
    """One process, or `ranks` under mlx.launch. pin: each process on a core of its own (the
    single process on core 0, rank r on core r; one BLAS thread), as if each were a machine."""
    cmd = [sys.executable, __file__, *worker_args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLX_")}
    if pin:
        cmd = ["bash", "-c", 'exec taskset -c "${MLX_RANK:-0}" "$@"', "pin", *cmd]
        env["OPENBLAS_NUM_THREADS"] = "1"
    if ranks > 1:
        launcher = Path(sys.executable).parent / "mlx.launch"
        cmd = [str(launcher), "-n", str(ranks), "--backend", "ring", "--starting-port", str(free_port()), "--", *cmd]
    subprocess.run(cmd, check=True, env=env)


def collect(out: Path, pattern: str) -> list:
    return [json.loads(p.read_text()) for p in sorted(out.glob(pattern))]


def part_llm(args, out: Path) -> dict:
    model = checkpoint_4bit(Path(args.workdir))
    common = ["--worker", "llm", "--model", str(model), "--out", str(out), "--tokens", str(args.tokens),
              "--runs", str(args.runs), "--warmup", str(args.warmup), "--prompt", str(args.prompt)]
    if args.image:
        common.append("--image")
    results = {}
    for ranks in (1, 2):
        print(f"MGM-7B 4-bit, {ranks} {'process' if ranks == 1 else 'ranks'}"
              f"{', one core each' if args.pin else ''} ...", file=sys.stderr)
        for stale in out.glob(f"llm-{ranks}-*.json"):
            stale.unlink()
        run(common, ranks, args.pin)
        results[ranks] = collect(out, f"llm-{ranks}-*.json")
        for r in results[ranks]:
            print("  " + json.dumps(r), file=sys.stderr)
    one, two = results[1][0], results[2]
    ratios = {
        "peak per rank / one process (max over ranks)": round(max(r["peak_gb"] for r in two) / one["peak_gb"], 3),
        **{f"peak rank {r['rank']} / one process": round(r["peak_gb"] / one["peak_gb"], 3) for r in two},
        "LLM weights per rank / one process": round(max(r["llm_weights_gb"] for r in two) / one["llm_weights_gb"], 3),
        "decode tok/s, 2 ranks / 1 process": round(min(r["decode_tps"] for r in two) / one["decode_tps"], 3),
    }
    if args.image:
        ratios["peak with an image turn, rank 0 / one process"] = round(
            two[0]["image_peak_gb"] / one["image_peak_gb"], 3)
    return {"model": str(model), "one": one, "two": two, "ratios": ratios}


def part_vision(args, out: Path) -> dict:
    rows = []
    for size, runs, warmup in (("tiny", 3, 1), ("full", args.vision_runs, 0)):
        for ranks, mode in ((1, "every"), (2, "every"), (2, "rank0"), (2, "split")):
            print(f"image path {size}: {ranks} {'process' if ranks == 1 else 'ranks, ' + mode}"
                  f"{', one core each' if args.pin else ''} ...", file=sys.stderr)
            for stale in out.glob(f"vision-{size}-{mode}-{ranks}-*.json"):
                stale.unlink()
            run(["--worker", "vision", "--size", size, "--mode", mode, "--out", str(out),
                 "--runs", str(runs), "--warmup", str(warmup)], ranks, args.pin)
            got = collect(out, f"vision-{size}-{mode}-{ranks}-*.json")
            rows.append({"size": size, "ranks": ranks, "mode": mode, "seconds": max(r["seconds"] for r in got),
                         "peak_gb": {r["rank"]: r["peak_gb"] for r in got}, "stages_ms": got[0]["stages_ms"]})
            print("  " + json.dumps(rows[-1]), file=sys.stderr)
    return {"rows": rows}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "llm", "vision"], default="all")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mgm-mlx-bench"))
    parser.add_argument("--tokens", type=int, default=8, help="decoded tokens per run")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--prompt", type=int, default=16, help="prompt tokens of the text turn")
    parser.add_argument("--image", action="store_true", help="also one full-size image turn (minutes here)")
    parser.add_argument("--vision-runs", type=int, default=1, help="runs of the full-size image path")
    parser.add_argument("--pin", action="store_true",
                        help="each process on one core of its own (taskset): one process vs two 'machines'")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--worker", choices=["llm", "vision"], help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--size", choices=["tiny", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=["every", "rank0", "split"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker == "llm":
        return worker_llm(args)
    if args.worker == "vision":
        return worker_vision(args)

    out = Path(tempfile.mkdtemp(prefix="mgm-dist-"))
    results = {"machine": {"cores": os.cpu_count(), "mlx": mx.__version__, "device": str(mx.default_device())},
               "pinned": args.pin}
    start = time.perf_counter()
    if args.part in ("all", "vision"):
        results["vision"] = part_vision(args, out)
    if args.part in ("all", "llm"):
        results["llm"] = part_llm(args, out)
    results["wall_s"] = round(time.perf_counter() - start)
    if "vision" in results:
        print("\n| image path | 1 process | 2 ranks: each runs all | rank 0 runs all, sends | "
              "CLIP on rank 0 + ConvNeXt on rank 1 |")
        print("|---|---|---|---|---|")
        for size in ("tiny", "full"):
            t = {(r["ranks"], r["mode"]): r for r in results["vision"]["rows"] if r["size"] == size}
            cells = [f"{t[k]['seconds']:.2f} s, peak {max(t[k]['peak_gb'].values()):.2f} GB"
                     for k in ((1, "every"), (2, "every"), (2, "rank0"), (2, "split"))]
            print(f"| {size} | " + " | ".join(cells) + " |")
    if "llm" in results:
        llm = results["llm"]
        print("\n| MGM-7B 4-bit | LLM weights | image path weights | load peak | peak | decode |")
        print("|---|---|---|---|---|---|")
        for label, r in [("1 process", llm["one"])] + [(f"2 ranks: rank {r['rank']}", r) for r in llm["two"]]:
            print(f"| {label} | {r['llm_weights_gb']} GB | {r['vision_weights_gb']} GB | {r['load_peak_gb']} GB | "
                  f"{r['peak_gb']} GB | {r['decode_tps']} tok/s |")
        print()
        for what, figure in llm["ratios"].items():
            print(f"{what}: {figure}")
    print(f"\nwall {results['wall_s']} s")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
