"""The decode's bounds that hold before and during decoding, whatever the format: :class:`DecodeError`, the
progressive-JPEG scan cap (:func:`check_jpeg_scans`, from the markers, before any pixel is decoded) and the
per-image CPU budget (:class:`CpuBudget`, checked between the blocks Pillow feeds its decoder through
:class:`BudgetedBytesIO`). Used by :mod:`auditor.index.decode` for the index, the guard, the HTTP generator
and the report.
"""

from __future__ import annotations

import io
import re
import time
from typing import Optional

#: progressive-JPEG scans: each one is a full pass over the coefficients (an empty refinement scan of 15 bytes
#: costs ~3 ms of CPU on a 3000x3000 image, so 2 MB of them cost minutes). Encoders write 10 (libjpeg, Pillow)
#: to ~20 (mozjpeg's optimised scripts); libjpeg-turbo itself only warns past 1000s.
DEFAULT_MAX_JPEG_SCANS = 100
#: per-image CPU seconds (this thread's CPU time, ``time.thread_time``) for open + load + RGB conversion; an
#: 6000x6000 RGBA PNG decodes and composites in 2.6 s, so a max_pixels (89 MP) one in ~6.5 s
DEFAULT_CPU_BUDGET_S = 30.0


class DecodeError(Exception):
    """An image that cannot (or must not) be decoded. ``reason`` is a short machine-readable code:

    ``empty``, ``too_many_bytes``, ``unknown_format``, ``unsupported_format``, ``too_many_pixels``,
    ``too_many_scans``, ``over_cpu_budget``, ``truncated``, ``corrupt``, ``unsafe_config``.
    """

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


# a marker inside entropy-coded data: 0xFF followed by anything but 0x00 (stuffing), RST0-7 or 0xFF (fill)
_ENTROPY_MARKER = re.compile(rb"\xff[\x01-\xcf\xd8-\xfe]")


def jpeg_scan_count(data: bytes, stop_above: Optional[int] = None) -> int:
    """The start-of-scan (SOS) markers of the first image of a JPEG, by a marker walk that skips every
    segment by its length and each scan's entropy-coded data with one C-level regex search (linear in the
    file, no pixel decoded); it stops at EOI, at anything malformed (libjpeg then decides) and once
    ``stop_above`` scans are counted.

    Example:
        ```python
        buf = io.BytesIO(); Image.new("RGB", (64, 64)).save(buf, "JPEG", progressive=True)
        jpeg_scan_count(buf.getvalue())  # 10 (Pillow's progressive script; a baseline JPEG has 1)
        ```
    """
    data = bytes(data)
    n, i, scans = len(data), 2, 0
    while i + 4 <= n:
        if data[i] != 0xFF:
            break
        m = data[i + 1]
        if m == 0xFF:  # fill byte
            i += 1
            continue
        if m in (0x01, 0xD8) or 0xD0 <= m <= 0xD7:  # markers without a length
            i += 2
            continue
        if m == 0xD9:  # EOI: the end of the first image (an MPO's other pictures are not decoded)
            break
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if length < 2:
            break
        i += 2 + length
        if m == 0xDA:
            scans += 1
            if stop_above is not None and scans > stop_above:
                break
            hit = _ENTROPY_MARKER.search(data, i)
            if hit is None:
                break
            i = hit.start()
    return scans


def check_jpeg_scans(data: bytes, max_scans: Optional[int]) -> None:
    """Raise ``DecodeError("too_many_scans")`` when a JPEG has more than ``max_scans`` scans. The byte count of
    ``FF DA`` (one C pass, an upper bound: entropy data never holds it) clears ordinary JPEGs; only a file over
    the cap by that count gets the exact :func:`jpeg_scan_count` walk (an embedded EXIF thumbnail's scans are
    not counted against it)."""
    if max_scans is None or bytes(data[:3]) != b"\xff\xd8\xff":
        return
    if data.count(b"\xff\xda") <= max_scans:
        return
    scans = jpeg_scan_count(data, stop_above=max_scans)
    if scans > max_scans:
        raise DecodeError("too_many_scans", f"more than {max_scans} JPEG scans (max_jpeg_scans); not decoded")


class CpuBudget:
    """A per-image CPU deadline on this thread's CPU time (``time.thread_time``: safe in the guard's and the
    HTTP generator's threads, unaffected by other processes on the host). :meth:`check` raises
    ``DecodeError("over_cpu_budget")`` once ``seconds`` are spent. A C call that is running is not
    interrupted: the check runs before each block Pillow feeds its decoder, between the conversion strips,
    and after the fast JPEG path; the formats whose Pillow decoder takes the whole file at once (WebP, AVIF,
    TIFF through libtiff) are checked after it returns, and are bounded by ``max_pixels`` meanwhile."""

    def __init__(self, seconds: Optional[float]):
        self.seconds = seconds
        self.deadline = None if seconds is None else time.thread_time() + float(seconds)

    def check(self) -> None:
        if self.deadline is not None and time.thread_time() > self.deadline:
            raise DecodeError("over_cpu_budget", f"decoding took more than {self.seconds:g} s of CPU "
                                                 "(cpu_budget_s); not decoded")


class BudgetedBytesIO(io.BytesIO):
    """The bytes Pillow reads, with the CPU budget checked before every read (Pillow's ``ImageFile.load``
    feeds its decoder one ``read`` at a time and lets any exception but IndexError/struct.error through)."""

    def __init__(self, data: bytes, budget: CpuBudget):
        super().__init__(data)
        self.budget = budget

    def read(self, size: Optional[int] = -1) -> bytes:
        self.budget.check()
        return super().read(size)
