"""stemflow's recordings open in the readers microscopists use, with no options.

HyperSpy (``hs.load``, RosettaSciIO's hspy reader), py4DSTEM (``py4DSTEM.read``, EMD 1.0
through emdfile) and LiberTEM (``ctx.load("auto")``) each open the recording of a simulated
scan as 4-D data with its calibration, and h5py with ``hdf5plugin`` decodes a
bitshuffle-LZ4 recording written by stemflow's own encoder. All packages come from PyPI
(pinned in ``scripts/test-python.sh``).
"""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest

from stemflow.api import LiveContext
from stemflow.udf.sum import SumUDF

NAV = (8, 12)
STEP_NM = 0.5  # the embedded simulated profile's [scan] step_nm


def _record(tmp_path, compression=None, name="scan.hspy"):
    """One simulated scan recorded into ``tmp_path / name``; returns the path and the sum."""
    path = tmp_path / name
    with LiveContext() as ctx, ctx.make_connection("simulated").open() as conn:
        aq = ctx.make_acquisition(conn=conn, nav_shape=NAV, output=path, compression=compression)
        res = ctx.run_udf(dataset=aq, udf=SumUDF())
    assert aq.record["exit_status"] == "completed"
    return path, np.asarray(res["intensity"].data)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    return _record(tmp_path_factory.mktemp("readers"))


def test_hyperspy_loads_one_calibrated_4d_signal(recording):
    import hyperspy.api as hs

    path, summed = recording
    s = hs.load(str(path))
    assert s.axes_manager.navigation_shape == (NAV[1], NAV[0])
    assert s.axes_manager.signal_shape == (256, 256)
    nav = s.axes_manager.navigation_axes
    sig = s.axes_manager.signal_axes
    assert [a.units for a in nav] == ["nm", "nm"]
    assert [a.scale for a in nav] == [STEP_NM, STEP_NM]
    assert {a.name for a in nav} == {"x", "y"}
    # 55 µm pixels at 0.1 m camera length and 200 kV: 0.55 mrad, 0.02193 1/Å per pixel.
    assert all(a.units == "1/Å" for a in sig)
    assert sig[0].scale == pytest.approx(0.55e-3 / 0.025079, rel=1e-3)
    tem = s.metadata.Acquisition_instrument.TEM
    assert tem.beam_energy == pytest.approx(200.0)
    assert tem.convergence_angle == pytest.approx(10.0)
    assert tem.camera_length == pytest.approx(10.0)  # cm
    assert s.metadata.Signal.signal_type == "electron_diffraction"
    # The frames are the recorded ones: their sum is the live run's.
    assert np.array_equal(np.asarray(s.data).sum(axis=(0, 1)), summed)


def test_py4dstem_reads_a_datacube_with_its_calibration(recording):
    import py4DSTEM

    path, summed = recording
    emd = path.with_suffix(".emd")
    assert emd.is_symlink() and os.readlink(emd) == path.name
    dc = py4DSTEM.read(str(emd))
    assert type(dc).__name__ == "DataCube"
    assert dc.shape == (*NAV, 256, 256)
    cal = dc.calibration
    assert cal.get_R_pixel_size() == pytest.approx(STEP_NM)
    assert cal.get_R_pixel_units() == "nm"
    assert cal.get_Q_pixel_units() == "A^-1"
    assert cal.get_Q_pixel_size() == pytest.approx(0.55e-3 / 0.025079, rel=1e-3)
    # The datacube is registered with its calibration: its dims carry the units and
    # steps (shown by its repr), not pixels.
    assert dc.dim_units == ("nm", "nm", "A^-1", "A^-1")
    assert dc.dims[0][1] == pytest.approx(STEP_NM)
    assert dc.dims[2][1] == pytest.approx(cal.get_Q_pixel_size())
    assert "pixels" not in repr(dc)
    assert np.array_equal(np.asarray(dc.data).sum(axis=(0, 1)), summed)


def test_libertem_auto_finds_the_frames(recording):
    import libertem.api as lt
    from libertem.udf.sum import SumUDF as LtSumUDF

    path, summed = recording
    with lt.Context.make_with("inline") as ctx:
        ds = ctx.load("auto", path=str(path))
        assert tuple(ds.shape) == (*NAV, 256, 256)
        res = ctx.run_udf(dataset=ds, udf=LtSumUDF())
    assert np.array_equal(res["intensity"].data, summed)


def test_one_frames_dataset_under_every_readers_path(recording):
    path, _ = recording
    with h5py.File(path, "r") as f:
        frames = f["/entry/data/frames"]
        for other in ("/Experiments/scan/data", "/4DSTEM/datacube/data"):
            # Hard links: the same object, no copy.
            assert f[other].id == frames.id
        assert f.attrs["stemflow_layout_version"] == 2
        assert f["/entry/instrument/calibration/scan_step"][()] == STEP_NM
        # Deflate with shuffle by default: libhdf5's own filters, no plugin.
        assert frames.compression == "gzip" and frames.shuffle


def test_bslz4_recordings_decode_with_hdf5plugin(tmp_path):
    import hdf5plugin  # noqa: F401  (registers filter 32008 with h5py)

    path, summed = _record(tmp_path, compression="bslz4")
    with h5py.File(path, "r") as f:
        frames = f["/entry/data/frames"]
        assert "32008" in frames._filters
        data = frames[()]
    assert np.array_equal(data.sum(axis=(0, 1)), summed)
