"""Waterbirds (Sagawa et al., group_DRO's ``waterbird_complete95_forest2water2``) from its ``metadata.csv``.

Label ``y`` (0 landbird, 1 waterbird), bias ``place`` (0 land, 1 water), so the aligned cells (label == bias: land
birds on land, water birds on water) are the majority groups; ``split`` 0/1/2 is train/valid/test. Group ``2y +
place`` counts in the public release: train 3498/184/56/1057, valid 467/466/133/133, test 2255/2255/642/642.
"""

from __future__ import annotations

import csv

from ..config import DataConfig
from .layout import Item, Layout, Scan, binary, by_split, split_code

LAYOUT = Layout("waterbirds", """
metadata.csv   columns img_id,img_filename,y,split,place (y: 0 landbird, 1 waterbird; place: 0 land, 1 water;
               split: 0 train, 1 valid, 2 test)
<img_filename> each row's image, at the path in its img_filename column, e.g.
               001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg
""")
CLASS_NAMES = ["landbird", "waterbird"]
COLUMNS = ("img_filename", "y", "split", "place")


def _scan(cfg: DataConfig) -> Scan:
    root = LAYOUT.root(cfg)
    meta = LAYOUT.file(root, "metadata.csv", "metadata file")
    with open(meta, newline="") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in reader.fieldnames or []]
        missing = [c for c in COLUMNS if c not in columns]
        if missing:
            raise LAYOUT.error(root, f"{meta}: missing column(s) {', '.join(missing)} (found: {columns})")
        rows = [{k.strip(): (v or "") for k, v in row.items() if k is not None} for row in reader]
    if not rows:
        raise LAYOUT.error(root, f"{meta}: no rows")
    where = [f"{meta}, row {i + 2}" for i in range(len(rows))]
    files = LAYOUT.resolve(root, root, [r["img_filename"].strip() for r in rows], str(meta))
    items = [Item(path, binary(LAYOUT, root, r["y"], "y", w), binary(LAYOUT, root, r["place"], "place", w))
             for path, r, w in zip(files, rows, where)]
    splits = [split_code(LAYOUT, root, r["split"], w) for r, w in zip(rows, where)]
    return Scan(root, by_split(items, splits), [meta])


identity, build, write = LAYOUT.source(_scan, CLASS_NAMES, num_bias=2, version=1)
