"""Find a dataset in the Kaggle layout and list every usable image in it.

A dataset is a folder holding one folder per class (``Cyst``, ``Normal``, ``Stone``, ``Tumor``,
matched case-insensitively), as in the Kaggle download ``CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone/``.
The user may point at that folder or at any folder above it.

Every candidate image is read once: its bytes give the MD5 and its pixels (decoded at reduced
scale where the format allows) prove that it decodes and give the perceptual hash the audit
clusters on. A file that cannot be used is skipped with its reason and never reaches training.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import Callable

import imagehash
import pandas as pd
from PIL import Image

from kidney_lab.data import classes
from kidney_lab.data import scan as scan_module
from kidney_lab import errors
from kidney_lab import fileio

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"})

# A perceptual hash of HASH_SIZE x HASH_SIZE bits (256) is computed from a small copy of the
# image; decoding JPEGs at 1/8 scale (Pillow's draft mode) is enough for that and much faster.
HASH_SIZE = 16
_DRAFT_SIZE = (HASH_SIZE * 4, HASH_SIZE * 4)

# How deep below the given folder the class folders are looked for.
_MAX_SEARCH_DEPTH = 4

# The formats and Pillow modes that TensorFlow's decoders read as Pillow does (8-bit grey,
# colour or palette); the training pipeline sends every other file through the scan reader.
_TENSORFLOW_FORMATS = frozenset({"JPEG", "PNG", "BMP", "GIF"})
_TENSORFLOW_MODES = frozenset({"L", "RGB", "RGBA", "LA", "P", "1"})

TABLE_COLUMNS = ("path", "label", "width", "height", "mode", "format", "bytes", "md5", "phash")
_CACHED_COLUMNS = TABLE_COLUMNS[2:]
# Bump when what is read from a file changes (the hash, the checks), so old caches are not used.
_CACHE_VERSION = "1"


@dataclasses.dataclass(frozen=True)
class DatasetScan:
    """The result of scanning a dataset folder.

    Attributes:
        root: The folder that holds the class folders (absolute).
        table: One row per usable image: path (absolute), label, width, height (pixels), mode
            (Pillow's), format, bytes (file size), md5 (hex), phash (hex, 256 bits), sorted by
            label then path.
        skipped: One row per image file that cannot be used: path, label, reason.
        ignored: Files that are not images by extension (``kidneyData.csv``, ``.DS_Store``, ...).
        class_folders: The folder found for each class.
    """

    root: Path
    table: pd.DataFrame
    skipped: pd.DataFrame
    ignored: tuple[str, ...]
    class_folders: dict[str, Path]

    @functools.cached_property
    def fingerprint(self) -> str:
        """A short hash of the dataset's content: relative paths, labels and MD5s."""
        lines = [
            f"{Path(path).relative_to(self.root).as_posix()}\t{label}\t{md5}"
            for path, label, md5 in zip(self.table["path"], self.table["label"], self.table["md5"])
        ]
        return fileio.short_hash(*sorted(lines))

    @property
    def per_class(self) -> dict[str, int]:
        """Usable images per class, in class order (zero for an empty class)."""
        counts = self.table["label"].value_counts()
        return {name: int(counts.get(name, 0)) for name in classes.CLASS_NAMES}

    def summary(self) -> dict[str, object]:
        """A JSON-serialisable summary: counts per class, sizes seen, skipped and ignored files."""
        sizes = (
            self.table.groupby(["width", "height"]).size().sort_values(ascending=False)
            if len(self.table)
            else pd.Series(dtype=int)
        )
        return {
            "root": str(self.root),
            "fingerprint": self.fingerprint,
            "images": int(len(self.table)),
            "per_class": self.per_class,
            "sizes": [
                {"width": int(width), "height": int(height), "images": int(count)}
                for (width, height), count in sizes.items()
            ],
            "modes": {str(k): int(v) for k, v in self.table["mode"].value_counts().items()},
            "bytes": int(self.table["bytes"].sum()),
            "skipped": self.skipped[["path", "reason"]].to_dict(orient="records"),
            "ignored_files": len(self.ignored),
        }


def find_root(folder: str | os.PathLike[str]) -> tuple[Path, dict[str, Path]]:
    """Find the folder that holds the class folders, at ``folder`` or below it.

    Returns:
        The dataset root and the folder of each class found in it.

    Raises:
        DatasetError: ``folder`` does not exist, is not a folder, holds no class folders,
            holds several candidate datasets at the same depth, or lacks a class.
    """
    start = Path(folder).expanduser()
    if not start.exists():
        raise errors.DatasetError(f"Dataset folder {start} does not exist; check the path.")
    if not start.is_dir():
        raise errors.DatasetError(
            f"{start} is a file, not a folder; give the folder that holds the class folders "
            f"({', '.join(classes.CLASS_NAMES)})."
        )
    start = start.resolve()
    level = [start]
    for _ in range(_MAX_SEARCH_DEPTH + 1):
        found = [(candidate, _class_folders(candidate)) for candidate in level]
        found = [(candidate, folders) for candidate, folders in found if folders]
        if len(found) > 1:
            # A folder named like the Kaggle download wins over siblings such as masks/.
            kaggle = [item for item in found if item[0].name.lower() == classes.KAGGLE_FOLDER_NAME.lower()]
            found = kaggle if len(kaggle) == 1 else found
        if len(found) > 1:
            listing = "; ".join(str(candidate) for candidate, _ in found)
            raise errors.DatasetError(
                f"Found several datasets under {start} ({listing}); point at one of them."
            )
        if found:
            root, folders = found[0]
            missing = [name for name in classes.CLASS_NAMES if name not in folders]
            if missing:
                raise errors.DatasetError(
                    f"{root} has class folders {', '.join(sorted(folders))} but no "
                    f"{', '.join(missing)} folder; the dataset needs one folder per class "
                    f"({', '.join(classes.CLASS_NAMES)})."
                )
            return root, folders
        level = [child for parent in level for child in _subfolders(parent)]
        if not level:
            break
    raise errors.DatasetError(
        f"No class folders ({', '.join(classes.CLASS_NAMES)}) found in {start} or the "
        f"{_MAX_SEARCH_DEPTH} levels below it; point at the folder of the Kaggle download "
        "(CT-KIDNEY-DATASET-Normal-Cyst-Tumor-Stone) or one above it."
    )


def scan_dataset(
    folder: str | os.PathLike[str],
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cache: str | os.PathLike[str] | None = None,
) -> DatasetScan:
    """Find the dataset under ``folder`` and read every image in it once.

    Args:
        folder: The dataset folder or any folder above it.
        workers: Threads that read images (default: the number of CPUs).
        progress: Called as ``progress(done, total)`` while images are read.
        cache: A folder for a per-dataset cache of what each file held. A file whose size and
            modification time are unchanged since the cache was written is not read again. The
            cache only saves time: an unreadable or unwritable cache is ignored.

    Returns:
        A :class:`DatasetScan`. Unusable images are listed in ``skipped`` with their reason.

    Raises:
        DatasetError: The folder or a class folder is missing, or a class has no usable image.
    """
    root, class_folders = find_root(folder)
    candidates: list[tuple[Path, str]] = []
    ignored: list[str] = []
    for label in classes.CLASS_NAMES:
        for path in _walk_files(class_folders[label]):
            if path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith("."):
                candidates.append((path, label))
            else:
                ignored.append(str(path))
    for path in _walk_files(root, recursive=False):
        ignored.append(str(path))

    cache_file = Path(cache) / f"scan-v{_CACHE_VERSION}-{fileio.short_hash(str(root))}.csv" if cache else None
    known = _read_cache(cache_file) if cache_file else {}
    entries: list[_CacheEntry] = []
    rows: list[dict[str, object]] = []
    skipped: list[dict[str, object]] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        results = pool.map(lambda item: _inspect_with_cache(item[0], known), candidates)
        for done, ((path, label), entry) in enumerate(zip(candidates, results), start=1):
            entries.append(entry)
            if entry.row is None:
                skipped.append({"path": str(path), "label": label, "reason": entry.reason})
            else:
                rows.append({"path": str(path), "label": label, **entry.row})
            if progress is not None:
                progress(done, len(candidates))
    if cache_file and any(known.get(entry.path) != entry for entry in entries):
        _write_cache(cache_file, entries)

    table = pd.DataFrame(rows, columns=list(TABLE_COLUMNS))
    table = table.sort_values(["label", "path"], key=_natural_keys, ignore_index=True)
    scan = DatasetScan(
        root=root,
        table=table,
        skipped=pd.DataFrame(skipped, columns=["path", "label", "reason"]),
        ignored=tuple(sorted(ignored)),
        class_folders=class_folders,
    )
    empty = [name for name, count in scan.per_class.items() if count == 0]
    if empty:
        raise errors.DatasetError(
            f"No usable images for class {', '.join(empty)} in {root}; each class folder "
            f"needs at least one readable image ({', '.join(sorted(IMAGE_EXTENSIONS))})."
        )
    return scan


@dataclasses.dataclass(frozen=True)
class _CacheEntry:
    """What one file held when it had this size and modification time."""

    path: str
    size: int
    mtime_ns: int
    row: dict[str, object] | None
    reason: str | None


def _inspect_with_cache(path: Path, known: dict[str, _CacheEntry]) -> _CacheEntry:
    """Reuse the cached result for ``path`` if the file is unchanged, else read it."""
    try:
        status = path.stat()
        size, mtime_ns = status.st_size, status.st_mtime_ns
    except OSError:
        size, mtime_ns = -1, -1
    cached = known.get(str(path))
    if cached is not None and size >= 0 and (cached.size, cached.mtime_ns) == (size, mtime_ns):
        return cached
    row, reason = inspect_image(path)
    return _CacheEntry(str(path), size, mtime_ns, row, reason)


def _read_cache(file: Path) -> dict[str, _CacheEntry]:
    """Load a scan cache; a missing or damaged one is an empty cache."""
    try:
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
        entries = {}
        for record in frame.to_dict("records"):
            row = None
            if not record["reason"]:
                row = {column: record[column] for column in _CACHED_COLUMNS}
                for column in ("width", "height", "bytes"):
                    row[column] = int(row[column])
            entries[record["path"]] = _CacheEntry(
                record["path"], int(record["size"]), int(record["mtime_ns"]), row, record["reason"] or None
            )
        return entries
    except (OSError, ValueError, KeyError, pd.errors.ParserError):
        return {}


def _write_cache(file: Path, entries: list[_CacheEntry]) -> None:
    """Store a scan cache atomically; failing to is not an error (it only costs time later)."""
    frame = pd.DataFrame(
        [
            {"path": entry.path, "size": entry.size, "mtime_ns": entry.mtime_ns,
             **(entry.row or dict.fromkeys(_CACHED_COLUMNS, "")), "reason": entry.reason or ""}
            for entry in entries
            if entry.size >= 0
        ],
        columns=["path", "size", "mtime_ns", *_CACHED_COLUMNS, "reason"],
    )
    try:
        with fileio.atomic_path(file) as temporary:
            frame.to_csv(temporary, index=False)
    except OSError:
        pass


def inspect_image(path: Path) -> tuple[dict[str, object] | None, str | None]:
    """Read one image file: its size, mode, MD5 and perceptual hash, or why it is unusable.

    Returns:
        ``(row, None)`` for a usable image or ``(None, reason)`` for one that is not.
    """
    try:
        data = path.read_bytes()
    except OSError as error:
        return None, f"cannot be read: {error.strerror or error}"
    if not data:
        return None, "empty file (0 bytes)"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            mode, image_format = image.mode, image.format
            if width < scan_module.MIN_SIDE or height < scan_module.MIN_SIDE:
                return None, f"too small ({width}x{height} pixels; at least {scan_module.MIN_SIDE}x{scan_module.MIN_SIDE})"
            if width * height > scan_module.MAX_PIXELS:
                return None, f"too large ({width}x{height} pixels; at most {scan_module.MAX_PIXELS:,} pixels)"
            if decodable_by_tensorflow(image_format, mode):
                image.draft("L", _DRAFT_SIZE)
                image.load()
                gray = image.convert("L")
            else:
                # Training reads such files (TIFF, 16-bit, CMYK) through the scan reader, so the
                # scan reader decides here whether they are usable and gives their pixels.
                gray = Image.fromarray(scan_module.read_scan(data, name=path.name).to_uint8()).convert("L")
            phash = imagehash.phash(gray, hash_size=HASH_SIZE)
    except errors.ScanReadError as error:
        return None, str(error)
    except (Image.UnidentifiedImageError, Image.DecompressionBombError):
        return None, f"not an image Pillow can read ({_describe_content(data)})"
    except Image.DecompressionBombWarning:
        return None, f"too large (more than {scan_module.MAX_PIXELS:,} pixels)"
    except (OSError, ValueError, SyntaxError, EOFError) as error:
        return None, f"corrupt or truncated image ({error})"
    return {
        "width": width,
        "height": height,
        "mode": mode,
        "format": image_format,
        "bytes": len(data),
        "md5": hashlib.md5(data).hexdigest(),
        "phash": str(phash),
    }, None


def decodable_by_tensorflow(image_format: str | None, mode: str | None) -> bool:
    """Whether TensorFlow decodes a file of this Pillow format and mode (8-bit JPEG, PNG, BMP,
    GIF); other files are read with :func:`kidney_lab.data.scan.read_scan`."""
    return image_format in _TENSORFLOW_FORMATS and mode in _TENSORFLOW_MODES


def _natural_keys(column: pd.Series) -> pd.Series:
    """Sort keys that order ``Cyst- (2)`` before ``Cyst- (10)``."""
    return column.map(
        lambda text: tuple(
            (0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", text)
        )
    )


_CONTENT_NAMES = {
    "dicom": "it is a DICOM file; convert it to PNG for a dataset",
    "zip": "it is a ZIP archive",
    "pdf": "it is a PDF document",
    "gzip": "it is a gzip-compressed file",
    "text": "it is a text or HTML file",
}


def _describe_content(data: bytes) -> str:
    """Say what a file that is not an image seems to be, from its first bytes."""
    return _CONTENT_NAMES.get(scan_module.sniff_content(data) or "", "unknown format")


def _class_folders(folder: Path) -> dict[str, Path]:
    """Map each class to its sub-folder of ``folder``, matched case-insensitively."""
    folders: dict[str, Path] = {}
    for child in _subfolders(folder):
        label = classes.match_class(child.name)
        if label is not None:
            if label in folders:
                raise errors.DatasetError(
                    f"{folder} has two folders for class {label} ({folders[label].name} and "
                    f"{child.name}); keep one."
                )
            folders[label] = child
    return folders


def _subfolders(folder: Path) -> list[Path]:
    """Visible sub-folders of ``folder``, sorted, not following symbolic links."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:
        return []
    return [
        entry
        for entry in entries
        if not entry.name.startswith(".") and entry.is_dir() and not entry.is_symlink()
    ]


def _walk_files(folder: Path, recursive: bool = True) -> list[Path]:
    """Files under ``folder`` (sorted), never following directory links, so loops cannot hang."""
    files: list[Path] = []
    for directory, subdirectories, names in os.walk(folder, followlinks=False):
        subdirectories[:] = sorted(name for name in subdirectories if not name.startswith("."))
        files.extend(Path(directory) / name for name in sorted(names))
        if not recursive:
            break
    return files
