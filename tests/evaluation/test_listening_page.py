"""The listening page of ``wavedistill evaluate`` and the comparison page of ``wavedistill
compare``: parsed back with ``html.parser``, every player and image refers to a file that
exists, the tables have one row per synthesis, a failed clip is listed as failed, and bad input
to ``compare`` is refused with one line naming the folder."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from test_run import write_checkpoint

from wavedistill.cli import main
from wavedistill.errors import UserError
from wavedistill.evaluation import run as evaluation
from wavedistill.evaluation.compare import compare
from wavedistill.evaluation.results import FAILED
from wavedistill.evaluation.run import evaluate


class Page(HTMLParser):
    """The parts of a page the tests check: players, images, links, table rows, sections."""

    def __init__(self, text: str):
        super().__init__()
        self.audio: list[dict] = []
        self.images: list[dict] = []
        self.links: list[str] = []
        self.tables: list[dict] = []  # {"class", "rows": [row header text]}
        self.sections: list[str] = []
        self.failed_text: list[str] = []
        self._in_row_header = False
        self._in_failed = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "audio":
            self.audio.append(a)
        elif tag == "img":
            self.images.append(a)
        elif tag == "a":
            self.links.append(a.get("href", ""))
        elif tag == "table":
            self.tables.append({"class": a.get("class"), "rows": []})
        elif tag == "th" and a.get("scope") == "row":
            self._in_row_header = True
            self.tables[-1]["rows"].append("")
        elif tag == "section":
            self.sections.append(a.get("id", ""))
        elif a.get("class") == "failed":
            self._in_failed = True
            self.failed_text.append("")

    def handle_endtag(self, tag):
        if tag == "th":
            self._in_row_header = False
        if tag in ("p", "span"):
            self._in_failed = False

    def handle_data(self, data):
        if self._in_row_header:
            self.tables[-1]["rows"][-1] += data
        if self._in_failed:
            self.failed_text[-1] += data


@pytest.fixture
def models(tmp_path, tiny_config, tiny_dataset):
    return (
        write_checkpoint(tmp_path / "student.pt", "student", tiny_config, tiny_dataset),
        write_checkpoint(tmp_path / "teacher.pt", "teacher", tiny_config, tiny_dataset),
    )


def run_evaluation(out: Path, models, dataset: Path, clips: int = 3) -> dict:
    student, teacher = models
    return evaluate(
        student,
        dataset,
        out,
        teacher=teacher,
        max_clips=clips,
        teacher_seconds=0.05,
        griffin_lim_iters=2,
        split="all",
        command="wavedistill evaluate --out report",
    )


def check_files(page: Page, folder: Path) -> None:
    """Every player, image and link of the page is a relative path to a file that exists."""
    for ref in (
        [a["src"] for a in page.audio]
        + [i["src"] for i in page.images]
        + [h for h in page.links if not h.startswith("#")]
    ):
        assert "://" not in ref and not ref.startswith("/"), ref
        assert (folder / ref).is_file(), ref


def test_evaluate_writes_a_page_with_every_clip_four_ways(tmp_path, models, tiny_dataset):
    out = tmp_path / "report"
    results = run_evaluation(out, models, tiny_dataset)
    text = (out / "index.html").read_text()
    page = Page(text)
    check_files(page, out)
    media = json.loads((out / "listening.json").read_text())
    ids = [c["id"] for c in media["clips"]]
    assert len(ids) == results["clips"] == 3
    assert [s for s in page.sections] == [f"clip-{i}" for i in ids]
    # one player per clip for the original, the student, the teacher span and Griffin-Lim
    assert len(page.audio) == 4 * len(ids)
    for player in page.audio:
        assert "controls" in player and player["aria-label"]
        wav = sf.info(str(out / player["src"]))
        assert wav.subtype == "PCM_16"
    teacher_wav = sf.info(str(out / media["clips"][0]["signals"]["teacher"]["audio"]))
    assert teacher_wav.duration == pytest.approx(0.05, abs=0.01)
    # every image has alt text; the spectrograms, the colour scale
    assert all(img.get("alt") for img in page.images)
    assert len([i for i in page.images if "spectrograms/" in i["src"]]) >= 4 * len(ids)
    # the summary table: one row per synthesis scored, in words; one metrics table per clip
    summary = next(t for t in page.tables if t["class"] == "summary")
    assert len(summary["rows"]) == len(results["copy_synthesis"])
    assert any(r.startswith("Griffin-Lim, 2 iterations") for r in summary["rows"])
    assert len([t for t in page.tables if t["class"] == "clip-metrics"]) == len(ids)
    assert "<caption>" in text and 'scope="col"' in text and "lower is better" in text
    # the numbers come from the evaluation, the command and the models are named
    mean = results["copy_synthesis"]["student"]["mean"]["stft_distance"]
    assert f"{mean:.3f}" in text
    assert "wavedistill evaluate --out report" in text
    assert "student.pt" in text and "teacher.pt" in text and "parameters" in text
    # small and self-contained: no inlined audio, no scripts, no network
    assert "base64" not in text and "<script" not in text and "http" not in text
    assert len(text) < 100_000


def test_a_failed_clip_is_listed_and_the_others_shown(tmp_path, models, tiny_dataset, monkeypatch):
    real = evaluation.student_samples

    def one_fails(*args, **kwargs):
        out = real(*args, **kwargs)
        first = next(iter(out))
        out[first] = np.full_like(out[first], np.nan)
        return out

    monkeypatch.setattr(evaluation, "student_samples", one_fails)
    out = tmp_path / "report"
    results = run_evaluation(out, models, tiny_dataset)
    media = json.loads((out / "listening.json").read_text())
    failed = [c for c in media["clips"] if c["failed"]]
    assert [c["id"] for c in failed] == [media["clips"][0]["id"]]
    page = Page((out / "index.html").read_text())
    check_files(page, out)
    assert any("not finite" in t for t in page.failed_text)
    # the failed clip keeps its other players; the other clips have all four
    assert len(page.audio) == 4 * len(media["clips"]) - 1
    scored = results["copy_synthesis"]["student"]
    assert scored["clips"][failed[0]["id"]]["stft_distance"] == FAILED
    assert isinstance(scored["mean"]["stft_distance"], float)


def test_compare_sets_two_reports_side_by_side_per_clip(tmp_path, models, tiny_dataset):
    a, b = tmp_path / "kl0", tmp_path / "kl01"
    first = run_evaluation(a, models, tiny_dataset, clips=2)
    run_evaluation(b, models, tiny_dataset, clips=2)
    code = main(
        [
            "--quiet",
            "compare",
            str(a),
            str(b),
            "--out",
            str(tmp_path / "cmp"),
            "--label",
            "KL 0",
            "--label",
            "KL 0.1",
        ]
    )
    assert code == 0
    text = (tmp_path / "cmp" / "index.html").read_text()
    page = Page(text)
    check_files(page, tmp_path / "cmp")
    clips = list(first["copy_synthesis"]["student"]["clips"])
    assert page.sections == [f"clip-{c}" for c in clips]
    # per clip: the original once, then student, teacher and Griffin-Lim of each report
    assert len(page.audio) == len(clips) * (1 + 2 * 3)
    assert any(a["src"].startswith("../kl0/") for a in page.audio)
    assert any(a["src"].startswith("../kl01/") for a in page.audio)
    deltas = [t for t in page.tables if t["class"] == "delta"]
    assert deltas and all(t["rows"] == ["KL 0", "KL 0.1"] for t in deltas)
    assert "Δ" in text and "KL 0 vs KL 0.1" in text


def test_compare_refuses_folders_that_are_not_reports_of_the_same_clips(
    tmp_path, models, tiny_dataset, capsys
):
    a, b = tmp_path / "a", tmp_path / "b"
    run_evaluation(a, models, tiny_dataset, clips=2)
    run_evaluation(b, models, tiny_dataset, clips=3)
    with pytest.raises(UserError, match=f"{b}: not a report of the same clips"):
        compare([a, b], tmp_path / "cmp")
    stray = tmp_path / "stray"
    stray.mkdir()
    with pytest.raises(UserError, match=f"{stray}: not an evaluation report"):
        compare([a, stray], tmp_path / "cmp")
    assert main(["compare", str(a), str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "missing" in err
    with pytest.raises(UserError, match="two or more"):
        compare([a], tmp_path / "cmp")


def test_the_learning_curves_of_both_runs_are_shown_in_words_and_figures(
    tmp_path, tiny_config, tiny_dataset
):
    runs = {}
    for kind, lines in (
        ("teacher", [{"step": 10, "nll_bits": 12.5}, {"step": 20, "nll_bits": 11.25}]),
        (
            "student",
            [
                {"step": 5, "stft_distance": 2.5, "kl": 0.5, "loudness_gap_db": -3.0},
                {"step": 9, "stft_distance": 1.75, "kl": 0.25, "loudness_gap_db": -1.0},
            ],
        ),
    ):
        run = tmp_path / kind
        (run / "checkpoints").mkdir(parents=True)
        text = "".join(json.dumps({**line, "minutes": 0.1}) + "\n" for line in lines)
        (run / "validation.jsonl").write_text(text)
        runs[kind] = write_checkpoint(
            run / "checkpoints" / "best.pt", kind, tiny_config, tiny_dataset
        )
    out = tmp_path / "report"
    run_evaluation(out, (runs["student"], runs["teacher"]), tiny_dataset, clips=1)
    text = (out / "index.html").read_text()
    page = Page(text)
    check_files(page, out)
    assert {"figures/teacher_nll.png", "figures/student_validation.png"} <= {
        i["src"] for i in page.images
    }
    assert "nll_bits went from 12.500 bits/sample at step 10 to 11.250 bits/sample" in text
    assert "stft_distance went from 2.500 at step 5 to 1.750 at step 9" in text
