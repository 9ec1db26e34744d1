"""Writes docs/python/api.md, the API reference, from the package's docstrings.

Usage: python api_reference.py [OUT]  (with stemflow installed). The test suite checks that
the committed reference is what this prints (tests/test_docs.py).
"""

from __future__ import annotations

import importlib
import inspect
import sys
from pathlib import Path

MODULES = [
    "stemflow.api",
    "stemflow.udf",
    "stemflow.udf.sum",
    "stemflow.udf.sumsigudf",
    "stemflow.udf.masks",
    "stemflow.udf.com",
    "stemflow.udf.stddev",
    "stemflow.udf.raw",
    "stemflow.udf.record",
    "stemflow.masks",
    "stemflow.live",
    "stemflow.sim",
    "stemflow.executor",
    "stemflow.detectors.merlin.control",
    "stemflow.viz",
]


def _sig(obj) -> str:
    try:
        return str(inspect.signature(obj))
    except (TypeError, ValueError):
        return "(...)"


def _doc(obj) -> str:
    return inspect.cleandoc(obj.__doc__ or "").strip()


def render() -> str:
    out = [
        "# Python API reference",
        "",
        "Generated from the docstrings by `python/tools/api_reference.py`.",
        "",
    ]
    for name in MODULES:
        mod = importlib.import_module(name)
        out += [f"## `{name}`", "", _doc(mod), ""]
        names = getattr(mod, "__all__", None) or [
            n
            for n, v in vars(mod).items()
            if not n.startswith("_") and getattr(v, "__module__", None) == name
        ]
        for n in names:
            obj = getattr(mod, n)
            if inspect.isclass(obj):
                out += [f"### class `{n}{_sig(obj)}`", "", _doc(obj), ""]
                for m, f in vars(obj).items():
                    if m.startswith("_") or not (
                        inspect.isfunction(f)
                        or isinstance(f, (classmethod, staticmethod, property))
                    ):
                        continue
                    target = f.fget if isinstance(f, property) else getattr(f, "__func__", f)
                    sig = "" if isinstance(f, property) else _sig(target)
                    doc = _doc(target)
                    if doc:
                        out += [f"#### `{n}.{m}{sig}`", "", doc, ""]
            elif callable(obj):
                out += [f"### `{n}{_sig(obj)}`", "", _doc(obj), ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    text = render()
    if len(sys.argv) > 1:
        Path(sys.argv[1]).write_text(text)
    else:
        sys.stdout.write(text)
