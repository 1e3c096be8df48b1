"""POST /explain: an occlusion heatmap of why the model decided what it did (see `app.explain`)."""

from __future__ import annotations

import time
from typing import Literal

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from app.api.deps import get_service
from app.api.schemas import IMAGE_ERRORS, NAME_PATTERN, Explanation, errors
from app.api.similar import stored_image, stored_token
from app.api.uploads import image_body_doc, read_upload
from app.errors import InvalidParametersError
from app.explain import overlay, to_original
from app.preprocessing import encode
from app.service import Service

router = APIRouter(tags=["explain"])
COPY_OF_PATTERN = f"{NAME_PATTERN[:-1]}/{NAME_PATTERN[1:]}"  # collection/token_id
PNG_RESPONSE = {
    200: {
        "model": Explanation,
        "content": {"image/png": {}},
        "description": "the heatmap blended over the image (PNG), or the grid (format=json)",
    }
}


def _label_index(service: Service, target: str) -> int:
    labels = service.model.labels
    if target not in labels:
        raise InvalidParametersError(f"unknown target {target!r}; the model's labels are {', '.join(labels)}")
    return labels.index(target)


async def _original(service: Service, copy_of: str) -> tuple[str, str, np.ndarray]:
    """`collection/token_id` -> (collection, token_id, its stored instance vector)."""
    collection, _, token_id = copy_of.partition("/")  # the route's pattern guarantees both parts
    service.require_copies()
    token = await stored_token(service, collection, token_id)
    return collection, token_id, token.instance


@router.post(
    "/explain",
    response_model=None,
    responses={**PNG_RESPONSE, **errors(*IMAGE_ERRORS, 404, 409)},  # 503 also when the slots are full
    openapi_extra=image_body_doc(),
)
async def explain(
    request: Request,
    target: str | None = Query(
        None, description="the label to explain (one of the model's labels); default: the predicted one"
    ),
    copy_of: str | None = Query(
        None,
        pattern=COPY_OF_PATTERN,
        description="collection/token_id of a catalogued original: explain the copy match instead "
        "(`target` is then not used)",
        examples=["cryptopunks/7804"],
    ),
    side: Literal["query", "original"] = Query(
        "query", description="copy_of: heat on the uploaded image, or on the stored original"
    ),
    format: Literal["png", "json"] = Query("png", description="png: the overlay; json: the grid"),
    service: Service = Depends(get_service),
) -> Response | dict:
    """Which regions drove the decision: occlusion sensitivity, every patch of the network input blurred
    out in one batched ONNX call. Explains a label's calibrated probability (`target`, default the
    prediction) or, with `copy_of`, the copy score against a stored token, on the uploaded image or
    (`side=original`) on the stored original. The PNG is the image with the heatmap blended over it."""
    t0 = time.perf_counter()
    data, _ = await read_upload(request, service.settings.max_upload_bytes)
    with service.explain_slot():  # 503 when EXPLAIN_SLOTS heatmaps are already being computed
        if copy_of is None:
            label = None if target is None else _label_index(service, target)
            rgb, heat, label = await service.explain(data, label)
            kind, name = "class", service.model.labels[label]
        else:
            collection, token_id, reference = await _original(service, copy_of)
            kind, name = "copy", f"{collection}/{token_id}"
            if side == "original":
                # the stored image against the query's instance vector, in the query's best-matching view
                reference = await service.matching_instance(data, reference)
                data = await stored_image(service, collection, token_id)
            rgb, heat, _ = await service.explain(data, original=reference)
    ms = round((time.perf_counter() - t0) * 1000, 3)
    if format == "json":
        return {
            "model": service.model_label,
            "kind": kind,
            "target": name,
            "side": side if kind == "copy" else "query",
            "score": round(heat.score, 6),
            "input_size": service.model.manifest.input_size,
            "patch": heat.patch,
            "stride": heat.stride,
            "grid": np.round(heat.grid, 6).tolist(),
            "timings_ms": {"total": ms},
        }
    resize = service.model.manifest.preprocessing.resize
    png = await service.blocking(
        lambda: encode(overlay(rgb, to_original(heat.heat, rgb.shape[:2], resize)), "png")
    )
    headers = {"X-Explain-Target": name, "X-Explain-Score": f"{heat.score:.6f}", "X-Explain-Ms": str(ms)}
    return Response(png, media_type="image/png", headers=headers)
