"""The generator interface and registry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Optional, Sequence

from PIL import Image

from ...registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    from ..config import ProbeConfig
    from ..whitebox import WhiteBox


@dataclass
class Generation:
    prompt: str
    seed: int
    image: Optional[Image.Image]
    error: Optional[str] = None
    unet_evals: int = 0       # UNet evaluations spent on this image (measured, or nominal for black boxes)


class Generator:
    """Base class. ``generate`` returns one :class:`Generation` per ``(prompt, seed)`` request, in order;
    a failed request is a Generation with ``image=None`` and ``error`` set, never an exception."""

    name = ""

    def __init__(self, cfg: "ProbeConfig"):
        self.cfg = cfg

    def generate(self, requests: Sequence[tuple[str, int]]) -> list[Generation]:
        raise NotImplementedError

    def provenance(self) -> dict[str, Any]:
        return {"generator": self.name}

    def whitebox(self) -> Optional["WhiteBox"]:
        """A white-box scorer when the model exposes a UNet (None for black boxes)."""
        return None

    def nominal_unet_evals(self) -> int:
        return self.cfg.unet_evals_per_image()

    def close(self) -> None:
        pass


GENERATORS: Registry[type[Generator]] = Registry("generator")


def build_generator(cfg: "ProbeConfig") -> Generator:
    return GENERATORS.get(cfg.generator)(cfg)


def error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]
