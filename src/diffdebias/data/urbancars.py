"""UrbanCars (Li et al., "A Whac-A-Mole Dilemma", CVPR 2023; DDB Table 3) in facebookresearch/Whac-A-Mole's layout.

``data.root`` is the folder that holds ``urbancars/`` (Whac-A-Mole's dataset ``root``; the ``urbancars/`` folder
itself is read too). Training images come from ``urbancars/bg-0.95_co_occur_obj-0.95/train/``, valid and test from
``urbancars/bg-0.5_co_occur_obj-0.5/{val,test}/``; each holds 8 folders ``obj-{o}_bg-{b}_co_occur_obj-{c}`` (o, b, c
in urban, country) of ``NNN.jpg`` (256x256); the ``*_mask.png`` beside them (and any other file) are not read.

Target: the car type ``obj`` (0 urban, 1 country). Two bias attributes per image, encoded like the label (0 urban,
1 country, aligned where equal to it): the background ``bg`` is the primary bias (``ImageSet.bias``) and the
co-occurring object is ``extra_bias["co_occur_obj"]``; evaluation reads both (I.D. accuracy and the BG, CoObj and
BG+CoObj gaps, :func:`~diffdebias.evaluation.metrics.urbancars_metrics`). Public sizes: train 8,000 (per car class 3,610
both aligned, 190 BG-conflicting, 190 CoObj-conflicting, 10 both), val and test 1,000 each, balanced.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..config import DataConfig
from .layout import Item, Layout, Scan

LAYOUT = Layout("urbancars", """
urbancars/
  bg-0.95_co_occur_obj-0.95/
    train/
      obj-urban_bg-urban_co_occur_obj-urban/       000.jpg, 001.jpg, ... (the *_mask.png beside them are not read)
      obj-urban_bg-urban_co_occur_obj-country/
      obj-urban_bg-country_co_occur_obj-urban/
      obj-urban_bg-country_co_occur_obj-country/
      obj-country_bg-urban_co_occur_obj-urban/
      obj-country_bg-urban_co_occur_obj-country/
      obj-country_bg-country_co_occur_obj-urban/
      obj-country_bg-country_co_occur_obj-country/
  bg-0.5_co_occur_obj-0.5/
    val/                                           the same 8 folders
    test/                                          the same 8 folders
""")
CLASS_NAMES = ["urban", "country"]  # obj, bg and co_occur_obj alike: 0 urban, 1 country
SPLIT_FOLDERS = {"train": "bg-0.95_co_occur_obj-0.95/train", "valid": "bg-0.5_co_occur_obj-0.5/val",
                 "test": "bg-0.5_co_occur_obj-0.5/test"}
EXTRA = "co_occur_obj"


def group_folders() -> list[tuple[str, int, int, int]]:
    """The 8 folder names of a split with their (obj, bg, co_occur_obj) labels, in Whac-A-Mole's order."""
    return [(f"obj-{o}_bg-{b}_co_occur_obj-{c}", i, j, k)
            for i, o in enumerate(CLASS_NAMES) for j, b in enumerate(CLASS_NAMES) for k, c in enumerate(CLASS_NAMES)]


CO_OCCUR_OF = {name: co for name, _, _, co in group_folders()}  # folder name -> co-occurring object


def _base(cfg: DataConfig) -> Path:
    """The ``urbancars/`` folder: ``data.root/urbancars``, or ``data.root`` itself where it is that folder."""
    root = LAYOUT.root(cfg)
    if not (root / "urbancars").is_dir() and (root / "bg-0.95_co_occur_obj-0.95").is_dir():
        return root
    return LAYOUT.folder(root, "urbancars")


def _scan(cfg: DataConfig) -> Scan:
    """Each split's images (label obj, bias bg), folder by folder, by name; the folder also names the co-occurring
    object. Paths (and so the cache key's listing) are relative to ``urbancars/``."""
    base = _base(cfg)
    parts: dict[str, list[Item]] = {}
    for split, rel in SPLIT_FOLDERS.items():
        parts[split] = []
        for name, obj, bg, _ in group_folders():
            folder = LAYOUT.folder(base, f"{rel}/{name}")
            files = sorted(p for p in folder.iterdir()
                           if p.suffix.lower() == ".jpg" and not p.name.startswith(".") and p.is_file())
            parts[split] += [Item(p, obj, bg) for p in files]
    return Scan(base, parts)


def _co_occur(scan: Scan) -> dict[str, dict[str, torch.Tensor]]:
    """Each split's co-occurring object of every image (from its folder's name): the extra bias attribute
    ``co_occur_obj``."""
    return {s: {EXTRA: torch.tensor([CO_OCCUR_OF[item.path.parent.name] for item in scan.parts[s]], dtype=torch.long)}
            for s in SPLIT_FOLDERS}


# The cache key covers the root, the image size, and every image: its path (which names its three labels) and
# :func:`~.generic.files_identity`.
identity, build, write = LAYOUT.source(_scan, CLASS_NAMES, num_bias=2, version=1, extra=_co_occur)
