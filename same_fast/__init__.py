"""same-fast: the SAME method (source-free adaptation for medical image enhancement), fast."""
from same_fast.errors import SameFastError

__version__ = "0.1.0"
__all__ = ["SameFastError", "__version__"]
