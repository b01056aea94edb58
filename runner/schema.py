"""The results.json contract: a JSON Schema (draft 2020-12) shipped in the package, printed by ``matrix-run schema``.

The schema is a file of its own (``runner/results.schema.json``, package data) so that it can be read, diffed and
used by tools that are not Python. Its ``$id`` ends with, and its ``schema`` property is the constant of,
``summary.SCHEMA_VERSION``; the tests hold the two together and validate what ``summary.write_results_json``
writes against it.
"""

from __future__ import annotations

import json
from importlib import resources

RESULTS_SCHEMA = "results.schema.json"


def results_schema_text() -> str:
    """The schema of results.json, as shipped (the file's exact text)."""
    return (resources.files("runner") / RESULTS_SCHEMA).read_text(encoding="utf-8")


def results_schema() -> dict[str, object]:
    """The schema of results.json, parsed."""
    data = json.loads(results_schema_text())
    assert isinstance(data, dict)
    return data
