"""Progress bars (tqdm: items/s and ETA) and one-line stage summaries; quiet for CI.

``CAPO_QUIET=1`` (or a stage's ``quiet=True``) silences bars; bars are also off when
stderr is not a terminal unless ``CAPO_PROGRESS=1``.
"""

from __future__ import annotations

import os
import sys


def quiet_env() -> bool:
    return os.environ.get("CAPO_QUIET", "") not in ("", "0")


def progress(total=None, desc: str = "", unit: str = "it", disable: bool = False, **kw):
    from tqdm.auto import tqdm

    show = os.environ.get("CAPO_PROGRESS") == "1" or sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, disable=disable or quiet_env() or not show,
                dynamic_ncols=True, smoothing=0.1, **kw)
