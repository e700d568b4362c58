"""flyt-datacomp: FLYT data filtering (M-FLYT, E-FLYT, Soft Cap Sampling) for DataComp."""

from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

try:
    __version__ = _version("flyt-datacomp")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
