"""Shared fixtures: the real recordings in ../shared/data (beside the repository, or where
STEMFLOW_SHARED_DATA points), and helpers."""

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("STEMFLOW_SHARED_DATA", REPO.parent / "shared" / "data"))
MERLIN = DATA / "merlin" / "Merlin_Single_Quad"


@pytest.fixture(scope="session")
def merlin_9():
    """A real 9-frame 256 × 256 12-bit Merlin recording (.hdr path)."""
    p = MERLIN / "Single_9_Frame_CounterDepth_12_Rows_256.hdr"
    assert p.exists(), f"the shared test data is missing: {p}"
    return p


@pytest.fixture(scope="session")
def reference():
    import json

    return json.loads((DATA / "merlin" / "reference.json").read_text())


@pytest.fixture
def data():
    """A 7 × 9 scan of 24 × 40 uint16 frames with the full 12-bit range."""
    rng = np.random.default_rng(7)
    return rng.integers(0, 4096, size=(7, 9, 24, 40), dtype=np.uint16)
