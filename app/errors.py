"""Typed errors. Each carries the HTTP status it maps to; the API turns them into `{error, detail}`."""

from __future__ import annotations


class NftlensError(Exception):
    """Base class: a problem the caller can act on."""

    status_code: int = 400
    error: str = "bad_request"

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class InvalidImageError(NftlensError):
    """The bytes are not a decodable image (garbage, truncated, empty)."""

    status_code = 400
    error = "invalid_image"


class UnsupportedMediaError(NftlensError):
    """A real file, but of a type the service does not take."""

    status_code = 415
    error = "unsupported_media_type"


class ImageTooLargeError(NftlensError):
    """Over the byte limit or the pixel limit (decompression-bomb guard)."""

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
