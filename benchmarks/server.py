"""Time to first token through the real HTTP server: a new image, the same image again (a new
question), and a follow-up turn of the same conversation, on a full-size MGM-2B-shaped
checkpoint of random weights (no download).

    python benchmarks/server.py                      # float32 LLM (Linux default), 1 run
    python benchmarks/server.py --q-bits 4 --runs 2 --json server.json

Writes the checkpoint once under --workdir (benchmarks/run.py's writer, about 6 GB), starts
`python -m mgm_mlx.server` on it in a child process, and sends streamed requests with a
768-class picture as a base64 data URL, as an OpenAI client does. Time to first token is
measured at the client, from sending the request to the first server-sent event (the server
sends it once the first token is sampled: image path, prefill and one decode step done).

- new image: a picture the server has not seen: CLIP + ConvNeXt + mining, then the whole
  prompt prefilled. Every request costs this on a server without an image cache or prompt
  reuse;
- same image, new question: the image's tokens come from the vision cache (keyed by the
  image's bytes) and, as the image sits at the same place in the prompt, from the KV cache
  too: only the question is prefilled;
- follow-up turn: the client resends the conversation with its answer and a new question:
  only the new tokens are prefilled.
"""

import argparse
import http.client
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import checkpoint, machine  # noqa: E402


def words(n: int, start: int) -> str:
    """n words of the random checkpoint's word-level vocabulary (w3 ... w255999)."""
    return " ".join(f"w{start + 7 * i}" for i in range(n))


def picture(seed: int) -> str:
    """A 640x480 picture as a base64 PNG data URL (smooth shapes plus noise, different per seed)."""
    import base64

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:480, 0:640].astype(np.float32)
    base = np.stack([np.sin(x / (20 + 10 * rng.random()) + c) * np.cos(y / (30 + 10 * rng.random())) for c in range(3)], -1)
    pixels = np.clip(127 + 100 * base + 20 * rng.standard_normal(base.shape), 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


def user(text, image=None):
    if image is None:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": image}}, {"type": "text", "text": text}]}


def ask(port: int, messages: list, max_tokens: int) -> dict:
    """One streamed request: time to the first event, to the end, the text and the usage."""
    body = json.dumps({"model": "mgm", "messages": messages, "max_tokens": max_tokens, "stream": True,
                       "stream_options": {"include_usage": True}})
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=3600)
    tic = time.perf_counter()
    connection.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    response = connection.getresponse()
    if response.status != 200:
        raise RuntimeError(f"HTTP {response.status}: {response.read().decode()[:300]}")
    first = first_text = None
    text, usage = [], None
    for line in response:
        line = line.decode().strip()
        if not line.startswith("data: "):
            continue
        if first is None:
            first = time.perf_counter() - tic
        if line == "data: [DONE]":
            break
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            usage = chunk["usage"]
        for choice in chunk.get("choices", []):
            if choice["delta"].get("content"):
                text.append(choice["delta"]["content"])
                if first_text is None:
                    first_text = time.perf_counter() - tic
    total = time.perf_counter() - tic
    connection.close()
    return {"ttft_ms": round(1000 * first), "first_text_ms": round(1000 * (first_text or total)),
            "total_ms": round(1000 * total), "text": "".join(text), "prompt_tokens": usage["prompt_tokens"],
            "cached_tokens": usage["prompt_tokens_details"]["cached_tokens"]}


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as r:
        return json.loads(r.read())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "mgm-mlx-bench"))
    parser.add_argument("--model", help="an existing model folder instead of the random MGM-2B one")
    parser.add_argument("--q-bits", type=int, choices=[4, 8], help="quantize the LLM while loading (less memory)")
    parser.add_argument("--runs", type=int, default=1, help="new image / same image / follow-up rounds")
    parser.add_argument("--tokens", type=int, default=4, help="tokens per reply")
    parser.add_argument("--json", metavar="PATH", help="write every figure as JSON")
    args = parser.parse_args()

    m = machine()
    print(f"# {m['cpu']} | {m['cores']} cores | {m['ram_gb']} GB | {m['os']} | {m['device']}", file=sys.stderr)
    folder = Path(args.model) if args.model else checkpoint(Path(args.workdir), "2b")
    port = free_port()
    command = [sys.executable, "-m", "mgm_mlx.server", "--model", str(folder), "--port", str(port),
               "--max-tokens", str(args.tokens), "--log-level", "warning"]
    if args.q_bits:
        command += ["--q-bits", str(args.q_bits)]
    tic = time.perf_counter()
    server = subprocess.Popen(command)
    results = {"machine": m, "args": vars(args), "rounds": []}
    try:
        while True:
            try:
                health(port)
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit("error: the server did not start")
                time.sleep(0.5)
        results["load_s"] = round(time.perf_counter() - tic, 1)
        print(f"server up in {results['load_s']} s ({f'{args.q_bits}-bit' if args.q_bits else 'unquantized'} LLM)",
              file=sys.stderr)
        ask(port, [user(words(8, 100))], 1)  # warm-up: a text turn
        for run in range(args.runs):
            image = picture(run)
            row = {}
            before = health(port)["vision_runs"]
            row["new_image"] = ask(port, [user(words(12, 1000 + run), image)], args.tokens)
            row["new_image"]["vision_runs"] = health(port)["vision_runs"] - before
            question = [user(words(14, 2000 + run), image)]
            row["same_image"] = ask(port, question, args.tokens)
            row["same_image"]["vision_runs"] = health(port)["vision_runs"] - before - 1
            follow = question + [{"role": "assistant", "content": row["same_image"]["text"]}, user(words(10, 3000 + run))]
            row["follow_up"] = ask(port, follow, args.tokens)
            row["follow_up"]["vision_runs"] = health(port)["vision_runs"] - before - 1
            for name, r in row.items():
                print(f"  run {run + 1} {name}: first token {r['ttft_ms']} ms (first text {r['first_text_ms']} ms), "
                      f"prompt {r['prompt_tokens']} tokens, {r['cached_tokens']} reused, vision runs {r['vision_runs']}",
                      file=sys.stderr)
            results["rounds"].append(row)
    finally:
        server.terminate()
        server.wait(60)

    median = {name: statistics.median(r[name]["ttft_ms"] for r in results["rounds"])
              for name in ("new_image", "same_image", "follow_up")}
    results["median_ttft_ms"] = median
    results["ratios"] = {"new_image / same_image": round(median["new_image"] / median["same_image"], 1),
                         "new_image / follow_up": round(median["new_image"] / median["follow_up"], 1)}
    print("| request | time to first token | prompt tokens | reused from the KV cache | vision runs |")
    print("|---|---|---|---|---|")
    last = results["rounds"][-1]
    for name, label in (("new_image", "new image"), ("same_image", "same image, new question"),
                        ("follow_up", "follow-up turn")):
        r = last[name]
        print(f"| {label} | {median[name] / 1000:.2f} s | {r['prompt_tokens']} | {r['cached_tokens']} | {r['vision_runs']} |")
    for what, ratio in results["ratios"].items():
        print(f"{what}: {ratio}x")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
