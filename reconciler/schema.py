"""JSON Schemas of the files users write (and of the status the reconciler publishes), generated from the models (checked for staleness in tests)."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.results.document import StatusDoc
from reconciler.spec.models import MachineDefaults, Production

SCHEMAS = {
    "production.schema.json": Production,
    "defaults.schema.json": MachineDefaults,
    # what the reconciler publishes on the results branch (productions/<name>/status.json)
    "status.schema.json": StatusDoc,
}


def render(model: type) -> str:
    schema = model.model_json_schema()  # type: ignore[attr-defined]
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    out = []
    for name, model in SCHEMAS.items():
        path = directory / name
        path.write_text(render(model), encoding="utf-8")
        out.append(path)
    return out
