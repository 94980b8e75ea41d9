"""The `$id` of every published JSON Schema, next to the schemas it names.

Here rather than in the processor so this package never imports the processor's layers: the
only thing it takes from `stream` is the release version, written once in stream/__init__.py.
The CloudEvents headers (`dataschema`) and `python -m schemas.export` both call `schema_id`.
"""

from __future__ import annotations

from stream import __version__


def schema_id(name: str) -> str:
    """The `$id` of a published JSON Schema (schemas/json/): a URN naming the record and the
    release whose schema it is, `urn:engage:schema:nudge:0.1.0`, so a consumer can tell which
    contract a record was written against (no network fetch is implied)."""
    return f"urn:engage:schema:{name}:{__version__}"
