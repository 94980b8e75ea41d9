"""Writes the JSON Schemas of the event models into `schemas/json/`.

Run `python -m schemas.export` after changing a model; `tests/schemas/test_schemas.py` fails
while the committed files drift from the models, so emitters never validate against a stale
contract.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.events import EVENT_ADAPTER, MODELS
from schemas.ids import schema_id

JSON_DIR = Path(__file__).parent / "json"


def rendered() -> dict[str, str]:
    """File name -> exact file text for every schema this package publishes.

    Generic over the models: an event type added to `MODELS` (or a record to
    `RECORD_MODELS`) gets its file, `$id` and examples without a change here.
    """
    files = {
        f"{name}.schema.json": _dump(model.model_json_schema(), f"engage {name} event", name)
        for name, model in MODELS.items()
    }
    union = EVENT_ADAPTER.json_schema()
    union["examples"] = [ex for model in MODELS.values() for ex in examples(model)]
    files["event.schema.json"] = _dump(union, "engage event (any type)", "event")
    for name, model in _extra_models().items():
        files[f"{name}.schema.json"] = _dump(model.model_json_schema(), f"engage {name}", name)
    return files


def examples(model: type[BaseModel]) -> list[dict]:
    """The valid examples a model publishes in its JSON Schema (empty if it has none)."""
    return list(model.model_json_schema().get("examples", []))


def _extra_models() -> dict[str, type[BaseModel]]:
    """Records other than input events (decisions, nudges) register themselves here."""
    from schemas.erasure import RECORD_MODELS as ERASURE_MODELS
    from schemas.nudges import RECORD_MODELS

    return {**RECORD_MODELS, **ERASURE_MODELS}


def _dump(schema: dict, title: str, name: str) -> str:
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": schema_id(name),
        "title": title,
        **schema,
    }
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    JSON_DIR.mkdir(exist_ok=True)
    for name, text in rendered().items():
        (JSON_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote {JSON_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
