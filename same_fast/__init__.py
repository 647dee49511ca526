"""same-fast: the SAME method (source-free adaptation for medical image enhancement), fast.

The Python API (see docs/API.md)::

    import same_fast
    model = same_fast.load_model("fundus-lite")      # an Enhancer
    out = model.enhance(image)                       # numpy uint8/uint16, same shape and dtype
    adapted = model.adapt(clinic_images, steps=200)  # SAME offline, a new Enhancer
    backend = same_fast.create_backend("auto", model.network)

Names are imported on first use, so ``import same_fast`` stays light.
"""
from __future__ import annotations

from typing import Any

from same_fast.errors import SameFastError

__version__ = "0.1.0"
__all__ = ["AdaptConfig", "Enhancer", "SameFastError", "__version__", "create_backend",
           "enhance_array", "load_model"]

# public name -> the module that defines it
_LAZY = {"AdaptConfig": "same_fast.adapt.config", "Enhancer": "same_fast.enhancer",
         "enhance_array": "same_fast.enhancer", "load_model": "same_fast.enhancer",
         "create_backend": "same_fast.engine.select"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'same_fast' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
