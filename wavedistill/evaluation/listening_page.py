"""The listening page: an evaluation report as one self-contained web page.

``wavedistill evaluate --out DIR`` writes, beside ``metrics.json`` and ``report.md``:

- ``DIR/audio/<clip>/<signal>.wav``: 16-bit WAV of the original and of every synthesis
  (``student``, ``teacher`` span, ``griffin_lim``) of every evaluated clip;
- ``DIR/spectrograms/<clip>/<signal>.png``: their log-mel, all on one colour scale (the lowest
  value the features can take up to the loudest value of the evaluation), drawn at one pixel per
  frame so that a span is as wide as it lasts, and ``spectrograms/scale.png``, the scale;
- ``DIR/figures/student_validation.png``: the student's validation curves, when the student's
  run folder holds ``validation.jsonl`` (the teacher's NLL curve is drawn by the evaluation);
- ``DIR/listening.json``: what the page shows besides ``metrics.json`` (models, command, the
  media of each clip, failures), which ``wavedistill compare`` reads back;
- ``DIR/index.html``: the page. Links are relative, nothing is fetched from the network, there
  is no script; every player has a label, every image alt text, and the numbers are text.

A clip whose media cannot be written (a synthesis that is not finite, an error while writing)
is listed on the page as failed, with the reason; the other clips are shown.
"""

from __future__ import annotations

import html
import json
import logging
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.image import imsave

from wavedistill.config import Config
from wavedistill.data.audio import write_wav
from wavedistill.data.features import log_mel, lowest_log_mel
from wavedistill.evaluation import metrics
from wavedistill.evaluation.report import verdict
from wavedistill.fileio import atomic_path, atomic_write_text
from wavedistill.training.loop import VALIDATION_HISTORY

log = logging.getLogger(__name__)

PAGE = "index.html"
MEDIA_INDEX = "listening.json"
PLAYERS = ("original", "student", "teacher", "griffin_lim")  # page order of the players
LABELS = {
    "original": "original",
    "student": "student (one pass)",
    "teacher": "teacher",
    "student_span": "student, on the teacher's spans",
    "griffin_lim": "Griffin-Lim",
}
ARROWS = {
    "lower": "lower is better ↓",
    "higher": "higher is better ↑",
    "closer to 0": "closer to 0 is better",
}
COLOUR_MAP = "viridis"

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 1.5rem auto; max-width: 80rem;
       padding: 0 1rem; color: #1b1b1b; background: #fff; }
h1 { font-size: 1.5rem; } h2 { font-size: 1.2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; }
caption { text-align: left; font-weight: 600; padding: .25rem 0; }
th, td { border: 1px solid #ccc; padding: .2rem .5rem; text-align: right; }
th[scope=row], thead th { text-align: left; background: #f3f3f3; }
td strong { color: #0b5b0b; }
.signals { display: grid; grid-template-columns: repeat(auto-fill, minmax(14rem, 1fr));
           gap: .75rem; }
figure { margin: 0; } figcaption { font-weight: 600; }
audio { width: 100%; }
img.spec { display: block; height: 6rem; min-width: 1px; background: #eee; }
.curves { display: flex; flex-wrap: wrap; gap: 1rem; } .curves figure { max-width: 48rem; }
img.curve { max-width: 100%; height: auto; }
.failed { color: #a00000; font-weight: 600; }
.note { color: #444; font-size: .9rem; }
pre { background: #f6f6f6; padding: .5rem; overflow-x: auto; white-space: pre-wrap; }
"""


def esc(value: Any) -> str:
    """Escaped text for HTML (attribute values included)."""
    return html.escape(str(value), quote=True)


# -- what the page shows besides metrics.json --------------------------------------------------


def describe_model(loaded) -> dict[str, Any]:
    """Name, kind, training steps and size of a :class:`~wavedistill.store.loading.LoadedModel`."""
    source = Path(loaded.source)
    size = source.stat().st_size if source.is_file() else None
    return {
        "kind": loaded.kind,
        "name": source.name,
        "path": str(source),
        "step": loaded.step,
        "parameters": sum(p.numel() for p in loaded.model.parameters()),
        "megabytes": None if size is None else size / 2**20,
    }


def read_history(checkpoint: str | Path) -> dict[int, dict[str, float]]:
    """The ``validation.jsonl`` of a checkpoint's run folder (``<run>/checkpoints/<ckpt>``), by
    step (a resumed run's repeated steps keep the last line); empty when there is none."""

    path = Path(checkpoint).resolve().parent.parent / VALIDATION_HISTORY
    if not path.is_file():
        return {}
    points: dict[int, dict[str, float]] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            entry = json.loads(line)
            points[int(entry["step"])] = {k: float(v) for k, v in entry.items() if k != "step"}
    return points


def trend(history: dict[int, dict[str, float]], key: str, unit: str = "") -> str | None:
    """``"key went from A at step S to B at step T"``, the curve in words, or None."""
    steps = [s for s in sorted(history) if key in history[s]]
    if not steps:
        return None
    first, last = steps[0], steps[-1]
    return (
        f"{key} went from {history[first][key]:.3f}{unit} at step {first} to "
        f"{history[last][key]:.3f}{unit} at step {last} ({len(steps)} validations)"
    )


STUDENT_CURVES = ("stft_distance", "loudness_gap_db", "kl")


def plot_student_curves(out_dir: Path, history: dict[int, dict[str, float]]) -> str | None:
    """``figures/student_validation.png``: the student's validation metrics against steps, one
    panel each; its path relative to ``out_dir``, or None without a history."""

    keys = [k for k in STUDENT_CURVES if any(k in v for v in history.values())]
    if not keys:
        return None
    fig = Figure(figsize=(3.2 * len(keys), 2.8), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, key in zip(fig.subplots(1, len(keys), squeeze=False)[0], keys, strict=True):
        steps = [s for s in sorted(history) if key in history[s]]
        ax.plot(steps, [history[s][key] for s in steps], marker="o", markersize=3)
        ax.set_title(key)
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    name = "figures/student_validation.png"
    with atomic_path(out_dir / name) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    return name


def curves(out_dir: Path, header: dict[str, Any], models: list) -> list[dict[str, str]]:
    """The learning curves the page shows: ``{"title", "image", "text"}`` each."""
    out = []
    for loaded in models:
        history = read_history(loaded.source)
        if loaded.kind == "teacher" and header.get("nll_curve"):
            text = trend(history, "nll_bits", " bits/sample")
            out.append(
                {
                    "title": "Teacher: held-out NLL against training steps",
                    "image": header["nll_curve"],
                    "text": f"Teacher held-out NLL: {text}." if text else "",
                }
            )
        elif loaded.kind == "student" and history:
            image = plot_student_curves(out_dir, history)
            words = [t for t in (trend(history, k) for k in STUDENT_CURVES) if t]
            if image:
                out.append(
                    {
                        "title": "Student: validation against training steps",
                        "image": image,
                        "text": "Student validation: " + "; ".join(words) + ".",
                    }
                )
    return out


# -- audio and spectrograms --------------------------------------------------------------------


def log_mel_image(audio: np.ndarray, cfg: Config) -> np.ndarray | None:
    """(n_mels, F) log-mel of whole frames of ``audio``, or None when too short to analyse."""

    usable = len(audio) - len(audio) % cfg.audio.hop_length
    if usable <= cfg.audio.n_fft // 2:
        return None
    return log_mel(torch.from_numpy(np.asarray(audio[:usable], np.float32)), cfg.audio).numpy()


def signals_of(clip, synthesis: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The original and every synthesis of ``clip`` that exists, in page order."""
    audio = {"original": clip.audio.numpy()}
    audio.update(
        {
            n: synthesis[n][clip.id]
            for n in PLAYERS[1:]
            if n in synthesis and clip.id in synthesis[n]
        }
    )
    return audio


def colour_scale(clips, synthesis, cfg: Config) -> tuple[float, float]:
    """One scale for every spectrogram of the page: the features' floor up to the largest
    log-mel value of any finite signal."""

    low, high = lowest_log_mel(cfg.audio), -math.inf
    for clip in clips:
        for audio in signals_of(clip, synthesis).values():
            mel = log_mel_image(audio, cfg) if np.isfinite(audio).all() else None
            if mel is not None:
                high = max(high, float(mel.max()))
    return low, high if math.isfinite(high) else low + 1.0


def save_spectrogram(path: Path, mel: np.ndarray, scale: tuple[float, float]) -> None:
    """A PNG of ``mel``, one pixel per frame and mel band, low bands at the bottom."""

    with atomic_path(path) as tmp:
        imsave(
            tmp, mel, cmap=COLOUR_MAP, vmin=scale[0], vmax=scale[1], origin="lower", format="png"
        )


def save_scale(path: Path, scale: tuple[float, float]) -> None:
    """A small colour bar of ``scale``."""

    fig = Figure(figsize=(4.5, 0.75), layout="constrained")
    FigureCanvasAgg(fig)
    bar = ScalarMappable(Normalize(*scale), cmap=COLOUR_MAP)
    fig.colorbar(bar, cax=fig.subplots(), orientation="horizontal", label="log-mel (natural log)")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")


def write_signal(
    out_dir: Path,
    clip_id: str,
    name: str,
    audio: np.ndarray,
    cfg: Config,
    scale: tuple[float, float],
) -> dict[str, Any]:
    """One signal's WAV and spectrogram; ``{"audio", "image", "seconds"}`` relative to
    ``out_dir``, or ``{"failed": reason}``."""

    if not np.isfinite(audio).all():
        return {"failed": f"the {LABELS[name]} is not finite (NaN or infinity)"}
    folder = clip_id.replace("/", "_")
    entry: dict[str, Any] = {
        "audio": f"audio/{folder}/{name}.wav",
        "seconds": len(audio) / cfg.audio.sample_rate,
        "image": None,
    }
    write_wav(out_dir / entry["audio"], audio, cfg.audio.sample_rate)
    mel = log_mel_image(audio, cfg)
    if mel is not None:
        entry["image"] = f"spectrograms/{folder}/{name}.png"
        save_spectrogram(out_dir / entry["image"], mel, scale)
    return entry


def write_media(out_dir: Path, clips, synthesis, cfg: Config) -> dict[str, Any]:
    """Every clip's audio and spectrograms; the ``clips`` and ``colour_scale`` entries of
    ``listening.json``. A clip that raises is recorded as failed and the others go on."""
    scale = colour_scale(clips, synthesis, cfg)
    save_scale(out_dir / "spectrograms" / "scale.png", scale)
    entries = []
    for clip in clips:
        entry: dict[str, Any] = {
            "id": clip.id,
            "seconds": len(clip.audio) / cfg.audio.sample_rate,
            "signals": {},
            "failed": None,
        }
        try:
            for name, audio in signals_of(clip, synthesis).items():
                entry["signals"][name] = write_signal(out_dir, clip.id, name, audio, cfg, scale)
        except Exception as exc:  # noqa: BLE001 - one clip's failure must not lose the page
            log.warning("listening page: clip %s failed: %s", clip.id, exc)
            entry["failed"] = f"{type(exc).__name__}: {exc}"
        reasons = [s["failed"] for s in entry["signals"].values() if "failed" in s]
        if reasons and entry["failed"] is None:
            entry["failed"] = "; ".join(reasons)
        entries.append(entry)
    return {"colour_scale": list(scale), "scale_image": "spectrograms/scale.png", "clips": entries}


# -- the page ----------------------------------------------------------------------------------


def number(value: float | str) -> str:
    """A metric's value as text: three decimals, or an em dash where it has none."""
    return f"{value:.3f}" if isinstance(value, float) else "—"


def metric_header(metric: metrics.Metric) -> str:
    """``<th>`` of a metric column: name, unit and direction."""
    unit = f" ({metric.unit})" if metric.unit else ""
    return (
        f'<th scope="col">{esc(metric.name)}{esc(unit)}<br>'
        f"<small>{esc(ARROWS.get(metric.better, metric.better))}</small></th>"
    )


def best_rows(rows: dict[str, dict[str, Any]], metric: metrics.Metric) -> set[str]:
    """Names of the rows with the best value of ``metric`` (ties all count)."""

    def badness(v: float) -> float:
        return {"lower": v, "higher": -v}.get(metric.better, abs(v))

    values = {n: r[metric.name] for n, r in rows.items() if isinstance(r[metric.name], float)}
    if len(values) < 2:
        return set()
    best = min(badness(v) for v in values.values())
    return {n for n, v in values.items() if badness(v) == best}


def metrics_table(
    rows: dict[str, dict[str, Any]],
    caption: str,
    labels: dict[str, str],
    css_class: str = "summary",
) -> str:
    """A table of metric values, one row per name of ``rows``, the best of each column in
    bold; metrics without a value anywhere are said once below, with the reason."""
    shown = [m for m in metrics.METRICS if any(isinstance(r[m.name], float) for r in rows.values())]
    best = {m.name: best_rows(rows, m) for m in shown}
    head = "".join(metric_header(m) for m in shown)
    body = []
    for name, row in rows.items():
        cells = "".join(
            f"<td><strong>{number(row[m.name])}</strong></td>"
            if name in best[m.name]
            else f"<td>{number(row[m.name])}</td>"
            for m in shown
        )
        body.append(f'<tr><th scope="row">{esc(labels.get(name, name))}</th>{cells}</tr>')
    missing = sorted(
        {
            f"{m.name}: {next(iter(rows.values()))[m.name]}"
            for m in metrics.METRICS
            if m not in shown and rows
        }
    )
    note = f'<p class="note">No value: {esc("; ".join(missing))}.</p>' if missing else ""
    return (
        f'<table class="{css_class}"><caption>{esc(caption)}</caption>'
        f'<thead><tr><th scope="col">synthesis</th>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>{note}"
    )


def row_labels(header: dict[str, Any]) -> dict[str, str]:
    """What each row of the tables is, in words, from the evaluation's settings."""
    seconds = header.get("teacher_seconds")
    return {
        **LABELS,
        "teacher": f"teacher, first {seconds:g} s of each clip" if seconds else "teacher",
        "student_span": f"student, the same {seconds:g} s spans"
        if seconds
        else LABELS["student_span"],
        "griffin_lim": f"Griffin-Lim, {header.get('griffin_lim_iters')} iterations, same log-mel",
    }


def models_list(models: list[dict[str, Any]]) -> str:
    """The models' names, kinds, steps and sizes as a list."""
    items = []
    for m in models:
        size = f", {m['megabytes']:.1f} MiB" if m.get("megabytes") is not None else ""
        items.append(
            f"<li>{esc(m['kind'])}: <code>{esc(m['name'])}</code> "
            f"({m['step']:,} steps, {m['parameters']:,} parameters{esc(size)})</li>"
        )
    return f"<ul>{''.join(items)}</ul>"


def player(
    clip_id: str, signal: dict[str, Any], clip_seconds: float, label: str, prefix: str = ""
) -> str:
    """A ``<figure>``: caption, labelled audio player and spectrogram of one signal."""
    caption = f"<figcaption>{esc(label)}</figcaption>"
    if "failed" in signal:
        return f'<figure>{caption}<p class="failed">failed: {esc(signal["failed"])}</p></figure>'
    src = esc(prefix + signal["audio"])
    seconds = signal["seconds"]
    audio = (
        f'<audio controls preload="metadata" src="{src}" '
        f'aria-label="{esc(f"{clip_id}: {label}, {seconds:.2f} s")}">'
        f'<a href="{src}">{esc(label)} (WAV)</a></audio>'
    )
    image = ""
    if signal.get("image"):
        width = 100.0 * min(1.0, seconds / clip_seconds) if clip_seconds > 0 else 100.0
        alt = f"log-mel spectrogram of {clip_id}, {label}, {seconds:.2f} s"
        image = (
            f'<img class="spec" src="{esc(prefix + signal["image"])}" alt="{esc(alt)}" '
            f'style="width: {width:.1f}%">'
        )
    return f"<figure>{caption}{audio}{image}</figure>"


def clip_metrics(samples: dict[str, Any], clip_id: str) -> dict[str, dict[str, Any]]:
    """Each synthesis's metrics on one clip, in table order."""
    return {n: s["clips"][clip_id] for n, s in samples.items() if clip_id in s["clips"]}


def clip_section(entry: dict[str, Any], samples: dict[str, Any], labels: dict[str, str]) -> str:
    """One clip: its players with spectrograms side by side, then its metrics."""
    cid = entry["id"]
    parts = [
        f'<section id="clip-{esc(cid)}"><h3>{esc(cid)} '
        f"<small>({entry['seconds']:.2f} s)</small></h3>"
    ]
    if entry.get("failed"):
        parts.append(f'<p class="failed">failed: {esc(entry["failed"])}</p>')
    figures = [
        player(cid, entry["signals"][n], entry["seconds"], labels.get(n, n))
        for n in PLAYERS
        if n in entry["signals"]
    ]
    parts.append(f'<div class="signals">{"".join(figures)}</div>')
    rows = clip_metrics(samples, cid)
    if rows:
        parts.append(metrics_table(rows, f"Metrics of {cid}", labels, "clip-metrics"))
    return "".join(parts) + "</section>"


def summary_text(report: dict[str, Any]) -> list[str]:
    """The report's sentences: what was evaluated, NLL, KL, the verdict."""
    split = (
        "validation split" if report.get("split") == "valid" else "whole folder (never trained on)"
    )
    out = [
        f"{esc(report['kind'])} checkpoint <code>{esc(report['checkpoint'])}</code>, dataset "
        f"<code>{esc(report['data'])}</code>, {report['clips']} clip(s) of the {split}."
    ]
    if report.get("nll"):
        out.append(
            f"Held-out NLL: <strong>{report['nll']['bits_per_sample']:.4f} "
            f"bits/sample</strong> over {report['nll']['samples']:,} samples."
        )
    if report.get("kl"):
        out.append(
            f"KL(student ‖ teacher) estimate: <strong>"
            f"{report['kl']['nats_per_sample']:.4f} nats/sample</strong>."
        )
    sentence = verdict(report["copy_synthesis"]) if report.get("copy_synthesis") else None
    if sentence:
        out.append(esc(sentence))
    return [f"<p>{s}</p>" for s in out]


def document(title: str, body: Iterable[str]) -> str:
    """A whole HTML page around ``body``."""
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def clip_index(entries: list[dict[str, Any]]) -> str:
    """Links to every clip's section, failed ones said so."""
    links = [
        f'<a href="#clip-{esc(e["id"])}">{esc(e["id"])}</a>'
        + (' <span class="failed">(failed)</span>' if e.get("failed") else "")
        for e in entries
    ]
    return f'<nav aria-label="clips"><p>Clips: {", ".join(links)}</p></nav>'


def curve_figures(found: list[dict[str, str]]) -> str:
    """The learning curves side by side, each with its title and the curve in words."""
    figures = [
        f"<figure><figcaption>{esc(c['title'])}</figcaption>"
        f'<img class="curve" src="{esc(c["image"])}" alt="{esc(c["text"] or c["title"])}">'
        f'<p class="note">{esc(c["text"])}</p></figure>'
        for c in found
    ]
    return f'<div class="curves">{"".join(figures)}</div>'


def render(report: dict[str, Any], media: dict[str, Any]) -> str:
    """``index.html`` from the contents of ``metrics.json`` and ``listening.json``."""
    name = Path(report["checkpoint"]).name
    labels = row_labels(report)
    body = [
        f"<h1>Listening page: {esc(name)}</h1>",
        models_list(media["models"]),
        *summary_text(report),
    ]
    if media.get("command"):
        body.append(f"<p>Made by</p><pre><code>{esc(media['command'])}</code></pre>")
    samples = report.get("copy_synthesis") or {}
    if samples:
        means = {n: s["mean"] for n, s in samples.items()}
        body.append(
            metrics_table(
                means, f"Means over {report['clips']} clip(s); bold: best in the column", labels
            )
        )
    if media.get("curves"):
        body += ["<h2>Learning curves</h2>", curve_figures(media["curves"])]
    low, high = media["colour_scale"]
    body += [
        "<h2>Clips</h2>",
        clip_index(media["clips"]),
        f'<p class="note">Spectrograms: log-mel, one pixel column per frame (a span is as '
        f"wide as it lasts), all on one colour scale from {low:.2f} to {high:.2f}.</p>",
        f'<img src="{esc(media["scale_image"])}" alt="colour scale of the spectrograms: '
        f'{low:.2f} (dark) to {high:.2f} (bright), natural-log mel energy">',
    ]
    body += [clip_section(e, samples, labels) for e in media["clips"]]
    return document(f"Listening page: {name}", body)


def write_listening_page(
    out_dir: Path, results, clips, synthesis, cfg: Config, models: list, command: str | None = None
) -> Path:
    """Write the media, ``listening.json`` and ``index.html`` of an evaluation into
    ``out_dir``; returns the page's path."""
    out_dir = Path(out_dir)
    media = {
        "command": command,
        "models": [describe_model(m) for m in models],
        "sample_rate": cfg.audio.sample_rate,
        "curves": curves(out_dir, results.header, models),
        **write_media(out_dir, clips, synthesis, cfg),
    }
    atomic_write_text(out_dir / MEDIA_INDEX, json.dumps(media, indent=2) + "\n")
    return atomic_write_text(out_dir / PAGE, render(results.to_dict(), media))
