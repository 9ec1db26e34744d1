"""Detector-specific helpers under LiberTEM-live's module paths."""
