"""The compiled (numba) reader of the big list of rows of a JSON body, straight into float32.

A 1000 x 2000 matrix of counts is most of a prediction body's bytes; reading it byte by byte in
compiled code is several times faster than building Python floats and converting them (see the JSON
reader section of docs/benchmarks.md). The reader only vouches for plain JSON numbers in a list of
lists; anything else makes :func:`extract_rows` give up, and the body is read the general way.
"""

from __future__ import annotations

import numba
import numpy as np

JsonPath = tuple[str, ...]
"""Keys from the document's root to a value."""

_POW10 = np.array([10.0**k for k in range(23)])


@numba.njit(cache=True, nogil=True)
def _matrix_start(buf: np.ndarray, key: np.ndarray, depth: int) -> int:
    """Offset of the ``[`` opening the value of the first key ``key`` at nesting ``depth``, else -1.

    Strings (with escapes) are skipped exactly, so text inside strings never matches.
    """
    n = buf.size
    level = 0
    i = 0
    while i < n:
        c = buf[i]
        if c == 34:
            j = i + 1
            while j < n:
                if buf[j] == 92:
                    j += 2
                    continue
                if buf[j] == 34:
                    break
                j += 1
            if j >= n:
                return -1
            if level == depth and j - i - 1 == key.size:
                same = True
                for k in range(key.size):
                    if buf[i + 1 + k] != key[k]:
                        same = False
                        break
                if same:
                    m = j + 1
                    while m < n and (buf[m] == 32 or buf[m] == 10 or buf[m] == 13 or buf[m] == 9):
                        m += 1
                    if m < n and buf[m] == 58:
                        m += 1
                        while m < n and (buf[m] == 32 or buf[m] == 10 or buf[m] == 13 or buf[m] == 9):
                            m += 1
                        return m if m < n and buf[m] == 91 else -1
            i = j + 1
            continue
        if c == 123 or c == 91:
            level += 1
        elif c == 125 or c == 93:
            level -= 1
        i += 1
    return -1


@numba.njit(cache=True, nogil=True)
def _parse_rows(buf: np.ndarray, start: int, out: np.ndarray, lengths: np.ndarray, pow10: np.ndarray) -> tuple:
    """Parse the JSON list of numeric rows opening at ``start`` into ``out`` (values) and ``lengths``.

    Returns ``(rows, values, end)`` with ``end`` just past the closing ``]``, or ``rows = -1`` for
    anything but plain JSON numbers in a list of lists (or more rows than ``lengths`` holds): the
    caller then reads the body the general way, which explains what is wrong. Integers of up to 18
    digits are exact; decimals with up to 18 significant digits and exponents within +-22 are computed in float64 (one
    rounding, or two beyond 2**53) before rounding to float32; other numbers also fall back.
    """
    end = buf.size
    i = start
    if i >= end or buf[i] != 91:
        return -1, 0, 0
    i += 1
    while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
        i += 1
    row = 0
    v = 0
    if i < end and buf[i] == 93:
        i += 1
    else:
        while True:  # rows
            if i >= end or buf[i] != 91 or row >= lengths.size:
                return -1, 0, 0
            i += 1
            while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
                i += 1
            count = 0
            if i < end and buf[i] == 93:
                i += 1
            else:
                while True:  # values
                    if i >= end or v >= out.size:
                        return -1, 0, 0
                    c = buf[i]
                    neg = c == 45
                    if neg:
                        i += 1
                        if i >= end:
                            return -1, 0, 0
                        c = buf[i]
                    mant = 0
                    digits = 0
                    exp10 = 0
                    if c == 48:
                        i += 1
                        if i < end and buf[i] >= 48 and buf[i] <= 57:
                            return -1, 0, 0
                    elif c >= 49 and c <= 57:
                        while i < end:
                            c = buf[i]
                            if c < 48 or c > 57:
                                break
                            if digits == 18:
                                return -1, 0, 0
                            mant = mant * 10 + (c - 48)
                            digits += 1
                            i += 1
                    else:
                        return -1, 0, 0
                    if i < end and buf[i] == 46:
                        i += 1
                        first = i
                        while i < end:
                            c = buf[i]
                            if c < 48 or c > 57:
                                break
                            if digits < 18:
                                mant = mant * 10 + (c - 48)
                                if mant != 0:
                                    digits += 1
                                exp10 -= 1
                            i += 1
                        if i == first:
                            return -1, 0, 0
                    if i < end and (buf[i] == 101 or buf[i] == 69):
                        i += 1
                        negative_exponent = False
                        if i < end and (buf[i] == 43 or buf[i] == 45):
                            negative_exponent = buf[i] == 45
                            i += 1
                        first = i
                        e = 0
                        while i < end:
                            c = buf[i]
                            if c < 48 or c > 57:
                                break
                            if e < 100000:
                                e = e * 10 + (c - 48)
                            i += 1
                        if i == first:
                            return -1, 0, 0
                        exp10 += -e if negative_exponent else e
                    if mant == 0:
                        value = 0.0
                    elif exp10 == 0:
                        value = float(mant)
                    elif exp10 > 0:
                        if exp10 > 22:
                            return -1, 0, 0
                        value = float(mant) * pow10[exp10]
                    else:
                        if exp10 < -22:
                            return -1, 0, 0
                        value = float(mant) / pow10[-exp10]
                    out[v] = -value if neg else value
                    v += 1
                    count += 1
                    while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
                        i += 1
                    if i >= end:
                        return -1, 0, 0
                    if buf[i] == 44:
                        i += 1
                        while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
                            i += 1
                    elif buf[i] == 93:
                        i += 1
                        break
                    else:
                        return -1, 0, 0
            lengths[row] = count
            row += 1
            while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
                i += 1
            if i >= end:
                return -1, 0, 0
            if buf[i] == 44:
                i += 1
                while i < end and (buf[i] == 32 or buf[i] == 10 or buf[i] == 13 or buf[i] == 9):
                    i += 1
            elif buf[i] == 93:
                i += 1
                break
            else:
                return -1, 0, 0
    return row, v, i


def extract_rows(body: bytes, path: JsonPath, max_rows: int) -> tuple[int, int, np.ndarray, np.ndarray] | None:
    """``(start, end, values, row_lengths)`` of the numeric rows at ``path`` read by the compiled reader,
    or ``None`` when it cannot vouch for them (the general reader then takes over)."""
    buffer = np.frombuffer(body, dtype=np.uint8)
    start = _matrix_start(buffer, np.frombuffer(path[-1].encode(), dtype=np.uint8), len(path))
    if start < 0:
        return None
    values = np.empty((len(body) - start) // 2 + 1, dtype=np.float32)
    lengths = np.empty(max_rows + 1, dtype=np.int64)
    rows, n_values, end = _parse_rows(buffer, start, values, lengths, _POW10)
    if rows < 0:
        return None
    return start, end, values[:n_values], lengths[:rows]
