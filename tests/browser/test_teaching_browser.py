"""The teaching and checking views in headless Chromium: truth beside x0-hat, the forward process, the
schedule, the animation and play control, ensemble members, the Dice table's "–", examples choosing models.

With MEDCONDDIFF_DOCS_SCREENSHOTS=1 the views are also written to docs/screenshots/teaching_*.png
(the README's "Teaching views" pictures come from that run).
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytestmark = [pytest.mark.browser, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts"
EXAMPLES = REPO / "assets" / "examples"
SEG = EXAMPLES / "brats_pat0003_z080_seg.png"


def _src(page, elem_id: str) -> str:
    img = page.locator(f"#{elem_id} img")
    return (img.first.get_attribute("src") or "") if img.count() else ""


def _loaded(page, elem_id: str, before: str = "") -> str:
    """Wait until the component shows a loaded image other than `before`; its src."""
    page.wait_for_function(
        "([id, before]) => { const i = document.querySelector(`#${id} img`);"
        " return i && i.src && i.src !== before && i.complete && i.naturalWidth > 0; }",
        arg=[elem_id, before],
    )
    return _src(page, elem_id)


def _slider(page, elem_id: str):
    return page.locator(f"#{elem_id}").get_by_role("slider")


def _in_view(page, elem_id: str) -> bool:
    return page.evaluate(
        "id => { const r = document.getElementById(id).getBoundingClientRect();"
        " return r.top < window.innerHeight && r.bottom > 0; }",
        elem_id,
    )


def _shots(page, shots: dict[str, str]) -> None:
    folders = [ARTIFACTS] + ([REPO / "docs" / "screenshots"] if os.environ.get("MEDCONDDIFF_DOCS_SCREENSHOTS") == "1" else [])  # fmt: skip
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for name, selector in shots.items():
            path = folder / (f"teaching_{name}.png" if folder != ARTIFACTS else f"browser-teaching-{name}.png")
            page.locator(selector).first.screenshot(path=str(path))
            assert 0 < path.stat().st_size < 400_000, (path, path.stat().st_size)  # small enough for the README


def test_ensemble_run_teaching_views(page, tmp_path):
    """BraTS example, truth without the tumour core and enhancing tumour, E = 4: every new view, in one run."""
    truth = np.asarray(Image.open(SEG)).copy()
    truth[np.isin(truth, (1, 3))] = 2  # classes 1 and 3 only where the model may still put them
    edited = tmp_path / "truth_without_1_3.png"
    Image.fromarray(truth).save(edited)

    scans = [EXAMPLES / f"brats_pat0003_z080_{m}.png" for m in ("flair", "t1c")]
    page.locator("#files input[type=file]").set_input_files([str(p) for p in scans])
    page.locator("#input-info").get_by_text("brats_pat0003_z080_t1c.png").wait_for()
    page.locator("#truth input[type=file]").set_input_files(str(edited))
    page.locator("#input-info").get_by_text("ground truth drawn").wait_for()
    _slider(page, "ensemble").fill("4")
    page.locator("#run-btn").click()
    page.locator("#status").get_by_text("Done:").wait_for()
    assert "4 member(s)" in page.locator("#status").inner_text()

    # the results were scrolled into view; truth beside x0-hat, at the same height
    assert page.evaluate("window.scrollY") > 0 and _in_view(page, "timestep-view")
    _loaded(page, "truth-img")
    x0, gt = page.locator("#x0-img").bounding_box(), page.locator("#truth-img").bounding_box()
    assert abs(x0["y"] - gt["y"]) < 20 and gt["x"] > x0["x"]

    # ensemble members side by side, one picture each
    page.locator("#members img").nth(3).wait_for()
    assert page.locator("#members img").count() == 4

    # the animation plays in the page: an animated GIF
    src = _loaded(page, "animation")
    with Image.open(io.BytesIO(page.request.get(src).body())) as gif:
        assert gif.format == "GIF" and gif.n_frames == int(
            page.locator("#step-slider input[type=number]").input_value()
        )

    # the schedule follows the step slider; the play control advances the slider
    schedule = _loaded(page, "schedule-plot")
    _slider(page, "step-slider").fill("1")
    _loaded(page, "schedule-plot", schedule)
    page.locator("#step-label").get_by_text(re.compile(r"Step 1 /")).wait_for()
    page.locator("#play-btn").click()
    page.locator("#step-label").get_by_text(re.compile(r"Step 2 /")).wait_for()
    last = _slider(page, "step-slider").get_attribute("aria-valuemax") or "5"
    page.locator("#step-label").get_by_text(f"Step {last} / {last}").wait_for()
    assert "x0-hat" in page.locator("#step-label").inner_text()
    assert _slider(page, "step-slider").input_value() == last

    # the forward process at two values of t (images load once they are on screen)
    page.locator("#forward-view").first.scroll_into_view_if_needed()
    first = _loaded(page, "forward-img")
    _slider(page, "forward-t").fill("0.2")
    low = _loaded(page, "forward-img", first)
    page.locator("#forward-label").get_by_text("t = 0.20").wait_for()
    _slider(page, "forward-t").fill("0.8")
    assert _loaded(page, "forward-img", low) != low
    page.locator("#forward-label").get_by_text("t = 0.80").wait_for()
    assert "Noising the ground truth" in page.locator("#forward-label").inner_text()
    _loaded(page, "forward-schedule")

    # scores: a class in neither map shows "–"; BraTS regions; the uncertainty map's scale
    dice = page.locator("#dice").inner_text()
    absent = 0
    for name in ("necrotic / non-enhancing core", "enhancing tumour"):  # in no truth: "–" or 0 where predicted
        row = re.search(rf"\n{re.escape(name)}\s+(–|\d\.\d{{3}})\s+(\d+)\s+(\d+)", dice)
        assert row and row[3] == "0", dice
        assert row[1] == ("–" if row[2] == "0" else "0.000"), dice
        absent += row[1] == "–"
    assert "WT" in dice and ("left out of the mean" in dice) == (absent > 0), dice
    assert "disagreement: 0 to" in page.locator("#colourbar").inner_text()
    _shots(page, {"timestep_view": "#timestep-view", "consensus_view": "#consensus-view", "forward_view": "#forward-view"})  # fmt: skip


def test_an_example_of_each_model_selects_that_model(page):
    """Generic over examples.json: the first example of every bundled model switches the picker to it."""
    from medconddiff import hub

    catalogue = json.loads((EXAMPLES / "examples.json").read_text())["examples"]
    bundled = set(hub.bundled_models())
    firsts: dict[str, str] = {}
    for entry in catalogue:
        if entry["model"] in bundled and all((EXAMPLES / f).is_file() for f in entry["files"]):
            firsts.setdefault(entry["model"], entry["caption"])
    if len(firsts) < 2:
        pytest.skip("fewer than two bundled models have examples")
    for model, caption in sorted(firsts.items(), key=lambda kv: kv[0] == "brats-demo"):  # away from the default first
        page.locator("#examples button.thumbnail-item").filter(has_text=caption).first.click()
        page.locator("#model-info").get_by_text(model).first.wait_for()
        assert page.locator("#model input").input_value().startswith(model), (model, caption)
