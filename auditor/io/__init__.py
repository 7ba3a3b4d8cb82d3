"""Dataset readers and writers. ``open_dataset(path)`` detects the layout and returns a reader."""

from .base import READERS, DatasetReader, Sample, ShardRef  # noqa: F401
from .detect import detect_layout, open_dataset  # noqa: F401
from .writers import WebDatasetWriter  # noqa: F401
