"""Detector simulators for notebooks and tests without hardware: the same simulators as
``stemflow sim merlin|dectris|tpx3``, speaking the detectors' real protocols on loopback.

>>> with MerlinSimulator(nav_shape=(32, 32), sig_shape=(256, 256)) as sim:
...     conn = ctx.make_connection("merlin").open(data_port=sim.data_port,
...                                               api_port=sim.control_port)
"""

from __future__ import annotations

import os

from . import _native

__all__ = ["DectrisSimulator", "MerlinSimulator", "Tpx3Simulator"]


class _Simulator:
    _detector = ""

    def __init__(
        self,
        nav_shape=(16, 16),
        sig_shape=(256, 256),
        recording=None,
        fast: bool = True,
        host: str = "127.0.0.1",
        ports=(0, 0),
    ):
        rec = None if recording is None else os.fspath(recording)
        self._sim = _native.start_simulator(
            self._detector, tuple(nav_shape), tuple(sig_shape), rec, fast, host, tuple(ports)
        )
        (self.host, self._p0), (_, self._p1) = self._sim.addrs

    @property
    def served(self) -> tuple[int, int, int]:
        """``(acquisitions, frames, bytes)`` served so far."""
        return self._sim.served

    def stop(self) -> None:
        """Stops serving (idempotent)."""
        self._sim.stop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False


class MerlinSimulator(_Simulator):
    """A Quantum Detectors Merlin: control (TCP, ``control_port``) and data
    (``data_port``) ports, MQ1 frames of a synthetic specimen or of a ``.hdr``/``.mib``
    recording.

    Parameters
    ----------
    nav_shape, sig_shape : tuple of int
        Frames per acquisition (scan positions) and frame shape, pixels.
    recording : path, optional
        A Merlin ``.hdr``/``.mib`` recording to serve instead.
    fast : bool
        As fast as the receiver takes them (True) or at the frame time.
    host : str
        Address to bind (loopback by default).
    ports : (int, int)
        Control and data ports; 0 picks free ones.

    Raises
    ------
    RuntimeError
        A port in use, a recording that cannot be read.
    """

    _detector = "merlin"

    @property
    def control_port(self) -> int:
        return self._p0

    @property
    def data_port(self) -> int:
        return self._p1


class DectrisSimulator(_Simulator):
    """A DECTRIS detector: SIMPLON REST API (``api_port``) and zmq stream
    (``stream_port``); parameters as :class:`MerlinSimulator` (``recording``: a
    ``*_master.h5``)."""

    _detector = "dectris"

    @property
    def api_port(self) -> int:
        return self._p0

    @property
    def stream_port(self) -> int:
        return self._p1


class Tpx3Simulator(_Simulator):
    """An ASI Timepix3 camera: the sparse CSR event stream (``data_port``, as LiberTEM-live
    reads it; every client that connects gets the scan, again and again) and a Serval REST
    emulation (``api_port``). Events of a synthetic specimen (about 410 per frame) or of a
    ``.tpx`` stream recording; parameters as :class:`MerlinSimulator` (``sig_shape``
    defaults to 512 × 512 here).
    """

    _detector = "tpx3"

    def __init__(self, nav_shape=(16, 16), sig_shape=(512, 512), **kwargs):
        super().__init__(nav_shape=nav_shape, sig_shape=sig_shape, **kwargs)

    @property
    def api_port(self) -> int:
        return self._p0

    @property
    def data_port(self) -> int:
        return self._p1
