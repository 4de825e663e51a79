"""BFFHQ (biased FFHQ: age x gender; BiaSwap, released by DisEnt and BiasEnsemble) in the released folder layout.

Label and bias are the last two ``_`` fields of each file name, ``<id>_<label>_<bias>.png`` (label: age, bias:
gender); aligned (label == bias) images are the majority, young women and old men. Which of 0/1 is young (or female)
is not stated in the release, so the classes are named 0 and 1. Training images come from the ``{ratio}`` folder of
``data.conflict_ratio`` (0.005 -> ``0.5pct``); ``valid/`` and ``test/`` are flat and shared by every ratio. The whole
test folder is kept: the papers' metric, accuracy on its bias-conflicting images, is the conflicting accuracy, beside
the average over all of it.
"""

from __future__ import annotations

from ..config import DataConfig
from .layout import Layout, Scan

LAYOUT = Layout("bffhq", """
0.5pct/            the folder of data.conflict_ratio (0.005: 0.5pct; BiasEnsemble also ships 1pct, 2pct, 5pct)
  align/0/         training images <id>_<label>_<bias>.png with label == bias, in the folder of their label
  align/1/
  conflict/0/      training images with label != bias, in the folder of their label
  conflict/1/
valid/             <id>_<label>_<bias>.png, flat
test/              <id>_<label>_<bias>.png, flat
""")
CLASS_NAMES = ["0", "1"]


def _scan(cfg: DataConfig) -> Scan:
    root = LAYOUT.root(cfg)
    ratio = LAYOUT.ratio_folder(root, cfg)
    parts = {"train": LAYOUT.align_conflict(root, ratio, 2), "valid": LAYOUT.named(root, "valid", 2),
             "test": LAYOUT.named(root, "test", 2)}
    return Scan(root, parts, params={"ratio": ratio})


identity, build, write = LAYOUT.source(_scan, CLASS_NAMES, num_bias=2, version=1)
