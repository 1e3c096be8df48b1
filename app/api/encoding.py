"""Answers serialised in one step by pydantic-core.

A route that returns a dict has FastAPI validate it against the response model, turn it back into Python
objects and then `json.dumps` them: for a /classify answer with its 512-float embedding that last step
alone is ~170 µs of Python per request. `answer` validates against the same model and writes the JSON
bytes in Rust (~25 µs); the route keeps `response_model` for the OpenAPI document.
"""

from __future__ import annotations

from fastapi.responses import Response
from pydantic import BaseModel


def answer(model: type[BaseModel], body: dict, exclude_unset: bool = False) -> Response:
    """`body` validated as `model` and serialised to a JSON response."""
    return Response(
        model.model_validate(body).model_dump_json(exclude_unset=exclude_unset), media_type="application/json"
    )
