"""The diffusion process on segmentation masks: schedule, forward noising, training loss.

Notation (after the paper and guided-diffusion):
    x0        the clean mask in value space: 2 * onehot - 1, so every entry is -1 or +1   (B, K, H, W)
    x_t       the noisy mask at time t in [0, 1]: alpha_t * x0 + sigma_t * eps              (B, K, H, W)
    logsnr    log(alpha_t^2 / sigma_t^2), a cosine schedule in t, shifted for the image size
    alpha_t   sqrt(sigmoid(logsnr));  sigma_t = sqrt(sigmoid(-logsnr))   (variance preserving)

The same value space is used in training (noise `2*onehot-1`) and in sampling (feed back
`2*softmax(logits)-1`), so the network never sees at sampling time a kind of x0 it was not
trained on.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


class CosineLogSNR:
    """The cosine log-SNR schedule, logsnr(t) = -2 log tan(a t + b) + shift, t in [0, 1].

    a and b are chosen so that logsnr(0) = logsnr_max and logsnr(1) = logsnr_min before the
    shift. Computed in float64 and returned in the dtype of `t`.
    """

    def __init__(self, *, logsnr_min: float = -15.0, logsnr_max: float = 15.0, shift: float = 0.0):
        self.logsnr_min = logsnr_min
        self.logsnr_max = logsnr_max
        self.shift = shift
        self._b = math.atan(math.exp(-0.5 * logsnr_max))
        self._a = math.atan(math.exp(-0.5 * logsnr_min)) - self._b

    @classmethod
    def from_config(cls, config) -> CosineLogSNR:
        return cls(logsnr_min=config.logsnr_min, logsnr_max=config.logsnr_max, shift=config.logsnr_shift)

    def logsnr(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) times in [0, 1] -> (B,) log-SNR values."""
        t64 = t.to(torch.float64)
        out = -2.0 * torch.log(torch.tan(self._a * t64 + self._b)) + self.shift
        return out.to(t.dtype if t.is_floating_point() else torch.float32)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) times -> (alpha_t, sigma_t), each (B,), with alpha^2 + sigma^2 = 1."""
        logsnr = self.logsnr(t.to(torch.float64))
        alpha = torch.sigmoid(logsnr).sqrt()
        sigma = torch.sigmoid(-logsnr).sqrt()
        return alpha.to(torch.float32), sigma.to(torch.float32)


def labels_to_x0(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, H, W) integer labels -> (B, K, H, W) clean mask in value space {-1, +1}."""
    onehot = F.one_hot(labels.long(), num_classes).permute(0, 3, 1, 2)  # (B, K, H, W)
    return 2.0 * onehot.float() - 1.0


def probs_to_x0(probs: torch.Tensor) -> torch.Tensor:
    """(B, K, H, W) class probabilities -> the same value space as `labels_to_x0`."""
    return 2.0 * probs - 1.0


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (like.dim() - 1)))  # (B,) -> (B, 1, 1, 1)


def q_sample(x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, schedule: CosineLogSNR) -> torch.Tensor:
    """Forward noising q(x_t | x0): x0, noise (B, K, H, W), t (B,) -> x_t (B, K, H, W)."""
    alpha, sigma = schedule.alpha_sigma(t)
    return _expand(alpha, x0).to(x0.dtype) * x0 + _expand(sigma, x0).to(x0.dtype) * noise


@dataclass
class Recycle:
    """Recycling (Fu et al., MELBA 2024, arXiv 2308.16355): the rows of a training batch whose x_t is
    rebuilt from the model's own x0-hat, computed without gradient, instead of from the truth.

    For each recycled row the model first predicts x0-hat from `x_start` at `t_start`; x0-hat (in the
    mask's value space, times `mask_scale`) is then noised to the row's own t with `noise`, so training
    sees the kind of x_t sampling will feed back. Built by the training loop, consumed by `MedCondDiff.forward`.
    """

    x_start: torch.Tensor  # (N, K, H, W) input of the no-grad pass: pure noise, or the truth noised to t_start
    t_start: torch.Tensor  # (N,) its time
    noise: torch.Tensor  # (N, K, H, W) the noise that takes x0-hat to x_t
    rows: torch.Tensor  # (N,) bool: which rows are recycled (the others keep x_t from the truth)


def recycled_x_t(
    x0_logits: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor, recycle: Recycle, schedule: CosineLogSNR, mask_scale: float
) -> torch.Tensor:
    """x0-hat logits (N, K, H, W) of the no-grad pass -> x_t (N, K, H, W) with the recycled rows replaced."""
    x0_hat = probs_to_x0(x0_logits.detach().float().softmax(dim=1)) * mask_scale
    renoised = q_sample(x0_hat, t, recycle.noise.to(x0_hat), schedule)
    return torch.where(recycle.rows.to(x_t.device)[:, None, None, None], renoised.to(x_t.dtype), x_t)


def class_weights_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """(K,) pixel counts -> (K,) weights from log inverse frequency, mean 1 (rare classes weigh more)."""
    freq = counts.double().clamp(min=1) / counts.double().clamp(min=1).sum()
    w = torch.log(1.0 / freq) + 1.0
    return (w / w.mean()).float()


def soft_dice_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, class_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """1 - soft Dice, per class over the batch, weighted mean over classes.

    logits (B, K, H, W), labels (B, H, W) -> scalar. Classes absent from both the batch's labels
    and its predictions score ~1 thanks to the smoothing term, so they add no gradient noise.
    """
    k = logits.shape[1]
    probs = logits.float().softmax(dim=1)
    onehot = F.one_hot(labels.long(), k).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + 1.0) / (denom + 1.0)  # (K,)
    w = torch.ones(k, device=logits.device) if class_weights is None else class_weights.to(logits.device)
    return 1.0 - (dice * w).sum() / w.sum()


def hybrid_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    class_weights: torch.Tensor | None = None,
    dice_weight: float = 0.3,
    ce_weight: float = 0.7,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training loss on the predicted x0: dice_weight * soft Dice + ce_weight * weighted CE.

    logits (B, K, H, W) are the network's x0 logits, labels (B, H, W) the true mask.
    Returns the scalar loss and its parts as floats for logging.
    """
    w = None if class_weights is None else class_weights.to(logits.device)
    ce = F.cross_entropy(logits.float(), labels.long(), weight=w)
    dice = soft_dice_loss(logits, labels, class_weights=w)
    loss = dice_weight * dice + ce_weight * ce
    return loss, {"dice_loss": float(dice.detach()), "ce": float(ce.detach())}
