"""Command line: `python -m medconddiff segment ...` and `python -m medconddiff info`.

Any problem with the user's input, weights or settings exits with code 2 and one line on stderr
saying what was wrong and what is accepted; never a traceback.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from pathlib import Path

from .errors import InputError, MedCondDiffError, SettingsError


def _build_parser() -> argparse.ArgumentParser:
    from .consensus import CONSENSUS
    from .io import CT_WINDOWS
    from .sampler import SAMPLERS

    ap = argparse.ArgumentParser(
        prog="python -m medconddiff", description="MedCondDiff: diffusion segmentation of medical images."
    )
    sub = ap.add_subparsers(dest="command", required=True)

    seg = sub.add_parser(
        "segment",
        help="segment a NIfTI volume or a 2D image",
        description=(
            "Segment one case. INPUT is one NIfTI file per modality (or one 4-D NIfTI), or one 2D image per "
            "modality, in the order of the model's channels (see `info`). OUTPUT is a NIfTI label map on the "
            "input's grid (.nii/.nii.gz) for NIfTI input, or a PNG of class indices for 2D input."
        ),
    )
    seg.add_argument("inputs", nargs="+", metavar="INPUT")
    seg.add_argument("-o", "--output", required=True, metavar="OUTPUT")
    seg.add_argument(
        "--weights",
        default=None,
        help="bundled name, folder, or Hub repo id[@revision] (default: MEDCONDDIFF_WEIGHTS or brats-demo)",
    )
    seg.add_argument("--steps", type=int, default=None, help="sampling steps S (default: the model's, usually 10)")
    seg.add_argument("--ensemble", type=int, default=None, help="ensemble members E sampled together (default 1)")
    seg.add_argument("--consensus", choices=sorted(CONSENSUS), default=None, help="how the steps are fused")
    seg.add_argument("--sampler", choices=list(SAMPLERS), default=None)
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    seg.add_argument(
        "--ct-window", choices=sorted(CT_WINDOWS), default=None, help="CT models: Hounsfield window preset"
    )
    seg.add_argument("--batch-size", type=int, default=8, help="slices per batch for volumes")
    seg.add_argument(
        "--uncertainty", metavar="FILE", default=None, help="also write the agreement map (1 = all steps agree)"
    )
    seg.add_argument("--quiet", action="store_true", help="no progress bar")

    info = sub.add_parser("info", help="print the model's size, classes and settings")
    info.add_argument("--weights", default=None)
    return ap


def _check_output(path: Path, kind: str) -> None:
    name = path.name.lower()
    if kind == "nifti" and not name.endswith((".nii", ".nii.gz")):
        raise InputError(f"output {path.name}: NIfTI input gives a NIfTI label map; name the output .nii or .nii.gz")
    if kind == "image" and not name.endswith(".png"):
        raise InputError(f"output {path.name}: 2D input gives a PNG label map; name the output .png")
    if path.is_dir():
        raise InputError(f"output {path} is a folder; give a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(
            f"output {path}: cannot create its folder ({err.strerror or err}); give a writable path"
        ) from None


def _write(path: Path, write) -> None:
    """Run `write(path)`; a disk or permission problem becomes an `InputError` naming the file."""
    try:
        write(path)
    except OSError as err:
        raise InputError(f"cannot write {path} ({err.strerror or err}); give a writable path") from None


def cmd_segment(args) -> int:
    import numpy as np

    from . import io
    from .config import MedCondDiffConfig
    from .hub import CONFIG_NAME, load_folder, resolve
    from .pipeline import SamplingSettings, check_input, load_case, resolve_device, segment_image, segment_volume

    out = Path(args.output)
    kind = io.kind_of(args.inputs[0])
    _check_output(out, kind)
    if args.batch_size < 1:
        raise SettingsError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.uncertainty:
        _check_output(Path(args.uncertainty), kind)
    device = resolve_device(args.device)
    folder = resolve(args.weights)
    config = MedCondDiffConfig.from_json(folder / CONFIG_NAME)
    settings = SamplingSettings.defaults_for(
        config,
        steps=args.steps,
        ensemble=args.ensemble,
        consensus=args.consensus,
        sampler=args.sampler,
        seed=args.seed,
    )
    scan = load_case(args.inputs, config)  # bad input fails fast, before the network is built
    model = load_folder(folder, device=device)
    if scan.is_volume:
        res = segment_volume(
            model,
            scan.data,
            settings,
            kind=scan.kind,
            ct_window=args.ct_window,
            batch_size=args.batch_size,
            progress=not args.quiet,
        )
        _write(out, lambda p: io.write_scan_labels(res.labels, p, scan=scan))  # the input's grid and affine
        if args.uncertainty:
            _write(Path(args.uncertainty), lambda p: io.write_scan_map(res.agreement, p, scan=scan))
        labels = scan.to_source(res.labels)
    else:
        res = segment_image(model, scan.data, settings, kind=scan.kind, ct_window=args.ct_window, keep_trajectory=False)
        labels = scan.to_source(res.labels.astype(np.uint8))  # the input's full size (nearest)
        _write(out, lambda p: io.write_png_labels(labels, p))
        if args.uncertainty:
            _write(Path(args.uncertainty), lambda p: io.write_png_map(scan.to_source(res.agreement), p))
    if scan.is_volume:
        slices = [scan.data[..., k] for k in range(scan.data.shape[-1])]  # views, no copies
        entropy = [res.entropy[..., k] for k in range(scan.data.shape[-1])]
        check = check_input(config, slices, entropy, kind=scan.kind, ct_window=args.ct_window)
    else:
        check = check_input(config, [scan.data], [res.entropy], kind=scan.kind, ct_window=args.ct_window)
    if check is not None and check.message:  # a warning, not a refusal: the mask is written all the same
        print(f"warning: {check.message}", file=sys.stderr)
    counts = np.bincount(labels.ravel(), minlength=model.config.num_classes)
    found = ", ".join(
        f"{n}: {int(c)}"
        for n, c in zip(model.config.class_names, counts, strict=True)
        if c and n != model.config.class_names[0]
    )
    print(f"wrote {out} ({'x'.join(map(str, labels.shape))}; {found or 'no foreground found'})")
    return 0


def cmd_info(args) -> int:
    from .hub import load_folder, resolve

    folder = resolve(args.weights)
    model = load_folder(folder)
    c = model.config
    n = model.parameter_counts()
    print(f"weights:    {folder}")
    print(
        f"parameters: backbone {n['backbone'] / 1e6:.2f}M + rest {n['rest'] / 1e6:.2f}M = total {n['total'] / 1e6:.2f}M"
    )
    print(f"backbone:   {c.backbone} (fusion: {c.fusion})")
    print(
        f"input:      {c.image_channels} channel(s) [{', '.join(c.channel_names)}], {c.modality}, {c.image_size}x{c.image_size} px"
    )
    print(f"classes:    {c.num_classes} [{', '.join(f'{i}={name}' for i, name in enumerate(c.class_names))}]")
    print(
        f"sampling:   {c.default_steps} steps, {c.default_sampler}, ensemble {c.default_ensemble}, consensus {c.default_consensus}"
    )
    return 0


def _quiet_libraries() -> None:
    """Keep stderr to our one line: library warnings and log chatter are for developers.

    PYTHONWARNINGS / -W and HF_HUB_VERBOSITY still win when set.
    """
    if not sys.warnoptions:
        warnings.simplefilter("ignore")
    os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # read when huggingface_hub is first imported
    logging.getLogger("nibabel").setLevel(logging.ERROR)  # "pixdim[1,2,3] should be positive; setting to abs"


def main(argv: list[str] | None = None) -> int:
    _quiet_libraries()
    args = _build_parser().parse_args(argv)
    try:
        return cmd_segment(args) if args.command == "segment" else cmd_info(args)
    except MedCondDiffError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
