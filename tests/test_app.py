"""The Gradio demo (app.py): handlers called directly, and the public API through gradio_client.

Uses the shipped weights (assets/weights/) when there are any. Only when none is bundled does it
fall back to a RANDOM-INIT model written to a temp folder: that checks wiring and shapes, not quality.
The bundled examples in assets/examples/ are the only inputs, so a fresh clone runs these tests.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "assets" / "examples"
BRATS_PNG = [EXAMPLES / "brats_pat0003_z080_flair.png", EXAMPLES / "brats_pat0003_z080_t1c.png"]
BRATS_SEG = EXAMPLES / "brats_pat0003_z080_seg.png"
SLAB = [EXAMPLES / "brats_pat0004_slab_flair.nii.gz", EXAMPLES / "brats_pat0004_slab_t1c.nii.gz"]
SLAB_SEG = EXAMPLES / "brats_pat0004_slab_seg.nii.gz"
STEPS = 4  # short runs: the tests check behaviour, not quality


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """The app module, with the bundled weights, or a random-init fallback when none is bundled."""
    from medconddiff import hub

    saved = os.environ.get("MEDCONDDIFF_WEIGHTS")
    if not any(name.startswith("brats") for name in hub.bundled_models()):
        import torch

        from medconddiff.config import MedCondDiffConfig
        from medconddiff.model import MedCondDiff

        torch.manual_seed(0)  # RANDOM-INIT FALLBACK: no trained BraTS weights are bundled yet
        folder = hub.save_model(MedCondDiff(MedCondDiffConfig(image_size=64)), tmp_path_factory.mktemp("random-init"))
        os.environ["MEDCONDDIFF_WEIGHTS"] = str(folder)
    import app as app_module

    yield app_module
    if saved is None:
        os.environ.pop("MEDCONDDIFF_WEIGHTS", None)
    else:
        os.environ["MEDCONDDIFF_WEIGHTS"] = saved


@pytest.fixture(scope="module")
def server(app):
    """demo_server: the app's weights policy, model cache, limits and request files."""
    return app.server


@pytest.fixture(scope="module")
def brats(app, server) -> str:
    """The dropdown value of a BraTS model (FLAIR + T1c)."""
    choice, custom = server.model_for(app.EXAMPLES[0])
    assert custom == "", "no offered model fits the BraTS examples"
    return choice


def _segment(app, files, choice, *, truth=None, slice_index=0, consensus="mean_logits", ensemble=1):
    """Run the UI's sampling handler to the end; return everything it yielded."""
    unc = next(iter(app.UNCERTAINTY))
    gen = app.run_segment(
        [str(f) for f in files], choice, "", slice_index, None, truth and str(truth), STEPS,
        "DDIM (deterministic)", ensemble, consensus, 0, 0.5, unc, None, None, None, None, None,
    )  # fmt: skip
    return list(gen)


def _get(update, key):
    """A property of a component update (a dict from gr.update, or a component instance)."""
    return update[key] if isinstance(update, dict) else getattr(update, key)


def _png(path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


# -- examples ---------------------------------------------------------------------------------------


def test_examples_are_small_real_and_named_as_agreed():
    names = [
        *(f"brats_{p}_z{z}_{m}.png" for p, z in [("pat0003", "080"), ("pat0003", "088"), ("pat0004", "096")] for m in ("flair", "t1c", "seg")),
        *(f"brats_pat0004_slab_{m}.nii.gz" for m in ("flair", "t1c", "seg")),
        "ct_z088.png", "ct_z088_seg.png", "ct_z096.png", "ct_z096_seg.png", "ct_slab.nii.gz", "ct_slab_seg.nii.gz",
        "kvasir_cju0roaw.jpg", "kvasir_cju0roaw_seg.png", "ph2_IMD002.png", "ph2_IMD002_seg.png",
        "acdc_patient002_z05.png", "acdc_patient002_z05_seg.png", "acdc_patient002_slab.nii.gz",
        "README.md", "LICENSE-BraTS-CC-BY-NC-SA-3.0.txt", "make_examples.py",
    ]  # fmt: skip
    for name in names:
        assert (EXAMPLES / name).is_file(), name
    assert sum(p.stat().st_size for p in EXAMPLES.iterdir()) < 1_600_000  # five datasets' examples
    flair, seg = _png(BRATS_PNG[0]), _png(BRATS_SEG)
    assert flair.shape == seg.shape == (240, 240) and flair.dtype == np.uint8
    assert set(np.unique(seg)) <= {0, 1, 2, 3, 4} and (seg > 0).sum() > 500  # visible tumour
    assert (flair[seg > 0] > 0).all() and flair.min() == 0  # brain pixels 1..255, outside 0
    assert set(np.unique(_png(EXAMPLES / "ct_z096_seg.png"))) == {0, 1, 2, 3, 4}
    slab = nib.load(str(SLAB[0]))
    assert slab.shape == (240, 240, 6) and slab.get_data_dtype() == np.float32
    readme = (EXAMPLES / "README.md").read_text()
    assert "CC BY-NC-SA 3.0" in readme and "Menze" in readme and "TotalSegmentator model" in readme
    assert "Jha" in readme and "Mendonça" in readme and "Bernard" in readme  # Kvasir-SEG, PH2, ACDC


def test_every_catalogued_example_loads_with_its_model_and_ground_truth():
    """Each entry of examples.json names files that exist and that its bundled model reads, truth included."""
    import json

    from medconddiff import examples, hub
    from medconddiff.config import MedCondDiffConfig
    from medconddiff.pipeline import read_case

    listed = json.loads((EXAMPLES / "examples.json").read_text())["examples"]
    found = examples.load_examples()
    assert [e.caption for e in found] == [e["caption"] for e in listed]  # none dropped for a missing file
    for ex in found:
        config = MedCondDiffConfig.from_json(hub.resolve(ex.model) / hub.CONFIG_NAME)
        assert config.modality == ex.modality, ex.caption
        case = read_case(list(ex.files), config, truth=ex.truth)  # channel count, grid and labels checked
        assert case.truth is not None and case.truth.shape == case.image.shape[1:], ex.caption
    attribution = examples.attribution()
    assert "CC BY-NC-SA 3.0" in attribution and "TotalSegmentator model" in attribution


def test_select_example_sets_files_truth_and_a_fitting_model(app, brats):
    import gradio as gr

    files, truth, dropdown, custom = app.select_example(gr.SelectData(None, {"index": 0, "value": None}))
    assert files == [str(p) for p in BRATS_PNG] and truth == str(BRATS_SEG)
    assert _get(dropdown, "value") == brats and custom == ""


# -- launching --------------------------------------------------------------------------------------


def test_launch_kwargs_cap_uploads_and_honour_host_and_port(app, server, monkeypatch):
    monkeypatch.delenv("GRADIO_SERVER_NAME", raising=False)
    monkeypatch.delenv("GRADIO_SERVER_PORT", raising=False)
    kw = server.launch_kwargs(css=app.CSS)
    assert (kw["server_name"], kw["server_port"]) == ("127.0.0.1", 7860)
    assert kw["max_file_size"] == server.MAX_FILE_SIZE == "200mb" and kw["css"] == app.CSS
    assert "200MB" in app.files.label  # the UI says so
    monkeypatch.setenv("GRADIO_SERVER_NAME", "0.0.0.0")
    monkeypatch.setenv("GRADIO_SERVER_PORT", "7999")
    assert (server.launch_kwargs()["server_name"], server.launch_kwargs()["server_port"]) == ("0.0.0.0", 7999)
    assert server.launch_kwargs(host="::1", port=8123)["server_port"] == 8123
    assert app.demo._queue.default_concurrency_limit == app.CONCURRENCY == server.CONCURRENCY


# -- the UI handlers --------------------------------------------------------------------------------


def test_on_files_volume_sets_slice_slider_pickers_and_preview(app, brats):
    out = app.on_files([str(SLAB[1]), str(SLAB[0])], brats, "", str(SLAB_SEG), None)  # T1c uploaded first
    pickers, slider, volume_row, preview, info = out[:4], out[4], out[5], out[6], out[7]
    assert [_get(p, "value") for p in pickers[:2]] == [str(SLAB[0]), str(SLAB[1])]  # matched by name
    assert _get(pickers[0], "visible") and not _get(pickers[2], "visible")
    assert _get(slider, "visible") and _get(slider, "maximum") == 5 and _get(slider, "value") == 3
    assert _get(volume_row, "visible")
    assert _png(preview).shape == (240, 240, 3) and "slice 3" in info and "ground truth" in info
    other, _ = app.on_view([str(SLAB[1]), str(SLAB[0])], brats, "", str(SLAB_SEG), None, 0, *[str(SLAB[0]), str(SLAB[1])], None, None)  # fmt: skip
    assert not np.array_equal(_png(other), _png(preview))


def test_sampling_streams_every_step_then_fills_both_views(app, brats):
    outs = _segment(app, BRATS_PNG, brats, truth=BRATS_SEG)
    assert len(outs) == STEPS + 1
    streamed = [o[app.x0_image] for o in outs[:-1]]
    assert len(set(streamed)) == STEPS and all(Path(p).is_file() for p in streamed)
    final = outs[-1]
    run = final[app.run_state]
    assert run.result.labels.shape == (240, 240) and len(run.step_files) == STEPS
    assert _get(final[app.step_slider], "maximum") == STEPS and _get(final[app.step_slider], "interactive")
    for key in (app.consensus_image, app.uncertainty_image, app.trajectory_plot):
        assert _png(final[key]).ndim == 3
    assert _png(final[app.consensus_image]).shape[:2] == (240, 240)  # at the image's resolution
    assert "necrotic" in final[app.legend] and "| oedema |" in final[app.dice_table]
    assert "Done:" in final[app.status] and f"on CPU ({run.result.precision})." in final[app.status]
    mask_png, gif = final[app.exports]
    np.testing.assert_array_equal(_png(mask_png), run.result.labels)
    with Image.open(gif) as g:
        assert g.n_frames == STEPS

    first, last = app.show_step(run, 1), app.show_step(run, STEPS)
    assert first[1] != last[1] and "Step 1 /" in first[3] and f"Step {STEPS} / {STEPS}" in last[3]
    assert "t = 1.000" in first[3] and "log-SNR" in first[3]
    assert not np.array_equal(_png(first[0]), _png(last[0]))  # x_t: noise first, nearly a mask last


def test_refusing_uses_the_stored_trajectory_without_sampling(app, brats, monkeypatch):
    import medconddiff.pipeline as pipeline

    run = _segment(app, BRATS_PNG, brats, ensemble=2)[-1][app.run_state]
    expected = run.result.refuse("majority_vote")

    def no_sampling(*args, **kwargs):
        raise AssertionError("re-fusing must not sample again")

    monkeypatch.setattr(pipeline, "sample_loop", no_sampling)
    monkeypatch.setattr(app, "iter_segment_slices", no_sampling)
    out = app.refuse(run, "majority_vote", 0.3, "entropy")
    assert out[0].result.consensus == "majority_vote" and out[-1] == "majority_vote"
    np.testing.assert_array_equal(out[0].result.labels, expected.labels)
    np.testing.assert_array_equal(_png(out[5][0]), expected.labels)  # the export follows
    assert "no new sampling" in out[6]
    assert app.redraw(run, 0.0, "entropy")[0] != out[1]


def test_nifti_exports_keep_the_upload_affine(app, brats):
    run = _segment(app, SLAB, brats, slice_index=2)[-1][app.run_state]
    nii = next(f for f in run.exports() if f.endswith(".nii.gz"))
    img, src = nib.load(nii), nib.load(str(SLAB[0]))
    shift = np.eye(4)
    shift[2, 3] = 2
    np.testing.assert_allclose(img.affine, src.affine @ shift)
    np.testing.assert_array_equal(np.asarray(img.dataobj)[..., 0], run.result.labels)

    path, note = app.run_volume(
        [str(p) for p in SLAB],
        brats,
        "",
        None,
        STEPS,
        "DDIM (deterministic)",
        1,
        "mean_logits",
        0,
        None,
        None,
        None,
        None,
    )
    vol = nib.load(path)
    assert vol.shape == src.shape and "6 slices" in note
    from medconddiff.precision import resolve

    assert f"in {resolve('auto', 'cpu')}:" in note  # the precision "auto" chose on this machine
    np.testing.assert_allclose(vol.affine, src.affine)


def test_ct_example_with_a_ct_model(app, server):
    ct = next(e for e in app.EXAMPLES if e.modality == "ct" and e.files[0].endswith(".png"))
    choice, custom = server.model_for(ct)
    if custom:
        pytest.skip(f"no CT model bundled or offered ({custom} missing)")
    assert server.peek_config(choice).modality == "ct"
    outs = app.on_model(choice, "")
    assert _get(outs[2], "visible") and _get(outs[2], "value") == "abdomen"  # the CT window control
    final = _segment(app, ct.files, choice, truth=ct.truth)[-1]
    run = final[app.run_state]
    assert run.result.labels.shape == _png(ct.files[0]).shape
    assert "| liver |" in final[app.dice_table] and "liver" in final[app.legend]


# -- bad input: a clear gr.Error, and the app keeps serving ------------------------------------------


def _bad_inputs(tmp: Path) -> dict[str, tuple[list[Path], str]]:
    """name -> (files, part of the expected message)."""
    txt = tmp / "notes.txt"
    txt.write_text("not an image")
    corrupt = tmp / "broken.nii.gz"
    corrupt.write_bytes(os.urandom(2048))
    affine = np.eye(4)
    four_d = tmp / "three_modalities.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(16, 16, 4, 3).astype(np.float32), affine), str(four_d))
    five_d = tmp / "five_d.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(16, 16, 2, 2, 2).astype(np.float32), affine), str(five_d))
    nan = np.random.rand(16, 16, 4).astype(np.float32)
    nan[3, 3, 1] = np.nan
    nan_file, inf_file = tmp / "nan.nii.gz", tmp / "inf.nii.gz"
    nib.save(nib.Nifti1Image(nan, affine), str(nan_file))
    nib.save(nib.Nifti1Image(np.where(np.isnan(nan), np.inf, nan), affine), str(inf_file))
    blank = tmp / "blank.png"
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(blank)
    huge = tmp / "huge.png"
    Image.fromarray(np.zeros((4097, 4096), np.uint8)).save(huge)
    return {
        "wrong type": ([txt, txt], "unsupported file type"),
        "corrupt NIfTI": ([corrupt, corrupt], "not a readable NIfTI"),
        "4-D NIfTI, wrong channel count": ([four_d], "expects 2 modality channel(s)"),
        "4-D NIfTI with another file": ([four_d, SLAB[1]], "4-D volume given with other files"),
        "5-D NIfTI": ([five_d, five_d], "5-D"),
        "NaN": ([nan_file, nan_file], "NaN/Inf"),
        "Inf": ([inf_file, inf_file], "NaN/Inf"),
        "blank image": ([blank, blank], "same value"),
        "huge image": ([huge, huge], "too large"),
        "one modality for a two-modality model": ([BRATS_PNG[0]], "expects 2 modality channel(s)"),
        "mixed sizes": ([BRATS_PNG[0], EXAMPLES / "ct_z088.png"], "differ in size"),
    }


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, tuple[list[Path], str]]:
    return _bad_inputs(tmp_path_factory.mktemp("bad-inputs"))


BAD_CASES = [
    "wrong type", "corrupt NIfTI", "4-D NIfTI, wrong channel count", "4-D NIfTI with another file", "5-D NIfTI",
    "NaN", "Inf", "blank image", "huge image", "one modality for a two-modality model", "mixed sizes",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_input_gives_a_clear_error(app, brats, bad_inputs, case):
    import gradio as gr

    files, message = bad_inputs[case]
    with pytest.raises(gr.Error, match=re.escape(message)):
        app.segment_api([str(f) for f in files], "", STEPS, 1, "", 0)
    with pytest.raises(gr.Error, match=re.escape(message)):  # the UI path says the same
        app.on_files([str(f) for f in files], brats, "", None, None)


def test_bad_settings_and_truth_give_clear_errors_and_the_app_keeps_serving(app, brats):
    import gradio as gr

    for settings, message in [((500, 1, ""), "at most"), ((4, 1, "median"), "unknown consensus")]:
        with pytest.raises(gr.Error, match=message):
            app.segment_api([str(f) for f in BRATS_PNG], "", *settings, 0)
    with pytest.raises(gr.Error, match="does not match the image"):
        app.on_files([str(f) for f in BRATS_PNG], brats, "", str(EXAMPLES / "ct_z088_seg.png"), None)
    with pytest.raises(gr.Error, match="no input file"):
        app.segment_api([], "", STEPS, 1, "", 0)
    with pytest.raises(gr.Error, match="outside the volume"):
        app.segment_api([str(f) for f in SLAB], "", STEPS, 1, "", 0, 6)
    mask, summary = app.segment_api([str(f) for f in BRATS_PNG], "", STEPS, 1, "", 0)  # still serving
    assert summary["shape"] == [240, 240]


def test_bad_weights_give_clear_errors(app, server, tmp_path, monkeypatch):
    import gradio as gr
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # never touch the network here
    broken = tmp_path / "broken-weights"
    broken.mkdir()
    (broken / "config.json").write_text('{"image_size": 64}')
    with pytest.raises(gr.Error, match="missing field"):
        app.on_model(None, str(broken))
    (broken / "config.json").write_text((Path(server.hub.resolve(None)) / "config.json").read_text())
    (broken / "model.safetensors").write_bytes(b"not safetensors at all")
    with pytest.raises(gr.Error, match="safetensors"):
        app.segment_api([str(f) for f in BRATS_PNG], str(broken), STEPS, 1, "", 0)
    with pytest.raises(gr.Error, match="no such weights folder"):
        app.on_model(None, str(tmp_path / "nowhere"))
    with pytest.raises(gr.Error, match="nobody/no-such-model"):
        app.on_model(None, "nobody/no-such-model")


def test_the_gallery_follows_the_catalogue_each_models_example_first(app):
    from medconddiff import catalogue

    order = [m.name for m in catalogue.load()]
    models = [ex.model for ex in app.EXAMPLES]
    assert models == sorted(models, key=order.index), "the gallery is in the catalogue's order of models"
    for m in catalogue.load():
        assert next(ex for ex in app.EXAMPLES if ex.model == m.name).caption == m.example
    assert app.EXAMPLES[0].caption == catalogue.load()[0].example and app.EXAMPLES[1].model == order[0]


def test_a_catalogued_model_that_cannot_load_shows_an_error_box_and_the_others_still_work(
    app, server, tmp_path, monkeypatch
):  # fmt: skip
    """Offline, with neither its bundled folder nor a cached copy: picking it shows the message naming its repo,
    revision and `hf download` command; the page was built without loading it, and the other models still load."""
    import gradio as gr
    from huggingface_hub import constants

    from medconddiff import catalogue

    ghost = '[[models]]\nname = "ghost-demo"\nrepo = "lab/ghost"\nrevision = "main"\nbundled = "ghost-demo"\n'
    models = tmp_path / "models.toml"
    models.write_text(catalogue.CATALOGUE_FILE.read_text() + "\n" + ghost + 'purpose = "nothing here"\n')
    monkeypatch.setenv(catalogue.CATALOGUE_ENV, str(models))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    assert ("ghost-demo — nothing here", "ghost-demo") in server.model_labels()  # offered, not loaded
    with pytest.raises(gr.Error) as info:
        app.on_model("ghost-demo", "")
    message = str(info.value)
    assert "ghost-demo: not bundled here" in message and "lab/ghost@main" in message
    assert "`hf download lab/ghost --revision main --local-dir DIR`" in message
    offered = next(name for name in server.model_choices() if name != "ghost-demo")
    assert app.on_model(offered, "")[0].startswith(f"**{offered}**")


def test_custom_weights_follow_the_server_setting(app, server, tiny_weights, tmp_path, monkeypatch):
    """off: only the offered models load, the error lists them; on: a local folder loads, resolved once."""
    import shutil

    import gradio as gr

    folder = str(shutil.copytree(tiny_weights, tmp_path / "custom"))
    offered = server.model_choices()
    monkeypatch.setenv("MEDCONDDIFF_CUSTOM_WEIGHTS", "off")
    accepted = f"custom weights are disabled on this server ('{folder}' is not one of its models); accepted: "
    for call in (lambda: app.on_model(None, folder), lambda: app.segment_api([str(BRATS_PNG[0])], folder, 2, 1, "", 0)):
        with pytest.raises(gr.Error, match=re.escape(accepted + ", ".join(offered))):
            call()
    assert app.on_model(offered[0], "")[0].startswith(f"**{offered[0]}**")  # offered models still load
    row, note = app.on_page()
    assert not _get(row, "visible") and _get(note, "visible") and "--custom-weights on" in server.CUSTOM_WEIGHTS_OFF

    resolved = []
    real_resolve = server.hub.resolve
    monkeypatch.setattr(server.hub, "resolve", lambda spec=None: resolved.append(spec) or real_resolve(spec))
    monkeypatch.setenv("MEDCONDDIFF_CUSTOM_WEIGHTS", "on")
    summary, about = app.on_model(None, folder)[:2]
    assert resolved == [folder], "one model pick resolves its weights spec once"
    assert summary.startswith(f"**{folder}**") and "64 px" in summary and "Not yet evaluated" in about
    assert app.get_model(folder) is app.get_model(folder) and resolved == [folder]  # loaded once, then cached
    assert _get(app.on_page()[0], "visible")
    assert server._load.cache_info().maxsize == 3  # custom loads cannot grow memory without bound


def test_an_example_no_offered_model_fits(app, server, monkeypatch):
    """Its own model goes into the text box where custom weights are allowed; elsewhere a clear error."""
    import gradio as gr

    from medconddiff.examples import Example

    odd = Example("odd", ("a.png", "b.png", "c.png"), None, "someone/rgb-model", "natural")
    monkeypatch.setattr(app, "EXAMPLES", [odd])
    monkeypatch.setenv("MEDCONDDIFF_CUSTOM_WEIGHTS", "on")
    assert server.model_for(odd) == (server.default_choice(), "someone/rgb-model")
    monkeypatch.setenv("MEDCONDDIFF_CUSTOM_WEIGHTS", "off")
    with pytest.raises(
        gr.Error, match=r"needs the model 'someone/rgb-model', which this server does not offer.*offered: "
    ):
        app.select_example(gr.SelectData(None, {"index": 0, "value": None}))


def test_custom_weights_auto_only_on_loopback_and_off_spaces(app, server, monkeypatch):
    monkeypatch.setenv("MEDCONDDIFF_CUSTOM_WEIGHTS", "auto")
    monkeypatch.delenv("SPACE_ID", raising=False)
    for host in ("127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"):
        assert server.custom_weights_allowed(host), host
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.org"):
        assert not server.custom_weights_allowed(host), host
    monkeypatch.setenv("SPACE_ID", "someone/medconddiff")
    assert not server.custom_weights_allowed("127.0.0.1")
    monkeypatch.setenv("MEDCONDDIFF_CUSTOM_WEIGHTS", "on")
    assert server.custom_weights_allowed("0.0.0.0")
    monkeypatch.setenv("MEDCONDDIFF_CUSTOM_WEIGHTS", "sometimes")  # unknown: off
    assert not server.custom_weights_allowed("127.0.0.1")
    with pytest.raises(SystemExit):
        app.main(["--port", "1"])  # refuses the unknown mode before serving


# -- About ------------------------------------------------------------------------------------------


def test_about_reads_validation_numbers_from_the_model_card(app, tiny_model, tiny_weights, tmp_path):
    import shutil

    from medconddiff.modelcard import about_markdown

    folder = Path(shutil.copytree(tiny_weights, tmp_path / "carded"))
    bare = about_markdown("carded", folder, tiny_model.config)
    assert "Not yet evaluated" in bare and "not for clinical use" in bare.lower() and app.PAPER_URL in bare
    (folder / "README.md").write_text(
        "---\nlicense: cc-by-nc-sa-3.0\n---\n# A model\n\n## Training data\n\nTwo BraTS patients.\n\n"
        "## Validation\n\n| region | Dice |\n|---|---|\n| WT | 0.812 |\n"
    )
    (folder / "training.json").write_text('{"steps": 1800, "train_slices": 240}')
    carded = about_markdown("carded", folder, tiny_model.config)
    assert "| WT | 0.812 |" in carded and "Two BraTS patients" in carded and "steps 1800" in carded
    assert "license:" not in carded


# -- the public API through gradio_client -------------------------------------------------------------


def test_api_segment_with_gradio_client(app_server, tmp_path):
    """The session's shared server (`python app.py`, default model, custom weights off) through its public API."""
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError

    client = Client(app_server.url, verbose=False, download_files=str(tmp_path))
    assert "/segment" in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    started = time.perf_counter()
    mask, summary = client.predict(
        [handle_file(str(p)) for p in BRATS_PNG], "", STEPS, 1, "mean_logits", 0, api_name="/segment"
    )
    labels = _png(mask)
    assert labels.shape == (240, 240) == tuple(summary["shape"])
    assert labels.max() < len(summary["classes"]) and summary["classes"][0] == "background"
    assert sum(summary["areas"]) == 240 * 240
    assert summary["areas"] == np.bincount(labels.ravel(), minlength=len(summary["classes"])).tolist()
    assert summary["precision"] in ("fp32", "bf16", "fp16")  # "auto", resolved on the server's device
    assert time.perf_counter() - started < 60

    _, vol = client.predict([handle_file(str(p)) for p in SLAB], "", STEPS, 1, "", 0, api_name="/segment")
    assert vol["shape"] == [240, 240] and vol["slice"] == 3  # the middle slice
    _, vol = client.predict([handle_file(str(p)) for p in SLAB], "", STEPS, 1, "", 0, 5, api_name="/segment")
    assert vol["slice"] == 5

    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(AppError, match="not a readable NIfTI") as info:
        client.predict([handle_file(str(bad))] * 2, "", STEPS, 1, "", 0, api_name="/segment")
    from gradio.utils import get_upload_folder

    assert "broken.nii.gz" in str(info.value) and get_upload_folder() not in str(info.value)  # no server paths
    _, again = client.predict(
        [handle_file(str(p)) for p in BRATS_PNG], "", STEPS, 1, "mean_logits", 0, api_name="/segment"
    )
    assert again["areas"] == summary["areas"]  # same seed, same mask: and the server still serves
