"""Reading image uploads: multipart `file(s)` or a raw `image/*` body.

The byte limit is enforced while the body streams in, chunked or not: the request gets 413 as soon as it
passes the limit (plus `FORM_ALLOWANCE` for multipart framing and fields), and nothing beyond it is read
or spooled to disk. Multipart bodies are parsed here, from that counted stream, not by `request.form()`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from starlette.datastructures import FormData, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from app.errors import (
    ImageTooLargeError,
    InvalidParametersError,
    MalformedBodyError,
    NftlensError,
    UnsupportedMediaError,
)

ACCEPTED_PART_TYPES = ("image/", "application/octet-stream")
FORM_ALLOWANCE = 64 * 1024  # multipart framing (boundaries, part headers) and small fields
MAX_FORM_FIELDS = 64  # non-file parts in one multipart body
# starlette's MultiPartException texts for its limits: more files than the schema's maxItems is a bad
# parameter (422); more fields or a bigger field than the body may hold is too large (413)
_TOO_MANY_FILES, _TOO_LARGE = "Too many files", ("Too many fields", "Part exceeded")


async def _limited(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The request body, raising 413 as soon as it passes `limit` bytes (before, if Content-Length says so)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ImageTooLargeError(f"request body is {declared} bytes; the limit is {limit}")
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ImageTooLargeError(f"request body is over the {limit}-byte limit")
        yield chunk


async def _read_form(request: Request, limit: int, max_files: int) -> FormData:
    """Parse a multipart body of at most `limit` bytes; the caller closes the returned form."""
    parser = MultiPartParser(
        request.headers,
        _limited(request, limit),
        max_files=max_files,
        max_fields=MAX_FORM_FIELDS,
        max_part_size=limit,
    )
    try:
        return await parser.parse()  # closes its spooled files itself when it fails
    except MultiPartException as exc:
        if exc.message.startswith(_TOO_MANY_FILES):
            raise InvalidParametersError(exc.message) from exc
        if exc.message.startswith(_TOO_LARGE):
            raise ImageTooLargeError(exc.message) from exc
        raise MalformedBodyError(f"cannot parse the multipart body: {exc.message}") from exc


def _content_type(request: Request) -> str:
    return request.headers.get("content-type", "").lower()


async def _read_part(part: UploadFile, limit: int) -> bytes:
    if part.content_type and not part.content_type.lower().startswith(ACCEPTED_PART_TYPES):
        raise UnsupportedMediaError(
            f"part {part.filename!r} has type {part.content_type}; send an image/* file"
        )
    data = await part.read(limit + 1)
    if len(data) > limit:
        raise ImageTooLargeError(f"file {part.filename!r} is over the {limit}-byte limit")
    return data


def _fields(form: FormData) -> dict[str, str]:
    return {k: v for k, v in form.multi_items() if isinstance(v, str)}


async def read_upload(request: Request, limit: int, fields_bytes: int = 0) -> tuple[bytes, dict[str, str]]:
    """One image from multipart `file` or the raw body, and the other form fields (`fields_bytes`: room
    for them beyond the image)."""
    ctype = _content_type(request)
    if ctype.startswith("multipart/form-data"):
        form = await _read_form(request, limit + FORM_ALLOWANCE + fields_bytes, max_files=1)
        try:
            part = form.get("file")
            if not isinstance(part, UploadFile):
                raise InvalidParametersError("multipart body needs a `file` field holding the image")
            return await _read_part(part, limit), _fields(form)
        finally:
            await form.close()
    if ctype.startswith(ACCEPTED_PART_TYPES):
        return b"".join([chunk async for chunk in _limited(request, limit)]), {}
    raise UnsupportedMediaError(
        f"content type {ctype or '(none)'} is not accepted: send multipart/form-data with a `file` field, "
        "or a raw image/* body"
    )


async def read_uploads(
    request: Request, limit: int, max_files: int, fields_bytes: int = 0
) -> tuple[list[tuple[str, bytes | NftlensError]], dict[str, str]]:
    """Several images from multipart `files` (a bad part becomes its error, not the request's) and the other
    form fields. `limit` bounds the whole body's image bytes."""
    if not _content_type(request).startswith("multipart/form-data"):
        raise UnsupportedMediaError("send multipart/form-data with one or more `files` fields")
    form = await _read_form(request, limit + FORM_ALLOWANCE + fields_bytes, max_files=max_files)
    try:
        parts = [p for p in form.getlist("files") if isinstance(p, UploadFile)]
        if not parts:
            raise InvalidParametersError("multipart body needs one or more `files` fields")
        out: list[tuple[str, bytes | NftlensError]] = []
        for part in parts:
            try:
                out.append((part.filename or "", await _read_part(part, limit)))
            except NftlensError as exc:
                out.append((part.filename or "", exc))
        return out, _fields(form)
    finally:
        await form.close()


_BINARY = {"type": "string", "format": "binary"}


def _body_doc(multipart: dict, required: list[str], raw: bool, json_fields: dict[str, dict]) -> dict:
    schema = {"type": "object", "properties": {**multipart, **json_fields}, "required": required}
    form: dict = {"schema": schema}
    if json_fields:
        form["encoding"] = {name: {"contentType": "application/json"} for name in json_fields}
    content = {"multipart/form-data": form}
    if raw:
        content["image/*"] = {"schema": _BINARY}
    return {"requestBody": {"required": True, "content": content}}


def image_body_doc(json_fields: dict[str, dict] | None = None) -> dict:
    """OpenAPI for one image: multipart `file` (plus JSON-valued form fields) or a raw image/* body. The
    routes read the body by hand, so FastAPI cannot infer it."""
    file = {**_BINARY, "description": "the image: PNG, JPEG/MPO, WebP, GIF or BMP"}
    return _body_doc({"file": file}, ["file"], True, json_fields or {})


def images_body_doc(json_fields: dict[str, dict] | None = None, required: tuple[str, ...] = ()) -> dict:
    """OpenAPI for several images: multipart `files` (plus JSON-valued form fields)."""
    files = {"type": "array", "items": _BINARY, "minItems": 1, "description": "the images, one part each"}
    return _body_doc({"files": files}, ["files", *required], False, json_fields or {})
