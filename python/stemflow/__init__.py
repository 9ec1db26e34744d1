"""stemflow: live 4D-STEM processing on a Rust engine, with LiberTEM's Python API.

Modules: :mod:`stemflow.api` (``Context``, ``LiveContext``), :mod:`stemflow.udf` (the
``UDF`` base class and the built-in UDFs), :mod:`stemflow.masks` (mask factories),
:mod:`stemflow.sim` (detector simulators for notebooks without hardware),
:mod:`stemflow.executor` (Dask).
"""

from . import _native  # noqa: F401  (the extension module must load)

__version__ = "0.1.0"
__all__ = ["__version__"]
