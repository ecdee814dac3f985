"""MedCondDiff demo: segment a scan with a conditional diffusion model and watch every step.

    python app.py [--host 127.0.0.1] [--port 7860] [--custom-weights auto|on|off]

The page: layout, event wiring and thin handlers. The library (`medconddiff`) reads cases, samples,
draws and scores; `demo_server` decides which weights may load, caches models, bounds each request
and owns its files. User-fixable problems are `MedCondDiffError`s, shown as `gr.Error` with their
message. API: `api_name="segment"` (files, model, steps, ensemble, consensus, seed[, slice]) ->
(mask PNG of class indices, summary dict); see `segment_api`.
"""

from __future__ import annotations

try:  # ZeroGPU: `spaces` first, before torch or anything that imports it (demo_server, medconddiff)
    import spaces  # noqa: F401
except ImportError:  # off Spaces the demo runs without it
    spaces = None
import time

import gradio as gr
import numpy as np

import demo_server as server
from medconddiff import examples, io, modelcard, teaching, viz
from medconddiff.config import MedCondDiffConfig
from medconddiff.consensus import CONSENSUS
from medconddiff.errors import InputError
from medconddiff.pipeline import iter_segment_slices, segment_slices, segment_volume

PAPER_URL = modelcard.PAPER_URL
SAMPLERS = {"DDIM (deterministic)": "ddim", "DDPM (ancestral)": "ddpm"}
UNCERTAINTY = {"disagreement (1 - agreement of steps and members)": "agreement", "entropy": "entropy"}
EXAMPLES = server.gallery_examples(examples.load_examples())  # in the order of the models catalogue
CONCURRENCY = server.CONCURRENCY  # sampling runs at once, all users together (MEDCONDDIFF_CONCURRENCY)


def get_model(spec: str | None) -> server.Loaded:
    """The weights for a spec, as this server (listening where `demo` does) allows and caches them."""
    return server.get_model(spec, getattr(demo, "server_name", None))


def _spec(choice: str | None, custom: str | None) -> str:
    return (custom or "").strip() or (choice or "")  # the text box (Hub id or folder) wins over the dropdown


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
            return (*server.modality_pickers(loaded.config, [], []), *hidden)
        n = loaded.config.image_channels
        order = io.match_channels(found, loaded.config.channel_names) if len(found) == n else found
        case = server.case(order, loaded, [], -1, truth)
        picture, info = server.preview(preview, case, loaded.config, ct_window)
    volume = case.scan.is_volume
    depth = case.scan.data.shape[-1] if volume else 1
    slider = gr.Slider(minimum=0, maximum=max(depth - 1, 1), value=case.z or 0, step=1, visible=volume)
    return (*server.modality_pickers(loaded.config, found, order), slider, gr.Row(visible=volume), picture, info)


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
    sampling = iter_segment_slices(loaded.model, [case.image], settings, **case.reading(window), keep_trajectory=True)
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
        truth_image: gr.Image(value=run.truth_picture(), visible=case.truth is not None),
        animation: run.gif,
        schedule_plot: run.schedule_plot(len(run.per_step)),
        members: gr.Gallery(value=run.members or None, visible=bool(run.members)),
        consensus_image: fused,
        uncertainty_image: unc,
        colourbar: run.colourbar(UNCERTAINTY.get(uncertainty, uncertainty)),
        legend: run.legend(),
        dice_table: run.dice_table(),
        exports: run.exports(),
        consensus2: s.consensus,
        status: f"Done: {s.steps} step(s) x {s.ensemble} member(s), {s.sampler.upper()}, consensus {s.consensus}, "
        f"seed {s.seed}, in {time.perf_counter() - started:.1f} s on {server.device().type.upper()} "
        f"({run.result.precision}).",
    }


def show_step(run, step):
    """The timestep slider moved: show that step's stored pictures, caption and place on the schedule."""
    if not isinstance(run, server.Run) or not run.step_files:
        return (gr.skip(),) * 5
    i = int(np.clip(int(step) - 1, 0, len(run.step_files) - 1))
    return (*run.step_files[i], run.captions[i], run.schedule_plot(i + 1))


def play(run):
    """The play control: step the slider through the run, one step at a time."""
    if not isinstance(run, server.Run) or not run.step_files:
        raise gr.Error("run the sampler first: there is no trajectory to play")
    for i in range(len(run.step_files)):
        yield (gr.Slider(value=i + 1), *show_step(run, i + 1))
        time.sleep(server.PLAY_SECONDS)


def show_forward(run, t):
    """The forward-process slider moved: q(x_t | x0) at that t, and the schedule with t marked."""
    if not isinstance(run, server.Run) or run.result is None:
        return None, "_Run the sampler (or pick an example and run it) to see its mask noised._", gr.skip()
    return (*run.forward(t), run.schedule_plot(None, t_mark=float(t)))


def refuse(run, consensus: str, opacity: float, uncertainty: str):
    """Another consensus function: fuse the stored trajectory again (no re-sampling)."""
    if not isinstance(run, server.Run) or run.result.consensus == consensus:
        return (*(gr.skip(),) * 8, consensus)
    with server.user_errors():
        run.result = run.result.refuse(consensus)
    run.version += 1
    measure = UNCERTAINTY.get(uncertainty, uncertainty)
    fused, unc = run.consensus_pictures(opacity, measure)
    note = f"Re-fused the stored trajectory with `{consensus}` (no new sampling)."
    return run, fused, unc, run.legend(), run.dice_table(), run.exports(), note, run.colourbar(measure), consensus


def redraw(run, opacity: float, uncertainty: str):
    """Opacity or uncertainty measure changed: redraw the consensus pictures."""
    if not isinstance(run, server.Run):
        return gr.skip(), gr.skip(), gr.skip()
    measure = UNCERTAINTY.get(uncertainty, uncertainty)
    return (*run.consensus_pictures(opacity, measure), run.colourbar(measure))


@server.gpu(volume=True)
def run_volume(files, choice, custom, ct_window, steps, sampler, ensemble, consensus, seed, m0, m1, m2, m3, truth=None, progress=gr.Progress()):  # fmt: skip
    """Segment every slice of an uploaded volume; the mask keeps the upload's shape and affine; volume Dice with truth."""
    with server.user_errors():
        loaded = get_model(_spec(choice, custom))
        case = server.case(files, loaded, [m0, m1, m2, m3], -1, None)
        if not case.scan.is_volume:
            raise InputError("whole-volume segmentation needs a NIfTI volume; for a 2D image use Segment")
        depth, chosen = case.scan.data.shape[-1], SAMPLERS.get(sampler, sampler)
        settings = server.settings(loaded.config, steps, chosen, ensemble, consensus, seed, slices=depth)
        truth_volume = server.volume_truth(truth, case, loaded.config)
        progress(0, desc="segmenting the volume")
        window = ct_window or loaded.config.ct_window

        def report(done: int, total: int) -> None:
            progress((done, total), desc=f"slice {done} of {total}", unit="slices")

        res = segment_volume(loaded.model, case.scan.data, settings, **case.reading(window), progress=report)
    with server.request_folder() as folder:
        out = folder / f"mask_{settings.consensus}.nii.gz"
        io.write_scan_labels(res.labels, out, scan=case.scan)  # back on the upload's grid and orientation
        path = server.to_cache(volume_file, out)
    scores = server.volume_scores(res.labels, truth_volume, loaded.config)
    return path, server.volume_message(loaded.config, case.scan, res, window) + f"\n\n{scores}"


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
        result = segment_slices(loaded.model, [case.image], settings, **case.reading())[0]
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
        "precision": result.precision,
        "mean_agreement": round(float(result.agreement.mean()), 4),
        "seconds": round(time.perf_counter() - started, 3),
    }
    return mask, summary


# -- the page ---------------------------------------------------------------------------------------

CSS, INTRO, LABELS, GALLERY = server.CSS, server.INTRO, server.LABELS, server.GALLERY  # the page's words
MAX_CHANNELS = server.MAX_CHANNELS
_INITIAL = server.default_choice()
_CFG = server.peek_config(_INITIAL or "") or MedCondDiffConfig()


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
                    files = server.upload(LABELS["files"], "files", file_count="multiple", height=130)
                    with gr.Row():
                        pickers = [gr.Dropdown(visible=False, elem_id=f"modality-{c}") for c in range(MAX_CHANNELS)]
                    slice_slider = gr.Slider(
                        0, 1, value=0, step=1, label="Slice", visible=False, elem_id="slice-slider"
                    )
                    truth_file = server.upload(LABELS["truth"], "truth", height=100)
                    preview = server.picture("input slice", "preview", height=280)
                    input_info = gr.Markdown("", elem_id="input-info")
                with gr.Column(scale=2):
                    gr.Markdown("### 2. Model and sampling")
                    model_dd = gr.Dropdown(server.model_labels(), value=_INITIAL, label="Model: what each is for", elem_id="model")  # fmt: skip
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
                    ensemble = gr.Slider(
                        1, server.MAX_ENSEMBLE, value=1, step=1, label=LABELS["ensemble"], elem_id="ensemble"
                    )
                    consensus = gr.Dropdown(list(CONSENSUS), value=_CFG.default_consensus, label="Consensus")
                    seed = gr.Number(0, precision=0, label="Seed")
                    run_btn = gr.Button("Segment", variant="primary", elem_id="run-btn")
                    gr.Markdown(server.LIMITS, elem_classes=["mcd-small"], elem_id="limits")
                    status = gr.Markdown("", elem_id="status")

            with gr.Group(elem_id="timestep-view"):
                gr.Markdown(viz.TIMESTEP_HEADER)
                with gr.Row():
                    step_slider = gr.Slider(1, 2, value=1, step=1, label="Step", interactive=False, elem_id="step-slider", scale=5)  # fmt: skip
                    play_btn = gr.Button("▶ Play the steps", elem_id="play-btn", scale=1)
                step_label = gr.Markdown("_Run the sampler to record a trajectory._", elem_id="step-label")
                with gr.Row():
                    xt_image = server.picture("noisy mask x_t", "xt-img", height=300)
                    x0_image = server.picture("x0-hat: the model's estimate of the clean mask at this t", "x0-img", height=300)  # fmt: skip
                    truth_image = server.picture("ground truth, drawn the same way", "truth-img", height=300, visible=False)  # fmt: skip
                    change_image = server.picture("change from the previous step", "change-img", height=300)
                with gr.Row():
                    animation = server.picture("the trajectory, animated (x_t | x0-hat)", "animation", pixels=False, height=290)  # fmt: skip
                    schedule_plot = server.picture("noise schedule, this step circled", "schedule-plot", pixels=False, height=290)  # fmt: skip
                    trajectory_plot = server.picture("trajectory", "trajectory-plot", pixels=False, height=290)
                members = gr.Gallery(label="ensemble members: each one's own answer (its last step's x0-hat)", elem_id="members", visible=False, **server.MEMBERS)  # fmt: skip

            with gr.Group(elem_id="consensus-view"):
                gr.Markdown("### 4. Consensus view: the fused mask and where steps and members disagree")
                with gr.Row():
                    consensus_image = server.picture("fused mask on the image", "consensus-img", height=340, scale=2)
                    with gr.Column(scale=2):
                        uncertainty_image = server.picture("uncertainty map (scale below)", "uncertainty-img", height=300)  # fmt: skip
                        colourbar = gr.HTML(elem_id="colourbar")
                        gr.Markdown(teaching.UNCERTAINTY_DEFINITIONS, elem_classes=["mcd-small"])
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
                volume_note = gr.Markdown("", elem_id="volume-note")

            with gr.Group(elem_id="forward-view"):
                gr.Markdown(teaching.FORWARD_HEADER)
                forward_t = gr.Slider(0, 1, value=0.5, step=0.05, label="t (0: clean, 1: noise)", elem_id="forward-t")
                with gr.Row():
                    forward_image = server.picture("x0 | x_t ~ q(x_t | x0)", "forward-img", height=260, scale=3)
                    forward_schedule = server.picture("where t sits on the schedule", "forward-schedule", pixels=False, height=260, scale=2)  # fmt: skip
                forward_label = gr.Markdown("", elem_id="forward-label")

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
    segment_out += [legend, dice_table, exports, consensus2, status, truth_image, animation, schedule_plot, members]
    segment_out += [colourbar]
    sampling = {"concurrency_id": "sampling", **ui}
    forward = (show_forward, [run_state, forward_t], [forward_image, forward_label, forward_schedule])
    run_btn.click(None, js=server.SCROLL_TO_RESULTS)  # the results are below the inputs: bring them into view
    run_btn.click(run_segment, [*segment_in, run_state, *pickers], segment_out, show_progress_on=[status], **sampling).then(*forward, **ui)  # fmt: skip
    shown = [*step_views, step_label, schedule_plot]
    step_slider.input(
        show_step, [run_state, step_slider], shown, trigger_mode="always_last", show_progress="hidden", **ui
    )
    play_btn.click(play, [run_state], [step_slider, *shown], show_progress="hidden", **ui)
    forward_t.input(*forward, trigger_mode="always_last", show_progress="hidden", **ui)
    refuse_out = [run_state, consensus_image, uncertainty_image, legend, dice_table, exports, refuse_note, colourbar]
    consensus.select(refuse, [run_state, consensus, opacity, uncertainty], [*refuse_out, consensus2], **ui)
    consensus2.select(refuse, [run_state, consensus2, opacity, uncertainty], [*refuse_out, consensus], **ui)
    for event, mode in ((opacity.input, "always_last"), (uncertainty.input, None)):
        event(redraw, [run_state, opacity, uncertainty], [*refuse_out[1:3], colourbar], trigger_mode=mode, **ui)
    volume_in = [files, *model_in, ct_window, *settings_in, *pickers, truth_file]
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
