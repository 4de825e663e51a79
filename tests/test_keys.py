"""Stage keys come from what a stage reads (:mod:`diffdebias.keys`), not from keys its caller assembles."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from diffdebias.config import TrainConfig, key_dict
from diffdebias.data.base import ImageSet
from diffdebias.keys import NOTHING, Reads, Source, reads
from diffdebias.methods.final_samplers import with_synthetic
from diffdebias.runs import Run

METHODS = Path(__file__).resolve().parents[1] / "src" / "diffdebias" / "methods"


def images(n: int, made_from: Reads = NOTHING) -> ImageSet:
    return ImageSet(torch.zeros(n, 1, 4, 4, dtype=torch.uint8), torch.arange(n) % 2, reads=made_from)


def test_reads_splits_settings_from_inputs_and_canonicalises_them():
    cfg = TrainConfig(epochs=3)
    r = reads(Source("data", "d1"), cfg, rate=0.1, pool=torch.tensor([3, 1]), section=cfg)
    assert r.inputs == {"d1"}
    assert r.settings == {**key_dict(cfg), "rate": 0.1, "pool": [3, 1], "section": key_dict(cfg)}
    assert reads(None, NOTHING) == NOTHING and not NOTHING


def test_a_setting_read_twice_must_have_one_value():
    assert (reads(a=1) | reads(a=1, b=2)).settings == {"a": 1, "b": 2}
    with pytest.raises(ValueError, match="setting 'a' read with two values"):
        reads(a=1) | reads(a=2)


def test_a_stage_output_is_an_input_not_a_setting():
    with pytest.raises(TypeError, match="pass it positionally"):
        reads(model=Source("m", "k"))
    with pytest.raises(TypeError, match="cannot read"):
        reads(object())


def test_derived_image_sets_carry_what_made_them():
    synthetic = images(4, reads(Source("injection", "i1"), label_source="style"))
    kept = synthetic.subset(torch.tensor([0, 2]))
    assert kept.reads == synthetic.reads and len(kept) == 2
    train = with_synthetic(images(6), kept)
    assert train.reads == synthetic.reads and len(train) == 8


def test_a_stage_reruns_when_what_made_its_training_set_changes(tmp_path):
    """The hole class of issue #39: a stage keyed by what it reads follows a derived set's upstream without its
    caller naming the upstream."""
    calls = []
    run = Run(tmp_path, seed=0, quiet=True)

    def stage(upstream: str) -> str:
        train = images(4, reads(Source("filter", upstream), keep="conflicting"))
        return run.cached("classifier", lambda st: calls.append(upstream), reads(train, epochs=1)).key

    first = stage("gce-a")
    assert stage("gce-a") == first and calls == ["gce-a"]
    assert stage("gce-b") != first and calls == ["gce-a", "gce-b"]


def test_a_code_version_enters_the_key_and_version_0_keeps_the_old_one(tmp_path):
    run = Run(tmp_path, seed=0, quiet=True)
    what = reads(Source("m", "k"), splits=["test"])
    assert run.stage("e", what).key == run.stage("e", what, version=0).key != run.stage("e", what, version=2).key


def test_no_method_builds_a_stage_key_by_hand():
    """Methods hand stages, models, scores and image sets to the machinery; only the objects that are stages read
    their own ``key`` (common.py's ``Trained.key`` and ``Scores.key``)."""
    offenders = []
    for path in sorted(METHODS.glob("*.py")):
        tree = ast.parse(path.read_text())
        allowed = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef) and f.name == "key"
                   for n in ast.walk(f)}
        offenders += [f"{path.name}:{n.lineno}" for n in ast.walk(tree)
                      if isinstance(n, ast.Attribute) and n.attr == "key" and id(n) not in allowed]
        offenders += [f"{path.name}:{n.lineno} config_hash" for n in ast.walk(tree)
                      if isinstance(n, ast.Name) and n.id == "config_hash"]
    assert offenders == []
