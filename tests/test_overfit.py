"""Overfitting a handful of real BraTS slices proves the loss, sampler and consensus are wired right.

A few hundred CPU steps on 4 tumour slices at 64 px must reach foreground Dice > 0.9 on those
slices when sampled from pure noise with the default sampler and consensus. Skipped (with the
reason) where ../shared/data is absent.
"""

from __future__ import annotations

import time

import torch

from medconddiff.config import MedCondDiffConfig
from medconddiff.consensus import fuse
from medconddiff.diffusion import class_weights_from_counts, hybrid_loss, labels_to_x0, q_sample
from medconddiff.model import MedCondDiff
from medconddiff.sampler import sample_loop
from train import data as D


def test_overfit_real_brats_slices(shared_data):
    cfg = MedCondDiffConfig(image_size=64)
    settings = D.DataSettings(
        root=str(shared_data / "brats2015" / "train"),
        channel_files=["Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz"],
    )
    case = D.find_cases(settings.root, settings)[0]
    slices = D.build_slices([case], settings, cfg)  # through the library's normalisation and geometry
    area = (slices.labels > 0).flatten(1).sum(1)
    pick = area.argsort(descending=True)[[0, 6, 12, 18]]  # 4 slices with plenty of tumour
    images, labels = slices.images[pick].float(), slices.labels[pick].long()

    torch.manual_seed(0)
    model = MedCondDiff(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.0)
    weights = class_weights_from_counts(D.class_counts(labels, 5))
    g = torch.Generator().manual_seed(0)
    start = time.time()
    for _ in range(300):
        lab = labels.repeat_interleave(2, dim=0)
        t = torch.rand(lab.shape[0], generator=g)
        x_t = q_sample(labels_to_x0(lab, 5), t, torch.randn((lab.shape[0], 5, 64, 64), generator=g), model.schedule)
        loss, _ = hybrid_loss(model(images, x_t, t), lab, class_weights=weights)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    with torch.inference_mode():
        cond = model.encode_image(images)
        logits = torch.stack(
            [r.logits for r in sample_loop(model, cond, steps=10, generator=torch.Generator().manual_seed(1))]
        )
    pred = fuse(logits).labels  # (4, 64, 64)
    p, t_ = pred > 0, labels > 0
    dice = 2 * (p & t_).sum().item() / (p.sum() + t_.sum()).item()
    print(f"overfit: foreground Dice {dice:.3f} after 300 steps in {time.time() - start:.0f} s")
    assert dice > 0.9
