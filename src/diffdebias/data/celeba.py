"""CelebA, Blond_Hair x Male (the LfF / Group DRO / JTT task) from the public text files (torchvision's flat layout).

Label: Blond_Hair (0 not blond, 1 blond). Bias: *not* Male (1 female, 0 male), so the aligned cells (label == bias) are
the majority groups blond-female and dark-haired-male, and the conflicting ones blond-male and dark-haired-female. Both
attributes are found by name on the attribute-name line (0-based indices 9 and 20 in the public file). The official
partition: 162,770 / 19,867 / 19,962 images (train / valid / test).
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from .layout import Item, Layout, Scan, by_split, split_code

LAYOUT = Layout("celeba", """
list_attr_celeba.txt      line 1: the image count; line 2: the 40 attribute names (Blond_Hair, Male, ...);
                          then one line per image: <file> and its 40 values, each -1 or 1
list_eval_partition.txt   one line per image: <file> <0|1|2> (train, valid, test)
img_align_celeba/         the aligned 178x218 images named in both files
  000001.jpg
  ...
""")
CLASS_NAMES = ["not blond", "blond"]
TARGET, BIAS = "Blond_Hair", "Male"


def _attributes(root: Path, path: Path) -> tuple[list[str], list[int], list[int], list[int]]:
    """The files of ``list_attr_celeba.txt`` with their line numbers, Blond_Hair (0/1) and female (0/1) values."""
    lines = path.read_text().splitlines()
    if len(lines) < 2:
        raise LAYOUT.error(root, f"{path}: {len(lines)} line(s); line 1 is the image count, line 2 the attribute "
                           f"names, then one line per image")
    count = lines[0].strip()
    if not count.isdigit():
        raise LAYOUT.error(root, f"{path}, line 1: '{count}' is not the image count")
    names = lines[1].split()
    missing = [a for a in (TARGET, BIAS) if a not in names]
    if missing:
        raise LAYOUT.error(root, f"{path}, line 2: no attribute {' or '.join(missing)} among the attribute names "
                           f"{names[:5]}...")
    t, b = names.index(TARGET), names.index(BIAS)
    files, numbers, labels, female = [], [], [], []
    for n, line in enumerate(lines[2:], start=3):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != len(names) + 1:
            raise LAYOUT.error(root, f"{path}, line {n}: {len(fields) - 1} values, not one per attribute "
                               f"({len(names)})")
        values = fields[t + 1], fields[b + 1]
        if any(v not in ("1", "-1") for v in values):
            raise LAYOUT.error(root, f"{path}, line {n}: {TARGET}={values[0]}, {BIAS}={values[1]}; values are -1 or 1")
        if "/" in fields[0] or "\\" in fields[0] or fields[0] in (".", ".."):
            raise LAYOUT.error(root, f"{path}, line {n}: '{fields[0]}' is not a file name in img_align_celeba/")
        files.append(fields[0])
        numbers.append(n)
        labels.append(int(values[0] == "1"))
        female.append(int(values[1] == "-1"))
    if len(files) != int(count):
        raise LAYOUT.error(root, f"{path}: line 1 says {count} images but {len(files)} are listed (a truncated file?)")
    return files, numbers, labels, female


def _partition(root: Path, path: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        where = f"{path}, line {n}"
        if len(fields) != 2:
            raise LAYOUT.error(root, f"{where}: '{line.strip()}' is not <file> <0|1|2>")
        if fields[0] in out:
            raise LAYOUT.error(root, f"{where}: {fields[0]} is listed twice")
        out[fields[0]] = split_code(LAYOUT, root, fields[1], where)
    return out


def _scan(cfg: DataConfig) -> Scan:
    root = LAYOUT.root(cfg)
    attr_file = LAYOUT.file(root, "list_attr_celeba.txt", "attribute file")
    part_file = LAYOUT.file(root, "list_eval_partition.txt", "partition file")
    image_dir = LAYOUT.folder(root, "img_align_celeba", "image folder")
    files, numbers, labels, female = _attributes(root, attr_file)
    partition = _partition(root, part_file)
    unlisted = next((f for f in files if f not in partition), None)
    if unlisted is not None:
        raise LAYOUT.error(root, f"{part_file}: no line for {unlisted} (listed in {attr_file.name})")
    listed = set(files)
    extra = next((f for f in partition if f not in listed), None)
    if extra is not None:
        raise LAYOUT.error(root, f"{part_file}: {extra} has no line in {attr_file.name}")
    paths = [image_dir / f for f in files]
    for path, n in zip(paths, numbers):
        if not path.is_file():
            raise LAYOUT.error(root, f"{attr_file}, line {n}: image file not found: {path}")
    items = [Item(p, y, b) for p, y, b in zip(paths, labels, female)]
    return Scan(root, by_split(items, [partition[f] for f in files]), [attr_file, part_file])


identity, build, write = LAYOUT.source(_scan, CLASS_NAMES, num_bias=2, version=1)
