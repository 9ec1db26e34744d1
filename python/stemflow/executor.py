"""Offline work beyond one machine, on Dask (as LiberTEM scales offline work).

``Context(executor=DaskExecutor.connect("tcp://scheduler:8786"))`` splits a data set's
frames into parts; each Dask worker opens the file itself (a shared filesystem: the same
path on every node) and runs stemflow's engine on its part — reading only that byte range
— with the built-in and Python UDFs; the client merges the parts: nav values by position,
sig and single buffers of built-ins added (statistics by Chan et al.'s pairwise formula),
Python UDFs' buffers through their own ``merge``.

Live processing stays on the machine that receives the detector's stream.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from . import _native
from ._runner import PartitionRunner
from .udf import UDFException, _is_builtin

__all__ = ["DaskExecutor"]


def _open(load: dict):
    if "memory" in load:
        return _native.memory_dataset(load["memory"].reshape(-1), load["nav"], load["sig"])
    return _native.open_dataset(**load)


def _run_part(load: dict, udfs, roi, start: int, end: int, threads):
    """On a Dask worker: frames ``start..end`` of the data set through the engine."""
    from .api import _Plan

    native = _open(load)
    plan = _Plan(udfs, native.nav_shape, native.sig_shape, native.dtype, roi)
    summary = _native.run_dataset(
        native, plan.builtins, plan.runners, roi, None, 0.5, threads, None, (start, end)
    )
    return {
        "engine": [
            {k: (kind, unit, dt, np.asarray(v)) for k, (kind, unit, dt, v) in r.items()}
            for r in summary["results"]
        ],
        "python": [r.merged for r in plan.runners],
        "frames": summary["frames_processed"],
        "damaged": list(summary["damaged"]),
    }


class DaskExecutor:
    """Runs offline partitions on a ``dask.distributed`` cluster.

    Parameters
    ----------
    client : dask.distributed.Client
    parts_per_worker : int
        Parts of the data set per worker (more parts balance uneven nodes; each part is one
        engine run reading its own frames).
    threads : int, optional
        Engine threads per part on a worker (default: the worker's cores).
    """

    def __init__(self, client, parts_per_worker: int = 2, threads: int | None = None, cluster=None):
        self.client = client
        self.parts_per_worker = parts_per_worker
        self.threads = threads
        self._cluster = cluster

    @classmethod
    def connect(cls, scheduler_uri: str, **kwargs) -> DaskExecutor:
        """An executor on the scheduler at ``scheduler_uri`` (``tcp://host:8786``)."""
        from dask.distributed import Client

        return cls(Client(scheduler_uri), **kwargs)

    @classmethod
    def make_local(cls, n_workers: int = 2, threads_per_worker: int = 1, **kwargs) -> DaskExecutor:
        """A ``LocalCluster`` of ``n_workers`` processes on this machine."""
        from dask.distributed import Client, LocalCluster

        cluster = LocalCluster(
            n_workers=n_workers,
            threads_per_worker=threads_per_worker,
            processes=True,
            dashboard_address=None,
        )
        return cls(Client(cluster), cluster=cluster, **kwargs)

    def close(self) -> None:
        """Closes the client (and a local cluster this executor made)."""
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def _workers(self) -> int:
        return max(len(self.client.scheduler_info().get("workers", {})), 1)

    def run(self, ctx, dataset, udfs, roi, progress) -> Iterator:
        """Runs ``udfs`` over ``dataset`` on the cluster; yields the final results."""
        from .api import UDFResults, _Plan, _roi_mask

        if dataset._load is None:
            raise UDFException("this data set cannot be opened on a Dask worker")
        for u in udfs:
            if type(u).__name__ == "RecordUDF" and _is_builtin(u):
                raise UDFException("RecordUDF writes one file from one process: run it inline")
        nav, sig = dataset.nav_shape, dataset.sig_shape
        mask = _roi_mask(roi, nav)
        frames = int(dataset._native.frames)
        n_parts = max(1, min(frames, self._workers() * self.parts_per_worker))
        bounds = np.linspace(0, frames, n_parts + 1).astype(int)
        futures = [
            self.client.submit(
                _run_part, dataset._load, udfs, mask, int(a), int(b), self.threads, pure=False
            )
            for a, b in zip(bounds[:-1], bounds[1:])
            if b > a
        ]
        parts = self.client.gather(futures)
        # The client's plan: the built-ins' result makers and the Python UDFs' merged
        # buffers (allocated and preprocessed as a worker's are), into which parts merge.
        plan = _Plan(udfs, nav, sig, dataset._native.dtype, mask)
        engine = []
        for i, (kind, j) in enumerate(plan.slots):
            if kind == "builtin":
                engine.append(udfs[i]._merge_raw([p["engine"][j] for p in parts]))
        for j, runner in enumerate(plan.runners):
            _merge_python(runner, [p["python"][j] for p in parts], bounds, mask)
        done = sum(p["frames"] for p in parts)
        yield UDFResults(plan.results(engine, final=True), done, _damage_all(plan, mask), True)


def _damage_all(plan, mask):
    d = np.ones(plan.nav_shape, dtype=bool)
    return d if mask is None else mask.copy()


def _merge_python(runner: PartitionRunner, parts: list[dict], bounds, mask) -> None:
    """Merges the parts' buffers into ``runner``'s with the UDF's own ``merge``: per part,
    the nav slice of the frames it processed, and its sig and single buffers."""
    from .udf import _Views

    for (a, b), merged in zip(zip(bounds[:-1], bounds[1:]), parts):
        if b <= a:
            continue
        if mask is None:
            start, n = int(a), int(b - a)
        else:
            flat = mask.reshape(-1)
            start, n = int(flat[:a].sum()), int(flat[a:b].sum())
            if n == 0:
                continue
        dest = _Views(runner.nav_view(runner.merged, start, n), {})
        src = _Views(runner.nav_view(merged, start, n), {})
        runner.udf.merge(dest, src)
