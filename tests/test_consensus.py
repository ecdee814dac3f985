"""Consensus functions and uncertainty maps: invariants that hold for any trajectory."""

from __future__ import annotations

import math

import pytest
import torch

from medconddiff.consensus import CONSENSUS, fuse, majority_vote, step_labels
from medconddiff.errors import SettingsError

LOGSNR = torch.tensor([-10.0, -2.0, 0.0, 3.0])


@pytest.mark.parametrize("method", list(CONSENSUS))
def test_identical_steps_give_that_step(method):
    step = torch.randn(1, 4, 6, 6) * 3  # (E, K, H, W)
    logits = step.expand(4, 1, 4, 6, 6)  # (S, E, K, H, W): the same prediction at every step
    c = fuse(logits, LOGSNR, method=method)
    assert torch.equal(c.labels, step[0].argmax(0))
    assert torch.allclose(c.agreement, torch.ones(6, 6))
    if method in ("mean_logits", "mean_probs", "snr_weighted", "last"):
        torch.testing.assert_close(c.probs, step[0].softmax(0))


def test_majority_is_a_majority():
    k, h, w = 3, 2, 2
    votes = [0, 2, 2, 1, 2]  # class 2 wins 3 of 5 steps everywhere
    logits = torch.stack(
        [torch.nn.functional.one_hot(torch.full((h, w), v), k).permute(2, 0, 1).float() * 5 for v in votes]
    )
    logits = logits[:, None]  # (S=5, E=1, K, H, W)
    c = fuse(logits, None, method="majority_vote")
    assert (c.labels == 2).all()
    torch.testing.assert_close(c.probs[2], torch.full((h, w), 0.6))
    torch.testing.assert_close(c.agreement, torch.full((h, w), 0.6))


def test_snr_weighting_trusts_clean_steps():
    noisy = torch.tensor([5.0, 0.0])[None, None, :, None, None].expand(1, 1, 2, 1, 1)  # says class 0
    clean = torch.tensor([0.0, 5.0])[None, None, :, None, None].expand(1, 1, 2, 1, 1)  # says class 1
    logits = torch.cat([noisy, noisy, clean])  # two noisy steps, one clean one
    ls = torch.tensor([-12.0, -8.0, 8.0])
    assert fuse(logits, ls, method="snr_weighted").labels.item() == 1
    assert fuse(logits, ls, method="mean_probs").labels.item() == 0


def test_probs_are_distributions_and_entropy_is_bounded():
    logits = torch.randn(5, 3, 2, 4, 8, 8)  # (S, E, B, K, H, W): batch dims pass through
    for method in CONSENSUS:
        c = fuse(logits, torch.linspace(-10, 5, 5), method=method)
        assert c.probs.shape == (2, 4, 8, 8) and c.labels.shape == (2, 8, 8)
        torch.testing.assert_close(c.probs.sum(1), torch.ones(2, 8, 8))
        assert (c.entropy >= 0).all() and (c.entropy <= 1).all()
        assert (c.agreement >= 0).all() and (c.agreement <= 1).all()
    uniform = fuse(torch.zeros(1, 1, 4, 2, 2), None, method="mean_probs")
    torch.testing.assert_close(uniform.entropy, torch.ones(2, 2))  # 4 equal classes: entropy log 4 / log 4
    assert math.isclose(float(uniform.probs[0, 0, 0]), 0.25)


def test_unknown_consensus_is_a_settings_error():
    with pytest.raises(SettingsError, match="accepted"):
        fuse(torch.zeros(1, 1, 2, 2, 2), None, method="median")


@pytest.mark.parametrize("method", sorted(CONSENSUS))
def test_votes_given_by_the_loop_change_nothing(method):
    """`fuse(votes=...)` (the loop's per-step argmax) equals fusing from the logits alone, and the
    vote counting equals the one-hot mean it replaces."""
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 3, 4, 6, 7, generator=g)  # (S, E, K, H, W)
    logsnr = torch.linspace(-10, 10, 5)
    a = fuse(logits, logsnr, method=method)
    b = fuse(logits, logsnr, method=method, votes=step_labels(logits))
    for name in ("probs", "labels", "agreement", "entropy"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    one_hot = torch.nn.functional.one_hot(logits.argmax(dim=-3), 4).float().mean(dim=(0, 1)).movedim(-1, -3)
    torch.testing.assert_close(majority_vote(logits), one_hot, rtol=0, atol=1e-7)
