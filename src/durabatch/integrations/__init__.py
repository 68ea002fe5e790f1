"""Moved to `durabatch.loops` (torch, sb3); these names stay importable from here."""
