"""Command line: `python -m medconddiff segment ...` and `python -m medconddiff info` (installed: `medconddiff ...`).

Any problem with the user's input, weights or settings exits with code 2 and one line on stderr
saying what was wrong and what is accepted; never a traceback. `segment -i IN_DIR -o OUT_DIR` goes
on past a bad case (a line on stderr, a row in summary.csv) and exits with 2 only when no case could
be segmented.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import InputError, MedCondDiffError, SettingsError

PRECISION_HELP = (
    "the network's numeric precision: auto (default: bf16 on a CPU with native bf16 or a CUDA GPU that has it, "
    "fp16 on an older GPU, else fp32), fp32, bf16 or fp16"
)


def _build_parser() -> argparse.ArgumentParser:
    from .consensus import CONSENSUS
    from .io import CT_WINDOWS
    from .sampler import SAMPLERS

    prog = "medconddiff" if Path(sys.argv[0]).name == "medconddiff" else "python -m medconddiff"
    ap = argparse.ArgumentParser(prog=prog, description="MedCondDiff: diffusion segmentation of medical images.")
    sub = ap.add_subparsers(dest="command", required=True)

    seg = sub.add_parser(
        "segment",
        help="segment a NIfTI volume, a DICOM series, a 2D image, or a folder of cases",
        description=(
            "Segment one case, or every case of a folder (-i). INPUT is one NIfTI file per modality (or one 4-D "
            "NIfTI), a DICOM series (a folder, a .zip or .dcm files), or one 2D image per modality, in the order "
            "of the model's channels (see `info`). OUTPUT is a NIfTI label map on the input's grid (.nii/.nii.gz) "
            "for NIfTI or DICOM input, or a PNG of class indices for 2D input. With -i IN_DIR, OUTPUT is a folder: "
            "one mask per case and summary.csv (class volumes, timings, errors)."
        ),
    )
    seg.add_argument("inputs", nargs="*", metavar="INPUT")
    seg.add_argument("-i", "--input-dir", metavar="IN_DIR", default=None, help="segment every case of this folder")
    seg.add_argument("-o", "--output", required=True, metavar="OUTPUT")
    seg.add_argument("--series", metavar="UID", default=None, help="DICOM: the SeriesInstanceUID to read")
    seg.add_argument(
        "--weights",
        default=None,
        help="an offered model's name (`info` lists them), a folder, or a Hub repo id[@revision] "
        "(default: MEDCONDDIFF_WEIGHTS or brats-demo)",
    )
    seg.add_argument("--steps", type=int, default=None, help="sampling steps S (default: the model's, usually 10)")
    seg.add_argument("--ensemble", type=int, default=None, help="ensemble members E sampled together (default 1)")
    seg.add_argument("--consensus", choices=sorted(CONSENSUS), default=None, help="how the steps are fused")
    seg.add_argument("--sampler", choices=list(SAMPLERS), default=None)
    seg.add_argument("--seed", type=int, default=0)
    seg.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    # checked by precision.check, not argparse: an unknown name is then one line saying what is accepted
    seg.add_argument("--precision", default="auto", metavar="auto|fp32|bf16|fp16", help=PRECISION_HELP)
    seg.add_argument(
        "--ct-window", choices=sorted(CT_WINDOWS), default=None, help="CT models: Hounsfield window preset"
    )
    seg.add_argument("--batch-size", type=int, default=8, help="slices per batch for volumes")
    seg.add_argument(
        "--uncertainty", metavar="FILE", default=None, help="also write the agreement map (1 = all steps agree)"
    )
    seg.add_argument("--quiet", action="store_true", help="no progress bar")

    info = sub.add_parser(
        "info",
        help="print the model's size, classes and settings, and the precision it runs in",
        description="Without --weights: the offered models (where each would load from) and the default model.",
    )
    info.add_argument("--weights", default=None, help="an offered model's name, a folder, or a Hub repo id[@revision]")
    info.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    info.add_argument("--precision", default="auto", metavar="auto|fp32|bf16|fp16", help=PRECISION_HELP)
    return ap


def _check_output(path: Path, kind: str) -> None:
    name = path.name.lower()
    if kind in ("nifti", "dicom") and not name.endswith((".nii", ".nii.gz")):
        what = "NIfTI" if kind == "nifti" else "DICOM"
        raise InputError(f"output {path.name}: {what} input gives a NIfTI label map; name the output .nii or .nii.gz")
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


def _precision(asked: str, device) -> str:
    """`--precision` resolved for `device` (`precision.resolve`); a slow choice (bf16 or fp16 the hardware would
    emulate) is said on stderr in one line, although this command otherwise silences library warnings."""
    from .precision import resolve

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        used = resolve(asked, device)
    for w in caught:
        print(f"warning: {' '.join(str(w.message).split())}", file=sys.stderr)
    return used


def _precision_note(asked: str, used: str, device) -> str:
    """How the precision was chosen, for `info`: 'auto on cpu: native bf16' or 'as asked'."""
    from .precision import native_bf16

    if asked != "auto":
        return f"as asked, on {device.type}"
    has = "native bf16" if native_bf16(device) else "no native bf16"
    return f"auto on {device.type}: {has}"


def _read_while_loading(read, folder: Path, device):
    """`read()` on this thread while the network is built and its weights loaded on another: importing timm and
    loading take longer than reading a volume and preparing its slices, and the two mostly wait on different
    things (the import on Python, the read on zlib and numpy, which let other threads run). A problem with the
    input is raised first, as when the scan was read before the weights: the load is waited for, not reported.
    Returns (what `read` returned, model).
    """
    from concurrent.futures import ThreadPoolExecutor

    from .hub import load_folder

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="medconddiff-load") as pool:
        loading = pool.submit(load_folder, folder, device=device)
        done = read()  # on an error, leaving the pool waits for the load (no thread outlives the command)
        return done, loading.result()


def _settings(args, config):
    from .pipeline import SamplingSettings

    if args.batch_size < 1:
        raise SettingsError(f"--batch-size must be >= 1, got {args.batch_size}")
    return SamplingSettings.defaults_for(
        config, steps=args.steps, ensemble=args.ensemble, consensus=args.consensus, sampler=args.sampler, seed=args.seed
    )


@dataclass
class Segmented:
    """What `_segment_scan` did to one case: the labels on the input's grid, and how."""

    labels: object  # np.ndarray, the input's grid
    slices: int  # slices of the case (1 for a 2D image)
    skipped: int  # of them, the ones that held only background and were not sampled
    precision: str  # what the network ran in

    def note(self) -> str:
        """'; 15 of 155 slices held only background (not sampled); precision bf16'."""
        empty = f"{self.skipped} of {self.slices} slice(s) held only background (not sampled); " if self.skipped else ""
        return f"; {empty}precision {self.precision}"


def _segment_scan(
    model,
    scan,
    settings,
    args,
    *,
    out: Path,
    uncertainty: Path | None,
    progress: bool,
    precision: str,
    prepared: list | None = None,
):
    """One case read by `load_case` -> its label map written to `out` (+ the agreement map) on the input's own
    grid, and a warning on stderr when the input does not look like the model's training data. `prepared`: a
    volume's slices from `prepare_volume` (else prepared here)."""
    import numpy as np

    from . import io
    from .pipeline import check_input, segment_image, segment_volume

    if scan.is_volume:
        res = segment_volume(
            model,
            scan.data,
            settings,
            kind=scan.kind,
            ct_window=args.ct_window,
            spacing=scan.slice_spacing,
            batch_size=args.batch_size,
            progress=progress,
            precision=precision,
            prepared=prepared,
        )
        _write(out, lambda p: io.write_scan_labels(res.labels, p, scan=scan))  # the input's grid and affine
        if uncertainty:
            _write(uncertainty, lambda p: io.write_scan_map(res.agreement, p, scan=scan))
        labels = scan.to_source(res.labels)
        z = scan.data.shape[-1]
        slices, entropy, prepared = None, [res.entropy[..., k] for k in range(z)], res.prepared
        done = Segmented(labels, z, res.skipped, res.precision)
    else:
        res = segment_image(
            model,
            scan.data,
            settings,
            kind=scan.kind,
            ct_window=args.ct_window,
            keep_trajectory=False,
            precision=precision,
        )
        labels = scan.to_source(res.labels.astype(np.uint8))  # the input's full size (nearest)
        _write(out, lambda p: io.write_png_labels(labels, p))
        if uncertainty:
            _write(uncertainty, lambda p: io.write_png_map(scan.to_source(res.agreement), p))
        slices, entropy, prepared = [scan.data], [res.entropy], None
        done = Segmented(labels, 1, 0 if res.sampled else 1, res.precision)
    check = check_input(
        model.config,
        slices,
        entropy,
        kind=scan.kind,
        ct_window=args.ct_window,
        spacing=scan.slice_spacing,
        prepared=prepared,  # a volume's slices as they were sampled: not prepared twice
    )
    if check is not None and check.message:  # a warning, not a refusal: the mask is written all the same
        print(f"warning: {check.message}", file=sys.stderr)
    return done


def cmd_segment(args) -> int:
    import numpy as np

    from . import io
    from .config import MedCondDiffConfig
    from .hub import CONFIG_NAME, resolve
    from .pipeline import load_case, prepare_volume, resolve_device

    if args.input_dir is not None:
        if args.inputs:
            raise InputError("give either INPUT files or -i IN_DIR, not both")
        return cmd_segment_folder(args)
    if not args.inputs:
        raise InputError(
            "no input given; accepted: INPUT file(s) or a DICOM folder/zip, or -i IN_DIR for a folder of cases"
        )
    out = Path(args.output)
    kind = io.kind_of(args.inputs[0])
    _check_output(out, kind)
    if args.uncertainty:
        _check_output(Path(args.uncertainty), kind)
    device = resolve_device(args.device)
    precision = _precision(args.precision, device)
    folder = resolve(args.weights)
    config = MedCondDiffConfig.from_json(folder / CONFIG_NAME)
    settings = _settings(args, config)

    def read():  # the scan, and a volume's slices prepared for the model, while the weights load
        scan = load_case(args.inputs, config, series=args.series)
        reading = {"kind": scan.kind, "ct_window": args.ct_window, "spacing": scan.slice_spacing}
        return scan, prepare_volume(scan.data, config, **reading) if scan.is_volume else None

    (scan, prepared), model = _read_while_loading(read, folder, device)
    uncertainty = Path(args.uncertainty) if args.uncertainty else None
    done = _segment_scan(
        model,
        scan,
        settings,
        args,
        out=out,
        uncertainty=uncertainty,
        progress=not args.quiet,
        precision=precision,
        prepared=prepared,
    )
    counts = np.bincount(done.labels.ravel(), minlength=model.config.num_classes)
    found = ", ".join(
        f"{n}: {int(c)}"
        for n, c in zip(model.config.class_names, counts, strict=True)
        if c and n != model.config.class_names[0]
    )
    print(f"wrote {out} ({'x'.join(map(str, done.labels.shape))}; {found or 'no foreground found'}){done.note()}")
    return 0


def cmd_segment_folder(args) -> int:
    """Every case of IN_DIR with one model load; a bad case is a row of summary.csv, not the end of the run.

    Exit code 0 when at least one case was segmented, 2 when none could be (or the folder holds no case).
    """
    import time

    from tqdm.auto import tqdm

    from . import batch
    from .config import MedCondDiffConfig
    from .errors import MedCondDiffError
    from .hub import CONFIG_NAME, load_folder, resolve
    from .pipeline import load_case, resolve_device

    in_dir, out_dir = Path(args.input_dir), Path(args.output)
    if args.uncertainty:
        raise InputError("--uncertainty names one file; with -i IN_DIR it is not available")
    if args.series:
        raise InputError("--series picks one series of one input; with -i IN_DIR give one series per sub-folder or zip")
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"output {out_dir}: is a file; with -i IN_DIR, -o names a folder for the masks")
    if in_dir.is_dir() and out_dir.resolve().is_relative_to(in_dir.resolve()):
        raise InputError(f"output {out_dir}: lies inside the input folder {in_dir}; give an output folder outside it")
    device = resolve_device(args.device)
    precision = _precision(args.precision, device)
    folder = resolve(args.weights)
    config = MedCondDiffConfig.from_json(folder / CONFIG_NAME)
    settings = _settings(args, config)
    cases = batch.find_cases(
        in_dir,
        channels=config.image_channels,
        channel_names=config.channel_names,
        one_file_per_case=config.image_channels == 1 or config.modality == "natural",
    )
    if not cases:
        raise InputError(
            f"{in_dir}: holds no case; accepted: NIfTI files (CASE_0000.nii.gz, ...), 2D images, or one DICOM "
            "series per sub-folder or zip"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise InputError(f"output {out_dir}: cannot create it ({err.strerror or err}); give a writable path") from None
    model = load_folder(folder, device=device)
    summary = batch.Summary(out_dir / batch.SUMMARY_NAME, list(config.class_names))
    done = 0
    for case in tqdm(cases, unit="case", desc="segmenting", disable=args.quiet):
        row = {"case": case.name, "inputs": " ".join(p.name for p in case.paths)}
        started = time.perf_counter()
        try:
            if case.problem:
                raise InputError(case.problem)
            scan = load_case(case.paths, config)
            read_s = time.perf_counter() - started
            out = out_dir / (case.name + (".nii.gz" if scan.is_volume else ".png"))
            seg = _segment_scan(
                model, scan, settings, args, out=out, uncertainty=None, progress=False, precision=precision
            )
            spacing = tuple(scan.spacing) if scan.is_volume else None
            row.update(
                status="ok",
                output=out.name,
                shape="x".join(map(str, seg.labels.shape)),
                spacing_mm="x".join(f"{z:g}" for z in scan.spacing) if spacing else "",
                precision=seg.precision,
                slices=seg.slices,
                skipped_slices=seg.skipped,
                read_s=round(read_s, 3),
                segment_s=round(time.perf_counter() - started - read_s, 3),
                **batch.class_measures(seg.labels, config.class_names, spacing=spacing),
            )
            done += 1
        except MedCondDiffError as err:
            row.update(status="error", error=" ".join(str(err).split()))
        except Exception as err:  # noqa: BLE001 - one case's failure (out of memory, a decoder bug) must not end the run
            row.update(status="error", error=f"{type(err).__name__}: {' '.join(str(err).split())}")
        row["total_s"] = round(time.perf_counter() - started, 3)
        if row["status"] == "error":
            tqdm.write(f"failed: {row['error']}", file=sys.stderr)
        summary.add(**row)
    failed = len(cases) - done
    if not done:
        raise InputError(f"none of the {len(cases)} case(s) of {in_dir} could be segmented; see {summary.path}")
    skipped = sum(int(r.get("skipped_slices") or 0) for r in summary.rows)
    print(
        f"segmented {done} of {len(cases)} case(s) into {out_dir}"
        + (f" ({failed} failed)" if failed else "")
        + (f"; {skipped} slice(s) held only background (not sampled)" if skipped else "")
        + f"; precision {precision}; table: {summary.path}"
    )
    return 0


def _origin(spec: str | None, folder: Path) -> str:
    """Where `info`'s weights came from, in words: an offered model's bundled folder or Hub repo, or the folder."""
    from . import catalogue, hub

    model = catalogue.find(spec or os.environ.get("MEDCONDDIFF_WEIGHTS") or hub.DEFAULT_WEIGHTS)
    if model is None:
        return str(folder)
    if folder == hub.bundled_folder(model):
        return f"{folder} ({model.name}, bundled)"
    return f"{folder} ({model.name}, from the Hub: {model.repo}@{model.revision})"


def cmd_info(args) -> int:
    from . import catalogue
    from .hub import availability, load_folder, resolve
    from .pipeline import resolve_device

    device = resolve_device(args.device)
    precision = _precision(args.precision, device)

    if args.weights is None:  # the offered models first: listing them needs no weights and no network
        models = catalogue.load()
        print(f"offered models ({catalogue.path()}; weights source: {catalogue.weights_source()}):")
        width = max((len(m.name) for m in models), default=0)
        for m in models:
            print(f"  {m.name:<{width}}  {m.purpose}\n  {'':<{width}}  {availability(m)}")
        print()
    folder = resolve(args.weights)
    model = load_folder(folder)
    c = model.config
    n = model.parameter_counts()
    print(f"weights:    {_origin(args.weights, folder)}")
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
    print(f"precision:  {precision} ({_precision_note(args.precision, precision, device)})")
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


def command() -> None:
    """`medconddiff ...` and `python -m medconddiff ...`: `main`, then exit with its code.

    Before exiting, every object left is frozen (`gc.freeze`): the interpreter's last garbage
    collections then skip the large object graphs torch and timm import, which took 0.5-1.3 s of
    each command's exit here. Nothing else changes: open files are flushed and closed as usual.
    Tests and benchmarks call `main` itself, which leaves the collector alone.
    """
    import gc

    code = main()
    gc.freeze()
    sys.exit(code)


if __name__ == "__main__":
    command()
