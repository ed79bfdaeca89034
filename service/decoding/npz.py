"""Reading ``numpy.savez`` bodies safely: no pickles, sizes checked before anything is decompressed."""

from __future__ import annotations

import io
import math
import zipfile
from typing import Any

import numpy as np
from numpy.lib import format as npy_format

from service.errors import BodyTooLargeError, MalformedBodyError, RequestInputError


def read_npz(body: bytes, max_expanded_bytes: int) -> dict[str, np.ndarray]:
    """The arrays of an uncompressed or compressed ``.npz`` body.

    Raises :class:`MalformedBodyError` for an unsafe or unreadable one, :class:`BodyTooLargeError` when it
    expands beyond ``max_expanded_bytes``.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(body))
        members = archive.infolist()
        if sum(member.file_size for member in members) > max_expanded_bytes:
            raise BodyTooLargeError(
                f"the npz expands to more than {max_expanded_bytes} bytes; send fewer cells per request"
            )
        arrays = {}
        for member in members:
            if not member.filename.endswith(".npy"):
                raise MalformedBodyError(f"the npz contains {member.filename!r}, which is not a .npy array")
            with archive.open(member) as handle:
                _check_npy_header(handle, member.file_size, member.filename)
            with archive.open(member) as handle:
                arrays[member.filename[: -len(".npy")]] = npy_format.read_array(handle, allow_pickle=False)
        return arrays
    except RequestInputError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, MemoryError, KeyError) as exc:
        raise MalformedBodyError(
            f"the body is not a readable npz ({exc}); write it with numpy.savez (no object arrays)"
        ) from None


def _check_npy_header(handle: Any, file_size: int, name: str) -> None:
    version = npy_format.read_magic(handle)
    reader = npy_format.read_array_header_1_0 if version == (1, 0) else npy_format.read_array_header_2_0
    shape, _, dtype = reader(handle)
    if dtype.hasobject:
        raise MalformedBodyError(f"{name} holds Python objects, which are never loaded; send numbers or strings")
    if math.prod(shape) * dtype.itemsize > file_size:
        raise MalformedBodyError(f"{name} declares more data than it contains")


def check_numeric(array: np.ndarray, name: str) -> None:
    """Raise :class:`RequestInputError` for an array named ``name`` that does not hold numbers."""
    if array.dtype.kind not in "iuf":
        raise RequestInputError(f"'{name}' must hold numbers; got dtype {array.dtype}")


def string_array(array: np.ndarray, name: str) -> list[str]:
    """The 1-D string (``U`` or UTF-8 ``S``) array named ``name`` as a list (else :class:`RequestInputError`)."""
    if array.ndim != 1 or array.dtype.kind not in "US":
        raise RequestInputError(f"'{name}' must be a 1-D array of strings (numpy dtype 'U' or 'S')")
    if array.dtype.kind == "S":
        try:
            return [value.decode("utf-8") for value in array.tolist()]
        except UnicodeDecodeError:
            raise RequestInputError(f"'{name}' is not valid UTF-8") from None
    return array.tolist()
