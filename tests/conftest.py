"""Shared fixtures. Tests read real photos from ``../shared/data`` (beside the repository; CI has it) and
skip with a clear reason when it is absent. Models are tiny and built from config; nothing downloads."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AUDITOR_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found at {SHARED_DATA} (set AUDITOR_SHARED_DATA or place ../shared/data)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def kodak(shared_data) -> list[Path]:
    return sorted((shared_data / "photos" / "kodak").glob("*.png"))


@pytest.fixture(scope="session")
def imagenet(shared_data) -> list[Path]:
    return sorted((shared_data / "photos" / "imagenet-256").glob("*.jpg"))
