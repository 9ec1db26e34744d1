"""A LiberTEM-live notebook runs on stemflow with only its imports changed, and gives the
results LiberTEM gives and NumPy gives on the same frames."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from stemflow.sim import MerlinSimulator

NOTEBOOK = Path(__file__).parent / "notebooks" / "libertem_live_notebook.py"


def ported(source: str) -> str:
    """The notebook with `libertem_live` and `libertem` imports replaced by `stemflow`."""
    return re.sub(r"\blibertem(_live)?\b", "stemflow", source)


def run(script: Path, args, timeout=300):
    p = subprocess.run(
        [sys.executable, str(script), *map(str, args)],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert p.returncode == 0, f"{script.name} failed:\n{p.stdout}\n{p.stderr}"


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, merlin_9):
    base = tmp_path_factory.mktemp("notebook")
    out = {}
    src = NOTEBOOK.read_text()
    for name, text in (("libertem", src), ("stemflow", ported(src))):
        d = base / name
        d.mkdir()
        script = d / "notebook.py"
        script.write_text(text)
        # The same synthetic frames for both (the simulator's specimen and seed are fixed).
        with MerlinSimulator(nav_shape=(6, 8), sig_shape=(128, 128), fast=True) as sim:
            run(script, [merlin_9, sim.control_port, sim.data_port, d])
        out[name] = (dict(np.load(d / "results.npz")), np.load(d / "live_frames.npy"))
    return out


def test_only_the_imports_differ():
    src = NOTEBOOK.read_text()
    changed = [(a, b) for a, b in zip(src.splitlines(), ported(src).splitlines()) if a != b]
    assert changed and all("import" in a for a, _ in changed), changed


def test_stemflow_gives_libertems_results(outputs):
    lt, _ = outputs["libertem"]
    sf, _ = outputs["stemflow"]
    assert set(lt) == set(sf)
    for k in lt:
        assert lt[k].shape == sf[k].shape, k
        assert np.allclose(lt[k], sf[k], rtol=1e-6, atol=1e-4, equal_nan=True), k


def test_stemflow_results_equal_numpy_on_the_same_frames(outputs, merlin_9):
    sf, frames = outputs["stemflow"]
    lt_frames = outputs["libertem"][1]
    assert np.array_equal(frames, lt_frames)
    assert frames.shape == (6, 8, 128, 128) and frames.sum() > 0
    assert np.array_equal(sf["live_sum"], frames.sum(axis=(0, 1)))
    assert np.array_equal(sf["live_max"], frames.max(axis=(0, 1)))
    assert np.array_equal(sf["live_framesum"], frames.sum(axis=(2, 3)))
    # Offline: the recording's frames as NumPy reads them (LiberTEM's reader agrees).
    from stemflow.api import Context
    from stemflow.udf.raw import PickUDF

    with Context() as ctx:
        ds = ctx.load("mib", path=merlin_9, nav_shape=(3, 3))
        f = ctx.run_udf(dataset=ds, udf=PickUDF(), roi=np.ones((3, 3), bool))
        off = f["intensity"].raw_data.reshape(3, 3, 256, 256).astype(np.float64)
    assert np.array_equal(sf["off_sum"], off.sum(axis=(0, 1)))
    assert np.array_equal(sf["off_sumsig"], off.sum(axis=(2, 3)))
    assert np.array_equal(sf["off_max"], off.max(axis=(0, 1)))
    assert np.allclose(sf["off_var"], off.reshape(9, -1).var(axis=0).reshape(256, 256))
