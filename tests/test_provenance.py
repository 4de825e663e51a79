"""Every config field declares where its default comes from, and docs/settings.md prints them as they are now."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from diffdebias import settings_doc
from diffdebias.config import PROVENANCE, PROVENANCES, RETIRED, SECTIONS, Config
from diffdebias.fields import execution_keys

DOC = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def _field_names(cfg: Config) -> set[str]:
    """Dotted names of the top-level fields and of every field of every section."""
    out = set()
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out |= {f"{f.name}.{g.name}" for g in dataclasses.fields(value)}
        else:
            out.add(f.name)
    return out


def test_every_field_has_a_provenance():
    missing = _field_names(Config()) - set(PROVENANCE)
    assert not missing, f"fields without a provenance in config.PROVENANCE: {sorted(missing)}"


def test_no_live_field_has_a_retired_name():
    """A field added under a retired key's name could never be set: loading warns that the key is retired and drops
    the value. A knob measured again needs a new name (and its notebook section), not the old one back."""
    revived = _field_names(Config()) & set(RETIRED)
    assert not revived, f"fields named like retired keys (config.RETIRED): {sorted(revived)}"


def test_provenance_names_only_existing_fields():
    unknown = set(PROVENANCE) - _field_names(Config())
    assert not unknown, f"config.PROVENANCE names fields that do not exist: {sorted(unknown)}"


def test_provenances_are_known_and_noted():
    for key, (provenance, note) in PROVENANCE.items():
        assert provenance in PROVENANCES, f"{key}: unknown provenance {provenance!r}"
        assert isinstance(note, str) and note.strip(), f"{key}: empty note"


def test_execution_fields_have_execution_provenance():
    wrong = {k: PROVENANCE[k][0] for k in execution_keys(Config()) if PROVENANCE[k][0] != "execution"}
    assert not wrong, f"execution() fields need provenance 'execution': {wrong}"


def test_settings_doc_lists_every_section():
    lines = settings_doc.render().splitlines()
    assert all(f"## {s}" in lines for s in SECTIONS)


def test_settings_doc_is_current():
    assert DOC.read_text() == settings_doc.render(), (
        "docs/settings.md is stale: run `python -m diffdebias.settings_doc --write`")
