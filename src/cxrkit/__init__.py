"""cxrkit: thoracic disease detection on chest X-rays, from the raw dataset to a trusted model.

One folder per stage (docs/design.md): ``core`` ← ``data`` ← ``model`` ← ``train``/``evaluate`` ←
``use``/``report`` ← ``cli``.
"""

from __future__ import annotations

import warnings

__version__ = "0.1.0"

from cxrkit import _legacy
from cxrkit.core.errors import CxrkitError

_legacy.install()
warnings.filterwarnings("default", category=_legacy.CxrkitDeprecationWarning)

__all__ = ["CxrkitError", "__version__"]
