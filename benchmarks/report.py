"""Render the benchmark JSON into the generated sections of benchmarks/RESULTS.md.

    python benchmarks/report.py --update benchmarks/RESULTS.md benchmarks/results/*.json
    python benchmarks/report.py benchmarks/results/bench.json      # the sections, to stdout

Reads what `bench.py`, `ablate.py`, `load.py`, `big_images.py`, `train_speed.py` and `volume_cli.py` write with
--json (any subset, each file recognised by its keys) and renders tables only; every number comes from the JSON. The prose (what each arm
means, which options the library keeps and why) is written in RESULTS.md itself, around
`<!-- begin NAME -->` ... `<!-- end NAME -->` markers; `--update` replaces what lies between them.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path


def load_inputs(paths: list[Path]) -> dict[str, dict]:
    """{'bench' | 'ablate' | 'load': data}, each file recognised by its keys."""
    out: dict[str, dict] = {}
    for path in paths:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        kind = (
            "bench"
            if "default_seconds_256" in data
            else "load"
            if "users" in data and "checks" in data
            else "ablate"
            if "sizes" in data and "repeats" in data
            else data.get("kind")
            if data.get("kind") in ("big_images", "train_speed", "volume_cli")
            else None
        )
        if kind is None:
            raise SystemExit(
                f"{path}: not a bench.py, ablate.py, load.py, big_images.py, train_speed.py or volume_cli.py JSON"
            )
        if kind in out:
            raise SystemExit(f"{path}: a second {kind} JSON")
        out[kind] = data
    return out


def _s(x: float) -> str:
    """Seconds, with the precision their size deserves."""
    return f"{x:.3f}" if x < 10 else f"{x:.1f}"


def _mem(mem: dict) -> str:
    if "max_memory_reserved_mb" in mem:
        return f"{mem['max_memory_allocated_mb']:.0f} MB allocated / {mem['max_memory_reserved_mb']:.0f} MB reserved"
    return f"{mem['peak_rss_mb']:.0f} MB peak RSS"


def table(head: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + ["| " + " | ".join(r) + " |" for r in rows]


def machine_section(runs: dict[str, dict]) -> list[str]:
    m = next(iter(runs.values()))["machine"]
    out = table(
        ["", ""],
        [
            ["CPU", f"{m['cpu']} ({m['cores_available']} cores available, {m['cpu_count']} in the machine)"],
            ["CPU bf16 support", "yes" if m.get("cpu_bf16") else "no"],
            ["memory", f"{m.get('memory_total_mb', '?')} MB"],
            ["torch / Python", f"{m['torch']} / {m['python']}"],
            ["GPU", m.get("gpu") or "none (CUDA not available)"],
        ],
    )
    rows = []
    for kind, data in runs.items():
        r = data["machine"]
        load = " -> ".join(str(v[0]) if v else "?" for v in (r.get("loadavg_at_start"), r.get("loadavg_at_end")))
        busy = r.get("other_busy_cores_at_start")
        rows.append([kind, r["device"], str(r["threads"]), "?" if busy is None else f"{busy:.2f}", load])
        rows[-1] += [r.get("commit") or "?", r.get("date", "?")]
    out += ["", *table(["run", "device", "threads", "other processes", "load average", "commit", "date (UTC)"], rows)]
    notes = [f"{kind}: {n}" for kind, d in runs.items() for n in d.get("notes", []) if "busy" in n]
    return out + (["", "> **Warning**: " + "; ".join(notes) + "."] if notes else [])


def targets_section(bench: dict) -> list[str]:
    t = bench["targets"]
    out = []
    if not t["applies"]:
        why = ["a --quick smoke test" if bench["quick"] else ""]
        why += [f"at {bench['headline_size']} px" if bench["headline_size"] != 256 else ""]
        why += [f"on {bench['machine']['device']}" if bench["machine"]["device"] != "cpu" else ""]
        out += [
            f"> These figures do not test the bounds ({t['setting']}): the run was {', '.join(filter(None, why))}.",
            "",
        ]
    rows = [
        [key, f"{c['value']:.3f}" if c["value"] < 100 else f"{c['value']:.0f}", f"{c['op']} {c['bound']:g}"]
        + ["met" if c["met"] else "**not met**"]
        for key, c in t["checks"].items()
    ]
    return out + table([f"measure ({bench['headline_size']} px)", "measured", "bound", ""], rows)


def speed_section(bench: dict) -> list[str]:
    sizes = bench["sizes"]
    core = all("core" in r for r in sizes.values())  # older runs timed a `core` arm: ratios are against it
    head = ["px", "weights", "sampling", "backbone ms/image", "denoiser ms/step", "default s"]
    head += ["core s"] * core + ["every-step s", "", "DDPM-1000 s", "", "peak memory (default)"]
    rows = []
    for size, r in sizes.items():
        st = r["default"]["settings"]
        row = [size, r["weights"], f"{st['steps']} {st['sampler']}, E={st['ensemble']}, {st['consensus']}"]
        row += [f"{r['backbone_ms']:.1f}", f"{r['denoiser_ms_per_step']:.1f}", _s(r["default"]["median"])]
        row += [_s(r["core"]["median"])] if core else []
        row += [
            _s(r["every_step"]["median"]),
            f"x{r['ratio_vs_backbone_every_step']:.2f}",
        ]
        row += [_s(r["ddpm1000"]["seconds"]) + "*", f"x{r['ratio_vs_ddpm1000']:.0f}", _mem(r["memory_default"])]
        rows.append(row)
    steps = "/".join(sorted({str(r["ddpm1000"]["timed_steps"]) for r in sizes.values()}))
    same = all(r["every_step_same_labels"] for r in sizes.values())
    return table(head, rows) + [
        "",
        f"`{bench['command']}`; input {bench['inputs']['slice']}; {bench['plan']['runs']} runs per "
        f"segmentation arm. Ratios are against *{'core' if core else 'default'}*. Every-step masks identical to "
        f"the default's: {same}. \\* DDPM-1000 **extrapolated** from {steps} timed steps of 1000.",
    ]


def ensemble_section(bench: dict) -> list[str]:
    rows = [
        [e, _s(r["one_batch"]["median"]), f"{r['ratio_vs_1']:.2f}", _s(r["separate_runs"]["median"])]
        + [f"x{r['speedup_vs_separate']:.2f}", _mem(r["memory"])]
        for e, r in bench["ensemble"].items()
    ]
    return table(["E", "one batch s", "/ E=1", "E separate runs s", "one batch speed-up", "peak memory"], rows)


def volume_section(bench: dict) -> list[str]:
    v = bench.get("volume")
    if not v:
        return ["Not run."]
    rows = [[_s(v["seconds"]), f"{v['slices_per_second']:.2f}", _s(v["segment_volume_seconds"])]]
    rows[0] += [f"{v['segment_volume_slices_per_second']:.2f}", _s(v["seconds_for_155_slices"]), _mem(v["memory"])]
    head = ["whole command s", "slices/s", "segment_volume alone s", "slices/s", "155 slices s", "peak memory"]
    scaled = f" (timed on {v['slices']}, scaled to 155)" if v["extrapolated_to_155"] else ""
    return [
        f"`{v['command']}` on {v['source']}: {v['slices']} slices at {v['size']} px, {v['weights']} weights, "
        f"{v['batch_size']} per batch{scaled}.",
        "",
        *table(head, rows),
    ]


def precision_section(bench: dict) -> list[str]:
    pc = bench.get("precision_check") or {"skipped": "no precision check in this run"}
    if "skipped" in pc:
        return [f"Not run ({pc['skipped']})."]
    per_class = ", ".join(f"{c}: {d:.4f}" for c, d in pc["dice_per_class"].items())
    return [
        f"{pc['precision']} vs fp32 on {pc['device']}, {pc['weights']} weights at {pc['size']} px, {pc['slices']} "
        f"real slices. Mask Dice per class: {per_class}; minimum **{pc['dice_min']:.4f}**; foreground "
        f"{pc['dice_foreground']:.4f}; pixels equal {pc['pixels_equal']:.4f}. Speed: {_s(pc['fp32_seconds'])} s -> "
        f"{_s(pc['amp_seconds'])} s per slice (x{pc['speedup']:.2f}).",
    ]


def ablation_section(ablate: dict) -> list[str]:
    rows = []
    for size, row in ablate["sizes"].items():
        for name, r in row.items():
            if "skipped" in r:
                rows.append([name, size, "", "", f"skipped: {r['skipped']}"])
                continue
            b, a = r["before"], r["after"]
            extra = f" (all weights x{r['speedup_all_weights']:.2f})" if "speedup_all_weights" in r else ""
            rows.append([name, size, f"{b} {_s(r[b]['median'])} s", f"{a} {_s(r[a]['median'])} s"])
            rows[-1].append(f"**x{r['speedup']:.2f}**{extra}")
    out = table(["experiment", "px", "before", "after", "speed-up"], sorted(rows, key=lambda r: r[0]))
    vb = ablate.get("volume_batch")
    if vb:
        rates = ", ".join(f"{b}: {vb[b]['slices_per_second']:.2f}" for b in ("1", "4", "8", "16"))
        out += ["", f"Volume, {vb['slices']} slices at {vb['size']} px, slices/s by batch size: {rates}; "]
        out[-1] += f"1 -> 8: **x{vb['speedup']:.2f}**."
    return out + ["", f"`{ablate['command']}`, {ablate['repeats']} interleaved rounds; input {ablate['input']}."]


def load_section(load: dict) -> list[str]:
    rows = [
        ["users x duration", f"{load['users']} x {load['duration_s']:.0f} s"],
        ["models (custom weights off)", ", ".join(load.get("models") or [load["weights"]])],
        ["steps per good request", str(load.get("steps", "?"))],
        ["requests answered", f"{load['requests']} ({load['throughput_per_min']} / min; latency p50 "]
        + [f"{load['latency_p50_s']} s, p95 {load['latency_p95_s']} s)"],
        ["good requests: a valid mask", f"{load['good_ok']} / {load['good_sent']}"],
        ["bad requests: their own error", f"{load['bad_ok']} / {load['bad_sent']}"],
        ["server errors", str(load["server_errors"])],
        ["concurrent samplings (max / limit)", f"{load['max_concurrent_samplings']} / {load['concurrency_limit']}"],
        ["resident memory after warm-up -> after the run", f"{load['rss_warm_mib']:.0f} -> "]
        + [f"{load['rss_end_mib']:.0f} MiB ({100 * load['rss_change']:+.1f}%)"],
        ["resident memory during the run", " -> ".join(map(str, load.get("rss_samples_mib", []))) + " MiB"],
        [
            "upload cap (max_file_size)",
            f"{load['max_file_size']} bytes; one byte over: HTTP {load['oversized_upload_status']}",
        ],
    ]
    rows = [[r[0], "".join(r[1:])] for r in rows]
    out = [f"`{load['command']}`", "", *table(["measure", "value"], rows), ""]
    out += [f"- [{'x' if ok else ' '}] {name}" for name, ok in load["checks"].items()]
    per = ", ".join(f"{n} {a[0]}/{a[1]}" for n, a in load.get("per_request", {}).items())
    out += ["", f"Per request kind (sent / answered as expected): {per}."] if per else []
    failures = (load.get("failures") or []) + (load.get("server_tracebacks") or [])
    return out + (["", "Failures:", "", *[f"- `{f}`" for f in failures[:20]]] if failures else [])


def big_images_section(big: dict) -> list[str]:
    """Large 2D inputs vs a small one, and a whole volume, through the command line (start-up included)."""
    rows = []
    for name, arm in big["arms"].items():
        ratio = "1 (reference)" if name == f"png_{big['small_side']}" else ""
        ratio = ratio or f"x{big['ratio_big_png_vs_small' if name.startswith('png') else 'ratio_big_jpg_vs_small']:.2f}"
        kind, side = name.split("_")
        rows.append(
            [f"{kind.upper()} pair, {side}x{side}", "x".join(map(str, arm["mask_shape"])), _s(arm["median_seconds"])]
            + [ratio, f"{arm['max_peak_rss_mb']:.0f} MB"]
        )
    vol = big["volume"]
    rows.append(
        [f"NIfTI pair, {'x'.join(map(str, vol['shape']))}", "x".join(map(str, vol["shape"])), _s(vol["seconds"])]
        + ["", f"{vol['peak_rss_mb']:.0f} MB"]
    )
    head = ["input (FLAIR + T1c)", "mask written", "wall s (median)", "vs the small pair", "peak RSS"]
    out = [f"`{big['command']}` ({big['weights']}, {big['rounds']} interleaved round(s))", "", *table(head, rows)]
    return out + ["", *[f"> {n}." for n in big.get("notes", [])]]


def train_speed_section(ts: dict) -> list[str]:
    """Training steps per second: each arm, then the ratios taken round by round."""
    rows = []
    for size, row in ts["sizes"].items():
        for name, arm in row["arms"].items():
            precision, threads = name.split()
            rows.append(
                [f"{size} px", precision, threads.rstrip("t"), f"{arm['median']:.3f}", f"{arm['steps_per_s']:.2f}"]
                + [f"{arm['images_per_s']:.1f}"]
            )
    out = [
        f"`python benchmarks/train_speed.py` on the recipe of `{ts['config']}` (batch {next(iter(ts['sizes'].values()))['batch']}"
        f" images x {next(iter(ts['sizes'].values()))['noise_draws']} noise draws, augmentation on), device "
        f"{ts['machine']['device']}.",
        "",
        *table(["size", "precision", "threads", "s / step (median)", "steps / s", "images / s"], rows),
        "",
    ]
    ratios = [
        [f"{size} px", name, f"x{r['speedup']:.2f}"]
        for size, row in ts["sizes"].items()
        for name, r in row["ratios"].items()
    ]
    out += table(["size", "comparison (median of per-round ratios)", "speed-up"], ratios) if ratios else []
    return out + ["", *[f"> {n}." for n in ts.get("notes", [])]]


def volume_cli_section(run: dict) -> list[str]:
    """A whole volume through the command line: a baseline commit against this checkout, paired in one run."""
    seg, base, cur = run["segment"], run["baseline"]["commit"], run["current"]["commit"] or "this checkout"
    head = ["", "whole command s (median)", "min s", "peak RSS"] + ["start-up s (`info`)"] * ("startup" in run)
    rows = []
    for name, label in (("baseline", f"{base} (baseline)"), ("current", f"{cur}")):
        row = [label, _s(seg[name]["median"]), _s(seg[name]["min"]), f"{seg[name]['peak_rss_mb']:.0f} MB"]
        rows.append(row + ([_s(run["startup"][name]["median"])] if "startup" in run else []))
    ratio = [f"x{run['speedup']:.2f}", "", ""] + ([f"x{run['startup_speedup']:.2f}"] if "startup" in run else [])
    rows.append(["speed-up (median of per-round ratios)", *ratio])
    a, m = run["authors"], run["masks"]
    out = [
        f"`{run['command']}`: `{run['segment_command']}` on {run['input']} ({'x'.join(map(str, run['shape']))}, "
        f"{run['weights']}), {run['rounds']} interleaved round(s) after {run['warmup_runs']} warm-up run(s) of each.",
        "",
        *table(head, rows),
        "",
        f"This checkout ran in {run['current_precision']} and skipped {run['skipped_slices']} empty slice(s); its mask "
        f"against the baseline's (fp32): foreground Dice {m['dice_foreground']:.4f}, voxels equal {m['voxels_equal']:.4f}. "
        f"At equal steps ({a['steps']}, {a['slices']} slice(s) in one batch at {a['size']} px, {a['precision']}), the "
        f"authors' structure (the backbone at every step) took {_s(a['every_step']['median'])} s against "
        f"{_s(a['default']['median'])} s: **x{a['ratio_vs_backbone_every_step']:.2f}** (same masks: {a['same_labels']}).",
    ]
    if run["quick"]:
        out = ["> A --quick smoke run (the bundled slab, one round): not the measurement.", "", *out]
    return out + ["", *[f"> {n}." for n in run.get("notes", [])]]


def sections(runs: dict[str, dict]) -> dict[str, list[str]]:
    out = {"machine": machine_section(runs)} if runs else {}
    bench = runs.get("bench")
    if bench:
        out |= {"targets": targets_section(bench), "speed": speed_section(bench), "ensemble": ensemble_section(bench)}
        out |= {"volume": volume_section(bench), "precision": precision_section(bench)}
    if "ablate" in runs:
        out["ablations"] = ablation_section(runs["ablate"])
    if "load" in runs:
        out["load"] = load_section(runs["load"])
    if "big_images" in runs:
        out["big_images"] = big_images_section(runs["big_images"])
    if "train_speed" in runs:
        out["train_speed"] = train_speed_section(runs["train_speed"])
    if "volume_cli" in runs:
        out["volume_cli"] = volume_cli_section(runs["volume_cli"])
    return out


def update(text: str, new: dict[str, list[str]]) -> str:
    """`text` with what lies between each `<!-- begin NAME -->` / `<!-- end NAME -->` pair replaced."""
    for name, lines in new.items():
        pattern = re.compile(rf"(<!-- begin {name} -->\n).*?(<!-- end {name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"no <!-- begin {name} --> ... <!-- end {name} --> markers in the results file")
        text = pattern.sub(lambda m, lines=lines: m.group(1) + "\n".join(lines) + "\n" + m.group(2), text)
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "json",
        nargs="+",
        type=Path,
        help="JSON from bench.py, ablate.py, load.py, big_images.py, train_speed.py or volume_cli.py",
    )
    ap.add_argument("--update", type=Path, default=None, help="rewrite the generated sections of this Markdown file")
    args = ap.parse_args(argv)
    new = sections(load_inputs(args.json))
    if args.update is None:
        sys.stdout.write("".join(f"## {name}\n\n" + "\n".join(lines) + "\n\n" for name, lines in new.items()))
    else:
        args.update.write_text(update(args.update.read_text(encoding="utf-8"), new), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
