"""The ten type-0 corruptions of Corrupted CIFAR-10 (LfF), with the CIFAR-10-C constants at LfF's severity.

LfF's Corrupted CIFAR-10 type 0 gives corruption k to class k, in this order: Snow, Frost, Fog, Brightness, Contrast,
Spatter, Elastic, JPEG, Pixelate, Saturate. Its generator copies Hendrycks' ``make_cifar_c.py`` (the CIFAR-10-C
constants, not ImageNet-C's) and calls it with ``severity + 1``: LfF's "Severity4" is CIFAR-10-C severity 5, the
constants in :data:`CONSTANTS`. Each corruption takes a batch of uint8 (N, H, W, 3) images (32 px CIFAR-10, 28 px
Fashion-MNIST) and one numpy ``Generator`` per image, draws that image's randomness from its own generator in the
order the reference code draws it, and returns uint8 images truncated as ``np.uint8`` does in LfF's generator. An
image's result depends only on the image and its generator, never on the rest of the batch, so the builders can
batch the images that get one corruption.

Written with numpy, scipy and PIL: the reference code's OpenCV and scikit-image calls are replaced by equivalents
(``warpAffine`` by ``map_coordinates`` with mirrored borders, ``gaussian`` by ``gaussian_filter``; the HSV round trips
of Brightness and Saturate by their closed forms), and two things the reference needs cannot be had here:

- **Snow**'s motion blur is ImageMagick's ``MotionBlurImage`` (through Wand) in the reference. Here it is a numpy
  motion blur: a one-sided Gaussian kernel of width ``2 * radius + 1`` along the drawn angle, edge pixels repeated
  (the kernel imagecorruptions uses to drop the Wand dependency), on the same radius 14, sigma 12 and angle in
  [-135, -45] degrees. The snow layer goes through uint8 before and after the blur, as through the PNG round trip.
- **Frost** blends a random 32 px crop of one of five photographs of frost (``frost1.png`` ... ``frost5.jpg``,
  shrunk x0.2) that are not distributed with any installable package. Here the five textures are drawn
  procedurally (branching ice-crystal strokes with a glow on a faint haze, bluish white, drawn at 5x and shrunk),
  each from a fixed seed, so they are the same for every dataset; an image picks one and a crop from its generator
  as the reference does, and the blend is the reference's ``0.75 * x + 0.45 * frost``.

At 28 px the size-dependent steps use the image's size: the elastic constants are fractions of the side (the
reference writes them as fractions of 32), pixelate shrinks to ``int(28 * 0.65)``, fog crops its 32 px plasma map,
and frost crops 28 px.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

NAMES = ("snow", "frost", "fog", "brightness", "contrast", "spatter", "elastic", "jpeg", "pixelate", "saturate")
SEVERITY = 5  # CIFAR-10-C severity; LfF's "Severity4" (its generator calls severity + 1)

# make_cifar_c.py's constants at severity 5 (elastic's are fractions of the image side: 32 * (0.1, 0.03, 0.03)).
CONSTANTS = {
    "snow": (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),  # loc, scale, zoom, threshold, blur radius, blur sigma, blend
    "frost": (0.75, 0.45),  # image weight, frost weight
    "fog": (1.5, 1.75),  # fog strength, plasma wibble decay
    "brightness": 0.3,  # added to HSV value
    "contrast": 0.15,  # kept share of the deviation from the per-channel mean
    "spatter": (0.65, 0.1, 0.5, 0.68, 0.6, 1),  # loc, scale, sigma, threshold, mud sigma, mode 1 (mud)
    "elastic": (0.1, 0.03, 0.03),  # displacement, its smoothing sigma, affine jitter (x image side)
    "jpeg": 40,  # quality
    "pixelate": 0.65,  # shrink factor
    "saturate": (2.5, 0.2),  # HSV saturation * a + b
}

Corruption = Callable[[np.ndarray, Sequence[np.random.Generator]], np.ndarray]


# ---------------------------------------------------------------------------------------------------------- helpers


def _unit(images: np.ndarray) -> np.ndarray:
    return images.astype(np.float64) / 255.0


def _to_uint8(x: np.ndarray) -> np.ndarray:
    """``np.uint8(np.clip(x, 0, 1) * 255)``: truncation, as LfF stores the corrupted images."""
    return (np.clip(x, 0, 1) * 255).astype(np.uint8)


def _gaussian(layers: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0) -> np.ndarray:
    """scikit-image's ``gaussian`` (mode nearest, truncate 4) of each (H, W) layer of an (N, H, W) stack."""
    return ndimage.gaussian_filter(layers, sigma=(0, sigma, sigma), mode=mode, truncate=truncate)


def _clipped_zoom(layers: np.ndarray, factor: float) -> np.ndarray:
    """The reference's ``clipped_zoom`` on an (N, H, W) stack: zoom the centre crop (linear), trim to H."""
    h = layers.shape[1]
    ch = int(np.ceil(h / factor))
    top = (h - ch) // 2
    zoomed = ndimage.zoom(layers[:, top:top + ch, top:top + ch], (1, factor, factor), order=1)
    trim = (zoomed.shape[1] - h) // 2
    return zoomed[:, trim:trim + h, trim:trim + h]


def _hsv_value(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = _unit(images)
    return x, x.max(axis=3, keepdims=True)


def _with_value(images: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The RGB -> HSV -> RGB round trip with the value V replaced by ``clip(fn(V), 0, 1)``, in closed form: at fixed
    hue and saturation every channel is proportional to V (a black pixel, saturation 0, becomes grey)."""
    x, v = _hsv_value(images)
    new = np.clip(fn(v), 0, 1)
    return _to_uint8(np.where(v > 0, x * new / np.where(v > 0, v, 1), new))


def _with_saturation(images: np.ndarray, fn: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """The HSV round trip with the saturation S replaced by ``clip(fn(S), 0, 1)``, in closed form: at fixed hue and
    value each channel is V - S * V * w (w depends on the hue alone), so its distance below V scales with S. A grey
    pixel has S = 0 and hue 0 (red) in the round trip, so it becomes (V, V (1 - S'), V (1 - S'))."""
    x, v = _hsv_value(images)
    safe_v = np.where(v > 0, v, 1)
    s = (v - x.min(axis=3, keepdims=True)) / safe_v
    new = np.clip(fn(s), 0, 1)
    grey = v * np.array([1.0, 0.0, 0.0]) + (v * (1 - new)) * np.array([0.0, 1.0, 1.0])
    return _to_uint8(np.where(s > 0, v - new / np.where(s > 0, s, 1) * (v - x), grey))


def _sample(images: np.ndarray, rows: np.ndarray, cols: np.ndarray, mode: str) -> np.ndarray:
    """Sample (N, H, W, C) images at (N, H, W) row and column coordinates, linearly (scipy's ``map_coordinates``),
    the border extended by ``mode``: ``mirror`` (OpenCV's REFLECT_101) or ``reflect``."""
    batch = np.broadcast_to(np.arange(len(images), dtype=np.float64)[:, None, None], rows.shape)
    return np.stack([ndimage.map_coordinates(images[..., c], [batch, rows, cols], order=1, mode=mode)
                     for c in range(images.shape[3])], axis=3)


def motion_blur(layers: np.ndarray, radius: int, sigma: float, angles: np.ndarray) -> np.ndarray:
    """Blur each (H, W) layer along its angle (degrees): the sum over i < 2 * radius + 1 of Gaussian weights
    exp(-i² / 2 sigma²) (normalised) times the layer shifted i pixels along the angle, edge pixels repeated; a shift
    that leaves the image ends the sum (the substitute for ImageMagick's ``MotionBlurImage``)."""
    n, h, w = layers.shape
    width = 2 * radius + 1
    steps = np.arange(width)
    kernel = np.exp(-(steps ** 2) / (2 * sigma ** 2))
    kernel /= kernel.sum()
    rad = np.deg2rad(np.asarray(angles, dtype=np.float64))[:, None]
    dy = -np.ceil(steps * np.sin(rad) - 0.5).astype(np.int64)  # (N, width)
    dx = -np.ceil(steps * np.cos(rad) - 0.5).astype(np.int64)
    inside = np.cumprod((np.abs(dy) < h) & (np.abs(dx) < w), axis=1)  # the first shift out of the image ends the sum
    weights = kernel[None] * inside  # (N, width)
    rows = np.clip(np.arange(h)[None, None, :, None] - dy[:, :, None, None], 0, h - 1)  # (N, width, H, 1)
    cols = np.clip(np.arange(w)[None, None, None, :] - dx[:, :, None, None], 0, w - 1)  # (N, width, 1, W)
    shifted = layers[np.arange(n)[:, None, None, None], rows, cols]  # (N, width, H, W)
    return np.einsum("nk,nkhw->nhw", weights, shifted)


def plasma_fractal(rngs: Sequence[np.random.Generator], mapsize: int = 32, wibbledecay: float = 3) -> np.ndarray:
    """The reference's diamond-square height map in [0, 1] (with its ``wibble * uniform(-wibble, wibble)``), one
    (mapsize, mapsize) map per generator, each drawing in the reference's order."""
    maps = np.empty((len(rngs), mapsize, mapsize), dtype=np.float64)
    maps[:, 0, 0] = 0
    stepsize = mapsize
    wibble = 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        noise = np.stack([rng.uniform(-wibble, wibble, total.shape[1:]) for rng in rngs])
        return total / 4 + wibble * noise

    while stepsize >= 2:
        half = stepsize // 2
        corners = maps[:, 0::stepsize, 0::stepsize]
        squares = corners + np.roll(corners, shift=-1, axis=1)
        squares += np.roll(squares, shift=-1, axis=2)
        maps[:, half::stepsize, half::stepsize] = wibbled_mean(squares)
        dr, ul = maps[:, half::stepsize, half::stepsize], maps[:, 0::stepsize, 0::stepsize]
        maps[:, 0::stepsize, half::stepsize] = wibbled_mean(
            dr + np.roll(dr, 1, axis=1) + ul + np.roll(ul, -1, axis=2))
        maps[:, half::stepsize, 0::stepsize] = wibbled_mean(
            dr + np.roll(dr, 1, axis=2) + ul + np.roll(ul, -1, axis=1))
        stepsize //= 2
        wibble /= wibbledecay
    maps -= maps.min(axis=(1, 2), keepdims=True)
    return maps / maps.max(axis=(1, 2), keepdims=True)


FROST_TEXTURES = 5  # the reference draws randint(5) of its six files, so frost6 is never used
FROST_SIZE = 160  # side of a texture, at the scale of the reference's x0.2-shrunk photographs
_FROST_SEED = 20200601


@functools.lru_cache(maxsize=FROST_TEXTURES)
def frost_texture(index: int) -> np.ndarray:
    """Procedural frost texture ``index`` (uint8 (FROST_SIZE, FROST_SIZE, 3), fixed seed): ice-crystal arms with
    side arms at +-60 degrees, a glow around them, on a faint haze, drawn at 5x and shrunk (the reference shrinks its
    photographs x0.2)."""
    rng = np.random.default_rng(_FROST_SEED + index)
    scale = 5
    side = FROST_SIZE * scale
    canvas = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(canvas)

    def arm(x: float, y: float, angle: float, length: float, width: float, depth: int) -> None:
        x2, y2 = x + length * math.cos(angle), y + length * math.sin(angle)
        draw.line([(x, y), (x2, y2)], fill=int(rng.uniform(140, 255)), width=max(1, round(width)))
        if depth == 0:
            return
        for t in np.arange(rng.uniform(4, 10), length, rng.uniform(6, 14)):
            px, py = x + t * math.cos(angle), y + t * math.sin(angle)
            for side_angle in (angle + math.pi / 3, angle - math.pi / 3):
                if rng.random() < 0.7:
                    arm(px, py, side_angle + rng.normal(0, 0.1), (length - t) * rng.uniform(0.2, 0.45),
                        width * 0.6, depth - 1)

    for _ in range(int(rng.integers(50, 80))):
        arm(rng.uniform(0, side), rng.uniform(0, side), rng.uniform(0, 2 * math.pi), rng.uniform(40, 220),
            rng.uniform(2, 5), 2)
    crystals = np.asarray(canvas.resize((FROST_SIZE, FROST_SIZE), Image.BOX), dtype=np.float64) / 255
    glow = ndimage.gaussian_filter(crystals, 6 / scale)
    haze = ndimage.gaussian_filter(rng.normal(size=(FROST_SIZE, FROST_SIZE)), FROST_SIZE / 12)
    haze = (haze - haze.min()) / (haze.max() - haze.min())
    value = np.clip(0.12 + 0.25 * haze + 0.55 * crystals + 1.2 * glow, 0, 1)
    tint = np.array([0.86, 0.93, 1.0])  # bluish white
    return (value[..., None] * tint * 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------------ corruptions


def snow(images: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    loc, scale, zoom, threshold, radius, sigma, blend = CONSTANTS["snow"]
    x = _unit(images)
    h, w = x.shape[1:3]
    draws = [(rng.normal(size=(h, w), loc=loc, scale=scale), rng.uniform(-135, -45)) for rng in rngs]
    layer = _clipped_zoom(np.stack([d[0] for d in draws]), zoom)
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)  # the reference blurs a uint8 PNG
    blurred = motion_blur(layer.astype(np.float32), radius, sigma, np.array([d[1] for d in draws]))
    flakes = (np.clip(np.rint(blurred), 0, 255) / 255)[..., None]
    grey = x @ np.array([0.299, 0.587, 0.114])  # OpenCV's RGB2GRAY
    x = blend * x + (1 - blend) * np.maximum(x, grey[..., None] * 1.5 + 0.5)
    return _to_uint8(x + flakes + flakes[:, ::-1, ::-1])


def frost(images: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    weight_x, weight_frost = CONSTANTS["frost"]
    h, w = images.shape[1:3]
    crops = []
    for rng in rngs:
        texture = frost_texture(int(rng.integers(FROST_TEXTURES)))
        top, left = rng.integers(0, texture.shape[0] - h), rng.integers(0, texture.shape[1] - w)
        crops.append(texture[top:top + h, left:left + w])
    out = weight_x * images.astype(np.float64) + weight_frost * np.stack(crops)
    return np.clip(out, 0, 255).astype(np.uint8)


def fog(images: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    strength, decay = CONSTANTS["fog"]
    x = _unit(images)
    h, w = x.shape[1:3]
    peak = x.max(axis=(1, 2, 3), keepdims=True)
    x = x + strength * plasma_fractal(rngs, 32, decay)[:, :h, :w, None]
    return _to_uint8(x * peak / (peak + strength))


def brightness(images: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    return _with_value(images, lambda v: v + CONSTANTS["brightness"])


def contrast(images: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    x = _unit(images)
    means = x.mean(axis=(1, 2), keepdims=True)
    return _to_uint8((x - means) * CONSTANTS["contrast"] + means)


def spatter(images: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Severity 5 is the reference's mud branch (mode 1): dark brown blobs."""
    loc, scale, sigma, threshold, mud_sigma, _ = CONSTANTS["spatter"]
    x = _unit(images)
    h, w = x.shape[1:3]
    liquid = _gaussian(np.stack([rng.normal(size=(h, w), loc=loc, scale=scale) for rng in rngs]), sigma)
    liquid[liquid < threshold] = 0
    mud = _gaussian((liquid > threshold).astype(np.float64), mud_sigma)
    mud[mud < 0.8] = 0
    mud = mud[..., None]
    colour = np.array([63, 42, 20]) / 255.0
    return _to_uint8(x * (1 - mud) + colour * mud)


def elastic(images: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """A random affine map of three points (OpenCV's ``warpAffine``, bilinear, REFLECT_101), then a smooth random
    displacement field (scipy's ``map_coordinates``, linear, reflect)."""
    h, w = images.shape[1:3]
    alpha, sigma, jitter = (f * w for f in CONSTANTS["elastic"])
    centre, square = np.float32(h) // 2, min(h, w) // 3
    pts1 = np.array([[centre + square, centre + square], [centre + square, centre - square],
                     [centre - square, centre - square]], dtype=np.float64)  # (x, y) points, as OpenCV reads them
    draws = [(rng.uniform(-jitter, jitter, size=(3, 2)), rng.uniform(-1, 1, size=(h, w)), rng.uniform(-1, 1, (h, w)))
             for rng in rngs]
    # the affine map sending pts1 to pts2, inverted: each output pixel reads the input at inverse(map)(x, y)
    ones = np.ones((3, 1))
    maps = np.stack([np.linalg.solve(np.hstack([pts1, ones]), pts1 + d[0]).T for d in draws])  # (N, 2, 3)
    inverse = np.linalg.inv(maps[:, :, :2])
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    grid = np.stack([xs, ys])  # (2, H, W) as (x, y)
    offset = grid[None] - maps[:, :, 2, None, None]  # (N, 2, H, W)
    src = np.einsum("nij,njhw->nihw", inverse, offset)
    warped = _sample(_unit(images), src[:, 1], src[:, 0], "mirror")
    dx = _gaussian(np.stack([d[1] for d in draws]), sigma, mode="reflect", truncate=3) * alpha
    dy = _gaussian(np.stack([d[2] for d in draws]), sigma, mode="reflect", truncate=3) * alpha
    return _to_uint8(_sample(warped, ys[None] + dy, xs[None] + dx, "reflect"))


def jpeg(images: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    out = np.empty_like(images)
    for i, image in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, "JPEG", quality=CONSTANTS["jpeg"])
        out[i] = np.asarray(Image.open(buf).convert("RGB"))
    return out


def pixelate(images: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    h, w = images.shape[1:3]
    small = (int(w * CONSTANTS["pixelate"]), int(h * CONSTANTS["pixelate"]))
    out = np.empty_like(images)
    for i, image in enumerate(images):
        out[i] = np.asarray(Image.fromarray(image).resize(small, Image.BOX).resize((w, h), Image.BOX))
    return out


def saturate(images: np.ndarray, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """On a grey image (saturation 0, hue 0) the added 0.2 saturation tints it red, as in the reference."""
    a, b = CONSTANTS["saturate"]
    return _with_saturation(images, lambda s: s * a + b)


CORRUPTIONS: tuple[Corruption, ...] = (snow, frost, fog, brightness, contrast, spatter, elastic, jpeg, pixelate,
                                       saturate)


def corrupt(images: np.ndarray, kind: int, rngs: Sequence[np.random.Generator]) -> np.ndarray:
    """Corruption ``kind`` (an index into :data:`NAMES`) of uint8 (N, H, W, 3) images, one generator per image."""
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise ValueError(f"corruptions take uint8 (N, H, W, 3) images, got {images.dtype} {images.shape}")
    if len(rngs) != len(images):
        raise ValueError(f"one generator per image: {len(images)} images, {len(rngs)} generators")
    if not len(images):
        return images.copy()
    return CORRUPTIONS[kind](images, rngs)


def corrupt_all(images: np.ndarray, kinds: np.ndarray, seeds: np.ndarray, chunk: int = 512) -> np.ndarray:
    """Image i with corruption ``kinds[i]`` and the generator ``default_rng(seeds[i])`` (a row of ints per image:
    the dataset seed, the source, the image's index in it), the images of one corruption in batches of ``chunk``."""
    if len(kinds) and not 0 <= int(kinds.min()) <= int(kinds.max()) < len(CORRUPTIONS):
        raise ValueError(f"corruption kinds must lie in 0..{len(CORRUPTIONS) - 1}, got {kinds.min()}..{kinds.max()}")
    out = np.empty_like(images)
    for kind in range(len(CORRUPTIONS)):
        where = np.flatnonzero(kinds == kind)
        for start in range(0, len(where), chunk):
            part = where[start:start + chunk]
            rngs = [np.random.default_rng([int(v) for v in seeds[i]]) for i in part]
            out[part] = corrupt(images[part], kind, rngs)
    return out
