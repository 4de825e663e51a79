"""Progress bars: ``TQDM_DISABLE`` turns every bar off, even those the library shows explicitly."""
from pathlib import Path

import pytest

from diffdebias.progress import progress_bar

SRC = Path(__file__).resolve().parents[1] / "src" / "diffdebias"


@pytest.mark.parametrize(("value", "show", "disabled"), [
    (None, True, False), (None, False, True), ("1", True, True), ("true", True, True),
    ("0", True, False), ("false", True, False), ("", True, False), ("1", False, True),
])
def test_tqdm_disable_overrides_an_explicit_show(monkeypatch, value, show, disabled):
    if value is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", value)
    bar = progress_bar(range(3), show=show)
    assert bar.disable is disabled
    assert list(bar) == [0, 1, 2]  # a disabled bar still iterates


def test_every_bar_in_the_library_goes_through_progress_bar():
    direct = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py")
              if p.name != "progress.py" and "import tqdm" in p.read_text()]
    assert direct == []
