"""The published JSON Schemas are exactly what the models generate."""

from __future__ import annotations

import json

from schemas.export import JSON_DIR, rendered


def test_json_schemas_match_the_models() -> None:
    expected = rendered()
    on_disk = {p.name: p.read_text(encoding="utf-8") for p in JSON_DIR.glob("*.json")}
    stale = sorted(name for name in expected if on_disk.get(name) != expected[name])
    extra = sorted(set(on_disk) - set(expected))
    assert not stale and not extra, (
        f"schemas/json drifted (stale {stale}, extra {extra}): run `python -m schemas.export`"
    )


def test_event_schema_names_every_type() -> None:
    schema = json.loads((JSON_DIR / "event.schema.json").read_text(encoding="utf-8"))
    mapping = schema["discriminator"]["mapping"]
    assert sorted(mapping) == sorted(
        ["click", "purchase", "review", "support_contact", "survey", "loyalty", "consent"]
    )
