"""Datasets: readers and data specs, the partial-label protocol, splits, transforms, torch datasets, statistics."""

from hst.data.base import DataError, MultiLabelData
from hst.data.partial import SCHEMES, make_partial, partial_stats
from hst.data.spec import load_dataset

__all__ = ["SCHEMES", "DataError", "MultiLabelData", "load_dataset", "make_partial", "partial_stats"]
