"""Benchmark data: parquet files of a Hugging Face dataset repo, read from the hub cache.

The first run downloads the split's files into the Hugging Face cache (huggingface_hub's
progress bars); later runs read them from there without asking the hub. Rows are read with
pyarrow, one column set for all rows; images (datasets' Image feature, a struct of
{bytes, path}) are decoded one at a time when a question is asked, so a 1 GB split never
sits decoded in memory.
"""

import io
import re
import sys
from pathlib import Path

from mgm_mlx.image import MAX_PIXELS, ImageError

from PIL import Image, UnidentifiedImageError

SHARD = re.compile(r"-(\d{5})-of-(\d{5})")
OFFLINE_HELP = "it is not in the Hugging Face cache and the hub can't be reached; run once online"


class DataError(FileNotFoundError):
    """The dataset is missing, incomplete or not in the expected layout (one line)."""


def locate(repo: str, pattern: str) -> tuple[list, str]:
    """The parquet files of `repo` (a dataset repo) that match `pattern`, and the snapshot's
    revision. Uses the cache when it holds every shard; downloads otherwise."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import LocalEntryNotFoundError, OfflineModeIsEnabled

    try:
        folder = Path(snapshot_download(repo, repo_type="dataset", allow_patterns=[pattern], local_files_only=True))
        files = _complete(folder, pattern)
    except Exception:
        files = None
    if files is None:
        print(f"Downloading {repo} ({pattern}) into the Hugging Face cache...", file=sys.stderr, flush=True)
        try:
            folder = Path(snapshot_download(repo, repo_type="dataset", allow_patterns=[pattern]))
        except (LocalEntryNotFoundError, OfflineModeIsEnabled):  # offline (HF_HUB_OFFLINE=1) or no connection, not cached
            raise DataError(f"{repo}: {OFFLINE_HELP}") from None
        except Exception as e:  # unknown or gated repo, HTTP error
            reason = (str(e).splitlines() or [type(e).__name__])[0][:160]
            raise DataError(f"cannot download {repo} ({reason})") from None
        files = _complete(folder, pattern)
        if files is None:
            raise DataError(f"{repo}: the Hugging Face cache holds only part of {pattern} (in {folder}) and the "
                            "rest could not be downloaded; run once online")
    return files, folder.name


def _complete(folder: Path, pattern: str):
    """The matching files when all shards -0000k-of-0000n are there, else None."""
    files = sorted(p for p in folder.glob(pattern) if p.is_file())
    if not files:
        return None
    shards = {}
    for f in files:
        m = SHARD.search(f.name)
        if m:
            shards.setdefault(int(m.group(2)), set()).add(int(m.group(1)))
    if any(found != set(range(n)) for n, found in shards.items()):
        return None
    return files


class Table:
    """The rows of some parquet files; images fetched by (file, row) on demand."""

    def __init__(self, files):
        import pyarrow.parquet as pq

        self.names = [Path(f).name for f in files]
        try:
            self.files = [pq.ParquetFile(str(f)) for f in files]
        except Exception as e:  # truncated download, not parquet
            raise DataError(f"cannot read {Path(str(files[0])).parent}: {str(e).splitlines()[0][:160]}") from None
        self.columns = set(self.files[0].schema_arrow.names)
        self._cached = (None, None)  # (file, row group) -> image column of that row group

    def rows(self, columns) -> list:
        """Every row as a dict of `columns` (those present), plus '_ref' = (file, row)."""
        missing = [c for c in columns if c.endswith("!") and c[:-1] not in self.columns]
        if missing:
            raise DataError(f"the dataset has no column {missing[0][:-1]!r} (it has: {', '.join(sorted(self.columns))})")
        names = [c.rstrip("!") for c in columns if c.rstrip("!") in self.columns]
        out = []
        for fi, f in enumerate(self.files):
            for ri, row in enumerate(f.read(columns=names).to_pylist()):
                row["_ref"] = (fi, ri)
                out.append(row)
        return out

    def image(self, ref, column: str = "image") -> Image.Image:
        fi, ri = ref
        f = self.files[fi]
        start = 0
        for g in range(f.num_row_groups):
            n = f.metadata.row_group(g).num_rows
            if ri < start + n:
                break
            start += n
        if self._cached[0] != (fi, g, column):
            self._cached = ((fi, g, column), f.read_row_group(g, columns=[column]).column(0).to_pylist())
        return decode_image(self._cached[1][ri - start], f"{self.names[fi]} row {ri}")


def decode_image(value, where: str = "image") -> Image.Image:
    """datasets' Image feature ({'bytes': ..., 'path': ...}) or raw bytes -> a loaded PIL image."""
    data = value.get("bytes") if isinstance(value, dict) else value
    if not data:
        raise ImageError(f"{where} has no image bytes")
    try:
        image = Image.open(io.BytesIO(data))
        w, h = image.size
        if w * h > MAX_PIXELS:  # as image.load_image: a large JPEG is decoded at 1/2 to 1/8 scale
            scale = next((s for s in (2, 4, 8) if -(-w // s) * -(-h // s) <= MAX_PIXELS), None)
            if image.format != "JPEG" or scale is None:
                raise ImageError(f"{where} is {w}x{h} pixels, more than mgm-mlx reads")
            image.draft(image.mode, (-(-w // scale), -(-h // scale)))
        image.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{where} is not a readable image ({str(e)[:80]})") from None
    return image
