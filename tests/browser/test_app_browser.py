"""End to end in headless Chromium: the demo as a user drives it (`python app.py`, a real browser).

Screenshots go to test-artifacts/. With MEDCONDDIFF_DOCS_SCREENSHOTS=1 the CT example's timestep and
consensus views are also written to docs/screenshots/: the README's pictures come from that run.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"  # gitignored; the conftest's `page` fixture creates it
EXAMPLES = REPO / "assets" / "examples"
SLAB = [EXAMPLES / "brats_pat0004_slab_t1c.nii.gz", EXAMPLES / "brats_pat0004_slab_flair.nii.gz"]  # T1c first


def _src(page, elem_id: str) -> str:
    """The src of the image shown in a component ('' while there is none)."""
    img = page.locator(f"#{elem_id} img")
    return img.first.get_attribute("src") or "" if img.count() else ""


def _wait_src_change(page, elem_id: str, before: str) -> str:
    page.wait_for_function(
        "([id, before]) => { const i = document.querySelector(`#${id} img`); return i && i.src && i.src !== before"
        " && i.complete && i.naturalWidth > 0; }",
        arg=[elem_id, before],
    )
    return _src(page, elem_id)


def _rendered(page, elem_id: str) -> tuple[int, int]:
    """(naturalWidth, naturalHeight) of the image in a component, once it has loaded."""
    page.wait_for_function(
        "id => { const i = document.querySelector(`#${id} img`); return i && i.complete && i.naturalWidth > 0; }",
        arg=elem_id,
    )
    return tuple(page.locator(f"#{elem_id} img").first.evaluate("i => [i.naturalWidth, i.naturalHeight]"))


def _slider(page, elem_id: str):
    return page.locator(f"#{elem_id}").get_by_role("slider")


def _defaults(model: str) -> dict:
    return json.loads((REPO / "assets" / "weights" / model / "config.json").read_text())


def _default_steps(model: str) -> int:
    return _defaults(model)["default_steps"]


def test_example_sampling_timestep_and_consensus_views(page):
    steps = _default_steps("brats-demo")  # the app samples with the model's defaults
    page.locator("#examples button.thumbnail-item").first.click()  # BraTS pat0003 z080, with ground truth
    assert _rendered(page, "preview") == (240, 240)
    page.locator("#run-btn").click()
    page.locator("#status").get_by_text("Done:").wait_for()

    # timestep view: the last step is shown; moving the slider to step 1 changes the pictures
    assert f"Step {steps} / {steps}" in page.locator("#step-label").inner_text()
    before = {k: _src(page, k) for k in ("xt-img", "x0-img", "change-img")}
    assert all(before.values()), before
    _slider(page, "step-slider").fill("1")
    for key, src in before.items():
        assert _wait_src_change(page, key, src) != src
    page.locator("#step-label").get_by_text(f"Step 1 / {steps}").wait_for()
    assert "t = 1.000" in page.locator("#step-label").inner_text()
    assert _rendered(page, "xt-img") == (240, 240)  # at the image's resolution
    _rendered(page, "trajectory-plot")
    page.locator("#timestep-view").first.screenshot(path=str(ARTIFACTS / "browser-timestep-view.png"))

    # consensus view: fused mask and uncertainty map rendered, legend and per-class Dice shown
    assert _rendered(page, "consensus-img") == (240, 240)
    assert _rendered(page, "uncertainty-img") == (240, 240)
    assert "oedema" in page.locator("#legend").inner_text()
    assert "Dice" in page.locator("#dice").inner_text()
    page.locator("#consensus-view").first.screenshot(path=str(ARTIFACTS / "browser-consensus-view.png"))

    # switching the consensus re-fuses the stored trajectory: the legend names the new function
    other = "mean_logits" if _defaults("brats-demo")["default_consensus"] != "mean_logits" else "majority_vote"
    fused = _src(page, "consensus-img")
    page.locator("#consensus2 input").click()
    page.get_by_role("option", name=other).click()
    page.locator("#legend").get_by_text(other).wait_for()
    _wait_src_change(page, "consensus-img", fused)
    assert "no new sampling" in page.get_by_text("Re-fused").inner_text()

    # exports: the mask PNG and the GIF are offered
    exports = "".join(page.locator("#export-files").inner_text().split())
    assert f"mask_{other}_1.png" in exports and "trajectory.gif" in exports
    page.screenshot(path=str(ARTIFACTS / "browser-after-sampling.png"), full_page=True)


def test_ct_example_switches_to_the_ct_model_and_fills_both_views(page):
    """The CT slice through the bundled CT model; its views are the README's screenshots."""
    from medconddiff import hub

    if "abdomen-ct-demo" not in hub.bundled_models():
        pytest.skip("no abdomen-ct-demo weights bundled")
    page.locator("#examples button.thumbnail-item").filter(has_text="abdominal CT z096").first.click()
    page.locator("#model-info").get_by_text("abdomen-ct-demo").wait_for()
    page.locator("#input-info").get_by_text("ct_z096.png").wait_for()
    assert page.locator("#ct-window").is_visible()  # the CT window presets come with a CT model
    assert _rendered(page, "preview") == (122, 101)
    page.locator("#run-btn").click()
    page.locator("#status").get_by_text("Done:").wait_for()

    before = _src(page, "x0-img")
    _slider(page, "step-slider").fill("4")  # a middle step: x_t still noisy, x0-hat already an organ map
    _wait_src_change(page, "x0-img", before)
    page.locator("#step-label").get_by_text(f"Step 4 / {_default_steps('abdomen-ct-demo')}").wait_for()
    assert _rendered(page, "x0-img") == (122, 101) and _rendered(page, "trajectory-plot")[0] > 0
    assert "liver" in page.locator("#legend").inner_text()
    liver = re.search(r"liver\s+([0-9.]+)", page.locator("#dice").inner_text())
    assert liver and float(liver.group(1)) > 0.5, page.locator("#dice").inner_text()  # the shipped model finds it

    shots = {"timestep": "#timestep-view", "consensus": "#consensus-view"}
    folders = [ARTIFACTS] + (
        [REPO / "docs" / "screenshots"] if os.environ.get("MEDCONDDIFF_DOCS_SCREENSHOTS") == "1" else []
    )
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for name, selector in shots.items():
            path = folder / f"{name}_view.png" if folder != ARTIFACTS else folder / f"browser-ct-{name}-view.png"
            page.locator(selector).first.screenshot(path=str(path))
            assert 0 < path.stat().st_size < 400_000, (path, path.stat().st_size)  # small enough for the README


def test_nifti_upload_slice_slider_and_modality_pickers(page):
    page.locator("#files input[type=file]").set_input_files([str(p) for p in SLAB])
    slider = _slider(page, "slice-slider")
    slider.wait_for(state="visible")
    assert "slice 3" in page.locator("#input-info").inner_text()
    info = page.locator("#input-info").inner_text()  # matched by name although T1c came first
    assert "FLAIR: brats_pat0004_slab_flair.nii.gz" in info and "T1c: brats_pat0004_slab_t1c.nii.gz" in info
    first = _src(page, "preview")
    assert first and _rendered(page, "preview") == (240, 240)
    slider.fill("0")
    _wait_src_change(page, "preview", first)
    page.locator("#input-info").get_by_text("slice 0 of 0..5").wait_for()
    page.locator("#run-btn").click()
    page.locator("#status").get_by_text("Done:").wait_for()
    exports = "".join(page.locator("#export-files").inner_text().split())
    assert "slice000.nii.gz" in exports  # the NIfTI mask of the shown slice
    page.screenshot(path=str(ARTIFACTS / "browser-nifti-upload.png"), full_page=True)


def test_bad_file_shows_the_error_and_the_app_keeps_serving(page, tmp_path):
    bad = tmp_path / "broken.nii.gz"
    bad.write_bytes(b"\x1f\x8b this is not a NIfTI volume")
    page.locator("#files input[type=file]").set_input_files([str(bad)])
    page.get_by_text("not a readable NIfTI").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "browser-bad-file.png"), full_page=True)
    page.locator("#examples button.thumbnail-item").nth(1).click()  # the next request still works
    page.locator("#input-info").get_by_text("brats_pat0003_z088_flair.png").wait_for()
    assert Path(ARTIFACTS / "browser-bad-file.png").is_file()
