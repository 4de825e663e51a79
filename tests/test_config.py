import pytest
import yaml

from diffdebias.config import ConfigError, dump_yaml, load_config


def test_defaults_file_overrides_and_base(tmp_path):
    (tmp_path / "base.yaml").write_text("name: a\nclassifier:\n  epochs: 7\n  lr: 0.01\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nclassifier:\n  epochs: 9\n")
    cfg = load_config(tmp_path / "child.yaml", ["classifier.batch_size=32", "data.conflict_ratio=0.05"], seed=4)
    assert cfg.name == "a" and cfg.classifier.epochs == 9 and cfg.classifier.lr == 0.01
    assert cfg.classifier.batch_size == 32 and cfg.data.conflict_ratio == 0.05 and cfg.seed == 4
    assert "epochs: 9" in dump_yaml(cfg)


@pytest.mark.parametrize(
    "override,message",
    [
        ("classifier.epoch=3", "unknown config key 'classifier.epoch'"),
        ("dataa.name=x", "unknown config key 'dataa'"),
        ("classifier.epochs=many", "classifier.epochs: expected an integer"),
        ("classifier.augment=3", "classifier.augment: expected true/false"),
        ("classifier=3", "classifier: expected a section"),
        ("novalue", "must look like key=value"),
    ],
)
def test_bad_keys_and_values_are_named(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(None, [override])
    assert message in str(e.value)


def test_unknown_key_in_file_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text("data:\n  conflict_ratoi: 0.01\n")
    with pytest.raises(ConfigError, match="data.conflict_ratoi"):
        load_config(tmp_path / "c.yaml")


def test_added_fields_enter_stage_keys_only_when_set():
    from dataclasses import replace

    from diffdebias.config import DiffusionConfig, GroupDROConfig, TrainConfig, key_dict, to_dict

    cfg = TrainConfig()
    assert "input_scale" in to_dict(cfg) and "input_scale" not in key_dict(cfg)
    assert key_dict(replace(cfg, input_scale=0.5))["input_scale"] == 0.5
    assert key_dict(replace(cfg, lr=0.5))["lr"] == 0.5  # ordinary fields always count
    assert "reweight" not in key_dict(GroupDROConfig()) and key_dict(GroupDROConfig(reweight=True))["reweight"]
    assert "image_size" not in key_dict(DiffusionConfig()) and key_dict(DiffusionConfig(image_size=16))["image_size"]


def test_execution_fields_never_enter_stage_keys():
    """Rows per pass, logging and checkpoint intervals change how a stage runs, not its numbers: a cached stage is
    reused when only they change, and benchmark tables do not call such a run stale."""
    from diffdebias.bench import EXECUTION_KEYS
    from diffdebias.config import DataConfig, DiffusionConfig, SamplingConfig, key_dict

    assert key_dict(SamplingConfig(batch_size=7)) == key_dict(SamplingConfig(batch_size=300))
    assert key_dict(DiffusionConfig(log_every=1, checkpoint_every=5)) == key_dict(DiffusionConfig())
    assert key_dict(DiffusionConfig(steps=5)) != key_dict(DiffusionConfig())
    assert {"sampling.batch_size", "injection.batch_size", "diffusion.checkpoint_every", "device",
            "data.cache_dir"} <= EXECUTION_KEYS
    assert "sampling.steps" not in EXECUTION_KEYS and "classifier.batch_size" not in EXECUTION_KEYS
    assert key_dict(DataConfig()) == key_dict(DataConfig(cache_dir="/elsewhere"))


def test_diffusion_image_size_must_be_a_side_or_zero():
    with pytest.raises(ConfigError, match="diffusion.image_size"):
        load_config("configs/cmnist/ddb.yaml", ["diffusion.image_size=-2"])


def test_ddb_reference_epochs_must_be_positive():
    with pytest.raises(ConfigError, match="ddb.reference_gce_epochs"):
        load_config("configs/cmnist/ddb.yaml", ["ddb.reference_gce_epochs=0"])
    assert load_config("configs/cmnist/ddb.yaml", ["ddb.reference_gce_epochs=7"]).ddb.reference_gce_epochs == 7


def test_every_shipped_config_and_table_loads():
    """A shipped config file that no longer validates is caught here, not by the user who runs it."""
    from pathlib import Path

    from diffdebias.bench import cell_config, load_table

    root = Path(__file__).resolve().parents[1] / "configs"
    configs = [path for folder in (root, root / "cmnist", root / "generic") for path in sorted(folder.glob("*.yaml"))
               if path.name != "scoreboard.yaml"]  # the scoreboard's spec (diffdebias scoreboard), not a run config
    assert len(configs) >= 12
    for path in configs:
        assert load_config(path).method, path
    cpu = load_config(root / "cmnist" / "diffinject_cpu.yaml")
    assert (cpu.injection.blend, cpu.injection.gamma, cpu.injection.t_start) == ("mean", 4.0, 400)
    ens = load_config(root / "cmnist" / "diffinject_ensemble.yaml")  # inherits the upsampled recipe, adds members
    assert (ens.classifier.ensemble, ens.classifier.weight_decay, ens.diffinject.upsample_errors) == (2, 0.003, 50)
    five = load_config(root / "cmnist" / "diffinject_ensemble_5pct.yaml")
    assert (five.data.conflict_ratio, five.diffinject.keep, five.classifier.weight_decay, five.classifier.ensemble,
            five.diffinject.synthetic_ratio) == (0.05, "similar", 0.0, 3, 0.3)
    for path in sorted((root / "tables").glob("*.yaml")):
        table = load_table(path)
        for method, ratio, seed in table.cells():
            assert cell_config(table, method, ratio, seed).data.conflict_ratio == ratio, path


def test_the_diffusion_settings_import_without_the_config_schema():
    """No import cycle: the diffusion settings need only the checks and field markers (no torch, no diffusers)."""
    import subprocess
    import sys

    code = ("import sys, diffdebias.diffusion.config; "
            "print(sorted(m for m in ('diffdebias.config', 'torch', 'diffusers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr


def test_a_string_setting_reads_an_unquoted_yaml_boolean_as_its_word():
    assert load_config(None, ["selection.valid_groups=true"]).selection.valid_groups == "true"
    with pytest.raises(ConfigError, match="selection.valid_groups"):
        load_config(None, ["selection.valid_groups=false"])  # the word, then checked against the choices


def test_a_saved_run_config_keeps_its_new_key_over_an_unread_sections_old_default():
    """Runs saved every section before they saved only their method's: a JTT run's saved DiffInject defaults
    (``diffinject.content_source: gce``) must not clash with its own ``detection.source: ddb`` when a table compares."""
    from diffdebias.config import moved

    saved = {"detection": {"source": "ddb"}, "diffinject": {"content_source": "gce"}}
    assert moved(saved, warn=False, saved=True) == {"detection": {"source": "ddb"}, "diffinject": {}}
    with pytest.raises(ConfigError, match="diffinject.content_source"):
        moved(saved, warn=False)  # in a config being loaded, the clash is the user's to resolve


def test_a_run_config_saved_with_every_section_loads_with_its_methods_own_old_key(tmp_path):
    """Runs saved every section before they saved only their method's: a DDB run's file holds ``ddb.compare_erm:
    false`` (what it read) beside ``diffinject.compare_erm: true`` (a default it never read); loading it back (a
    rerun, benchmarks/amplifier_probe.py) must give DDB's value, not a clash or the other section's, in either
    order."""
    from diffdebias.config import SECTIONS

    for method, own, other in (("ddb", False, True), ("diffinject", True, False)):
        data = {section: {} for section in SECTIONS}
        data.update(method=method, diffusion={"conditional": method == "ddb"},
                    ddb={"compare_erm": own if method == "ddb" else other},
                    diffinject={"compare_erm": own if method == "diffinject" else other})
        path = tmp_path / f"{method}.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.warns(FutureWarning, match="compare_erm"):
            assert load_config(path).compare.erm is own
    neither = tmp_path / "erm.yaml"  # a method that reads neither section: the clash is the user's to resolve
    neither.write_text(yaml.safe_dump({"method": "erm", "ddb": {"compare_erm": False},
                                       "diffinject": {"compare_erm": True}}))
    with pytest.raises(ConfigError, match="compare_erm"), pytest.warns(FutureWarning):
        load_config(neither)
