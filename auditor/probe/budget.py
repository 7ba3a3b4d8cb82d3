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


def confirmed(variant: dict, screen: dict, whitebox_gate: bool) -> bool:
    """Whether the confirm phase generates for a screened variant: flagged, or (the white-box screen orders the
    confirm tier, it gates it only with ``whitebox_gate``) any variant of a white-box-screened caption; never a
    variant the screen skipped for the budget."""
    return (variant["flag"] or (screen["mode"] == "whitebox" and not whitebox_gate)) and not variant["skipped"]


def new_seeds(recs: list[dict], seeds: list[int], confirm_generations: int) -> list[int]:
    """The confirm seeds (the first ``confirm_generations``) a variant has no generation for yet in ``recs``."""
    have = {r["seed"] for r in recs}
    return [s for s in seeds[:confirm_generations] if s not in have]


def confirm_reach(captions: list[dict], screens: dict, seeds: list[int], confirm_generations: int, per_image: int,
                  budget: Budget, whitebox_gate: bool) -> list[dict]:
    """The captions (``captions`` in the confirm phase's order, the finished ones left out) that the confirm phase
    will judge generations of: a variant with screen generations, or :func:`confirmed` with at least one new
    generation the budget still affords (the runner's ``finish_caption`` rule, without spending anything)."""
    sim = Budget(budget.limit)  # spent on a copy: this only looks ahead
    sim.spent = budget.spent
    out = []
    for c in captions:
        judged = False
        scr = screens[c["cid"]]
        for v in scr["variants"].values():
            if confirmed(v, scr, whitebox_gate):
                n = sim.images_affordable(per_image, len(new_seeds(v["recs"], seeds, confirm_generations)))
                sim.spent += n * per_image
                judged = judged or n > 0
            judged = judged or bool(v["recs"])
        if judged:
            out.append(c)
    return out
