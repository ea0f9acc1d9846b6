"""hst-mlr: multi-label image recognition with partial labels (HST and baselines)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("hst-mlr")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0"

__all__ = ["__version__"]
