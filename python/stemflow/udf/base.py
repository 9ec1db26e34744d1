"""LiberTEM's ``libertem.udf.base`` names."""

from . import UDF, BufferWrapper, UDFMeta, UDFRunCancelled, UDFException  # noqa: F401

__all__ = ["UDF", "BufferWrapper", "UDFMeta", "UDFRunCancelled", "UDFException"]
