"""HTTP Range parsing (one range, as Starlette's FileResponse does), pure."""

from __future__ import annotations

from ..errors import RangeNotSatisfiable


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(start, end)`` (end exclusive) for a single ``bytes=`` range, or None to
    send the whole body (no header, or one we do not understand, per RFC 9110)."""
    if not header or not header.startswith("bytes=") or "," in header:
        return None
    spec = header[len("bytes=") :].strip()
    first, sep, last = spec.partition("-")
    if not sep:
        return None
    try:
        if first == "":
            n = int(last)
            if n <= 0:
                raise RangeNotSatisfiable("empty suffix range", size=size)
            return max(0, size - n), size
        start = int(first)
        end = size if last == "" else min(size, int(last) + 1)
    except ValueError:
        return None
    if start >= size or end <= start:
        raise RangeNotSatisfiable(f"range {spec} is outside the {size} bytes", size=size)
    return start, end
