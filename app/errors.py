"""Typed errors. Each carries the HTTP status it maps to; the API turns them into `{error, detail}`."""

from __future__ import annotations


class NftlensError(Exception):
    """Base class: a problem the caller can act on."""

    status_code: int = 400
    error: str = "bad_request"
    retry_after: int | None = None  # seconds, sent as the Retry-After header (503s)

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail

    def body(self) -> dict:
        """The JSON error body: {error, detail}."""
        return {"error": self.error, "detail": self.detail}

    def item(self) -> dict:
        """The error as one item of a batch answer: {status, error, detail}."""
        return {"status": self.status_code, **self.body()}


class InvalidParametersError(NftlensError):
    """A parameter or form field is missing or wrong (not JSON of its schema, a repeated token, too many
    files) where FastAPI's own validation does not see it."""

    status_code = 422
    error = "invalid_parameters"


class MalformedBodyError(NftlensError):
    """The multipart body cannot be parsed."""

    status_code = 400
    error = "malformed_body"


class InvalidCursorError(NftlensError):
    """A pagination cursor that no page returned."""

    status_code = 400
    error = "invalid_cursor"


class InvalidImageError(NftlensError):
    """The bytes are not a decodable image (garbage, truncated, empty)."""

    status_code = 400
    error = "invalid_image"


class UnsupportedMediaError(NftlensError):
    """A real file, but of a type the service does not take."""

    status_code = 415
    error = "unsupported_media_type"


class ImageTooLargeError(NftlensError):
    """Over a size limit: body bytes, pixels (decompression-bomb guard) or metadata bytes."""

    status_code = 413
    error = "too_large"


class NotFoundError(NftlensError):
    status_code = 404
    error = "not_found"


class UnauthorizedError(NftlensError):
    status_code = 401
    error = "unauthorized"


class ConflictError(NftlensError):
    status_code = 409
    error = "conflict"


class NotReadyError(NftlensError):
    """The model or catalog is still loading, or the batching loop is restarting."""

    status_code = 503
    error = "not_ready"
    retry_after = 5


class ModelIntegrityError(NftlensError):
    """The model folder is incomplete, or model.onnx does not match the manifest's sha256."""

    status_code = 503
    error = "model_integrity"


class OverloadedError(NftlensError):
    """Too many requests waiting, or a request missed its deadline: retry after `retry_after` seconds."""

    status_code = 503
    error = "overloaded"

    def __init__(self, detail: str, retry_after: int = 1):
        super().__init__(detail)
        self.retry_after = retry_after
