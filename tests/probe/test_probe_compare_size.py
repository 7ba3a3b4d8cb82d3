"""The pixel signals compare at the smaller of the two resolutions: a small model's generation is never upsampled
to a large training photo (benchmarks/bench_probe_recall.py measured copies of a 32-px model missed that way)."""

from __future__ import annotations

from PIL import Image

from auditor.probe.detectors import prepared_reference
from auditor.probe.signals import SignalComputer


def test_small_generation_is_compared_at_its_own_size(kodak):
    photo = Image.open(kodak[0]).convert("RGB")  # 768 x 512
    _, arr, size = prepared_reference(photo, (32, 32), "center", 512)
    assert size == (32, 32) and arr.shape == (32, 32, 3)
    # a larger generation: the training image's size, capped to compare_max_side, as before
    assert prepared_reference(photo, (1024, 1024), "center", 512)[2] == (512, 512)
    assert prepared_reference(photo.resize((192, 128)), (1024, 1024), "center", 512)[2] == (128, 128)
    # the photo rendered at 32 px (what a 32-px model reproduces) is a copy at its own resolution
    sq = photo.crop((128, 0, 640, 512))
    gen = sq.resize((32, 32), Image.BICUBIC)
    s = SignalComputer(max_side=512).compare(gen, [photo])[0]
    assert s.tiled_l2 < 0.05 and s.trimmed_l2 < 0.05
