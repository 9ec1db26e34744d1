"""The committed API reference is the one the docstrings give."""

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_api_reference_is_up_to_date():
    sys.path.insert(0, str(REPO / "python" / "tools"))
    import api_reference

    committed = (REPO / "docs" / "python" / "api.md").read_text()
    assert committed == api_reference.render(), (
        "docs/python/api.md is stale: run python python/tools/api_reference.py docs/python/api.md"
    )


def test_every_public_function_and_class_has_a_docstring():
    sys.path.insert(0, str(REPO / "python" / "tools"))
    import importlib
    import inspect

    import api_reference

    missing = []
    for name in api_reference.MODULES:
        mod = importlib.import_module(name)
        for n in getattr(mod, "__all__", []):
            obj = getattr(mod, n)
            if (inspect.isclass(obj) or callable(obj)) and not (obj.__doc__ or "").strip():
                missing.append(f"{name}.{n}")
    assert not missing, missing
