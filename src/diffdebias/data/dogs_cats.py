"""Dogs & Cats (Kim et al., "Learning Not to Learn"; the BiasEnsemble release) in the released folder layout.

Label and bias are the last two ``_`` fields of each file name, ``<id>_<label>_<bias>.<ext>``, as the released loader
reads them. The bias is the colour of the fur in LNL; neither it nor which of 0/1 is dog is stated in the release, so
the classes are named 0 and 1. Training and valid images come from the ``{ratio}`` folder of ``data.conflict_ratio``
(0.01 -> ``1pct``, 0.05 -> ``5pct``), valid flat in it; ``test/<label>/`` is shared by every ratio.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from .layout import Layout, Scan

LAYOUT = Layout("dogs_cats", """
1pct/              the folder of data.conflict_ratio (0.01: 1pct; 0.05: 5pct)
  align/0/         training images <id>_<label>_<bias>.<ext> with label == bias, in the folder of their label
  align/1/
  conflict/0/      training images with label != bias, in the folder of their label
  conflict/1/
  valid/           <id>_<label>_<bias>.<ext>, flat
test/0/            <id>_<label>_<bias>.<ext>, in the folder of their label
test/1/
""")
CLASS_NAMES = ["0", "1"]


def _scan(cfg: DataConfig) -> Scan:
    root = LAYOUT.root(cfg)
    ratio = LAYOUT.ratio_folder(root, cfg)
    parts = {"train": LAYOUT.align_conflict(root, ratio, 2), "valid": LAYOUT.named(root, Path(ratio) / "valid", 2),
             "test": LAYOUT.by_class(root, "test", 2)}
    return Scan(root, parts, params={"ratio": ratio})


identity, build, write = LAYOUT.source(_scan, CLASS_NAMES, num_bias=2, version=1)
