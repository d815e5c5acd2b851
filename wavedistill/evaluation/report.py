"""The evaluation's report: ``report.md`` (tables, the verdict against Griffin-Lim) and
``metrics.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from wavedistill.evaluation import metrics
from wavedistill.evaluation.results import Results
from wavedistill.fileio import atomic_write_text


def _cell(value: float | str) -> str:
    return f"{value:.3f}" if isinstance(value, float) else value


def _wins(ours: float, theirs: float, better: str) -> bool:
    if better == "lower":
        return ours < theirs
    if better == "higher":
        return ours > theirs
    return abs(ours) < abs(theirs)  # "closer to 0"


def against_baseline(
    samples: dict[str, dict[str, Any]], name: str, baseline: str = "griffin_lim"
) -> dict[str, list[str]]:
    """``{"beats": [...], "loses": [...]}``: the metrics on which ``name``'s mean is better
    than / not better than ``baseline``'s (metrics without a value on either side are left
    out)."""
    out: dict[str, list[str]] = {"beats": [], "loses": []}
    for metric in metrics.METRICS:
        ours = samples[name]["mean"][metric.name]
        theirs = samples[baseline]["mean"][metric.name]
        if isinstance(ours, float) and isinstance(theirs, float):
            out["beats" if _wins(ours, theirs, metric.better) else "loses"].append(metric.name)
    return out


def verdict(samples: dict[str, dict[str, Any]]) -> str | None:
    """One sentence: on which metrics the model beats Griffin-Lim (None without both rows)."""
    name = next((n for n in ("student", "teacher") if n in samples), None)
    if name is None or "griffin_lim" not in samples:
        return None
    result = against_baseline(samples, name)
    beats = ", ".join(result["beats"]) or "no metric"
    loses = ", ".join(result["loses"]) or "no metric"
    return f"The {name} beats Griffin-Lim on {beats}; Griffin-Lim is as good or better on {loses}."


def markdown(results: Results) -> str:
    """``report.md``: the averages as tables, the reason where a metric has no value."""
    h = results.header
    lines = [
        f"# Evaluation of `{h['checkpoint']}`",
        "",
        f"{h['kind']} checkpoint, dataset `{h['data']}`, {h['clips']} clip(s) of the "
        + ("validation split." if h["split"] == "valid" else "whole folder (never trained on)."),
        "",
    ]
    if results.nll is not None:
        lines += [
            f"Held-out NLL: **{results.nll['bits_per_sample']:.4f} bits/sample** over "
            f"{results.nll['samples']} samples.",
            "",
        ]
    if results.kl is not None:
        lines += [
            f"KL(student ‖ teacher) estimate: **{results.kl['nats_per_sample']:.4f} nats/sample**.",
            "",
        ]
    if results.samples:
        names = list(results.samples)
        lines += [
            "| metric | better | " + " | ".join(names) + " |",
            "|---|---|" + "---|" * len(names),
        ]
        missing: list[str] = []  # reasons of metrics without a value, each said once
        for metric in metrics.METRICS:
            label = f"{metric.name} ({metric.unit})" if metric.unit else metric.name
            values = [results.samples[n]["mean"][metric.name] for n in names]
            if all(isinstance(v, str) for v in values) and len(set(values)) == 1:
                missing.append(f"{metric.name}: {values[0]}")
                values = ["—"] * len(names)
            cells = [_cell(v) for v in values]
            lines.append(f"| {label} | {metric.better} | " + " | ".join(cells) + " |")
        lines.append("")
        if missing:
            lines += ["No value (—): " + "; ".join(missing) + ".", ""]
        sentence = verdict(results.samples)
        if sentence:
            lines += [sentence, ""]
        if "griffin_lim" in results.samples:
            lines += [
                f"Griffin-Lim: {h['griffin_lim_iters']} iterations from the same log-mel "
                "(librosa), whole clips.",
                "",
            ]
        if "teacher" in results.samples:
            lines += [
                f"Teacher samples cover the first {h['teacher_seconds']:g} s of each clip"
                + (
                    "; the student's cover the whole clip, and `student_span` scores them "
                    "on the teacher's span."
                    if "student" in names
                    else "."
                )
                + " Metrics compare them with the same span of the original.",
                "",
            ]
    if h.get("nll_curve"):
        lines += [
            "## Teacher: held-out bits/sample against steps",
            "",
            f"![teacher NLL]({h['nll_curve']})",
            "",
        ]
    if h.get("figures"):
        lines += ["## Log-mel spectrograms", ""]
        lines += [f"![{Path(f).stem}]({f})" for f in h["figures"]]
        lines.append("")
    return "\n".join(lines)


def write_report(out_dir: Path, results: Results) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / "metrics.json", json.dumps(results.to_dict(), indent=2) + "\n")
    atomic_write_text(out_dir / "report.md", markdown(results))
