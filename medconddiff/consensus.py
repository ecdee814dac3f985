"""Consensus: fusing the per-step predictions of a trajectory into one mask, plus uncertainty.

All functions are pure tensor functions on logits shaped (S, E, ..., K, H, W): S steps, E
ensemble members, any batch dims, K classes. They return class probabilities (..., K, H, W);
the label map is their argmax. The paper leaves the consensus open; the authors' code uses
`mean_logits`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .errors import SettingsError


def mean_logits(logits: torch.Tensor, logsnr: torch.Tensor | None = None) -> torch.Tensor:
    """Equal-weight mean of the logits over steps and members, then softmax (the authors' choice)."""
    return logits.mean(dim=(0, 1)).softmax(dim=-3)


def mean_probs(logits: torch.Tensor, logsnr: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of the per-step class probabilities."""
    return logits.softmax(dim=-3).mean(dim=(0, 1))


def class_argmax(scores: torch.Tensor, dim: int = -3) -> torch.Tensor:
    """The index of the largest class score along `dim` (int64), ties to the lowest index, as `argmax`.

    `max(dim).indices` gives the same indices (torch documents both as returning the first maximum)
    and is 6-10x faster on the CPU when `dim` is not the innermost one in memory: (5, 240, 240) took
    7.9 ms by `argmax` against 1.3 ms here, on one core, torch 2.14.
    """
    return scores.max(dim=dim).indices


def step_labels(logits: torch.Tensor) -> torch.Tensor:
    """The argmax class of every step and member: (S, E, ..., K, H, W) -> (S, E, ..., H, W) uint8.

    One byte per pixel (K <= 255): the votes and the agreement map both count these, so `fuse`
    takes the argmax over the whole trajectory once.
    """
    return class_argmax(logits).to(torch.uint8)


def vote_shares(votes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(S, E, ..., H, W) class votes -> (..., K, H, W) the share of steps x members voting for each class."""
    n = votes.shape[0] * votes.shape[1]
    counts = [(votes == c).sum(dim=(0, 1), dtype=torch.int32) for c in range(num_classes)]
    return torch.stack(counts, dim=-3).float() / n


def majority_vote(logits: torch.Tensor, logsnr: torch.Tensor | None = None) -> torch.Tensor:
    """Each step and member votes for its argmax class; probabilities are the vote shares.

    Ties go to the lower class index (background first), by argmax's rule.
    """
    return vote_shares(step_labels(logits), logits.shape[-3])


def snr_weighted(logits: torch.Tensor, logsnr: torch.Tensor | None = None) -> torch.Tensor:
    """Probabilities averaged with weight alpha_t^2 = sigmoid(logsnr): cleaner (later) steps count more."""
    if logsnr is None:
        raise SettingsError("snr_weighted needs the log-SNR of each step")
    w = torch.sigmoid(logsnr.double()).clamp(min=1e-12)
    w = (w / w.sum()).to(logits.dtype).reshape(-1, *([1] * (logits.dim() - 1)))  # (S, 1, ...)
    return (logits.softmax(dim=-3) * w).sum(dim=0).mean(dim=0)


def last(logits: torch.Tensor, logsnr: torch.Tensor | None = None) -> torch.Tensor:
    """Only the final step (members averaged): what a sampler without consensus would return."""
    return logits[-1].softmax(dim=-3).mean(dim=0)


CONSENSUS: dict[str, Callable[..., torch.Tensor]] = {
    "mean_logits": mean_logits,
    "mean_probs": mean_probs,
    "majority_vote": majority_vote,
    "snr_weighted": snr_weighted,
    "last": last,
}


@dataclass
class Consensus:
    probs: torch.Tensor  # (..., K, H, W)
    labels: torch.Tensor  # (..., H, W) int64
    agreement: torch.Tensor  # (..., H, W) fraction of steps x members whose argmax equals `labels`
    entropy: torch.Tensor  # (..., H, W) predictive entropy of `probs`, divided by log K: in [0, 1]


def fuse(
    logits: torch.Tensor,
    logsnr: torch.Tensor | None = None,
    *,
    method: str = "mean_logits",
    votes: torch.Tensor | None = None,
) -> Consensus:
    """logits (S, E, ..., K, H, W), logsnr (S,) -> `Consensus` with the label map and uncertainty maps.

    `votes`: `step_labels(logits)` when the caller already has it (the sampling loop computes it
    step by step, while each step's logits are in cache).
    """
    if method not in CONSENSUS:
        raise SettingsError(f"unknown consensus {method!r}; accepted: {', '.join(CONSENSUS)}")
    logits = logits.float()
    k = logits.shape[-3]
    if votes is None:
        votes = step_labels(logits)  # (S, E, ..., H, W), shared by the votes and the agreement map
    probs = vote_shares(votes, k) if method == "majority_vote" else CONSENSUS[method](logits, logsnr)
    labels = class_argmax(probs)
    agreement = (votes == labels.to(torch.uint8)).sum(dim=(0, 1), dtype=torch.int32).float() / (
        votes.shape[0] * votes.shape[1]
    )
    entropy = -(probs * probs.clamp(min=1e-12).log()).sum(dim=-3) / math.log(k)
    return Consensus(probs=probs, labels=labels, agreement=agreement, entropy=entropy.clamp(0, 1))
