"""Quantum Detectors Merlin helpers (``libertem_live.detectors.merlin``)."""

from .control import MerlinControl

__all__ = ["MerlinControl"]
