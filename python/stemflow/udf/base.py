"""LiberTEM's ``libertem.udf.base`` names."""

from . import UDF, BufferWrapper, UDFException, UDFMeta, UDFRunCancelled

__all__ = ["UDF", "BufferWrapper", "UDFException", "UDFMeta", "UDFRunCancelled"]
