"""Model inversion: reconstruct a representative input of each class from a classifier.

``miface`` wraps ART's MIFace (Fredrikson et al. 2015: gradient ascent on the class score).
``regularised_inversion`` is the stronger variant: the same ascent with a total-variation image
prior, an L2 pull toward a flat grey image and random jitter, in a sigmoid-bounded pixel space.
``inversion_quality`` grades reconstructions with an *independently trained* evaluation
classifier and by their distance to the true class means; ``image_grid`` makes the PNG.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from trustlab.errors import ConfigError


def miface(classifier, n_classes: int, input_shape: tuple[int, ...], *, max_iter: int = 1000,
           learning_rate: float = 0.1, init: float = 0.0) -> np.ndarray:
    """ART's MIFace: one reconstruction per class, ``(n_classes, *input_shape)``.

    ``classifier`` is an ART classifier with ``clip_values`` (pixel range)."""
    from art.attacks.inference.model_inversion import MIFace

    attack = MIFace(classifier, max_iter=max_iter, window_length=100, threshold=0.99,
                    learning_rate=learning_rate, batch_size=n_classes, verbose=False)
    x_init = np.full((n_classes, *input_shape), init, dtype=np.float32)
    return attack.infer(x_init, np.arange(n_classes))


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation per image of a (N, C, H, W) batch."""
    return ((x[..., 1:, :] - x[..., :-1, :]).abs().sum((1, 2, 3))
            + (x[..., :, 1:] - x[..., :, :-1]).abs().sum((1, 2, 3)))


def regularised_inversion(model: nn.Module, n_classes: int, input_shape: tuple[int, ...], *,
                          steps: int = 500, lr: float = 0.05, tv_weight: float = 0.02,
                          l2_weight: float = 0.005, jitter: int = 1, restarts: int = 4,
                          seed: int = 0) -> np.ndarray:
    """Per class, maximise log p(class | x) − tv·TV(x) − l2·‖x − ½‖² over x ∈ (0, 1)^shape.

    ``restarts`` random starts per class run as one batch; the one with the highest objective
    is kept. ``jitter`` rolls the image by up to that many pixels each step (robustness)."""
    if len(input_shape) != 3:
        raise ConfigError(f"inversion needs images (C, H, W), got input shape {input_shape}")
    generator = torch.Generator().manual_seed(seed)
    model = model.eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    target = torch.arange(n_classes).repeat_interleave(restarts)
    latent = (0.5 * torch.randn((len(target), *input_shape), generator=generator)).requires_grad_()
    optimizer = torch.optim.Adam([latent], lr=lr)

    def objective(x: torch.Tensor, shift: tuple[int, int] = (0, 0)) -> torch.Tensor:
        logp = model(torch.roll(x, shift, dims=(2, 3))).log_softmax(-1)
        return (logp.gather(1, target[:, None])[:, 0] - tv_weight * total_variation(x)
                - l2_weight * (x - 0.5).pow(2).sum((1, 2, 3)))

    for _ in range(steps):
        shift = tuple(int(s) for s in torch.randint(-jitter, jitter + 1, (2,),
                                                     generator=generator))
        optimizer.zero_grad()
        (-objective(torch.sigmoid(latent), shift).sum()).backward()
        optimizer.step()
    with torch.no_grad():
        images = torch.sigmoid(latent)
        best = objective(images).view(n_classes, restarts).argmax(1)
        chosen = images.view(n_classes, restarts, *input_shape)[torch.arange(n_classes), best]
    return chosen.numpy()


@dataclass
class InversionQuality:
    """How recognisable reconstructions are: evaluation accuracy and distance to class means."""

    eval_accuracy: float
    mean_distance: float
    baseline_distance: float  # distance of a flat grey image to the class means, for scale


def inversion_quality(eval_predict, reconstructions: np.ndarray,
                      class_means: np.ndarray) -> InversionQuality:
    """``eval_predict(X_flat) -> labels`` of an independent classifier; reconstruction k is
    meant to show class k."""
    flat = reconstructions.reshape(len(reconstructions), -1)
    means = class_means.reshape(len(class_means), -1)
    accuracy = float((np.asarray(eval_predict(flat)) == np.arange(len(flat))).mean())
    distance = float(np.linalg.norm(flat - means, axis=1).mean())
    grey = float(np.linalg.norm(0.5 - means, axis=1).mean())
    return InversionQuality(accuracy, distance, grey)


def image_grid(rows: dict[str, np.ndarray], path: str | Path, scale: int = 8) -> None:
    """Save a PNG with one row of images per entry (label → (N, 1, H, W) in [0, 1])."""
    from PIL import Image

    blocks = [np.concatenate([np.pad(img[0], 1, constant_values=1.0) for img in images], axis=1)
              for images in rows.values()]
    grid = np.clip(np.concatenate(blocks, axis=0), 0, 1)
    image = Image.fromarray((grid * 255).astype(np.uint8), mode="L")
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(path)
