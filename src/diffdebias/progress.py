"""Progress bars that honour ``TQDM_DISABLE``.

tqdm reads its ``TQDM_*`` variables only as defaults, once, when it is imported; every bar here passes ``disable=``
itself (a bar shows on the main process only), which overrode the variable. Read at each bar, it now turns every bar
off, as a log file or a batch job wants."""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

from tqdm.auto import tqdm

OFF_VALUES = ("", "0", "false", "no", "off")


def bars_disabled() -> bool:
    """Whether ``TQDM_DISABLE`` asks for no bars (any value but empty, 0, false, no or off)."""
    return os.environ.get("TQDM_DISABLE", "").strip().lower() not in OFF_VALUES


def progress_bar(iterable: Iterable[Any] | None = None, *, show: bool = True, **kwargs: Any) -> tqdm:
    """A tqdm bar, shown when ``show`` is true and ``TQDM_DISABLE`` does not turn bars off."""
    return tqdm(iterable, disable=not show or bars_disabled(), **kwargs)
