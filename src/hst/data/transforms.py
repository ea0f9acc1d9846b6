"""Image transforms: the evaluation resize and the training augmentations."""

from __future__ import annotations

import torch
from torchvision.transforms import v2


def build_transform(image_size: int, augment: str, mean: tuple[float, ...], std: tuple[float, ...]) -> v2.Compose:
    """Test: resize to a square. Train 'paper': resize to 8/7 of the size, random square crop of
    {1, 7/8, 6/8, 5/8, 4/8} of that, resize back, flip (hst-reference §2.4, 448 ← 512)."""
    resize = eval_resize(image_size)
    tail = [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    if augment == "none":
        return v2.Compose([resize, *tail])
    if augment == "flip":
        return v2.Compose([resize, v2.RandomHorizontalFlip(), *tail])
    if augment == "paper":
        scale = round(image_size * 8 / 7)
        crops = [round(scale * f) for f in (1.0, 7 / 8, 6 / 8, 5 / 8, 4 / 8)]
        return v2.Compose(
            [
                v2.Resize((scale, scale), interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
                v2.RandomChoice([v2.RandomCrop(c) for c in crops]),
                resize,
                v2.RandomHorizontalFlip(),
                *tail,
            ]
        )
    raise ValueError(f"data.augment must be 'paper', 'flip' or 'none', got {augment!r}")


def eval_resize(image_size: int) -> v2.Resize:
    """The resize of the evaluation transform: a PIL image to ``image_size × image_size``, bicubic, antialiased."""
    return v2.Resize((image_size, image_size), interpolation=v2.InterpolationMode.BICUBIC, antialias=True)


def normalize_pixels(pixels: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The rest of the evaluation transform on a batch: ``B×H×W×3`` uint8 pixels to ``B×3×H×W`` float32.

    The same operations as ``ToImage``, ``ToDtype(scale=True)`` and ``Normalize`` (so the same bits); the result
    keeps the pixels' channels-last layout, which the backbone runs fastest on.
    """
    images = pixels.permute(0, 3, 1, 2).to(torch.float32).mul(1.0 / 255)
    shape = (1, -1, 1, 1)
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=pixels.device).view(shape)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=pixels.device).view(shape)
    return images.sub(mean_t).div(std_t)
