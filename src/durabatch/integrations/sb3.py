"""Moved: see `durabatch.loops.sb3`."""

from ..loops.sb3 import learn, resume

__all__ = ["learn", "resume"]
