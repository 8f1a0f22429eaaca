"""The default model: what `generate` and `chat` run when no --model is given.

The first run downloads YanweiLi/MGM-2B through huggingface_hub (into its own cache, with
its progress bars), converts it to 4 bits once into mgm-mlx's cache folder, and loads that;
every later run finds the converted folder and loads it directly.

The folder is `<cache>/models/YanweiLi--MGM-2B-4bit`, where <cache> is $MGM_MLX_HOME when
that is set, else the platform's user cache folder (macOS `~/Library/Caches/mgm-mlx`, Linux
`~/.cache/mgm-mlx`). Deleting the folder removes it (the next run converts again); the
download stays in the Hugging Face cache until `hf cache rm model/YanweiLi/MGM-2B`.
"""

import os
import sys
from pathlib import Path

DEFAULT_MODEL = "YanweiLi/MGM-2B"
DEFAULT_BITS = 4
# The released checkpoint (bf16, both vision towers inside) and the converted folder (4-bit
# LLM, fp16 image path), estimated from the parameter counts.
DOWNLOAD_SIZE = "about 7 GB"
CONVERTED_SIZE = {2: "about 1.8 GB", 3: "about 2.1 GB", 4: "about 2.5 GB", 5: "about 2.8 GB", 6: "about 3.1 GB",
                  8: "about 3.7 GB"}


def cache_dir() -> Path:
    """Where converted default models live: $MGM_MLX_HOME/models, else the user cache folder."""
    home = os.environ.get("MGM_MLX_HOME")
    if home:
        return Path(home).expanduser() / "models"
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("mgm-mlx", appauthor=False)) / "models"


def converted_folder(repo: str = DEFAULT_MODEL, bits: int = DEFAULT_BITS) -> Path:
    return cache_dir() / f"{repo.replace('/', '--')}-{bits}bit"


def is_ready(folder: Path) -> bool:
    """A finished conversion (convert swaps a folder in only once it is complete)."""
    from .safe_output import is_output

    return folder.is_dir() and is_output(folder) and (folder / "config.json").is_file()


def default_model(bits: int | None = None, progress: bool = False, file=None) -> Path:
    """The converted default model's folder; downloads and converts it on the first run.

    progress: convert's bar (huggingface_hub shows its own download bars). Notices go to
    `file` (stderr). Offline with nothing downloaded: FileNotFoundError with one line that
    says what to download and how."""
    bits = bits or DEFAULT_BITS
    file = file or sys.stderr
    folder = converted_folder(DEFAULT_MODEL, bits)
    if is_ready(folder):
        return folder
    from .convert.convert import _size, convert

    if in_hub_cache(DEFAULT_MODEL):
        fetch = "it is in the Hugging Face cache"
    else:  # ask the hub first: offline, this is the one line said
        fetch = f"downloading it into the Hugging Face cache ({download_size(DEFAULT_MODEL, bits)})"
    print(f"First run of the default model {DEFAULT_MODEL} (--model picks another):\n"
          f"  {fetch}, then\n"
          f"  converting it to {bits} bits once into {folder} ({CONVERTED_SIZE.get(bits, 'a few GB')}); "
          "later runs load it from there, and deleting that folder removes it", file=file, flush=True)
    source = download(DEFAULT_MODEL, bits)
    # force: a conversion another process finished meanwhile is replaced by an equal one
    convert(DEFAULT_MODEL, folder, quantize=True, q_bits=bits, force=True, progress=progress, source=source)
    size = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
    print(f"Converted {DEFAULT_MODEL} to {bits} bits: {folder} ({_size(size)})", file=file, flush=True)
    return folder


def in_hub_cache(repo: str) -> bool:
    """Whether huggingface_hub has a snapshot of the repo already (then nothing big is downloaded)."""
    from huggingface_hub import snapshot_download

    from .loading import ALLOW_PATTERNS

    try:
        return (Path(snapshot_download(repo, allow_patterns=ALLOW_PATTERNS, local_files_only=True))
                / "config.json").is_file()
    except Exception:
        return False


def download_size(repo: str, bits: int) -> str:
    """What a download of the repo's files takes, from the hub; one line when it cannot be asked."""
    from huggingface_hub import HfApi, constants
    from huggingface_hub.utils import filter_repo_objects

    from .convert.convert import _size
    from .loading import ALLOW_PATTERNS

    if constants.HF_HUB_OFFLINE:
        raise _not_downloaded(repo, bits, "HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE and")
    try:
        info = HfApi().model_info(repo, files_metadata=True, timeout=30)
    except Exception as e:
        raise _not_downloaded(repo, bits, *_why(e)) from None
    files = list(filter_repo_objects(info.siblings or [], allow_patterns=ALLOW_PATTERNS, key=lambda f: f.rfilename))
    total = sum(f.size or 0 for f in files)
    return _size(total) if total else DOWNLOAD_SIZE


def download(repo: str, bits: int) -> Path:
    """The repo's files through huggingface_hub (from its cache when there), else one line."""
    from huggingface_hub import snapshot_download

    from .loading import ALLOW_PATTERNS

    try:
        return Path(snapshot_download(repo, allow_patterns=ALLOW_PATTERNS))
    except Exception as e:  # the connection dropped, the disk is full, ...
        raise _not_downloaded(repo, bits, *_why(e)) from None


def _why(e: Exception) -> tuple:
    """(why the download failed, what to do first) for _not_downloaded."""
    from huggingface_hub.errors import LocalEntryNotFoundError

    chain, seen = [], e
    while seen is not None and len(chain) < 10:
        chain.append(seen)
        seen = seen.__cause__ or seen.__context__
    words = ("connect", "resolve", "name or service", "nodename", "timed out", "unreachable", "offline")
    if any(isinstance(x, (OSError, LocalEntryNotFoundError)) or type(x).__name__.endswith(("ConnectError", "Timeout"))
           or any(w in str(x).lower() for w in words) for x in chain):
        return "huggingface.co cannot be reached", "once online,"
    reason = " ".join(str(e).split()) or type(e).__name__
    return f"the download failed ({reason[:160]})", "then"


def _not_downloaded(repo: str, bits: int, why: str, fix: str) -> FileNotFoundError:
    return FileNotFoundError(
        f"the default model {repo} is not downloaded yet and {why}; {fix} run this command again (it downloads "
        f"{repo} once, {DOWNLOAD_SIZE}, and converts it to {bits} bits into {converted_folder(repo, bits)}), "
        "or pass --model with a model you have"
    )
