"""The listening and comparison pages in a real browser (headless Chromium, driven over the
DevTools protocol by ``tests/chromium.py``): every ``<audio>`` loads with the duration of its WAV,
every image decodes, the summary table has one row per synthesis, and the console stays free of
errors. A player whose file is missing is caught. Skips only where no Chromium is installed
(``.ci/run`` installs Debian's ``chromium``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from chromium import Chromium, find_chromium
from test_listening_page import run_evaluation

from wavedistill.evaluation.compare import compare
from wavedistill.evaluation.run import evaluate

pytestmark = pytest.mark.browser

# Waits until every player has its metadata (or an error), then reports what the page shows.
INSPECT = """
(async () => {
  const players = [...document.querySelectorAll('audio')];
  await Promise.all(players.map(a => a.readyState >= 1 || a.error ? null : new Promise(done => {
    a.addEventListener('loadedmetadata', done); a.addEventListener('error', done);
    setTimeout(done, 10000);
  })));
  return {
    audio: players.map(a => ({src: a.getAttribute('src'), duration: a.duration,
                              error: a.error ? a.error.code : null,
                              label: a.getAttribute('aria-label')})),
    images: [...document.images].map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                            width: i.naturalWidth, alt: i.alt})),
    summaryRows: document.querySelectorAll('table.summary tbody tr').length,
    deltaRows: [...document.querySelectorAll('table.delta')].map(t => t.tBodies[0].rows.length),
  };
})()
"""


@pytest.fixture(scope="module")
def browser():
    binary = find_chromium()
    if binary is None:
        pytest.skip(
            "no Chromium to drive: install Debian's chromium (apt-get install chromium) "
            "or set CHROMIUM to a Chromium or Chrome binary"
        )
    with Chromium(binary) as opened:
        yield opened


def problems(found: dict, folder: Path) -> list[str]:
    """What is wrong with a page as the browser saw it: players that did not load or whose
    length differs from their WAV's, images that did not decode, labels or alt text missing."""
    out = []
    for a in found["audio"]:
        wav = folder / a["src"]
        if a["error"] is not None or a["duration"] is None or not wav.is_file():
            out.append(f"player {a['src']} did not load (media error {a['error']})")
        elif abs(a["duration"] - sf.info(str(wav)).duration) > 0.005:
            out.append(
                f"player {a['src']} lasts {a['duration']} s, its WAV {sf.info(str(wav)).duration} s"
            )
        if not a["label"]:
            out.append(f"player {a['src']} has no label")
    for image in found["images"]:
        if not (image["complete"] and image["width"] > 0):
            out.append(f"image {image['src']} did not decode")
        if not image["alt"]:
            out.append(f"image {image['src']} has no alt text")
    return out


def test_the_listening_page_loads_every_player_and_image(
    browser, tmp_path, tiny_config, tiny_dataset
):
    from test_run import write_checkpoint

    models = (
        write_checkpoint(tmp_path / "student.pt", "student", tiny_config, tiny_dataset),
        write_checkpoint(tmp_path / "teacher.pt", "teacher", tiny_config, tiny_dataset),
    )
    out = tmp_path / "report"
    results = run_evaluation(out, models, tiny_dataset, clips=2)
    found = browser.inspect((out / "index.html").as_uri(), INSPECT)
    assert problems(found, out) == []
    assert len(found["audio"]) == 2 * 4
    assert found["summaryRows"] == len(results["copy_synthesis"])
    assert browser.console_errors() == []

    # the comparison of two such reports loads alike, with one row per report in each table
    run_evaluation(tmp_path / "again", models, tiny_dataset, clips=2)
    page = compare([out, tmp_path / "again"], tmp_path / "cmp")
    found = browser.inspect(page.as_uri(), INSPECT)
    assert problems(found, page.parent) == []
    assert found["deltaRows"] and set(found["deltaRows"]) == {2}
    assert browser.console_errors() == []


def test_a_missing_player_file_is_caught(browser, tmp_path, student_only_report):
    out = student_only_report
    media = json.loads((out / "listening.json").read_text())
    gone = media["clips"][0]["signals"]["student"]["audio"]
    (out / gone).unlink()
    found = browser.inspect((out / "index.html").as_uri(), INSPECT)
    assert [p for p in problems(found, out) if gone in p] == [
        f"player {gone} did not load (media error 4)"
    ]
    assert any(gone.split("/")[-1] in e for e in browser.console_errors())


@pytest.fixture
def student_only_report(tmp_path, tiny_config, tiny_dataset):
    from test_run import write_checkpoint

    student = write_checkpoint(tmp_path / "student.pt", "student", tiny_config, tiny_dataset)
    out = tmp_path / "report"
    evaluate(student, tiny_dataset, out, max_clips=1, griffin_lim_iters=2)
    return out
