"""Render the benchmark JSONs as benchmarks/RESULTS.md.

    python benchmarks/report.py benchmarks/results/bench.json benchmarks/results/ablate.json \
        benchmarks/results/load.json > benchmarks/RESULTS.md

Takes the JSON written by `bench.py --json`, `ablate.py --json` and `load.py --json` (in any order,
any subset: each file is recognised by its content) and prints Markdown: the machine, issue 5's
targets met or not, the speed and memory tables, the list of optimisations with their measured
before/after, and the load test. Every number comes from the JSONs; nothing is measured here.
`benchmarks/run_all.sh` runs the three scripts and this one, on an idle machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# What the library does with each option the ablations measure: (name, status, where in the code).
OPTIMISATIONS = {
    "autograd": ("autograd off: `torch.inference_mode` around encode + sampling", "kept", "pipeline"),
    "channels_last_denoiser": ("channels-last activations for the denoiser (CPU)", "kept on CPU", "pipeline"),
    "channels_last_weights": (
        "channels-last weights for the image pathway (adapter, backbone, decoder)",
        "not adopted (a candidate for the weights loader)",
        "candidate",
    ),
    "consensus_layout_e1": (
        "trajectory buffer with K innermost instead of contiguous, whole segmentation (E = 1)",
        "kept (a tie end to end)",
        "pipeline.TRAJECTORY_CLASSES_INNERMOST",
    ),
    "consensus_layout_e4": (
        "trajectory buffer with K innermost instead of contiguous, whole segmentation (E = 4)",
        "kept (a tie end to end)",
        "pipeline.TRAJECTORY_CLASSES_INNERMOST",
    ),
    "denoiser_architecture_e1": (
        "denoiser (the per-step mask branch) at width 96 with a stride-2 head, instead of width 256 with a "
        "full-resolution head (E = 1; a retrained model)",
        "kept",
        "config.denoiser_width, head_stride",
    ),
    "denoiser_architecture_e4": (
        "the same, ensemble of 4",
        "kept",
        "config.denoiser_width, head_stride",
    ),
    "denoiser_chunk_e8": (
        "ensemble of 8: cache-sized chunks of rows per denoiser call instead of one call (CPU)",
        "kept on CPU",
        "sampler.denoiser_chunk",
    ),
    "autocast": ("reduced-precision autocast (bf16 on CPU, fp16 on CUDA)", "opt-in", "precision="),
    "threads": ("intra-op threads: 1 vs all cores", "kept (torch's default: all cores)", "torch"),
    "torch_compile_denoiser": (
        "torch.compile of the denoiser (CUDA: reduce-overhead = CUDA graphs)",
        "not adopted",
        "",
    ),
}
KEPT = ("kept", "kept on CPU", "kept (torch's default: all cores)", "kept (a tie end to end)")


def load_inputs(paths: list[Path]) -> dict[str, dict]:
    """{'bench' | 'ablate' | 'load': data}, each file recognised by its keys."""
    out: dict[str, dict] = {}
    for path in paths:
        data = json.loads(path.read_text(encoding="utf-8"))
        if "default_seconds_256" in data:
            kind = "bench"
        elif "users" in data and "checks" in data:
            kind = "load"
        elif "sizes" in data and "repeats" in data:
            kind = "ablate"
        else:
            raise SystemExit(f"{path}: not a bench.py, ablate.py or load.py JSON")
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


# -- sections ---------------------------------------------------------------------------------------


def machine_section(runs: dict[str, dict]) -> list[str]:
    first = next(iter(runs.values()))["machine"]
    out = ["## Machine", ""]
    rows = [
        ["CPU", f"{first['cpu']} ({first['cores_available']} cores available, {first['cpu_count']} in the machine)"],
        ["CPU bf16 support", "yes" if first.get("cpu_bf16") else "no"],
        ["memory", f"{first.get('memory_total_mb', '?')} MB"],
        ["torch / Python", f"{first['torch']} / {first['python']}"],
        ["GPU", first.get("gpu") or "none (CUDA not available)"],
    ]
    out += table(["", ""], rows)
    out += [
        "",
        "Per run (threads are torch's intra-op threads; other processes = cores other work kept busy as the run "
        "started, the idle check; load average = 1-minute load at start -> end, which counts the runs' own threads):",
        "",
    ]
    rows = []
    for kind, data in runs.items():
        m = data["machine"]
        start, end = m.get("loadavg_at_start"), m.get("loadavg_at_end")
        load = f"{start[0] if start else '?'} -> {end[0] if end else '?'}"
        other = m.get("other_busy_cores_at_start")
        rows.append(
            [kind, m["device"], str(m["threads"]), "?" if other is None else f"{other:.2f}", load]
            + [m.get("commit") or "?", m.get("date", "?")]
        )
    out += table(["run", "device", "threads", "other processes", "load average", "commit", "date (UTC)"], rows)
    out.append("")
    if all(d["machine"]["device"] == "cpu" for d in runs.values()):
        out += [
            "**No GPU was lent to this issue**: every figure here is from the CPU above. The CUDA path exists "
            "(`python benchmarks/bench.py --device cuda` and `python benchmarks/ablate.py --device cuda`: "
            "synchronised timings, `torch.cuda.max_memory_allocated` / `max_memory_reserved`, fp16 autocast checked "
            "against fp32 masks, torch.compile with CUDA graphs); GPU figures come later.",
            "",
        ]
    busy = [f"{kind}: {n}" for kind, d in runs.items() for n in d.get("notes", []) if "busy" in n]
    if busy:
        out += ["> **Warning**: " + "; ".join(busy) + ".", ""]
    return out


def targets_section(bench: dict) -> list[str]:
    t = bench["targets"]
    out = [f"## Targets (issue 5: {t['setting']})", ""]
    if not t["applies"]:
        why = [
            "a --quick smoke test" if bench["quick"] else "",
            f"at {bench['headline_size']} px" if bench["headline_size"] != 256 else "",
            f"on {bench['machine']['device']}" if bench["machine"]["device"] != "cpu" else "",
        ]
        out += [f"> These figures do not test the targets: the run was {', '.join(w for w in why if w)}.", ""]
    names = {
        "default_seconds_256": "default segmentation of one slice (s)",
        "ratio_vs_backbone_every_step": "speed-up vs backbone at every step, equal steps",
        "ratio_vs_ddpm1000": "speed-up vs 1000-step DDPM, backbone every step (extrapolated)",
        "ratio_ensemble4_vs_1": "time of E = 4 in one batch / E = 1",
    }
    rows = [
        [names[k], f"{c['value']:.3f}" if c["value"] < 100 else f"{c['value']:.0f}", f"{c['op']} {c['bound']:g}"]
        + ["met" if c["met"] else "**not met**"]
        for k, c in t["checks"].items()
    ]
    out += table([f"measure ({bench['headline_size']} px)", "measured", "target", ""], rows)
    out.append("")
    if not t["checks"]["ratio_ensemble4_vs_1"]["met"]:
        r = bench["sizes"][str(bench["headline_size"])]
        share = 1e-3 * r["backbone_ms"] / r["core"]["median"]
        out += [
            f"Why the ensemble ratio is what it is: the members share the backbone's `cond`, but each runs every "
            f"denoiser step. At {bench['headline_size']} px the backbone is about {100 * share:.0f}% of a one-member "
            f"run ({r['backbone_ms']:.0f} ms of {1e3 * r['core']['median']:.0f} ms), so E members cost about "
            f"1 + (E - 1) x {1 - share:.2f} single runs; 4 members in one batch still beat 4 separate runs "
            f"(x{bench['ensemble']['4']['speedup_vs_separate']:.2f}, below).",
            "",
        ]
    return out


def speed_section(bench: dict) -> list[str]:
    m = bench["machine"]
    perf = ", ".join(f"{k} {v}" for k, v in bench["perf"].items())
    out = [
        "## Speed and memory per image size",
        "",
        f"`{bench['command']}` on {m['device']}, {m['threads']} threads ({perf}); input: {bench['inputs']['slice']}. "
        f"Medians of {bench['plan']['repeats']} repeats (per-call timings) and {bench['plan']['runs']} runs "
        f"(segmentations) after {bench['plan']['warmup']} warm-up; batch 1; each model's default settings "
        "(*sampling*: steps, members, consensus).",
        "",
    ]
    rows = []
    for size, r in bench["sizes"].items():
        d = r["ddpm1000"]
        st = r["default"]["settings"]
        rows.append(
            [
                size,
                r["weights"],
                f"{st['steps']} {st['sampler']}, E={st['ensemble']}, {st['consensus']}",
                f"{r['backbone_ms']:.1f}",
                f"{r['denoiser_ms_per_step']:.1f}",
                _s(r["default"]["median"]),
                _s(r["core"]["median"]),
                _s(r["every_step"]["median"]),
                f"x{r['ratio_vs_backbone_every_step']:.2f}",
                _s(d["seconds"]) + "*",
                f"x{r['ratio_vs_ddpm1000']:.0f}",
                _mem(r["memory_default"]),
            ]
        )
    head = ["px", "weights", "sampling", "backbone ms/image", "denoiser ms/step", "default s", "core s", "every-step s", ""]
    out += table(head + ["DDPM-1000 s", "", "peak memory (default)"], rows)
    steps = sorted({r["ddpm1000"]["timed_steps"] for r in bench["sizes"].values()})
    out += [
        "",
        "- *default*: one real slice end to end through `pipeline.segment_image` with the model's *sampling* "
        "defaults (shipped weights: their config.json; random weights: the library's, the authors' 10 steps): "
        "normalisation, resizing, sampling, consensus, back to the image grid.",
        "- *core*: the same from the model-grid tensor to the label map (backbone once, sampling loop, consensus).",
        "- *every-step*: the authors' structure, the backbone re-run at every step; otherwise identical to *core* "
        f"(same masks: {all(r['every_step_same_labels'] for r in bench['sizes'].values())}). "
        "The ratio is every-step / core.",
        f"- *DDPM-1000*: MedSegDiff-style, 1000 ancestral steps with the backbone at every step. \\* **Extrapolated**: "
        f"the first {'/'.join(map(str, steps))} of the 1000 steps were timed and multiplied by 1000/N (every step "
        "does the same work). The ratio is DDPM-1000 / core.",
        "",
    ]
    return out


def ensemble_section(bench: dict) -> list[str]:
    ens = bench["ensemble"]
    st = bench["sizes"][str(bench["headline_size"])]["default"]["settings"]
    out = [
        f"## Ensembles at {bench['headline_size']} px",
        "",
        "E members sampled in one batch sharing one `cond`, vs E separate one-member runs (each re-running the "
        f"backbone); both timed through `pipeline.segment_image` with {st['steps']} {st['sampler'].upper()} steps "
        f"and `{st['consensus']}` consensus. Interleaved: each of the {len(next(iter(ens.values()))['one_batch']['samples'])} "
        "rounds times E = 1, 4, 8 back to back; */ E=1* is the median of the ratios within a round, so drift of "
        "the machine's speed during the run cancels.",
        "",
    ]
    rows = [
        [
            e,
            _s(r["one_batch"]["median"]),
            f"{r['ratio_vs_1']:.2f}",
            _s(r["separate_runs"]["median"]),
            f"x{r['speedup_vs_separate']:.2f}",
            _mem(r["memory"]),
        ]
        for e, r in ens.items()
    ]
    out += table(["E", "one batch s", "/ E=1", "E separate runs s", "one batch speed-up", "peak memory"], rows)
    return out + [""]


def volume_section(bench: dict) -> list[str]:
    v = bench.get("volume")
    if not v:
        return []
    extra = f" (timed on {v['slices']} slices, scaled)" if v["extrapolated_to_155"] else ""
    return [
        "## A volume through the command line",
        "",
        f"`{v['command']}` (run in-process; TMP is a temp folder) on {v['source']}: {v['slices']} slices "
        f"({v['slices_with_content']} with content; empty slices skip the model) at {v['size']} px with "
        f"{v['weights']} weights, {v['batch_size']} slices per batch.",
        "",
        *table(
            ["whole command s", "slices/s", "segment_volume alone s", "slices/s", "155 slices s", "peak memory"],
            [
                [
                    _s(v["seconds"]),
                    f"{v['slices_per_second']:.2f}",
                    _s(v["segment_volume_seconds"]),
                    f"{v['segment_volume_slices_per_second']:.2f}",
                    _s(v["seconds_for_155_slices"]) + extra,
                    _mem(v["memory"]),
                ]
            ],
        ),
        "",
        "The whole command includes reading the NIfTI files, loading the weights and writing the label map.",
        "",
    ]


def precision_section(bench: dict) -> list[str]:
    pc = bench.get("precision_check") or {}
    out = ["## Reduced precision vs fp32 masks", ""]
    if "skipped" in pc:
        return out + [f"Not run ({pc['skipped']}).", ""]
    per_class = ", ".join(f"{c}: {d:.4f}" for c, d in pc["dice_per_class"].items())
    verdict = "> 0.99: passes" if pc["dice_min"] > 0.99 else "<= 0.99: **fails** the 0.99 bar"
    return out + [
        f"{pc['precision']} autocast vs fp32 on {pc['device']}, {pc['weights']} weights at {pc['size']} px, "
        f"{pc['slices']} real slices (the example slices and evenly spaced slices of the validation volumes), "
        "default settings, through the pipeline:",
        "",
        f"- Dice between the masks, per class pooled over the slices: {per_class}; minimum {pc['dice_min']:.4f} "
        f"({verdict}); foreground {pc['dice_foreground']:.4f}; pixels equal {pc['pixels_equal']:.4f}.",
        f"- Speed: {_s(pc['fp32_seconds'])} s -> {_s(pc['amp_seconds'])} s per slice (x{pc['speedup']:.2f}).",
        "",
    ]


def _arm(name: str) -> str:
    """An ablation arm's name as read in a sentence ("2" threads, "image_path_weights")."""
    if name.isdigit():
        return f"{name} thread{'s' if name != '1' else ''}"
    return name.replace("_", " ")


def _effect(r: dict) -> str:
    if "skipped" in r:
        return f"skipped: {r['skipped']}"
    b, a = r["before"], r["after"]
    text = f"{_arm(b)} {_s(r[b]['median'])} s -> {_arm(a)} {_s(r[a]['median'])} s: **x{r['speedup']:.2f}**"
    if "speedup_all_weights" in r:
        text += f" (all weights: x{r['speedup_all_weights']:.2f})"
    return text


def optimisations_section(runs: dict[str, dict]) -> list[str]:
    bench, ablate = runs.get("bench"), runs.get("ablate")
    out = [
        "## Optimisations and their measured effect",
        "",
        "Before/after of each option, timed on one default segmentation of a real slice, the two variants "
        "alternating in every repeat (`ablate.py`); the design's own savings come from `bench.py`. *kept* = what the library does by default; *opt-in* = an argument; "
        "*not adopted* = measured, left out.",
        "",
    ]
    rows = []
    if bench:
        h = str(bench["headline_size"])
        r = bench["sizes"][h]
        e4 = bench["ensemble"]["4"]
        rows.append(
            [
                "backbone once per image, `cond` shared by every step (the design)",
                "kept",
                f"{h} px: every-step {_s(r['every_step']['median'])} s -> {_s(r['core']['median'])} s: "
                f"**x{r['ratio_vs_backbone_every_step']:.2f}**",
            ]
        )
        rows.append(
            [
                "one `cond` shared by the ensemble members, sampled as one batch",
                "kept",
                f"{h} px, E = 4: separate runs {_s(e4['separate_runs']['median'])} s -> one batch "
                f"{_s(e4['one_batch']['median'])} s: **x{e4['speedup_vs_separate']:.2f}**",
            ]
        )
    if ablate:
        names = list(dict.fromkeys(n for row in ablate["sizes"].values() for n in row))
        for name in names:
            label, status, _ = OPTIMISATIONS.get(name, (name, "?", ""))
            effects = [f"{size} px: {_effect(row[name])}" for size, row in ablate["sizes"].items() if name in row]
            speedups = [row[name]["speedup"] for row in ablate["sizes"].values() if "speedup" in row.get(name, {})]
            if status in KEPT and speedups and max(speedups) < 0.97:
                status += " (**measured slower here: revisit**)"
            elif status.startswith("not adopted") and speedups and min(speedups) > 1.05:
                status += " (**measured faster here at every size: consider adopting**)"
            if name == "autograd":
                mem = [
                    f"peak RSS {row[name]['grad']['memory'].get('peak_rss_mb', 0):.0f} -> "
                    f"{row[name]['inference_mode']['memory'].get('peak_rss_mb', 0):.0f} MB"
                    for row in ablate["sizes"].values()
                    if name in row and "peak_rss_mb" in row[name]["grad"].get("memory", {})
                ]
                effects[-1:] = [effects[-1] + (f" ({mem[-1]})" if mem else "")] if effects else []
            if name == "torch_compile_denoiser":
                first = [
                    f"{s} px {row[name]['first_call_seconds']:.0f} s"
                    for s, row in ablate["sizes"].items()
                    if name in row
                ]
                effects.append("first call (compilation): " + ", ".join(first))
            if name == "autocast" and bench and "dice_min" in bench.get("precision_check", {}):
                effects.append(f"mask Dice vs fp32 (min over classes) {bench['precision_check']['dice_min']:.4f}")
            rows.append([label, status, "<br>".join(effects)])
        vb = ablate.get("volume_batch")
        if vb:
            rates = ", ".join(f"{b}: {vb[b]['slices_per_second']:.2f}" for b in ("1", "4", "8", "16"))
            rows.append(
                [
                    "slices of a volume batched (command line default 8)",
                    "kept",
                    f"{vb['slices']} slices at {vb['size']} px, slices/s by batch size: {rates}; "
                    f"1 -> 8: **x{vb['speedup']:.2f}**",
                ]
            )
    rows.append(["fp16 autocast, CUDA graphs, channels-last on CUDA", "pending a GPU", "no GPU was lent"])
    out += table(["optimisation", "status", "measured effect"], rows)
    return out + [""]


def load_section(load: dict) -> list[str]:
    rows = [
        ["users x duration", f"{load['users']} x {load['duration_s']:.0f} s"],
        ["models (custom weights off)", ", ".join(load.get("models") or [load["weights"]])],
        ["steps per good request", str(load.get("steps", "?"))],
        [
            "requests answered",
            f"{load['requests']} ({load['throughput_per_min']} / min; latency p50 {load['latency_p50_s']} s, "
            f"p95 {load['latency_p95_s']} s)",
        ],
        ["good requests: a valid mask", f"{load['good_ok']} / {load['good_sent']}"],
        ["bad requests: their own error", f"{load['bad_ok']} / {load['bad_sent']}"],
        ["server errors", str(load["server_errors"])],
        ["concurrent samplings (max / limit)", f"{load['max_concurrent_samplings']} / {load['concurrency_limit']}"],
        [
            "resident memory after warm-up -> after the run",
            f"{load['rss_warm_mib']:.0f} -> {load['rss_end_mib']:.0f} MiB ({100 * load['rss_change']:+.1f}%)",
        ],
        [
            "resident memory during the run (even intervals)",
            " -> ".join(str(v) for v in load.get("rss_samples_mib", [])) + " MiB",
        ],
        [
            "warm-up before the baseline",
            f"each request once, then {load['users']} users for {load.get('warm_concurrent_s', 0):.0f} s",
        ],
        [
            "upload cap (max_file_size)",
            f"{load['max_file_size']} bytes; one byte over: HTTP {load['oversized_upload_status']}",
        ],
    ]
    out = [
        "## Load test (issue 6)",
        "",
        f"`{load['command']}`: the demo in a subprocess on 127.0.0.1, {load['users']} concurrent gradio_client users "
        "sending the bundled example slices (BraTS and CT) and bad inputs (empty, renamed, truncated and NaN files, "
        "a missing modality, bad settings, a model the server does not offer) through the `/segment` API.",
        "",
        *table(["measure", "value"], rows),
        "",
        *[f"- [{'x' if ok else ' '}] {name}" for name, ok in load["checks"].items()],
        "",
        "Per request kind (sent / answered as expected): "
        + ", ".join(f"{n} {a[0]}/{a[1]}" for n, a in load["per_request"].items())
        + ".",
        "",
    ]
    if load.get("failures") or load.get("server_tracebacks"):
        out += ["Failures:", "", *[f"- `{f}`" for f in (load["failures"] + load["server_tracebacks"])[:20]], ""]
    return out


def render(runs: dict[str, dict]) -> str:
    out = [
        "# Benchmark results",
        "",
        "Rendered by `benchmarks/report.py` from the JSON of these commands (`benchmarks/run_all.sh` runs them all), "
        "on the machine below:",
        "",
        *[f"    {runs[k]['command']}" for k in ("bench", "ablate", "load") if k in runs],
        "",
    ]
    out += machine_section(runs)
    bench = runs.get("bench")
    if bench:
        out += targets_section(bench) + speed_section(bench) + ensemble_section(bench)
        out += volume_section(bench) + precision_section(bench)
    if bench or "ablate" in runs:
        out += optimisations_section(runs)
    if "load" in runs:
        out += load_section(runs["load"])
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", nargs="+", type=Path, help="bench.py / ablate.py / load.py JSON files")
    args = ap.parse_args(argv)
    sys.stdout.write(render(load_inputs(args.json)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
