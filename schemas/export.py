"""Writes the JSON Schemas of the event models into `schemas/json/`.

Run `python -m schemas.export` after changing a model; `tests/test_schemas.py` fails while the
committed files drift from the models, so emitters never validate against a stale contract.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pydantic import BaseModel

from schemas.events import EVENT_ADAPTER, MODELS

JSON_DIR = Path(__file__).parent / "json"


def rendered() -> dict[str, str]:
    """File name -> exact file text for every schema this package publishes."""
    files = {
        f"{name}.schema.json": _dump(model.model_json_schema(), f"engage {name} event")
        for name, model in MODELS.items()
    }
    files["event.schema.json"] = _dump(EVENT_ADAPTER.json_schema(), "engage event (any type)")
    for name, model in _extra_models().items():
        files[f"{name}.schema.json"] = _dump(model.model_json_schema(), f"engage {name}")
    return files


def _extra_models() -> dict[str, type[BaseModel]]:
    """Records other than input events (decisions, nudges) register themselves here."""
    from schemas.erasure import RECORD_MODELS as ERASURE_MODELS
    from schemas.nudges import RECORD_MODELS

    return {**RECORD_MODELS, **ERASURE_MODELS}


def _dump(schema: dict, title: str) -> str:
    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "title": title, **schema}
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def main() -> int:
    JSON_DIR.mkdir(exist_ok=True)
    for name, text in rendered().items():
        (JSON_DIR / name).write_text(text, encoding="utf-8")
        print(f"wrote {JSON_DIR / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
