"""MedCondDiff demo: segment a scan with a conditional diffusion model and watch every step.

    python app.py [--host 127.0.0.1] [--port 7860] [--custom-weights auto|on|off]

The page: layout, event wiring and thin handlers. The library (`medconddiff`) reads cases, samples,
draws and scores; `demo_server` decides which weights may load, caches models, bounds each request
and owns its files. User-fixable problems are `MedCondDiffError`s, shown as `gr.Error` with their
message. API: `api_name="segment"` (files, model, steps, ensemble, consensus, seed[, slice]) ->
(mask PNG of class indices, summary dict); see `segment_api`.
"""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import numpy as np

import demo_server as server
from medconddiff import examples, io, modelcard, viz
from medconddiff.config import MedCondDiffConfig
from medconddiff.consensus import CONSENSUS
from medconddiff.errors import InputError
from medconddiff.pipeline import iter_segment_slices, segment_slices, segment_volume

PAPER_URL = modelcard.PAPER_URL
SAMPLERS = {"DDIM (deterministic)": "ddim", "DDPM (ancestral)": "ddpm"}
UNCERTAINTY = {"disagreement (1 - agreement of steps and members)": "agreement", "entropy": "entropy"}
EXAMPLES = examples.load_examples()
CONCURRENCY = server.CONCURRENCY  # sampling runs at once, all users together (MEDCONDDIFF_CONCURRENCY)


def get_model(spec: str | None) -> server.Loaded:
    """The weights for a spec, as this server (listening where `demo` does) allows and caches them."""
    return server.get_model(spec, getattr(demo, "server_name", None))


def _spec(choice: str | None, custom: str | None) -> str:
    return (custom or "").strip() or (choice or "")  # the text box (Hub id or folder) wins over the dropdown


def _pickers(config: MedCondDiffConfig, files: list[str], order: list[str]) -> list[gr.Dropdown]:
    """The modality pickers: shown for a multi-modal model given several files, each set to its matched file."""
    multi, n = 1 < config.image_channels <= server.MAX_CHANNELS and len(files) > 1, config.image_channels
    choices = [(Path(p).name, p) for p in files]
    return [
        gr.Dropdown(
            choices=choices,
            value=order[c] if multi and c < n and c < len(order) else None,
            visible=multi and c < n,
            label=f"file for {config.channel_names[c]}" if c < n else f"channel {c + 1}",
        )
        for c in range(server.MAX_CHANNELS)
    ]


# -- event handlers -----------------------------------------------------------------------------------


def on_page():
    """A new page: the text box for other weights where this server allows them, else a note saying why not."""
    allowed = server.custom_weights_allowed(getattr(demo, "server_name", None))
    return gr.Row(visible=allowed), gr.Markdown(visible=not allowed)


def on_model(choice: str | None, custom: str | None):
    """Load the chosen weights (resolved once) and fit the controls to them."""
    with server.user_errors():
        loaded = get_model(_spec(choice, custom))
    c = loaded.config
    return (
        loaded.summary(),
        modelcard.about_markdown(loaded.name, loaded.folder, c, examples=examples.attribution()),
        gr.update(visible=c.modality == "ct", value=c.ct_window),
        gr.update(value=min(c.default_steps, server.MAX_STEPS)),
        gr.update(value=next(k for k, v in SAMPLERS.items() if v == c.default_sampler)),
        gr.update(value=min(c.default_ensemble, server.MAX_ENSEMBLE)),
        gr.update(value=c.default_consensus),
    )


def on_files(files, choice, custom, truth, ct_window):
    """New files (upload or example): match files to modalities, set up the slice slider, preview."""
    with server.user_errors():
        loaded, found = get_model(_spec(choice, custom)), server.paths(files)
        if not found:
            hidden = [gr.Slider(visible=False, value=0), gr.Row(visible=False), None, ""]
            return (*_pickers(loaded.config, [], []), *hidden)
        n = loaded.config.image_channels
        order = io.match_channels(found, loaded.config.channel_names) if len(found) == n else found
        case = server.case(order, loaded, [], -1, truth)
        picture, info = server.preview(preview, case, loaded.config, ct_window)
    volume = case.scan.is_volume
    depth = case.scan.data.shape[-1] if volume else 1
    slider = gr.Slider(minimum=0, maximum=max(depth - 1, 1), value=case.z or 0, step=1, visible=volume)
    return (*_pickers(loaded.config, found, order), slider, gr.Row(visible=volume), picture, info)


def on_view(files, choice, custom, truth, ct_window, slice_index, m0, m1, m2, m3):
    """Slice, modality pick, ground truth or window changed: redraw the preview."""
    if not server.paths(files):
        return None, ""
    with server.user_errors():
        loaded = get_model(_spec(choice, custom))
        case = server.case(files, loaded, [m0, m1, m2, m3], slice_index, truth)
        return server.preview(preview, case, loaded.config, ct_window)


def select_example(evt: gr.SelectData):
    """A gallery click: that example's files and ground truth, and a model that fits it."""
    ex = EXAMPLES[evt.index]
    with server.user_errors():
        choice, custom = server.model_for(ex, getattr(demo, "server_name", None))
    return list(ex.files), ex.truth, gr.update(value=choice), custom


@server.gpu
def run_segment(
    files, choice, custom, slice_index, ct_window, truth, steps, sampler, ensemble, consensus, seed, opacity,
    uncertainty, old_run, m0, m1, m2, m3, progress=gr.Progress(),
):  # fmt: skip
    """Sample one slice, streaming each step's pictures; then the consensus view and the exports."""
    with server.user_errors():
        loaded = get_model(_spec(choice, custom))
        config = loaded.config
        settings = server.settings(config, steps, SAMPLERS.get(sampler, sampler), ensemble, consensus, seed)
        case = server.case(files, loaded, [m0, m1, m2, m3], slice_index, truth)
    window = ct_window or config.ct_window
    server.drop_run(old_run)
    base = viz.slice_picture(case.image, config, kind=case.scan.kind, ct_window=window)
    run, started = server.Run(case=case, config=config, base=base, ct_window=window), time.perf_counter()
    progress(0, desc="encoding the image")
    sampling = iter_segment_slices(
        loaded.model, [case.image], settings, kind=case.scan.kind, ct_window=window, keep_trajectory=True
    )
    with server.user_errors(), server.dropped_on_error(run):
        for item in sampling:
            if isinstance(item, list):  # the last item: the results
                run.finish(item[0])
                break
            i, n, pictures = item.index, item.num_steps, run.add_step(item)  # x_t, x0-hat, change
            progress((i + 1, n), desc=f"sampling step {i + 1} of {n}", unit="steps")
            slider = gr.Slider(minimum=1, maximum=max(n, 2), value=i + 1, interactive=False)
            shown = {step_slider: slider, step_label: run.captions[-1], status: f"sampling: step {i + 1} of {n}"}
            yield shown | dict(zip([xt_image, x0_image, change_image], pictures, strict=True))
    if run.result is None or run.result.trajectory is None:
        server.drop_run(run)
        raise gr.Error("this slice holds only empty space (nothing differs from the background): pick another slice")
    s, (fused, unc) = settings, run.consensus_pictures(opacity, UNCERTAINTY.get(uncertainty, uncertainty))
    yield {
        run_state: run,
        step_slider: gr.Slider(minimum=1, maximum=max(len(run.per_step), 2), value=len(run.per_step), interactive=True),
        trajectory_plot: run.plot,
        consensus_image: fused,
        uncertainty_image: unc,
        legend: run.legend(),
        dice_table: run.dice_table(),
        exports: run.exports(),
        consensus2: s.consensus,
        status: f"Done: {s.steps} step(s) x {s.ensemble} member(s), {s.sampler.upper()}, consensus {s.consensus}, "
        f"seed {s.seed}, in {time.perf_counter() - started:.1f} s on {server.DEVICE.type.upper()}.",
    }


def show_step(run, step):
    """The timestep slider moved: show that step's stored pictures."""
    if not isinstance(run, server.Run) or not run.step_files:
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    i = int(np.clip(int(step) - 1, 0, len(run.step_files) - 1))
    return (*run.step_files[i], run.captions[i])


def refuse(run, consensus: str, opacity: float, uncertainty: str):
    """Another consensus function: fuse the stored trajectory again (no re-sampling)."""
    if not isinstance(run, server.Run) or run.result.consensus == consensus:
        return (*(gr.skip(),) * 7, consensus)
    with server.user_errors():
        run.result = run.result.refuse(consensus)
    run.version += 1
    fused, unc = run.consensus_pictures(opacity, UNCERTAINTY.get(uncertainty, uncertainty))
    note = f"Re-fused the stored trajectory with `{consensus}` (no new sampling)."
    return run, fused, unc, run.legend(), run.dice_table(), run.exports(), note, consensus


def redraw(run, opacity: float, uncertainty: str):
    """Opacity or uncertainty measure changed: redraw the consensus pictures."""
    if not isinstance(run, server.Run):
        return gr.skip(), gr.skip()
    return run.consensus_pictures(opacity, UNCERTAINTY.get(uncertainty, uncertainty))


@server.gpu
def run_volume(files, choice, custom, ct_window, steps, sampler, ensemble, consensus, seed, m0, m1, m2, m3, progress=gr.Progress()):  # fmt: skip
    """Segment every slice of an uploaded volume; the mask keeps the upload's shape and affine."""
    with server.user_errors():
        loaded = get_model(_spec(choice, custom))
        settings = server.settings(loaded.config, steps, SAMPLERS.get(sampler, sampler), ensemble, consensus, seed)
        case = server.case(files, loaded, [m0, m1, m2, m3], -1, None)
        if not case.scan.is_volume:
            raise InputError("whole-volume segmentation needs a NIfTI volume; for a 2D image use Segment")
        progress(0, desc="segmenting the volume")
        window, kind = ct_window or loaded.config.ct_window, case.scan.kind

        def report(done: int, total: int) -> None:
            progress((done, total), desc=f"slice {done} of {total}", unit="slices")

        res = segment_volume(loaded.model, case.scan.data, settings, kind=kind, ct_window=window, progress=report)
    with server.request_folder() as folder:
        out = folder / f"mask_{settings.consensus}.nii.gz"
        io.write_scan_labels(res.labels, out, scan=case.scan)  # back on the upload's grid and orientation
        path = server.to_cache(volume_file, out)
    return path, server.volume_message(loaded.config, case.scan, res, window)


@server.gpu
def segment_api(files, model: str, steps: int, ensemble: int, consensus: str, seed: int, slice_index: int = -1):
    """API: segment a 2D image (one file per modality) or one slice of NIfTI volume(s) (-1: the middle one).

    Returns (mask, summary): a PNG of class indices on the input's grid (for NIfTI the array slice)
    and a dict with "shape" [H, W], "classes", "areas" (pixels per class), "slice" and the settings.
    model "" is the default weights, else an offered model (others only where the server allows
    custom weights); steps or ensemble 0 and consensus "" are the model's defaults.
    """
    started = time.perf_counter()
    with server.user_errors():
        loaded = get_model(model)
        settings = server.settings(loaded.config, steps, "", ensemble, consensus, seed)
        case = server.case(files, loaded, [], slice_index, None)
        result = segment_slices(loaded.model, [case.image], settings, kind=case.scan.kind)[0]
    with server.request_folder() as folder:
        io.write_png_labels(labels := case.on_file_grid(result.labels), folder / "mask.png")
        mask = server.to_cache(api_mask, folder / "mask.png")
    summary = {
        "shape": list(labels.shape),
        "classes": list(loaded.config.class_names),
        "areas": [int(a) for a in viz.class_areas(labels, loaded.config.num_classes)],
        "slice": case.z,
        "model": loaded.name,
        **{k: getattr(settings, k) for k in ("steps", "ensemble", "sampler", "consensus", "seed")},
        "mean_agreement": round(float(result.agreement.mean()), 4),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return mask, summary


# -- the page ---------------------------------------------------------------------------------------

CSS = """
.mcd-small { font-size: 0.85em; opacity: 0.85; }
.mcd-pixels img { object-fit: contain !important; image-rendering: pixelated; }  /* small scans fill the box */
.mcd-legend { line-height: 1.9; font-size: 0.95em; }
.mcd-swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.45em;
              border-radius: 2px; vertical-align: -0.1em; }
"""
INTRO = (
    "# MedCondDiff: diffusion segmentation you can watch\n"
    f"A lightweight conditional diffusion model for medical image segmentation ([paper]({PAPER_URL})). "
    "Pick an example or upload a scan, sample, then step through the denoising and compare consensus "
    "functions. **Research demo, not for clinical use.**"
)
LABELS = {
    "files": f"Image(s), one per modality: PNG/JPG or NIfTI (.nii, .nii.gz), at most {server.MAX_FILE_SIZE.upper()} each",
    "truth": "Ground-truth mask (optional): PNG of class indices, or NIfTI on the same grid",
    "custom": "…or a Hub repo id (owner/name[@revision]) or a local weights folder",
    "window": "CT window (for NIfTI in Hounsfield units; PNG/JPG are taken as already windowed)",
    "ensemble": "Ensemble members (sampled together)",
    "exports": "mask: PNG of class indices, NIfTI slice (the upload's affine, moved to the slice); trajectory GIF",
}
GALLERY = {
    "elem_id": "examples",
    "columns": 4,
    "height": 250,
    "allow_preview": False,
    "interactive": False,
    "format": "png",
    "buttons": [],
}
MAX_CHANNELS = server.MAX_CHANNELS
_INITIAL = server.default_choice()
_CFG = server.peek_config(_INITIAL or "") or MedCondDiffConfig()


def _upload(label: str, elem_id: str, **kwargs) -> gr.File:
    """A file input for scans (image or NIfTI types) whose handlers get plain paths."""
    types = [*io.IMAGE_SUFFIXES, *io.NIFTI_SUFFIXES, ".gz"]
    return server.paths_only(gr.File(label=label, file_types=types, elem_id=elem_id, **kwargs))


def _image(label: str, elem_id: str, *, pixels: bool = True, **kwargs) -> gr.Image:
    """An output picture; `pixels`: a scan-sized picture, scaled to fill its box with square pixels."""
    classes = ["mcd-pixels"] if pixels else []
    return gr.Image(
        label=label, type="filepath", format="png", interactive=False, elem_id=elem_id, elem_classes=classes, **kwargs
    )


with gr.Blocks(title="MedCondDiff demo", delete_cache=(3600, 3600)) as demo:
    run_state = gr.State(None, time_to_live=3600, delete_callback=server.drop_run)
    gr.Markdown(INTRO)
    with gr.Tabs():
        with gr.Tab("Segment"):
            with gr.Row():
                with gr.Column(scale=3):
                    gr.Markdown("### 1. Input")
                    gallery = gr.Gallery(server.gallery(EXAMPLES), label="Examples: click one", **GALLERY)
                    gr.Markdown(examples.attribution(), elem_classes=["mcd-small"])
                    files = _upload(LABELS["files"], "files", file_count="multiple", height=130)
                    with gr.Row():
                        pickers = [gr.Dropdown(visible=False, elem_id=f"modality-{c}") for c in range(MAX_CHANNELS)]
                    slice_slider = gr.Slider(
                        0, 1, value=0, step=1, label="Slice", visible=False, elem_id="slice-slider"
                    )
                    truth_file = _upload(LABELS["truth"], "truth", height=100)
                    preview = _image("input slice", "preview", height=280)
                    input_info = gr.Markdown("", elem_id="input-info")
                with gr.Column(scale=2):
                    gr.Markdown("### 2. Model and sampling")
                    model_dd = gr.Dropdown(server.model_choices(), value=_INITIAL, label="Model", elem_id="model")
                    with gr.Row(visible=False) as custom_row:  # shown on page load where custom weights are allowed
                        model_box = gr.Textbox(
                            label=LABELS["custom"], placeholder="owner/name", scale=4, elem_id="model-box"
                        )
                        load_btn = gr.Button("Load", scale=1, elem_id="load-btn")
                    custom_note = gr.Markdown(server.CUSTOM_WEIGHTS_OFF, visible=False, elem_id="custom-note")
                    model_info = gr.Markdown(elem_id="model-info")
                    ct_window = gr.Dropdown(
                        list(io.CT_WINDOWS),
                        value=_CFG.ct_window,
                        label=LABELS["window"],
                        visible=_CFG.modality == "ct",
                        elem_id="ct-window",
                    )
                    steps = gr.Slider(
                        1, server.MAX_STEPS, value=min(_CFG.default_steps, server.MAX_STEPS), step=1, label="Steps"
                    )
                    sampler = gr.Radio(list(SAMPLERS), value="DDIM (deterministic)", label="Sampler")
                    ensemble = gr.Slider(1, server.MAX_ENSEMBLE, value=1, step=1, label=LABELS["ensemble"])
                    consensus = gr.Dropdown(list(CONSENSUS), value=_CFG.default_consensus, label="Consensus")
                    seed = gr.Number(0, precision=0, label="Seed")
                    run_btn = gr.Button("Segment", variant="primary", elem_id="run-btn")
                    status = gr.Markdown("", elem_id="status")

            with gr.Group(elem_id="timestep-view"):
                gr.Markdown(viz.TIMESTEP_HEADER)
                step_slider = gr.Slider(1, 2, value=1, step=1, label="Step", interactive=False, elem_id="step-slider")
                step_label = gr.Markdown("_Run the sampler to record a trajectory._", elem_id="step-label")
                with gr.Row():
                    xt_image = _image("noisy mask x_t", "xt-img", height=300)
                    x0_image = _image("predicted clean mask x0-hat, on the image", "x0-img", height=300)
                    change_image = _image("change from the previous step", "change-img", height=300)
                trajectory_plot = _image("trajectory", "trajectory-plot", pixels=False, height=290)

            with gr.Group(elem_id="consensus-view"):
                gr.Markdown("### 4. Consensus view: the fused mask and where steps and members disagree")
                with gr.Row():
                    consensus_image = _image("fused mask on the image", "consensus-img", height=340, scale=2)
                    uncertainty_image = _image(
                        "uncertainty: black 0 to yellow 1", "uncertainty-img", height=340, scale=2
                    )
                    with gr.Column(scale=2):
                        legend = gr.HTML(elem_id="legend")
                        dice_table = gr.Markdown(elem_id="dice")
                with gr.Row():
                    opacity = gr.Slider(0, 1, value=0.5, step=0.05, label="Mask opacity", elem_id="opacity")
                    uncertainty = gr.Radio(list(UNCERTAINTY), value=next(iter(UNCERTAINTY)), label="Uncertainty map")
                    consensus2 = gr.Dropdown(
                        list(CONSENSUS), value=_CFG.default_consensus, label="Consensus function", elem_id="consensus2"
                    )
                refuse_note = gr.Markdown("")

            with gr.Group(elem_id="exports"):
                gr.Markdown("### 5. Exports")
                exports = gr.File(
                    label=LABELS["exports"], file_count="multiple", interactive=False, elem_id="export-files"
                )
                with gr.Row(visible=False) as volume_row:
                    volume_btn = gr.Button("Segment every slice of the volume", elem_id="volume-btn")
                    volume_file = gr.File(label="whole-volume mask (NIfTI, the upload's affine)", interactive=False)
                volume_note = gr.Markdown("")

        with gr.Tab("About", elem_id="about-tab"):
            about = gr.Markdown("", elem_id="about")  # filled on page load with the initial model's card

    with gr.Row(visible=False):  # the API's own components: see `segment_api`
        api_files = server.paths_only(gr.File(file_count="multiple"))
        api_model, api_consensus = gr.Textbox(), gr.Textbox("")
        api_steps, api_ensemble, api_seed, api_slice = (gr.Number(v, precision=0) for v in (0, 0, 0, -1))
        api_mask, api_summary, api_btn = gr.File(), gr.JSON(), gr.Button()

    ui = {"api_visibility": "undocumented"}  # UI events: not part of the public API
    model_in = [model_dd, model_box]
    model_out = [model_info, about, ct_window, steps, sampler, ensemble, consensus]
    files_in = [files, *model_in, truth_file, ct_window]
    files_out = [*pickers, slice_slider, volume_row, preview, input_info]
    view_in = [*files_in, slice_slider, *pickers]
    settings_in = [steps, sampler, ensemble, consensus, seed]

    demo.load(on_page, None, [custom_row, custom_note], **ui)
    demo.load(on_model, model_in, model_out, show_progress_on=[model_info], **ui)
    # dropdowns use .select: Gradio 6.31 fires a dropdown's .input twice per pick, .select once
    for event in (model_dd.select, model_box.submit, load_btn.click):
        event(on_model, model_in, model_out, show_progress_on=[model_info], **ui).then(
            on_files, files_in, files_out, show_progress_on=[preview], **ui
        )
    files.upload(on_files, files_in, files_out, show_progress_on=[preview], **ui)
    files.clear(on_files, files_in, files_out, show_progress_on=[preview], **ui)
    gallery.select(select_example, None, [files, truth_file, model_dd, model_box], **ui).then(
        on_model, model_in, model_out, show_progress_on=[model_info], **ui
    ).then(on_files, files_in, files_out, show_progress_on=[preview], **ui)
    slice_slider.input(on_view, view_in, [preview, input_info], trigger_mode="always_last", **ui)
    for event in (truth_file.upload, truth_file.clear, ct_window.select, *(p.select for p in pickers)):
        event(on_view, view_in, [preview, input_info], **ui)

    segment_in = [files, *model_in, slice_slider, ct_window, truth_file, *settings_in, opacity, uncertainty]
    step_views = [xt_image, x0_image, change_image]
    segment_out = [run_state, step_slider, step_label, *step_views, trajectory_plot, consensus_image, uncertainty_image]
    segment_out += [legend, dice_table, exports, consensus2, status]
    sampling = {"concurrency_id": "sampling", **ui}
    run_btn.click(run_segment, [*segment_in, run_state, *pickers], segment_out, show_progress_on=[status], **sampling)
    shown = [*step_views, step_label]
    step_slider.input(
        show_step, [run_state, step_slider], shown, trigger_mode="always_last", show_progress="hidden", **ui
    )
    refuse_out = [run_state, consensus_image, uncertainty_image, legend, dice_table, exports, refuse_note]
    consensus.select(refuse, [run_state, consensus, opacity, uncertainty], [*refuse_out, consensus2], **ui)
    consensus2.select(refuse, [run_state, consensus2, opacity, uncertainty], [*refuse_out, consensus], **ui)
    for event, mode in ((opacity.input, "always_last"), (uncertainty.input, None)):
        event(redraw, [run_state, opacity, uncertainty], [consensus_image, uncertainty_image], trigger_mode=mode, **ui)
    volume_in = [files, *model_in, ct_window, *settings_in, *pickers]
    volume_btn.click(run_volume, volume_in, [volume_file, volume_note], show_progress_on=[volume_note], **sampling)
    api_btn.click(
        segment_api,
        [api_files, api_model, api_steps, api_ensemble, api_consensus, api_seed, api_slice],
        [api_mask, api_summary],
        api_name="segment",
        concurrency_id="sampling",
    )

demo.queue(default_concurrency_limit=CONCURRENCY, max_size=64)


def main(argv: list[str] | None = None) -> None:
    """`python app.py [--host H] [--port P] [--custom-weights auto|on|off]`: serve the page (see demo_server.serve)."""
    server.serve(demo, argv, css=CSS, initial=_INITIAL or "")


if __name__ == "__main__":
    main()
