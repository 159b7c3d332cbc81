"""How an object is cut into the parts of a multipart upload (pure: both the gateway,
which presigns the parts, and the client, which checksums them up front, compute it)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PartPlan:
    number: int  # 1-based, as S3 numbers parts
    offset: int
    size: int


def plan_even_parts(size: int, part_size: int) -> list[PartPlan]:
    """Cut ``size`` bytes into parts of ``part_size`` (the last one shorter)."""
    if size <= 0:
        return [PartPlan(1, 0, 0)]
    parts, offset, number = [], 0, 1
    while offset < size:
        n = min(part_size, size - offset)
        parts.append(PartPlan(number, offset, n))
        offset += n
        number += 1
    return parts


__all__ = ["PartPlan", "plan_even_parts"]
