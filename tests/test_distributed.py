"""The model split across two ranks (`mlx.launch -n 2`, ring backend on localhost) gives what
one process gives: first-step logits within 1e-4 (float32) and the same greedy tokens, for
Gemma (one KV head, replicated), Llama (mlx-lm's shard), Mixtral (experts split in place;
also quantized to 4 bits while loading), an HD checkpoint, a Llama whose KV heads do not
divide by 2, and a converted 4-bit folder loaded by repo id from a Hugging Face cache; all
in one launch. Then the CLI under
mlx.launch (rank 0 alone prints) and ranks that loaded different models (one error line).
Skips when mlx.launch cannot start two ranks here."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

from mgm_mlx.language import kv_heads_for
from mgm_mlx.loading import load_weights

import numpy as np
import pytest

from checkpoints import llm_weights, make_checkpoint, save_shards
from common import GOLDENS, TINY, mode_variants

TOL = 1e-4
TIMEOUT = 240
QUESTION = "What is in the picture?"

# Runs in each rank (and, imported, in the test process for the single-process run).
DRIVER = '''
import json, sys
from pathlib import Path

import mgm_mlx
import mlx.core as mx
import numpy as np
from PIL import Image

from mgm_mlx import distributed
from mgm_mlx.generate import Chat
from mgm_mlx.prompt import IMAGE, format_prompt, label_images, tokenize

QUESTION = "What is in the picture?"


def run(source, options, image, group=None):
    """16 greedy tokens through Chat, then the first step's logits for the same prompt."""
    model, processor = mgm_mlx.load(source, dtype=mx.float32, vision_dtype=mx.float32, group=group, **options)
    chat = Chat(model, processor)
    tokens = [r.token for r in chat.stream(QUESTION, [image], max_tokens=16)]
    prompt = label_images(format_prompt(chat.template, [IMAGE + "\\n" + QUESTION, None]))
    embeddings = model.embed(tokenize(processor.tokenizer._tokenizer, prompt), chat.images)
    logits = model.language_model(mx.zeros((1, embeddings.shape[1]), mx.int32), input_embeddings=embeddings)
    return np.array(logits[0, -1].astype(mx.float32)), tokens


if __name__ == "__main__":
    out, image_path, cases = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
    group = distributed.init()
    rank = distributed.rank(group)
    (out / f"started-{rank}").write_text(str(group.size() if group else 1))
    # only rank 0 needs the image: the others get its tokens
    image = Image.open(image_path) if rank == 0 else distributed.PLACEHOLDER
    for name, (source, options) in cases.items():
        logits, tokens = run(source, options, image, group)
        np.save(out / f"{name}-{rank}.npy", logits)
        (out / f"{name}-{rank}.json").write_text(json.dumps(tokens))
'''


def _launcher():
    here = Path(sys.executable).parent / "mlx.launch"
    return str(here) if here.exists() else shutil.which("mlx.launch")


def _free_port() -> int:
    """A port p with p and p + 1 free (the ring listens on one per rank)."""
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
    pytest.skip("no two free ports in a row for the ring backend")


def launch(args, tmp, env=None, timeout=TIMEOUT):
    """`mlx.launch -n 2 --backend ring` on localhost; skips when it is missing."""
    launcher = _launcher()
    if launcher is None:
        pytest.skip("mlx.launch not found (it comes with mlx)")
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if not k.startswith("MLX_")}
    cmd = [launcher, "-n", "2", "--backend", "ring", "--starting-port", str(_free_port()), "--", *args]
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"mlx.launch -n 2 did not finish in {timeout} s: {(e.stderr or b'')[-2000:]!r}")


def _skip_unless_started(out: Path, result):
    if not all((out / f"started-{r}").exists() for r in (0, 1)):
        pytest.skip(f"mlx.launch could not start 2 ranks here: {result.stderr.strip()[-400:]}")


def _variant(folder: Path, base: str, **overrides) -> Path:
    """A tiny released-layout checkpoint with a changed LLM config (new random LLM weights)."""
    source = GOLDENS / f"llm-{base}"
    folder.mkdir(parents=True)
    for f in source.iterdir():
        if f.name != "llm.safetensors":
            shutil.copy(f, folder / f.name)
    config = {**json.loads((source / "config.json").read_text()), **overrides}
    (folder / "config.json").write_text(json.dumps(config))
    vision = {k: v for k, v in load_weights(TINY).items() if not k.startswith(("model.embed", "model.norm", "lm_head"))}
    save_shards(folder, {**llm_weights(config, seed=5, scale=3.0), **vision})
    return folder


def _hub_cache(root: Path, repo: str, folder: Path) -> Path:
    """`folder` as huggingface_hub caches a download of `repo` (blobs, a snapshot, refs/main)."""
    cache = root / f"models--{repo.replace('/', '--')}"
    snapshot = cache / "snapshots" / ("0" * 40)
    (cache / "blobs").mkdir(parents=True)
    (cache / "refs").mkdir()
    (cache / "refs" / "main").write_text("0" * 40)
    snapshot.mkdir(parents=True)
    for f in folder.iterdir():
        if f.is_file():
            shutil.copy(f, cache / "blobs" / f"blob-{f.name}")
            (snapshot / f.name).symlink_to(Path("../../blobs") / f"blob-{f.name}")
    return snapshot


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    """name -> (what the ranks load, what the single process loads, load options)."""
    from mgm_mlx.convert.convert import convert

    root = tmp_path_factory.mktemp("distributed")
    out = {}
    for name, llm, hd in (("gemma", "gemma", False), ("llama", "llama", False), ("mixtral", "mixtral", False),
                          ("gemma-hd", "gemma", True)):
        folder = make_checkpoint(root / name, llm, hd=hd)[0]
        out[name] = (str(folder), str(folder), {})
    # quantized while loading, then split: experts in place as 4-bit
    out["mixtral-q4"] = (out["mixtral"][0], out["mixtral"][0], {"quantize_bits": 4, "group_size": 32})
    # 6 query heads over 3 KV heads: each rank needs KV heads 0,0,1 / 1,2,2 (kept, not split)
    uneven = _variant(root / "llama-kv3", "llama", num_attention_heads=6, num_key_value_heads=3, head_dim=16)
    out["llama-kv3"] = (str(uneven), str(uneven), {})
    converted = convert(out["llama"][0], root / "llama-4bit", quantize=True, q_bits=4, q_group_size=32)
    snapshot = _hub_cache(root / "hub", "someone/mgm-tiny-4bit", converted)
    out["llama-4bit-repo"] = ("someone/mgm-tiny-4bit", str(snapshot), {})
    return root, out


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("image") / "house.png"
    mode_variants()["rgb"].save(path)
    return path


@pytest.fixture(scope="module")
def driver(tmp_path_factory):
    path = tmp_path_factory.mktemp("driver") / "driver.py"
    path.write_text(DRIVER)
    spec = importlib.util.spec_from_file_location("distributed_driver", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return path, module


def test_kv_heads_each_rank_keeps():
    assert kv_heads_for(0, 1, 2) == [0] and kv_heads_for(1, 1, 2) == [0]  # MGM-2B: 8 heads, 1 KV head
    assert kv_heads_for(0, 4, 8) == [0] and kv_heads_for(1, 4, 8) == [0]
    assert kv_heads_for(0, 3, 2) == [0, 0, 1] and kv_heads_for(1, 3, 2) == [1, 2, 2]  # uneven: one per query head
    assert kv_heads_for(1, 8, 7) == [1, 1, 1, 1, 1, 1, 2, 2]  # Yi-34B (56/8) on 7 ranks
    assert kv_heads_for(2, 4, 2) == [4, 5]  # divides: plain sharding would give the same


def test_what_cannot_be_split_is_one_line():
    from mgm_mlx.distributed import check_shardable

    config = json.loads((GOLDENS / "llm-llama" / "config.json").read_text())
    check_shardable(config, 2)
    with pytest.raises(ValueError, match="4 attention heads do not divide by 3; it can be split across 2, 4 ranks"):
        check_shardable(config, 3)
    with pytest.raises(ValueError, match="quantization groups"):
        check_shardable(config, 4, {"group_size": 32, "bits": 4})


def test_two_ranks_match_one_process(cases, image_file, driver):
    root, sources = cases
    path, module = driver
    out = root / "results"
    out.mkdir()
    result = launch([sys.executable, str(path), str(out), str(image_file),
                     json.dumps({name: (ranks, options) for name, (ranks, _, options) in sources.items()})],
                    root, env={"HF_HUB_CACHE": str(root / "hub"), "HF_HUB_OFFLINE": "1"})
    _skip_unless_started(out, result)
    assert (out / "started-0").read_text() == "2"
    image = mode_variants()["rgb"]
    for name, (_, single, options) in sources.items():
        assert (out / f"{name}-0.json").exists() and (out / f"{name}-1.json").exists(), \
            f"{name}: no result ({result.stderr.strip()[-1500:]})"
        logits, tokens = module.run(single, options, image)
        for rank in (0, 1):
            got = np.load(out / f"{name}-{rank}.npy")
            err = float(np.max(np.abs(got - logits)))
            assert err <= TOL, f"{name} rank {rank}: first-step logits off by {err:.3g}"
            assert json.loads((out / f"{name}-{rank}.json").read_text()) == tokens, f"{name} rank {rank}: tokens differ"


def _cli(*extra):
    return ["-m", "mgm_mlx.generate", "--prompt", QUESTION, "-m", "8", *extra]


def test_cli_prints_on_rank_zero_only(cases, image_file, tmp_path):
    root, sources = cases
    args = _cli("--model", sources["gemma"][0], "--image", str(image_file))
    single = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=TIMEOUT)
    assert single.returncode == 0, single.stderr
    out = launch([sys.executable, *args], tmp_path)
    if "Generation:" not in out.stderr and not out.stdout:
        pytest.skip(f"mlx.launch could not start 2 ranks here: {out.stderr.strip()[-400:]}")
    assert out.stdout == single.stdout  # the answer once, the same answer
    for line in ("Image tokens: 576", "Prompt: 599 tokens", "Generation: 8 tokens", "Peak memory"):
        assert out.stderr.count(line) == 1, out.stderr
    assert "error" not in out.stderr.lower() and "exited with code" not in out.stderr, out.stderr


def _per_rank_cli(tmp_path, folders, *args):
    """Each rank runs the CLI on its own folder (folders[rank]) and notes how it exited."""
    code = ("import os, sys; from mgm_mlx.generate import main\n"
            "rank = os.environ['MLX_RANK']\n"
            "try:\n"
            f"    main(['--model', {[str(f) for f in folders]!r}[int(rank)], *{list(args)!r}])\n"
            "except SystemExit as e:\n"
            f"    open(os.path.join({str(tmp_path)!r}, 'exit-' + rank), 'w').write(str(e.code))\n"
            "    raise\n")
    out = launch([sys.executable, "-c", code], tmp_path)
    if not (tmp_path / "exit-0").exists() and not (tmp_path / "exit-1").exists():
        pytest.skip(f"mlx.launch could not start 2 ranks here: {out.stderr.strip()[-400:]}")
    errors = [line for line in out.stderr.splitlines() if line.startswith("error")]
    return out, errors


def test_ranks_that_disagree_stop_with_one_line(cases, tmp_path):
    root, sources = cases
    other = tmp_path / "llama-other"
    shutil.copytree(sources["llama"][0], other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rope_theta": 500000.0}))
    out, errors = _per_rank_cli(tmp_path, [sources["llama"][0], other], "--prompt", "Hi", "-m", "2")
    assert len(errors) == 1, out.stderr
    assert errors[0].startswith("error: the ranks disagree") and "rank 1" in errors[0] and "config.json" in errors[0]
    assert "weights" not in errors[0] and out.stdout == ""
    assert (tmp_path / "exit-0").read_text() == errors[0]
    assert (tmp_path / "exit-1").read_text() == "1"


def test_a_folder_missing_on_one_rank_is_named_and_bad_arguments_said_once(cases, tmp_path):
    root, sources = cases
    missing = tmp_path / "not-on-this-mac"
    out, errors = _per_rank_cli(tmp_path, [sources["gemma"][0], missing], "--prompt", "Hi", "-m", "2")
    # rank 0, waiting for rank 1, may say it lost it before mlx.launch stops it
    assert f"error (rank 1, {socket.gethostname()}): model folder not found: {missing}" in errors, out.stderr
    assert all(e.startswith("error (rank 1") or e.startswith("error: another rank stopped") for e in errors), errors
    assert "Traceback" not in out.stderr
    for f in tmp_path.glob("exit-*"):
        f.unlink()
    out, errors = _per_rank_cli(tmp_path, [sources["gemma"][0]] * 2, "--prompt", " ", "-m", "2")
    assert errors == ["error: the prompt is empty"], out.stderr
    assert (tmp_path / "exit-1").read_text() == "1"
