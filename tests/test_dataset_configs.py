"""The benchmark configs of the real-image and corrupted datasets load, name their dataset, and their tables resolve.

Loading reads no data: these tests check the YAML against the config schema, not the files under ``data.root``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from diffdebias import bench
from diffdebias.config import load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
DATASETS = ("waterbirds", "celeba", "bffhq", "bar", "dogs_cats", "urbancars", "imagenet9", "corrupted_cifar10",
            "corrupted_fmnist")
# Datasets with a fixed split, whose loaders do not read data.conflict_ratio: a table's single ratio must equal each
# config's own value, so the data.conflict_ratio=<ratio> override a table applies changes nothing.
FIXED_SPLIT = ("waterbirds", "celeba", "bar", "urbancars", "imagenet9")
# Datasets whose data.conflict_ratio picks a released {ratio}pct training folder, and the folders released.
RATIO_FOLDERS = {"bffhq": (0.005, 0.01, 0.02, 0.05), "dogs_cats": (0.01, 0.05)}

CONFIG_FILES = sorted(p for d in DATASETS for p in (CONFIGS / d).glob("*.yaml"))
TABLE_FILES = sorted({p for d in DATASETS for pattern in (f"{d}.yaml", f"{d}_*.yaml")
                      for p in (CONFIGS / "tables").glob(pattern)})


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(CONFIGS)) for p in paths]


def _base_depth(path: Path) -> int:
    """How many ``base:`` includes lie under a config file."""
    base = (yaml.safe_load(path.read_text()) or {}).get("base")
    return 0 if base is None else 1 + _base_depth(path.parent / base)


def test_every_dataset_has_configs_and_a_table():
    for dataset in DATASETS:
        assert list((CONFIGS / dataset).glob("*.yaml")), f"no configs/{dataset}/*.yaml"
        assert (CONFIGS / "tables" / f"{dataset}.yaml").exists(), f"no configs/tables/{dataset}.yaml"


@pytest.mark.parametrize("path", CONFIG_FILES, ids=_ids(CONFIG_FILES))
def test_config_loads_and_names_its_dataset(path: Path):
    cfg = load_config(path)
    assert cfg.data.name == path.parent.name
    assert _base_depth(path) <= 2, f"{path.name}: base chains stay at most two levels deep"
    assert path.read_text().startswith("#"), f"{path.name}: starts with its comment block"
    if cfg.data.name in RATIO_FOLDERS:
        assert any(abs(cfg.data.conflict_ratio - r) < 1e-9 for r in RATIO_FOLDERS[cfg.data.name])


@pytest.mark.parametrize("path", TABLE_FILES, ids=_ids(TABLE_FILES))
def test_table_resolves_every_cell(path: Path):
    table = bench.load_table(path)
    assert table.dataset in DATASETS and path.stem.startswith(table.dataset)
    assert table.seeds == [1, 2, 3]
    if table.dataset in FIXED_SPLIT:
        assert len(table.ratios) == 1
    if table.dataset in RATIO_FOLDERS:
        assert all(any(abs(r - f) < 1e-9 for f in RATIO_FOLDERS[table.dataset]) for r in table.ratios)
    for method, ratio, seed in table.cells():
        cfg = bench.cell_config(table, method, ratio, seed)
        assert cfg.data.name == table.dataset
        assert cfg.data.conflict_ratio == pytest.approx(ratio)
        assert cfg.seed == seed
        if table.dataset in FIXED_SPLIT:  # the override is a no-op: the config already holds the table's ratio
            assert load_config(table.root / table.methods[method]).data.conflict_ratio == pytest.approx(ratio)
