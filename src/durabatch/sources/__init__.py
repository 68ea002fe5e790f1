"""Inputs: files (JSON lines, CSV, Parquet), HF datasets and Python iterables, read as blocks of records."""

from .base import BadRow, Block, Source, Wanted
from .files import open_source

__all__ = ["BadRow", "Block", "Source", "Wanted", "open_source"]
