"""Offline work on a Dask LocalCluster of two worker processes: each runs the engine on its
own frames of the file; the merged results equal the inline run's and NumPy's."""

import numpy as np
import pytest
from udfs import MaxUDF, PartitionCoords, SumSigNav

from stemflow.api import Context
from stemflow.executor import DaskExecutor
from stemflow.masks import circular
from stemflow.udf.masks import ApplyMasksUDF
from stemflow.udf.stddev import StdDevUDF
from stemflow.udf.sum import SumUDF
from stemflow.udf.sumsigudf import SumSigUDF


@pytest.fixture(scope="module")
def dask_ctx():
    pytest.importorskip("dask.distributed")
    ex = DaskExecutor.make_local(n_workers=2, threads_per_worker=1)
    assert len(ex.client.scheduler_info()["workers"]) == 2
    with Context(executor=ex) as ctx:
        yield ctx


def udfs(sig):
    return [
        SumUDF(),
        SumSigUDF(),
        MaxUDF(),
        StdDevUDF(),
        SumSigNav(),
        PartitionCoords(),
        ApplyMasksUDF(mask_factories=[lambda: circular(sig[1] / 2, sig[0] / 2, sig[1], sig[0], 9)]),
    ]


def test_dask_results_equal_inline_and_numpy(dask_ctx, tmp_path, data):
    np.save(tmp_path / "d.npy", data)
    ds = dask_ctx.load("npy", path=tmp_path / "d.npy")
    got = dask_ctx.run_udf(dataset=ds, udf=udfs(data.shape[2:]))
    f = data.astype(np.float64)
    assert np.array_equal(got[0]["intensity"].data, f.sum(axis=(0, 1)))
    assert np.array_equal(got[1]["intensity"].data, f.sum(axis=(2, 3)))
    assert np.array_equal(got[2]["maxbuf"].data, data.max(axis=(0, 1)))
    flat = f.reshape(-1, *data.shape[2:])
    assert np.allclose(got[3]["var"].data, flat.var(axis=0), rtol=1e-10)
    assert np.allclose(got[3]["mean"].data, flat.mean(axis=0), rtol=1e-12)
    assert got[3]["num_frames"].data[0] == 63
    assert np.array_equal(got[4]["intensity"].data, f.sum(axis=(2, 3)))
    assert np.array_equal(got[5]["pixel"].data, data[:, :, 1, 2])
    with Context() as inline:
        ref = inline.run_udf(
            dataset=inline.load("npy", path=tmp_path / "d.npy"), udf=udfs(data.shape[2:])
        )
    for a, b in zip(got, ref):
        for k in b:
            assert np.allclose(a[k].data, b[k].data, equal_nan=True), k


def test_dask_with_a_roi_on_a_real_merlin_recording(dask_ctx, merlin_9):
    roi = np.zeros((3, 3), bool)
    roi[1:, 1:] = True
    ds = dask_ctx.load("mib", path=merlin_9, nav_shape=(3, 3))
    got = dask_ctx.run_udf(dataset=ds, udf=[SumSigUDF(), SumSigNav(), MaxUDF()], roi=roi)
    with Context() as inline:
        ref = inline.run_udf(
            dataset=inline.load("mib", path=merlin_9, nav_shape=(3, 3)),
            udf=[SumSigUDF(), SumSigNav(), MaxUDF()],
            roi=roi,
        )
    assert np.array_equal(got[0]["intensity"].data, ref[0]["intensity"].data, equal_nan=True)
    assert np.array_equal(got[1]["intensity"].raw_data, ref[1]["intensity"].raw_data)
    assert np.array_equal(got[2]["maxbuf"].data, ref[2]["maxbuf"].data)
