"""``wavedistill compare REPORT_A REPORT_B [...] --out DIR``: one listening page that sets two or
more evaluation reports side by side, for ablations ("KL 0 against KL 0.1") and before/after.

Each report is a folder written by ``wavedistill evaluate`` (``metrics.json`` and the listening
page's ``listening.json``); all must be of the same clips. ``DIR/index.html`` shows, per
synthesis (student, teacher, Griffin-Lim), the mean metrics of every report with the difference
to the first report, then per clip the original once, every report's players and spectrograms
one row each, and the clip's metrics with the same differences. The page links to the reports'
own audio and images by relative paths: it copies nothing, so keep the folders together.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from wavedistill.errors import UserError
from wavedistill.evaluation import metrics
from wavedistill.evaluation.listening_page import (
    MEDIA_INDEX,
    PAGE,
    PLAYERS,
    best_rows,
    document,
    esc,
    metric_header,
    models_list,
    number,
    player,
    row_labels,
)
from wavedistill.fileio import atomic_write_text


@dataclass
class Report:
    """One evaluation folder: its ``metrics.json``, ``listening.json`` and page label."""

    folder: Path
    label: str
    metrics: dict[str, Any]
    media: dict[str, Any]

    def clip_ids(self) -> list[str]:
        return [c["id"] for c in self.media["clips"]]


def _read_json(path: Path, folder: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(
            f"{folder}: not an evaluation report with a listening page (no {what}); "
            f"write one with `wavedistill evaluate --out {folder}`"
        )
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable ({exc})") from None


def load_report(folder: Path, label: str) -> Report:
    """The report in ``folder``; a folder that is not one is a UserError naming it."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: no such folder")
    found = _read_json(folder / "metrics.json", folder, "metrics.json")
    media = _read_json(folder / MEDIA_INDEX, folder, MEDIA_INDEX)
    if "copy_synthesis" not in found or "clips" not in media:
        raise UserError(
            f"{folder}: not an evaluation report (metrics.json or {MEDIA_INDEX} lacks its entries)"
        )
    return Report(folder, label, found, media)


def check_same_clips(reports: list[Report]) -> None:
    """Every report must be of the first report's clips; the first that is not is named."""
    first = reports[0]
    for other in reports[1:]:
        if other.clip_ids() != first.clip_ids():
            missing = sorted(set(first.clip_ids()) - set(other.clip_ids()))
            extra = sorted(set(other.clip_ids()) - set(first.clip_ids()))
            detail = "; ".join(
                p
                for p in (
                    f"lacks {', '.join(missing)}" if missing else "",
                    f"adds {', '.join(extra)}" if extra else "",
                )
                if p
            )
            raise UserError(
                f"{other.folder}: not a report of the same clips as {first.folder} "
                f"({detail or 'another order'})"
            )


def default_labels(folders: list[Path]) -> list[str]:
    """Folder names, or whole paths where two names are the same."""
    names = [Path(f).name or str(f) for f in folders]
    return names if len(set(names)) == len(names) else [str(f) for f in folders]


# -- the page ----------------------------------------------------------------------------------


def _change(value: float, reference: float, better: str) -> str:
    """The difference to the reference, and whether it is better."""
    delta = value - reference
    if delta == 0:
        return "Δ 0"
    gain = {"lower": -delta, "higher": delta}.get(better, abs(reference) - abs(value))
    word = "better" if gain > 0 else "worse" if gain < 0 else "as good"
    return f"Δ {delta:+.3f}, {word}"


def delta_table(rows: dict[str, dict[str, Any]], caption: str) -> str:
    """One row per report (the first is the reference), each value with its difference to the
    reference's; the best of each column in bold."""
    shown = [m for m in metrics.METRICS if any(isinstance(r[m.name], float) for r in rows.values())]
    reference = next(iter(rows.values()))
    body = []
    for i, (label, row) in enumerate(rows.items()):
        cells = []
        for m in shown:
            text = number(row[m.name])
            if i and isinstance(row[m.name], float) and isinstance(reference[m.name], float):
                text += f" <small>({_change(row[m.name], reference[m.name], m.better)})</small>"
            bold = label in best_rows(rows, m)
            cells.append(f"<td><strong>{text}</strong></td>" if bold else f"<td>{text}</td>")
        body.append(f'<tr><th scope="row">{esc(label)}</th>{"".join(cells)}</tr>')
    return (
        f'<table class="delta"><caption>{esc(caption)}</caption><thead><tr>'
        f'<th scope="col">report</th>{"".join(metric_header(m) for m in shown)}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def shared_syntheses(reports: list[Report]) -> list[str]:
    """The syntheses every report scored, in the first report's order."""
    names = list(reports[0].metrics["copy_synthesis"])
    return [n for n in names if all(n in r.metrics["copy_synthesis"] for r in reports[1:])]


def summary(reports: list[Report]) -> list[str]:
    """One delta table of means per synthesis that every report has."""
    labels = row_labels(reports[0].metrics)
    out = []
    for name in shared_syntheses(reports):
        rows = {r.label: r.metrics["copy_synthesis"][name]["mean"] for r in reports}
        out.append(
            delta_table(
                rows,
                f"{labels.get(name, name)}: means; Δ against "
                f"{reports[0].label}; bold: best in the column",
            )
        )
    return out


def report_list(reports: list[Report], out_dir: Path) -> str:
    """Each report's label, checkpoint, models and own page."""
    items = []
    for r in reports:
        page = esc(_prefix(r.folder, out_dir) + PAGE)
        items.append(
            f"<li><strong>{esc(r.label)}</strong>: <code>"
            f'{esc(r.metrics["checkpoint"])}</code> (<a href="{page}">its page</a>)'
            f"{models_list(r.media.get('models', []))}</li>"
        )
    return f"<ul>{''.join(items)}</ul>"


def _prefix(folder: Path, out_dir: Path) -> str:
    """The relative path from the comparison page to a report's folder, with a slash."""
    return Path(os.path.relpath(Path(folder).resolve(), Path(out_dir).resolve())).as_posix() + "/"


def clip_section(index: int, reports: list[Report], out_dir: Path) -> str:
    """One clip: the original, then one row of players per report, then the metric deltas."""
    first = reports[0].media["clips"][index]
    cid, seconds = first["id"], first["seconds"]
    parts = [f'<section id="clip-{esc(cid)}"><h3>{esc(cid)} <small>({seconds:.2f} s)</small></h3>']
    if "original" in first["signals"]:
        original = player(
            cid,
            first["signals"]["original"],
            seconds,
            "original",
            _prefix(reports[0].folder, out_dir),
        )
        parts.append(f'<div class="signals">{original}</div>')
    for r in reports:
        entry = r.media["clips"][index]
        labels = row_labels(r.metrics)
        if entry.get("failed"):
            parts.append(f'<p class="failed">{esc(r.label)}: failed: {esc(entry["failed"])}</p>')
        figures = [
            player(
                cid,
                entry["signals"][n],
                seconds,
                f"{r.label}: {labels.get(n, n)}",
                _prefix(r.folder, out_dir),
            )
            for n in PLAYERS[1:]
            if n in entry["signals"]
        ]
        parts.append(f'<h4>{esc(r.label)}</h4><div class="signals">{"".join(figures)}</div>')
    labels = row_labels(reports[0].metrics)
    for name in shared_syntheses(reports):
        rows = {r.label: r.metrics["copy_synthesis"][name]["clips"].get(cid) for r in reports}
        if all(rows.values()):
            parts.append(delta_table(rows, f"{cid}, {labels.get(name, name)}"))
    return "".join(parts) + "</section>"


def render(reports: list[Report], out_dir: Path, command: str | None) -> str:
    """The comparison page."""
    title = "Comparison: " + " vs ".join(r.label for r in reports)
    body = [f"<h1>{esc(title)}</h1>", report_list(reports, out_dir)]
    if command:
        body.append(f"<p>Made by</p><pre><code>{esc(command)}</code></pre>")
    body += summary(reports)
    body.append("<h2>Clips</h2>")
    body += [clip_section(i, reports, out_dir) for i in range(len(reports[0].media["clips"]))]
    return document(title, body)


def compare(
    folders: list[Path], out_dir: Path, labels: list[str] | None = None, command: str | None = None
) -> Path:
    """Write ``out_dir/index.html`` comparing the reports in ``folders``; returns its path."""
    if len(folders) < 2:
        raise UserError("compare needs two or more report folders")
    if labels is not None and len(labels) != len(folders):
        raise UserError(f"--label was given {len(labels)} time(s) for {len(folders)} reports")
    labels = labels or default_labels(folders)
    reports = [load_report(f, label) for f, label in zip(folders, labels, strict=True)]
    check_same_clips(reports)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out_dir / PAGE, render(reports, out_dir, command))
