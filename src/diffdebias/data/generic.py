"""A dataset nobody has seen: a CSV of ``path,label`` (optional ``bias``, ``split``) and an image root.

Every problem is reported with the CSV row (1-based, header = row 1) and what is wrong with it.
"""

from __future__ import annotations

import csv
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from tqdm.auto import tqdm

from .base import ImageSet, Splits

SPLITS = ("train", "valid", "test")


class DatasetError(ValueError):
    """Bad dataset input; the message names the file and row."""


def _parse_labels(values: list[str], column: str, where: str, allow_empty: bool) -> tuple[list[int], list[str]]:
    """Integers stay integers; otherwise every value is a class name, indexed in sorted order."""
    present = [(i, v.strip()) for i, v in enumerate(values) if v.strip() != ""]
    for i, v in enumerate(values):
        if v.strip() == "" and not allow_empty:
            raise DatasetError(f"{where}, row {i + 2}: empty '{column}'")
    ints = [v.lstrip("-").isdigit() for _, v in present]
    if present and all(ints):
        out = [int(v) if v.strip() else -1 for v in values]
        for i, v in enumerate(out):
            if v < 0 and values[i].strip():
                raise DatasetError(f"{where}, row {i + 2}: {column} {v} is negative")
        return out, [str(k) for k in range(max(out) + 1)]
    if any(ints):
        first = next(i for (i, v), is_int in zip(present, ints) if not is_int)
        raise DatasetError(
            f"{where}, row {first + 2}: {column} '{values[first].strip()}' is not an integer, "
            f"while other rows use integer {column}s"
        )
    for i, v in present:
        try:
            float(v)
        except ValueError:
            continue
        raise DatasetError(f"{where}, row {i + 2}: {column} '{v}' is neither an integer nor a class name")
    names = sorted({v for _, v in present})
    index = {n: k for k, n in enumerate(names)}
    return [index[v.strip()] if v.strip() else -1 for v in values], names


def _load_image(path: Path, size: int | None, channels: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB" if channels == 3 else "L")
        if size is not None and im.size != (size, size):
            w, h = im.size
            s = size / min(w, h)  # resize the shorter side, then centre-crop
            im = im.resize((max(size, round(w * s)), max(size, round(h * s))), Image.BILINEAR)
            w, h = im.size
            left, top = (w - size) // 2, (h - size) // 2
            im = im.crop((left, top, left + size, top + size))
        arr = np.asarray(im, dtype=np.uint8)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_rows(csv_path: Path) -> list[dict[str, str]]:
    if not csv_path.exists():
        raise DatasetError(f"dataset CSV not found: {csv_path} (data.csv)")
    with open(csv_path, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in ("path", "label") if c not in columns]
        if missing:
            raise DatasetError(f"{csv_path}: missing required column(s) {', '.join(missing)} (found: {columns})")
        rows = [{k.strip(): (v or "") for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise DatasetError(f"{csv_path}: no rows")
    return rows


def load_csv_dataset(
    csv_path: str | Path,
    root: str | Path | None = None,
    image_size: int | None = None,
    channels: int = 3,
    valid_fraction: float = 0.1,
    test_fraction: float = 0.2,
    seed: int = 0,
    workers: int = 8,
) -> Splits:
    csv_path = Path(csv_path).expanduser()
    rows = read_rows(csv_path)
    where = str(csv_path)
    root = Path(root).expanduser() if root else csv_path.parent
    root_real = root.resolve()

    files = []
    for i, row in enumerate(rows):
        rel = row["path"].strip()
        if not rel:
            raise DatasetError(f"{where}, row {i + 2}: empty path")
        full = (root / rel).resolve()
        if full != root_real and root_real not in full.parents:
            raise DatasetError(f"{where}, row {i + 2}: path '{rel}' escapes the image root {root_real}")
        if not full.is_file():
            raise DatasetError(f"{where}, row {i + 2}: image file not found: {full}")
        files.append(full)

    labels, class_names = _parse_labels([r["label"] for r in rows], "label", where, allow_empty=False)
    has_bias = "bias" in rows[0]
    bias = _parse_labels([r["bias"] for r in rows], "bias", where, allow_empty=True)[0] if has_bias else None

    if "split" in rows[0]:
        split = []
        for i, r in enumerate(rows):
            s = r["split"].strip().lower()
            s = {"val": "valid", "validation": "valid"}.get(s, s)
            if s not in SPLITS:
                raise DatasetError(f"{where}, row {i + 2}: split '{r['split']}' is not one of train/valid/test")
            split.append(s)
    else:
        split = seeded_split(labels, valid_fraction, test_fraction, seed)

    def load(i: int) -> np.ndarray:
        try:
            return _load_image(files[i], image_size, channels)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise DatasetError(f"{where}, row {i + 2}: unreadable image {files[i]}: {e}") from e

    with ThreadPoolExecutor(max_workers=workers) as pool:
        arrays = list(tqdm(pool.map(load, range(len(rows))), total=len(rows), desc="images", leave=False))
    shapes = Counter(a.shape for a in arrays)
    if len(shapes) > 1:
        common = shapes.most_common(1)[0][0]
        odd = next(i for i, a in enumerate(arrays) if a.shape != common)
        raise DatasetError(
            f"{where}, row {odd + 2}: image size {arrays[odd].shape[1:]} differs from the other images' "
            f"{common[1:]}; set data.image_size to resize all images"
        )
    images = torch.from_numpy(np.stack(arrays))
    labels_t = torch.tensor(labels, dtype=torch.long)
    bias_t = torch.tensor(bias, dtype=torch.long) if bias is not None else None
    num_classes = len(class_names)
    split_arr = np.array(split)

    train_counts = np.bincount(labels_t[torch.from_numpy(split_arr == "train")].numpy(), minlength=num_classes)
    for c, n in enumerate(train_counts):
        if n == 0:
            raise DatasetError(f"{where}: class '{class_names[c]}' (label {c}) has no training sample")

    def part(name: str) -> ImageSet:
        idx = torch.from_numpy(np.nonzero(split_arr == name)[0])
        return ImageSet(
            images[idx],
            labels_t[idx],
            None if bias_t is None else bias_t[idx],
            [str(files[i].relative_to(root_real)) for i in idx.tolist()],
        )

    return Splits(
        train=part("train"),
        valid=part("valid"),
        test=part("test"),
        num_classes=num_classes,
        num_bias=int(bias_t.max()) + 1 if bias_t is not None and (bias_t >= 0).any() else 0,
        class_names=class_names,
        name=csv_path.stem,
    )


def seeded_split(labels: list[int], valid_fraction: float, test_fraction: float, seed: int) -> list[str]:
    """Per-class random split: ``test_fraction`` to test, then ``valid_fraction`` of the rest to valid."""
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    out = np.array(["train"] * len(labels), dtype=object)
    for c in np.unique(labels_arr):
        idx = rng.permutation(np.nonzero(labels_arr == c)[0])
        n_test = int(round(len(idx) * test_fraction))
        n_valid = int(round((len(idx) - n_test) * valid_fraction))
        out[idx[:n_test]] = "test"
        out[idx[n_test : n_test + n_valid]] = "valid"
    return out.tolist()
