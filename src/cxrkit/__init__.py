"""cxrkit: thoracic disease detection on chest X-rays, from the raw dataset to a trusted model."""

from __future__ import annotations

__version__ = "0.1.0"

from cxrkit.errors import CxrkitError

__all__ = ["CxrkitError", "__version__"]
