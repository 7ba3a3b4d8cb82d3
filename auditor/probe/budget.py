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


def confirm_reach(captions: list[dict], screens: dict, seeds: list[int], confirm_generations: int, per_image: int,
                  budget: Budget) -> list[dict]:
    """The captions (``captions`` in the confirm phase's order, the finished ones left out) that the confirm phase
    will judge generations of: a variant with screen generations, or flagged and not skipped with at least one
    new generation the budget still affords (the runner's ``finish_caption`` rule, without spending anything)."""
    left = budget.left()
    out = []
    for c in captions:
        judged = False
        for v in screens[c["cid"]]["variants"].values():
            if v["flag"] and not v["skipped"]:
                have = {r["seed"] for r in v["recs"]}
                want = sum(s not in have for s in seeds[:confirm_generations])
                n = want if left is None else min(want, left // max(1, per_image))
                left = None if left is None else left - n * per_image
                judged = judged or n > 0
            judged = judged or bool(v["recs"])
        if judged:
            out.append(c)
    return out
