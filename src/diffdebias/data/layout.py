"""What the loaders of published benchmarks in their public on-disk layouts share (Waterbirds, CelebA, BFFHQ, BAR,
Dogs & Cats): the expected tree every missing or malformed file prints, ``data.root`` and ``data.image_size`` checks,
the ``{ratio}pct`` folders, ``<id>_<label>_<bias>.<ext>`` file names, the cache identity, and turning the listed files
into :class:`Splits` or straight into the dataset cache file (with :func:`~.generic.load_images`: the CSV loader's
resize + centre crop, on threads).

Nothing downloads: the user puts the files under ``data.root``.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..config import DataConfig
from ..runs import file_sha256
from .base import DatasetError, ImageSet, Splits
from .generic import check_image_size, files_identity, load_images, resolve_files, seeded_split
from .store import placeholder_images, release, write_splits
from .validate import SPLITS

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SPLIT_CODES = {"0": "train", "1": "valid", "2": "test"}  # Waterbirds' and CelebA's split / partition column
CHUNK_BYTES = 32 << 20  # images decoded into the cache file between two write-backs (Layout.write)


@dataclass(frozen=True)
class Item:
    """One image of a split: its file, its label, and its bias label (None where the dataset has none)."""

    path: Path
    label: int
    bias: int | None = None


@dataclass(frozen=True)
class Scan:
    """What a dataset's scan found: the root, the images of each split, the metadata files (their content is part of
    the cache key) and the split parameters that chose the images (also part of it)."""

    root: Path
    parts: dict[str, list[Item]]
    metadata: list[Path] = field(default_factory=list)
    params: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Layout:
    """A dataset's name (``data.name``) and the tree expected under ``data.root``: one entry a line, indented two
    spaces a level, with a comment after two spaces or more."""

    name: str
    tree: str

    def error(self, root: str | Path, problem: str) -> DatasetError:
        lines = [f"  {root}/   (data.root)"] + [f"    {line}" for line in self.tree.strip("\n").splitlines()]
        return DatasetError(f"{self.name}: {problem}\nput the files here:\n" + "\n".join(lines))

    def root(self, cfg: DataConfig) -> Path:
        if not cfg.root:
            raise self.error("<data.root>", f"data.root is not set: point it at the {self.name} folder")
        root = Path(cfg.root).expanduser()
        if not root.is_dir():
            what = "is not a folder" if root.exists() else "does not exist"
            raise self.error(root, f"data.root {root} {what}")
        return root.resolve()

    def image_size(self, cfg: DataConfig) -> int:
        """``data.image_size``, required: the images of these datasets differ in size (the papers use 224)."""
        if cfg.image_size is None:
            raise DatasetError(f"{self.name}: set data.image_size (the papers use 224): its images are resized "
                               f"(shorter side) and centre-cropped to that square side")
        check_image_size(cfg.image_size, self.name)
        return cfg.image_size

    def file(self, root: Path, rel: str, what: str) -> Path:
        path = root / rel
        if not path.is_file():
            raise self.error(root, f"{what} not found: {path}")
        return path

    def folder(self, root: Path, rel: str | Path, what: str = "folder") -> Path:
        path = root / rel
        if not path.is_dir():
            raise self.error(root, f"{what} not found: {path}/")
        return path

    def images_in(self, root: Path, rel: str | Path) -> list[Path]:
        """The image files directly in ``root/rel``, sorted by name; hidden files are skipped, anything else (a
        folder, another kind of file) is an error naming it."""
        folder = self.folder(root, rel)
        files = []
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_dir():
                raise self.error(root, f"unexpected folder {path}/: the images of {rel}/ lie directly in it")
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise self.error(root, f"{path} is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
            files.append(path)
        return files

    def resolve(self, root: Path, folder: Path, names: list[str], where: str) -> list[Path]:
        """Each listed file under ``folder`` (:func:`~.generic.resolve_files`: it exists and lies under it); a
        missing one is an error naming its row of ``where``."""
        try:
            return resolve_files([{"path": n} for n in names], folder, where)
        except DatasetError as e:
            raise self.error(root, str(e)) from None

    def name_labels(self, root: Path, path: Path, num_classes: int, num_bias: int) -> tuple[int, int]:
        """Label and bias from a file name ``<id>_<label>_<bias>.<ext>`` (the last two ``_`` fields, as the released
        loaders read them)."""
        parts = path.stem.rsplit("_", 2)
        ok = len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit()
        if not ok or int(parts[1]) >= num_classes or int(parts[2]) >= num_bias:
            raise self.error(root, f"file {path.relative_to(root)}: its name is not <id>_<label>_<bias>{path.suffix} "
                             f"with a label in 0..{num_classes - 1} and a bias in 0..{num_bias - 1}")
        return int(parts[1]), int(parts[2])

    def named(self, root: Path, rel: str | Path, num_classes: int) -> list[Item]:
        """The images directly in ``root/rel``, labels and bias from their names."""
        return [Item(p, *self.name_labels(root, p, num_classes, num_classes)) for p in self.images_in(root, rel)]

    def by_class(self, root: Path, rel: str | Path, num_classes: int, aligned: bool | None = None) -> list[Item]:
        """The images of ``root/rel/<label>/``, labels and bias from their names. The folder must be the name's label,
        and with ``aligned`` set, label == bias must be ``aligned`` (an ``align/`` or ``conflict/`` folder)."""
        folder = self.folder(root, rel)
        items = []
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if not (entry.is_dir() and entry.name.isdigit() and int(entry.name) < num_classes):
                raise self.error(root, f"unexpected {Path(entry.path)}: {rel}/ holds one folder per label, "
                                 f"0..{num_classes - 1}")
            for item in self.named(root, Path(rel) / entry.name, num_classes):
                where = f"file {item.path.relative_to(root)}"
                if item.label != int(entry.name):
                    raise self.error(root, f"{where}: label {item.label} in its name, but it lies in the folder of "
                                     f"label {entry.name}")
                if aligned is not None and (item.label == item.bias) != aligned:
                    kind = "bias-aligned (label == bias)" if aligned else "bias-conflicting (label != bias)"
                    raise self.error(root, f"{where}: label {item.label} and bias {item.bias} in its name, but "
                                     f"{Path(rel).parts[-1]}/ holds {kind} images")
                items.append(item)
        return items

    def align_conflict(self, root: Path, ratio: str, num_classes: int) -> list[Item]:
        """The training images of a BiasEnsemble-style ratio folder: ``{ratio}/align/<label>/`` (label == bias)
        then ``{ratio}/conflict/<label>/`` (label != bias)."""
        return (self.by_class(root, Path(ratio) / "align", num_classes, aligned=True)
                + self.by_class(root, Path(ratio) / "conflict", num_classes, aligned=False))

    def ratio_folder(self, root: Path, cfg: DataConfig) -> str:
        """The folder of ``data.conflict_ratio``: 0.005 -> ``0.5pct``, 0.01 -> ``1pct``."""
        name = f"{round(cfg.conflict_ratio * 100, 6):g}pct"
        if not (root / name).is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.endswith("pct"))
            raise self.error(root, f"no folder {root / name}/ for data.conflict_ratio={cfg.conflict_ratio} (found: "
                             f"{', '.join(found) or 'none'}); set data.conflict_ratio to one of them, e.g. 0.005 "
                             f"for 0.5pct")
        return name

    def identity(self, cfg: DataConfig, scan: Scan, version: int) -> dict:
        """The cache key's inputs: the root, image size, every image (its path, split, label and bias, and
        :func:`~.generic.files_identity`), the metadata files' content, and the split parameters."""
        listing = hashlib.sha256()
        files = []
        for split in ("train", "valid", "test"):
            for item in scan.parts[split]:
                listing.update(f"{split}\t{item.path.relative_to(scan.root)}\t{item.label}\t{item.bias}\n".encode())
                files.append(item.path)
        return {
            "name": self.name,
            "root": str(scan.root),
            "image_size": cfg.image_size,
            "metadata": {str(p.relative_to(scan.root)): file_sha256(p) for p in scan.metadata},
            "listing": listing.hexdigest(),
            "images": files_identity(files, self.name),
            **scan.params,
            "version": version,
        }

    def source(self, scan: Callable[[DataConfig], Scan], class_names: list[str], num_bias: int, version: int,
               extra: Callable[[Scan], dict[str, dict[str, torch.Tensor]]] | None = None):
        """A dataset's ``(identity, build, write)`` (see :class:`~diffdebias.data.Source`) from its ``scan``, which
        lists (and checks) the files without reading the images, and ``extra``, each split's further bias
        attributes by name (UrbanCars), from the scan. ``write`` decodes the images straight into the cache file
        (:meth:`write`): what the dataset cache uses; ``build`` holds them all in memory."""

        def identity(cfg: DataConfig) -> dict:
            self.image_size(cfg)
            return self.identity(cfg, scan(cfg), version)

        def listed(cfg: DataConfig, images: bool) -> tuple[Scan, Splits]:
            size = self.image_size(cfg)
            found = scan(cfg)
            attrs = None if extra is None else extra(found)
            return found, self.splits(found.root, found.parts, size, class_names, num_bias, extra=attrs, images=images)

        def build(cfg: DataConfig) -> Splits:
            return listed(cfg, images=True)[1]

        def write(cfg: DataConfig, path: Path, check: Callable[[Splits], Splits] = lambda s: s) -> None:
            scan, splits = listed(cfg, images=False)
            self.write(path, scan, check(splits))  # checked on the file list, before any image is decoded

        return identity, build, write

    def splits(self, root: Path, parts: dict[str, list[Item]], image_size: int, class_names: list[str],
               num_bias: int, workers: int = 8, extra: dict[str, dict[str, torch.Tensor]] | None = None,
               images: bool = True) -> Splits:
        """Read every image (resized and centre-cropped to ``image_size``) into :class:`Splits`; paths are kept
        relative to ``root``; ``extra``: each split's further bias attributes. ``images=False`` reads none: every
        split's images are a placeholder of their shape taking no memory, for :meth:`write`."""
        out = {}
        for split in SPLITS:
            part = parts[split]
            rel = [str(item.path.relative_to(root)) for item in part]
            if images:
                where = [f"{self.name}: {r}" for r in rel]
                pixels = load_images([item.path for item in part], image_size, 3, where.__getitem__, workers)
            else:
                pixels = placeholder_images(len(part), 3, image_size)
            labels = torch.tensor([item.label for item in part], dtype=torch.long)
            bias = None if num_bias == 0 else torch.tensor([item.bias for item in part], dtype=torch.long)
            out[split] = ImageSet(pixels, labels, bias, rel, None if extra is None else extra[split])
        return Splits(out["train"], out["valid"], out["test"], len(class_names), num_bias, list(class_names),
                      name=self.name)

    def write(self, path: Path, scan: Scan, splits: Splits, workers: int = 8) -> None:
        """Write the cache file of ``splits`` (their images placeholders, :meth:`splits` with ``images=False``) at
        ``path``, decoding the images of ``scan`` straight into it, :data:`CHUNK_BYTES` of them at a time, each
        chunk's pages then written back and dropped (:func:`~.store.release`): memory stays at a few images per
        worker however large the dataset."""

        def fill(split: str, out: np.ndarray) -> None:
            files = [item.path for item in scan.parts[split]]
            where = [f"{self.name}: {r}" for r in splits.split(split).paths]
            step = max(1, CHUNK_BYTES // max(1, math.prod(out.shape[1:])))
            for a in range(0, len(files), step):
                b = min(a + step, len(files))
                load_images(files[a:b], out.shape[-1], 3, where[a:b].__getitem__, workers, out=out[a:b])
                release(out)

        write_splits(path, splits, fill)


def by_split(items: list[Item], splits: list[str]) -> dict[str, list[Item]]:
    """``items`` grouped by their split name (train / valid / test), in order."""
    parts: dict[str, list[Item]] = {"train": [], "valid": [], "test": []}
    for item, split in zip(items, splits):
        parts[split].append(item)
    return parts


def split_code(layout: Layout, root: Path, value: str, where: str) -> str:
    """A split column's 0/1/2 as train/valid/test."""
    split = SPLIT_CODES.get(value.strip())
    if split is None:
        raise layout.error(root, f"{where}: split '{value.strip()}' is not 0, 1 or 2 (train, valid, test)")
    return split


def binary(layout: Layout, root: Path, value: str, column: str, where: str) -> int:
    v = value.strip()
    if v not in ("0", "1"):
        raise layout.error(root, f"{where}: {column} '{v}' is not 0 or 1")
    return int(v)


def hold_out(items: list[Item], fraction: float, seed: int) -> tuple[list[Item], list[Item]]:
    """A seeded per-class split of ``items`` into (train, valid), ``fraction`` of each class to valid (the CSV
    loader's :func:`~.generic.seeded_split`)."""
    split = np.array(seeded_split([item.label for item in items], fraction, 0.0, seed))
    return [i for i, s in zip(items, split) if s == "train"], [i for i, s in zip(items, split) if s == "valid"]
