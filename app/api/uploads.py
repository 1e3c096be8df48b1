"""Reading image uploads: multipart `file(s)` or a raw `image/*` body, with size and type checks."""

from __future__ import annotations

from fastapi import Request
from starlette.datastructures import UploadFile

from app.errors import ImageTooLargeError, NftlensError, UnsupportedMediaError

ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")


class MissingFieldError(NftlensError):
    status_code = 422
    error = "invalid_parameters"


def _check_declared_length(request: Request, limit: int) -> None:
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ImageTooLargeError(f"request body is {declared} bytes; the limit is {limit}")


async def _read_part(part: UploadFile, limit: int) -> bytes:
    if part.content_type and not part.content_type.startswith(ACCEPTED_PART_TYPES):
        raise UnsupportedMediaError(
            f"part {part.filename!r} has type {part.content_type}; send an image/* file"
        )
    data = await part.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLargeError(f"file {part.filename!r} is over the {limit}-byte limit")
    return data


async def _read_body(request: Request, limit: int) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ImageTooLargeError(f"request body is over the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, limit: int) -> tuple[bytes, dict[str, str]]:
    """One image from `file` (multipart) or the raw body; also returns the other form fields."""
    _check_declared_length(request, limit)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=8)
        part = form.get("file")
        if not isinstance(part, UploadFile):
            raise MissingFieldError("multipart body needs a `file` field holding the image")
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        return await _read_part(part, limit), fields
    if ctype.startswith(ACCEPTED_PART_TYPES):
        return await _read_body(request, limit), {}
    raise UnsupportedMediaError(
        f"content type {ctype or '(none)'} is not accepted: send multipart/form-data with a `file` field, or a raw image/* body"
    )


async def read_uploads(
    request: Request, limit: int, max_files: int
) -> list[tuple[str, bytes | NftlensError]]:
    """Several images from multipart `files`; a bad part becomes its error, not the request's."""
    _check_declared_length(request, limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise UnsupportedMediaError("send multipart/form-data with one or more `files` fields")
    form = await request.form(max_files=max_files, max_fields=8)
    parts = [p for p in form.getlist("files") if isinstance(p, UploadFile)]
    if not parts:
        raise MissingFieldError("multipart body needs one or more `files` fields")
    out: list[tuple[str, bytes | NftlensError]] = []
    for part in parts:
        try:
            out.append((part.filename or "", await _read_part(part, limit)))
        except NftlensError as exc:
            out.append((part.filename or "", exc))
    return out


def image_body_doc(field: str = "file", many: bool = False) -> dict:
    """OpenAPI description of the request body (read by hand above, so FastAPI cannot infer it)."""
    item = {"type": "string", "format": "binary"}
    props = {field: {"type": "array", "items": item} if many else item}
    if not many:
        props["metadata"] = {
            "type": "string",
            "description": "JSON object (PUT /tokens only): name, image_url, attributes",
        }
    content = {
        "multipart/form-data": {"schema": {"type": "object", "properties": props, "required": [field]}}
    }
    if not many:
        content["image/*"] = {"schema": item}
    return {"requestBody": {"required": True, "content": content}}
