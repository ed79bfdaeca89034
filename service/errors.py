"""What is wrong with a request, independent of HTTP: decoding raises these, ``service.app`` answers them.

Each class names one way a request can be unusable; :data:`STATUS` is the HTTP status the application
answers it with. The ``detail`` (the message) says what was wrong and how to fix it.
"""

from __future__ import annotations

from model.errors import InputError


class RequestInputError(InputError):
    """The body was read but its content cannot be used as sent (a missing field, a wrong type, ...)."""

    @property
    def detail(self) -> str:
        """The message for the client."""
        return str(self)


class MalformedBodyError(RequestInputError):
    """The body cannot be read at all: not JSON, not an npz archive, not an HDF5 file."""


class BodyTooLargeError(RequestInputError):
    """The body, or what it expands to, is over a limit (cells per request, expanded bytes)."""


class UnsupportedMediaTypeError(RequestInputError):
    """The request's content type is not one the route accepts."""


STATUS: dict[type[RequestInputError], int] = {
    RequestInputError: 422,
    MalformedBodyError: 400,
    BodyTooLargeError: 413,
    UnsupportedMediaTypeError: 415,
}
"""HTTP status of each request error."""


def too_many_cells(n_cells: int, max_cells: int) -> BodyTooLargeError:
    """The error for a request with more cells than the service accepts at once."""
    return BodyTooLargeError(
        f"the request has {n_cells} cells but at most {max_cells} are accepted per request; "
        "split it into several requests (or use `celltype score` for whole files)"
    )


def unsupported_media_type(received: str, accepted: list[str]) -> UnsupportedMediaTypeError:
    """The error naming the content type received and the ones accepted."""
    return UnsupportedMediaTypeError(
        f"unsupported content type {received or '(none)'!r}; send one of: {', '.join(accepted)}"
    )
