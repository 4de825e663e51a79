"""ImageNet-9 -> ImageNet-A (Bahng et al., ReBias, ICML 2020; DDB Table 2b) from ImageFolder copies of ImageNet and
ImageNet-A, as clovaai/rebias reads them.

rebias takes three ImageFolder roots (``main_imagenet.py``: ``--train_root /path/to/your/imagenet/train``,
``--val_root /path/to/your/imagenet/val``, ``--imageneta_root /path/to/your/imagenet_a``). Here they are three folders
under ``data.root``:

- ``train/<wnid>/<image>``: ImageNet's training set (ILSVRC2012 ``train``) -> the train split;
- ``val/<wnid>/<image>``: ImageNet's validation set, sorted into WNID folders as ``train/`` is -> the valid split
  (held out from the training distribution, as the protocol asks);
- ``imagenet-a/<wnid>/<image>``: ImageNet-A (Hendrycks et al.; ``imagenet-a.tar`` unpacks to ``imagenet-a/``; rebias'
  ``imagenet_a`` spelling is read too) -> the test split.

Only the 42 WNIDs of the 9 classes (rebias' ``CLASS_TO_INDEX``) are read, mapped by WNID, never by folder position;
every other folder (the 958 other ImageNet classes, ImageNet-A's README) is ignored. ``train/`` and ``val/`` must hold
all 42; ImageNet-A holds 21 of them and no crab, so the test split has 8 classes while the model keeps its 9-class head
(a crab prediction is simply wrong). No bias labels (rebias' texture clusters are not read); the metric is test
accuracy on the ImageNet-A subset. Images are resized (shorter side) and centre-cropped to ``data.image_size``, which
must be set (rebias evaluates at 256 -> centre crop 224; its training RandomResizedCrop is augmentation, not done here).
At 224 the training split (about 54,600 images) takes about 8 GB as uint8.
"""

from __future__ import annotations

from pathlib import Path

from ..config import DataConfig
from .layout import Item, Layout, Scan

CLASS_NAMES = ["dog", "cat", "frog", "turtle", "bird", "monkey", "fish", "crab", "insect"]
WNIDS = {
    "dog": ("n02085620", "n02099601", "n02106550", "n02106662", "n02110958"),
    "cat": ("n02123045", "n02123159", "n02123394", "n02123597", "n02124075"),
    "frog": ("n01641577", "n01644373", "n01644900"),
    "turtle": ("n01664065", "n01665541", "n01667114", "n01667778", "n01669191"),
    "bird": ("n01819313", "n01820546", "n01833805", "n01843383", "n01847000"),
    "monkey": ("n02486410", "n02487347", "n02488291", "n02488702", "n02492035"),
    "fish": ("n02607072", "n02640242", "n02641379", "n02643566", "n02655020"),
    "crab": ("n01978287", "n01978455", "n01980166", "n01981276"),
    "insect": ("n02174001", "n02177972", "n02190166", "n02206856", "n02219486"),
}
CLASS_OF = {wnid: CLASS_NAMES.index(name) for name, wnids in WNIDS.items() for wnid in wnids}  # 42 WNIDs
IMAGENET_A = ("imagenet-a", "imagenet_a")

LAYOUT = Layout("imagenet9", """
train/          ImageNet's training images, one folder per WNID (the 42 of the 9 classes are read, the rest ignored)
  n02085620/    n02085620_10074.JPEG, ...
  ...
val/            ImageNet's validation images sorted into the same WNID folders
  n02085620/    ILSVRC2012_val_00000665.JPEG, ...
  ...
imagenet-a/     ImageNet-A (imagenet-a.tar), its WNID folders as released (21 of the 42; imagenet_a/ is read too)
  n01641577/    *.jpg
  ...
""")


def _folder_items(root: Path, rel: str, require_all: bool) -> list[Item]:
    """The images of the 42 WNID folders under ``root/rel``, in WNID order, labelled by the WNID's class."""
    LAYOUT.folder(root, rel, f"{rel}/ folder")
    present = [w for w in sorted(CLASS_OF) if (root / rel / w).is_dir()]
    missing = sorted(set(CLASS_OF) - set(present))
    if (require_all and missing) or not present:
        names = ", ".join(f"{w} ({CLASS_NAMES[CLASS_OF[w]]})" for w in missing)
        raise LAYOUT.error(root, f"{root / rel}/ lacks {len(missing)} of the 42 WNID folders of the 9 classes: {names}")
    return [Item(p, CLASS_OF[w]) for w in present for p in LAYOUT.images_in(root, f"{rel}/{w}")]


def _scan(cfg: DataConfig) -> Scan:
    root = LAYOUT.root(cfg)
    test = next((name for name in IMAGENET_A if (root / name).is_dir()), IMAGENET_A[0])
    parts = {"train": _folder_items(root, "train", True), "valid": _folder_items(root, "val", True),
             "test": _folder_items(root, test, False)}
    return Scan(root, parts)


# The cache key covers the root, the image size, and every image of the 42 WNID folders: its path (which names its
# class) and :func:`~.generic.files_identity`.
identity, build, write = LAYOUT.source(_scan, CLASS_NAMES, num_bias=0, version=1)
