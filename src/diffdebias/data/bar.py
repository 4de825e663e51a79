"""BAR, Biased Action Recognition (Nam et al., LfF; alinlab/BAR) in its original flat layout.

Six action classes, each photographed mostly in one kind of place (climbing: rock wall, diving: under water, fishing:
water surface, pole vaulting: sky, racing: paved track, throwing: playing field). Images are ``<class>_<idx>.jpg``
in ``train/`` (1,941) and ``test/`` (654); the class is the name before the last ``_`` and may hold a space (``pole
vaulting``). There are no bias labels, and no valid folder: ``data.valid_fraction`` of each training class is held out
as the valid split, seeded by ``data.seed``.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from .layout import Item, Layout, Scan, hold_out

CLASS_NAMES = ["climbing", "diving", "fishing", "pole vaulting", "racing", "throwing"]
LAYOUT = Layout("bar", """
train/     <class>_<idx>.jpg, flat, e.g. climbing_0.jpg, pole vaulting_0.jpg; classes: climbing, diving, fishing,
           pole vaulting, racing, throwing
test/      <class>_<idx>.jpg, flat
""")


def _items(root: Path, rel: str) -> list[Item]:
    items = []
    for path in LAYOUT.images_in(root, rel):
        cls, _, idx = path.stem.rpartition("_")
        if cls not in CLASS_NAMES or not idx.isdigit():
            raise LAYOUT.error(root, f"file {path.relative_to(root)}: its name is not <class>_<idx>{path.suffix} with "
                               f"a class among {', '.join(CLASS_NAMES)}")
        items.append(Item(path, CLASS_NAMES.index(cls)))
    return items


def _scan(cfg: DataConfig) -> Scan:
    root = LAYOUT.root(cfg)
    train, valid = hold_out(_items(root, "train"), cfg.valid_fraction, cfg.seed)
    parts = {"train": train, "valid": valid, "test": _items(root, "test")}
    return Scan(root, parts, params={"valid_fraction": cfg.valid_fraction, "seed": cfg.seed})


identity, build, write = LAYOUT.source(_scan, CLASS_NAMES, num_bias=0, version=1)
