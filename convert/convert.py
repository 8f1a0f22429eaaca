"""Convert a released MGM checkpoint into a compact MLX folder (4-bit LLM by default with -q).

    python -m mgm_mlx.convert --hf-path YanweiLi/MGM-2B --mlx-path mgm-2b-4bit -q
    python -m mgm_mlx.convert --hf-path YanweiLi/MGM-2B --mlx-path mgm-2b-mixed --quant-predicate mixed_3_6
    python -m mgm_mlx.convert --hf-path mgm-2b-4bit --mlx-path mgm-2b-f16 --dequantize

The LLM is cast to --dtype and, with -q, quantized (embeddings and lm_head included; any
bits MLX takes, its other formats with --q-mode, or one of mlx-lm's mixed-precision recipes);
CLIP, ConvNeXt, the mining modules and the projector stay in --vision-dtype (float16). The
output is written beside the target and swapped in at the end (mgm_mlx/safe_output.py), so
nothing half-done is ever left, and --force replaces only an empty folder or an earlier
output. --upload-repo publishes the finished folder on the Hugging Face hub.
"""

import errno
import json
import shutil
import signal
import sys
from dataclasses import asdict
from pathlib import Path

from mgm_mlx import __version__, cli, safe_output
from mgm_mlx.default_model import DEFAULT_MODEL
from mgm_mlx.language import family
from mgm_mlx.loading import evaluate, is_repo_id, load, load_config, resolve
from mgm_mlx.prompt import TEMPLATES, TOKENIZER_FILES

import mlx.core as mx
from huggingface_hub import ModelCard, ModelCardData
from mlx.utils import tree_flatten

DTYPES = ("float16", "bfloat16", "float32")
# Config keys that point at the original machine's folders.
DROP_KEYS = ("mm_vision_tower", "mm_vision_tower_aux", "_name_or_path", "quantization_config")
Q_BITS = cli.Q_BITS  # what MLX's affine quantization takes
Q_GROUP_SIZES = (16, 32, 64, 128)
# MLX's quantization formats and the (group size, bits) each takes; affine: any of Q_BITS in
# groups of 32, 64 or 128 (defaults as mlx-lm's quantize_model)
Q_MODES = {"affine": (64, 4), "mxfp4": (32, 4), "nvfp4": (16, 4), "mxfp8": (32, 8)}
# mlx-lm's mixed-precision recipes (its convert --quant-predicate): most layers at the low
# bits, v_proj and down_proj of the first, last and every third layer and lm_head at the high
RECIPES = {"mixed_2_6": (2, 6), "mixed_3_4": (3, 4), "mixed_3_6": (3, 6), "mixed_4_6": (4, 6)}


def q_modes() -> list:
    """The formats the installed MLX can quantize to (newer formats need a newer MLX)."""
    modes = []
    for mode, (group, bits) in Q_MODES.items():
        try:
            mx.eval(mx.quantize(mx.zeros((1, 128)), group_size=group, bits=bits, mode=mode))
            modes.append(mode)
        except (ValueError, TypeError, RuntimeError):
            pass
    return modes


def quantization(q_bits=None, q_group_size=None, q_mode="affine", recipe=None) -> tuple:
    """(group size, bits) for a mode, checked; the mode's own where not given."""
    q_mode = q_mode or "affine"
    if q_mode not in Q_MODES:
        raise ValueError(f"unknown quantization mode {q_mode!r}; choose from {', '.join(Q_MODES)}")
    group, bits = Q_MODES[q_mode]
    if q_mode == "affine":
        bits, group = q_bits or bits, q_group_size or group
        if bits not in Q_BITS:
            raise ValueError(f"MLX quantizes to {', '.join(map(str, Q_BITS))} bits (got {bits})")
        if group not in (32, 64, 128):
            raise ValueError(f"affine quantization takes groups of 32, 64 or 128 (got {group})")
    else:
        for name, given, takes in (("--q-bits", q_bits, bits), ("--q-group-size", q_group_size, group)):
            if given is not None and given != takes:
                raise ValueError(f"{q_mode} has {name} {takes} (got {given})")
        if recipe:
            raise ValueError("the mixed-precision recipes are affine; leave out --q-mode")
    if recipe and recipe not in RECIPES:
        raise ValueError(f"unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
    if recipe and q_bits is not None:
        raise ValueError(f"{recipe} sets the bits per layer; leave out --q-bits")
    return group, bits


def recipe_predicate(model, recipe: str, group_size: int):
    """mlx-lm's mixed-precision recipe for the LLM: it reads layer names as mlx-lm's models
    have them (model.layers.N.mlp.down_proj), so the "language_model." in front is taken off
    (Model.quantize keeps the image path out)."""
    from mlx_lm.convert import mixed_quant_predicate_builder

    choose = mixed_quant_predicate_builder(recipe, model.language_model, group_size)
    return lambda path, module: choose(path.removeprefix("language_model."), module)


def convert(
    hf_path,
    mlx_path,
    quantize: bool = False,
    q_bits: int | None = None,
    q_group_size: int | None = None,
    dtype: str | None = None,
    vision_dtype: str = "float16",
    vision_tower=None,
    vision_tower_aux=None,
    template: str | None = None,
    force: bool = False,
    q_mode: str = "affine",
    quant_predicate: str | None = None,
    dequantize: bool = False,
    upload_repo: str | None = None,
    progress: bool = False,
    source=None,
) -> Path:
    """hf_path (a repo id or a folder) -> an MLX folder at mlx_path; returns mlx_path.

    quantize: the LLM to q_bits in groups of q_group_size (None: the q_mode's own), in
    q_mode (affine, or mxfp4 / nvfp4 / mxfp8 where MLX has them), or per layer by an
    mlx-lm recipe (quant_predicate: mixed_2_6, mixed_3_4, mixed_3_6, mixed_4_6).
    dequantize: a quantized mgm-mlx folder back to float (--dtype). upload_repo: publish the
    result on the Hugging Face hub. progress: a bar with the output size so far. source: the
    folder hf_path was already downloaded to."""
    given = Path(mlx_path).expanduser()
    quantize = quantize or quant_predicate is not None or (q_mode or "affine") != "affine"  # as the flags imply
    if quantize and dequantize:
        raise ValueError("choose -q or --dequantize, not both")
    if quantize:
        q_group_size, q_bits = quantization(q_bits, q_group_size, q_mode, quant_predicate)
    if upload_repo is not None and not is_repo_id(upload_repo):
        raise ValueError(f"--upload-repo {upload_repo!r} is not a Hugging Face repo id (OWNER/NAME)")
    local = [p for p in (hf_path, vision_tower, vision_tower_aux) if p and Path(p).expanduser().exists()]
    target = safe_output.check_target(given, local, force)  # before any download
    source = Path(source) if source is not None else resolve(hf_path)
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
    if dequantize:
        if "quantization" not in config:
            raise ValueError(f"{hf_path} is not quantized; --dequantize takes a quantized mgm-mlx folder")
        from mlx_lm.utils import dequantize_model

        del config["quantization"]
        dequantize_model(model)
        target_dtype = getattr(mx, dtype)  # the fp formats dequantize to another float type
        model.language_model.apply(lambda x: x.astype(target_dtype) if mx.issubdtype(x.dtype, mx.floating) else x)
        model.config = config
    if "quantization" in config:
        raise ValueError(f"{hf_path} is already quantized; convert from the original checkpoint "
                         "(or pass --dequantize for a float copy)")
    if quantize:
        predicate = recipe_predicate(model, quant_predicate, q_group_size) if quant_predicate else None
        config = model.quantize(q_group_size, q_bits, q_mode, predicate, config=config)
    # refuses NaN / infinite weights by name before anything is written
    evaluate(model, "Converting" if progress else None, leave=True)
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
        _model_card(hf_path, config, model, upload_repo).save(partial / "README.md")
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
    if upload_repo is not None:
        upload(given, upload_repo)
    return given


def upload(folder: Path, repo: str):
    """Publish a converted folder as a model repo (created if needed; README.md is its card)."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo_id=repo, repo_type="model", exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo, repo_type="model",
                          ignore_patterns=[safe_output.MARKER],  # a local marker for --force
                          commit_message=f"{Path(folder).name}, converted with mgm-mlx {__version__}")
    except Exception as e:  # no token, no network, no write access, ...
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise OSError(f"{folder} was written, but uploading it to {repo} failed ({reason}); "
                      f"after `hf auth login`, run `hf upload {repo} {folder}`") from None


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


def _model_card(hf_path, config: dict, model, upload_repo: str | None = None) -> ModelCard:
    """The folder's README.md: huggingface_hub's card with mlx metadata, so an uploaded
    conversion shows up as an MLX model of its base."""
    q = config.get("quantization")
    size = _size(sum(v.nbytes for _, v in tree_flatten(model.parameters())))
    vision_dtype = str(tree_flatten(model.vision.parameters())[0][1].dtype).split(".")[-1]
    how = f"{config['torch_dtype']} LLM"
    if q:
        mode = "" if q.get("mode", "affine") == "affine" else f" {q['mode']}"
        mixed = " mixed-precision (per layer)" if any(isinstance(v, dict) for v in q.values()) else ""
        how = f"{q['bits']}-bit{mode}{mixed} (group size {q['group_size']}) LLM"
    where = upload_repo or "path/to/this/folder"
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
        "With mgm-mlx:\n\n```bash\n"
        f"python -m mgm_mlx generate --model {where} --image photo.jpg --prompt \"What is in the picture?\"\n```\n\n"
        f"```python\nimport mgm_mlx\n\nmodel, processor = mgm_mlx.load(\"{where}\")\n```\n"
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
    parser = cli.Parser(prog=cli.prog("mgm_mlx.convert"), description="Convert an MGM checkpoint to MLX.",
                        formatter_class=cli.HelpFormatter)
    parser.add_argument("--hf-path", "--model", default=DEFAULT_MODEL, help="Hugging Face repo id or local folder")
    parser.add_argument("--mlx-path", default="mlx_model", help="output folder")
    quant = parser.add_argument_group("quantization (-q is implied by any option here)")
    quant.add_argument("-q", "--quantize", action="store_true", help="quantize the LLM (4 bits, groups of 64)")
    quant.add_argument("--q-bits", type=int, choices=Q_BITS, help="bits per weight (default: 4, or the --q-mode's)")
    quant.add_argument("--q-group-size", type=int, choices=Q_GROUP_SIZES,
                       help="weights per scale (default: 64, or the --q-mode's)")
    quant.add_argument("--q-mode", choices=q_modes(),
                       help="format: affine (default; scale and bias per group) or a microscaling float format "
                            "(mxfp4: 4 bits in groups of 32, nvfp4: 4 bits in groups of 16, mxfp8: 8 bits in groups of 32)")
    quant.add_argument("--quant-predicate", choices=list(RECIPES),
                       help="mixed precision as mlx-lm's recipes: mixed_L_H puts most layers at L bits and v_proj, "
                            "down_proj of the first, last and every third layer and lm_head at H bits")
    parser.add_argument("-d", "--dequantize", action="store_true",
                        help="turn a quantized mgm-mlx folder back into float (--dtype)")
    parser.add_argument("--dtype", choices=DTYPES, help="LLM dtype (default: the checkpoint's, bfloat16)")
    parser.add_argument("--vision-dtype", choices=DTYPES, default="float16", help="image path dtype")
    parser.add_argument("--vision-tower", help="CLIP folder or repo id, if the checkpoint lacks it")
    parser.add_argument("--vision-tower-aux", help="OpenCLIP ConvNeXt folder or repo id, if missing")
    parser.add_argument("--template", choices=TEMPLATES, help="conversation template (default: from the config)")
    parser.add_argument("--force", action="store_true", help="replace an earlier mgm-mlx output in --mlx-path")
    parser.add_argument("--upload-repo", metavar="OWNER/NAME",
                        help="then upload the folder to this Hugging Face model repo (after `hf auth login`)")
    args = parser.parse_args(argv)
    quantize = args.quantize or any(v is not None for v in (args.q_bits, args.q_group_size, args.q_mode,
                                                           args.quant_predicate))
    target = Path(args.mlx_path).expanduser()
    previous = _terminate_as_interrupt()
    try:
        out = convert(
            args.hf_path, args.mlx_path, quantize, args.q_bits, args.q_group_size, args.dtype,
            args.vision_dtype, args.vision_tower, args.vision_tower_aux, args.template, args.force,
            q_mode=args.q_mode or "affine", quant_predicate=args.quant_predicate, dequantize=args.dequantize,
            upload_repo=args.upload_repo, progress=sys.stderr.isatty(),
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
    if args.upload_repo:
        print(f"uploaded to https://huggingface.co/{args.upload_repo}")


if __name__ == "__main__":
    main()
