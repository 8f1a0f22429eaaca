"""Convert a released MGM checkpoint into a compact MLX folder (4-bit LLM by default with -q).

    python -m mgm_mlx.convert --hf-path YanweiLi/MGM-2B --mlx-path mgm-2b-4bit -q

The LLM is cast to --dtype and, with -q, quantized (embeddings and lm_head included); CLIP,
ConvNeXt, the mining modules and the projector stay in --vision-dtype (float16). The output
is written beside the target and swapped in at the end (mgm_mlx/safe_output.py), so nothing
half-done is ever left, and --force replaces only an empty folder or an earlier output.
"""

import argparse
import errno
import json
import shutil
import signal
import sys
from dataclasses import asdict
from pathlib import Path

import mlx.core as mx
from huggingface_hub import ModelCard, ModelCardData
from mlx.utils import tree_flatten

from mgm_mlx import safe_output
from mgm_mlx.language import family
from mgm_mlx.loading import evaluate, load, load_config, resolve
from mgm_mlx.prompt import TEMPLATES, TOKENIZER_FILES

DTYPES = ("float16", "bfloat16", "float32")
# Config keys that point at the original machine's folders.
DROP_KEYS = ("mm_vision_tower", "mm_vision_tower_aux", "_name_or_path", "quantization_config")


def convert(
    hf_path,
    mlx_path,
    quantize: bool = False,
    q_bits: int = 4,
    q_group_size: int = 64,
    dtype: str | None = None,
    vision_dtype: str = "float16",
    vision_tower=None,
    vision_tower_aux=None,
    template: str | None = None,
    force: bool = False,
) -> Path:
    given = Path(mlx_path).expanduser()
    local = [p for p in (hf_path, vision_tower, vision_tower_aux) if p and Path(p).expanduser().exists()]
    target = safe_output.check_target(given, local, force)  # before any download
    source = resolve(hf_path)
    sources = [source, *local]  # a repo id is now a folder in the Hugging Face cache
    safe_output.check_target(given, sources, force)
    dtype = dtype or _stored_dtype(load_config(source))
    model, processor = load(
        source,
        dtype=getattr(mx, dtype),
        vision_dtype=getattr(mx, vision_dtype),
        vision_tower=vision_tower,
        vision_tower_aux=vision_tower_aux,
        template=template,
        lazy=True,
    )
    config = {k: v for k, v in model.config.items() if k not in DROP_KEYS}
    if "quantization" in config:
        raise ValueError(f"{hf_path} is already quantized; convert from the original checkpoint")
    if quantize:
        config = model.quantize(q_group_size, q_bits, config=config)
    evaluate(model)  # refuses NaN / infinite weights by name before anything is written
    config.update(
        mm_vision_config=asdict(model.vision.vision_tower.config),
        mm_vision_aux_config=asdict(model.vision.vision_tower_aux.config),
        mgm_template=processor.template,
        torch_dtype=dtype,
    )

    safe_output.remove_stale_partials(target.parent)
    partial = safe_output.partial_folder(target)
    try:
        partial.mkdir(parents=True)
        safe_output.write_marker(partial)  # first: a killed convert's leftover is recognisably ours
        from mlx_lm.utils import save_model

        save_model(partial, model)
        (partial / "config.json").write_text(json.dumps(dict(sorted(config.items())), indent=2) + "\n")
        for name in TOKENIZER_FILES:
            if (source / name).exists():
                shutil.copy(source / name, partial / name)
        _model_card(hf_path, config, model).save(partial / "README.md")
        safe_output.check_target(given, sources, force)  # still so, after a long conversion
        safe_output.replace(partial, target)
    except BaseException as e:
        safe_output.discard(partial)
        reason = _write_failure(e)
        if reason:
            kept = f" ({given} keeps the earlier model)" if safe_output.is_output(target) else ""
            raise OSError(
                f"cannot write {given} ({reason}); the disk is full or the write failed, "
                f"so nothing was written{kept}"
            ) from None
        raise
    return given


def _write_failure(e: BaseException) -> str | None:
    """Why a write failed (a full disk, a file size limit, a quota), else None."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        return e.strerror
    if isinstance(e, RuntimeError) and str(e).startswith("[write]"):  # MLX's save_safetensors
        return str(e)
    return None


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.1f} MB"


def _stored_dtype(config: dict) -> str:
    stored = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return stored if stored in DTYPES else "bfloat16"


def _model_card(hf_path, config: dict, model) -> ModelCard:
    """The folder's README.md: huggingface_hub's card with mlx metadata, so an uploaded
    conversion shows up as an MLX model of its base."""
    q = config.get("quantization")
    size = _size(sum(v.nbytes for _, v in tree_flatten(model.parameters())))
    vision_dtype = str(tree_flatten(model.vision.parameters())[0][1].dtype).split(".")[-1]
    how = f"{q['bits']}-bit (group size {q['group_size']}) LLM" if q else f"{config['torch_dtype']} LLM"
    local = Path(str(hf_path)).exists()
    source = str(hf_path) if local else f"[{hf_path}](https://huggingface.co/{hf_path})"
    data = ModelCardData(library_name="mlx", base_model=None if local else str(hf_path),
                         tags=["mlx", "mgm-mlx", "mini-gemini", "vision-language"], pipeline_tag="image-text-to-text")
    text = (
        f"# {Path(str(hf_path)).name} for mgm-mlx\n\n"
        f"Mini-Gemini (MGM) from {source}, converted with mgm-mlx: {how}, "
        f"image path in {vision_dtype}, {size}.\n"
        f"LLM: {family(config)} ({config.get('model_type')}); "
        f"image tokens: {model.vision.num_tokens}; template: {config['mgm_template']}.\n\n"
        "```python\nimport mgm_mlx\n\nmodel, processor = mgm_mlx.load(\"path/to/this/folder\")\n```\n"
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def _terminate_as_interrupt() -> dict:
    """SIGTERM and SIGHUP raise KeyboardInterrupt, so they clean up as Ctrl-C does; returns
    the handlers to restore. An ignored signal stays ignored (nohup ignores SIGHUP)."""
    previous = {}
    for name in ("SIGTERM", "SIGHUP"):
        s = getattr(signal, name, None)
        if s is not None and signal.getsignal(s) is signal.SIG_DFL:
            try:
                previous[s] = signal.signal(s, signal.default_int_handler)
            except ValueError:  # main() called outside the main thread
                break
    return previous


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m mgm_mlx.convert", description="Convert an MGM checkpoint to MLX."
    )
    parser.add_argument("--hf-path", required=True, help="Hugging Face repo id or local folder")
    parser.add_argument("--mlx-path", default="mlx_model", help="output folder (default: mlx_model)")
    parser.add_argument("-q", "--quantize", action="store_true", help="quantize the LLM")
    parser.add_argument("--q-bits", type=int, default=4, choices=[4, 8], help="bits per weight (default 4)")
    parser.add_argument("--q-group-size", type=int, default=64, choices=[32, 64, 128])
    parser.add_argument("--dtype", choices=DTYPES, help="LLM dtype (default: the checkpoint's, bfloat16)")
    parser.add_argument("--vision-dtype", choices=DTYPES, default="float16", help="image path dtype")
    parser.add_argument("--vision-tower", help="CLIP folder or repo id, if the checkpoint lacks it")
    parser.add_argument("--vision-tower-aux", help="OpenCLIP ConvNeXt folder or repo id, if missing")
    parser.add_argument("--template", choices=TEMPLATES, help="conversation template (default: from the config)")
    parser.add_argument("--force", action="store_true", help="replace an earlier mgm-mlx output in --mlx-path")
    args = parser.parse_args(argv)
    target = Path(args.mlx_path).expanduser()
    previous = _terminate_as_interrupt()
    try:
        out = convert(
            args.hf_path, args.mlx_path, args.quantize, args.q_bits, args.q_group_size, args.dtype,
            args.vision_dtype, args.vision_tower, args.vision_tower_aux, args.template, args.force,
        )
    except safe_output.LateInterrupt:
        sys.exit(f"interrupted; the new model was already in place in {target}")
    except KeyboardInterrupt:  # before the swap: the target is as it was
        kept = f" ({target} keeps the earlier model)" if safe_output.is_output(target) else ""
        sys.exit(f"interrupted; nothing was written{kept}")
    except (FileNotFoundError, FileExistsError, ValueError, OSError) as e:
        sys.exit(f"error: {e}")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"saved {out} ({_size(size)})")


if __name__ == "__main__":
    main()
