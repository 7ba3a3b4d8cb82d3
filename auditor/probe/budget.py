"""The probe's budget of UNet evaluations."""

from __future__ import annotations

from typing import Optional


class Budget:
    """UNet evaluations spent against an optional limit."""

    def __init__(self, limit: Optional[int]):
        self.limit = limit
        self.spent = 0

    def left(self) -> Optional[int]:
        return None if self.limit is None else max(0, self.limit - self.spent)

    def affords(self, cost: int) -> bool:
        return self.limit is None or self.spent + cost <= self.limit

    def images_affordable(self, per_image: int, want: int) -> int:
        if self.limit is None:
            return want
        return max(0, min(want, (self.limit - self.spent) // max(1, per_image)))
