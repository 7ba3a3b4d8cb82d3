"""Copy-style augmentations for SSCD-style training, in PIL + numpy (64-px images, fast on CPU).

Each call of :class:`CopyAugment` draws one random chain of the transforms the index must be invariant to:
random resized crop (down to 30 % area), horizontal flip, small rotations and multiples of 90 degrees,
borders and padding, text / logo / badge overlays, colour jitter, grayscale, blur, down-scaling to 32 px
and back, JPEG re-encoding (quality 30-95). The output is always ``size x size`` RGB.
"""

from __future__ import annotations

import io
import math
import random
import string

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont, ImageOps

_FONTS: dict[int, ImageFont.FreeTypeFont] = {}


def font(size: int):
    f = _FONTS.get(size)
    if f is None:
        f = _FONTS[size] = ImageFont.load_default(size=size)
    return f


def rand_color(rng: random.Random) -> tuple[int, int, int]:
    return (rng.randrange(256), rng.randrange(256), rng.randrange(256))


def random_resized_crop(img: Image.Image, rng: random.Random, size: int, scale=(0.3, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> Image.Image:
    w, h = img.size
    area = w * h
    for _ in range(10):
        a = area * rng.uniform(*scale)
        r = math.exp(rng.uniform(math.log(ratio[0]), math.log(ratio[1])))
        cw, ch = int(round(math.sqrt(a * r))), int(round(math.sqrt(a / r)))
        if 0 < cw <= w and 0 < ch <= h:
            x, y = rng.randint(0, w - cw), rng.randint(0, h - ch)
            return img.resize((size, size), Image.Resampling.BILINEAR, box=(x, y, x + cw, y + ch))
    return img.resize((size, size), Image.Resampling.BILINEAR)


def rotate(img: Image.Image, rng: random.Random) -> Image.Image:
    if rng.random() < 0.5:
        return img.transpose(rng.choice([Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180,
                                         Image.Transpose.ROTATE_270]))
    angle = rng.uniform(-15, 15)
    fill = rand_color(rng) if rng.random() < 0.5 else (0, 0, 0)
    out = img.rotate(angle, Image.Resampling.BILINEAR, expand=rng.random() < 0.5, fillcolor=fill)
    return out.resize(img.size, Image.Resampling.BILINEAR) if out.size != img.size else out


def border(img: Image.Image, rng: random.Random) -> Image.Image:
    w, h = img.size
    m = max(w, h)
    if rng.random() < 0.5:  # uniform frame
        b = rng.randint(2, max(3, m // 6))
        l = t = r = bt = b
    else:  # padding / letterbox on some sides
        l, t, r, bt = (rng.randint(0, m // 4) for _ in range(4))
    out = ImageOps.expand(img, border=(l, t, r, bt), fill=rand_color(rng))
    return out.resize((w, h), Image.Resampling.BILINEAR)


def overlay(img: Image.Image, rng: random.Random) -> Image.Image:
    img = img.copy()
    w, h = img.size
    d = ImageDraw.Draw(img, "RGBA")
    kind = rng.random()
    alpha = rng.randint(150, 255)
    if kind < 0.45:  # caption / watermark text
        n = rng.randint(3, 14)
        txt = "".join(rng.choice(string.ascii_letters + string.digits + "  @.") for _ in range(n))
        fs = rng.randint(max(6, h // 10), max(8, h // 3))
        xy = (rng.randint(-w // 8, w // 2), rng.randint(-h // 8, h - fs // 2))
        if rng.random() < 0.4:  # caption bar behind it
            d.rectangle((0, xy[1], w, xy[1] + fs + 2), fill=rand_color(rng) + (rng.randint(120, 255),))
        d.text(xy, txt, font=font(fs), fill=rand_color(rng) + (alpha,))
    elif kind < 0.75:  # badge / sticker: a filled shape with a short label, usually in a corner
        s = rng.randint(max(6, h // 8), max(8, h // 3))
        cx = rng.choice([0, w - s]) if rng.random() < 0.7 else rng.randint(0, w - s)
        cy = rng.choice([0, h - s]) if rng.random() < 0.7 else rng.randint(0, h - s)
        box = (cx, cy, cx + s, cy + int(s * rng.uniform(0.5, 1.0)))
        shape = rng.random()
        col = rand_color(rng) + (alpha,)
        if shape < 0.4:
            d.ellipse(box, fill=col)
        elif shape < 0.8:
            d.rectangle(box, fill=col)
        else:
            d.rounded_rectangle(box, radius=max(1, s // 4), fill=col)
        lab = "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(rng.randint(1, 4)))
        d.text((box[0] + 1, box[1]), lab, font=font(max(5, s // 3)), fill=rand_color(rng) + (255,))
    else:  # logo: a few random strokes / polygons
        for _ in range(rng.randint(1, 3)):
            pts = [(rng.randint(0, w), rng.randint(0, h)) for _ in range(rng.randint(3, 5))]
            if rng.random() < 0.5:
                d.polygon(pts, fill=rand_color(rng) + (alpha,))
            else:
                d.line(pts, fill=rand_color(rng) + (alpha,), width=rng.randint(1, 3))
    return img


def color(img: Image.Image, rng: random.Random) -> Image.Image:
    ops = [ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color]
    rng.shuffle(ops)
    for op in ops:
        if rng.random() < 0.7:
            img = op(img).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.2:  # hue shift
        hsv = img.convert("HSV")
        hch, s, v = hsv.split()
        sh = rng.randint(-25, 25)
        hch = hch.point(lambda p: (p + sh) % 256)
        img = Image.merge("HSV", (hch, s, v)).convert("RGB")
    return img


def jpeg(img: Image.Image, rng: random.Random) -> Image.Image:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=rng.randint(30, 95))
    buf.seek(0)
    return Image.open(buf).convert("RGB")


class CopyAugment:
    """One random copy of a PIL RGB image, ``size x size``. Probabilities are per-transform."""

    def __init__(self, size: int = 64, p: dict | None = None):
        self.size = size
        self.p = {"crop": 0.85, "hflip": 0.5, "rotate": 0.35, "border": 0.25, "overlay": 0.35, "color": 0.6,
                  "gray": 0.1, "blur": 0.1, "small": 0.25, "jpeg": 0.5}
        if p:
            self.p.update(p)

    def __call__(self, img: Image.Image, rng: random.Random) -> Image.Image:
        p, s = self.p, self.size
        if rng.random() < p["crop"]:
            img = random_resized_crop(img, rng, s)
        elif img.size != (s, s):
            img = img.resize((s, s), Image.Resampling.BILINEAR)
        if rng.random() < p["hflip"]:
            img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        if rng.random() < p["rotate"]:
            img = rotate(img, rng)
        if rng.random() < p["border"]:
            img = border(img, rng)
        if rng.random() < p["color"]:
            img = color(img, rng)
        if rng.random() < p["gray"]:
            img = img.convert("L").convert("RGB")
        if rng.random() < p["overlay"]:
            img = overlay(img, rng)
        if rng.random() < p["blur"]:
            img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.5)))
        if rng.random() < p["small"]:
            t = rng.randint(24, 40)
            img = img.resize((t, t), Image.Resampling.BILINEAR).resize((s, s), Image.Resampling.BILINEAR)
        if rng.random() < p["jpeg"]:
            img = jpeg(img, rng)
        return img
