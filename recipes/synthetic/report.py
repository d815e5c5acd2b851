"""Measure the synthetic recipe's models against their sources' exact densities.

Prints a markdown table (gap, standard error and target of every model, in nats per sample)
and writes it as JSON: ``python recipes/synthetic/report.py --exp exp/synthetic``.
The experiment folder holds one sub-folder per teacher head (``gaussian``, ``mol``), each
with ``test/`` (a source folder drawn with another seed), ``teacher/`` and ``student/``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from wavedistill.synthetic import gap_table, student_kl, teacher_gap

MODELS = {"gaussian": ("Gaussian teacher", "Gaussian student (closed-form KL)"),
          "mol": ("mixture-of-logistics teacher", "logistic student (Monte-Carlo KL)")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exp", type=Path, default=Path("exp/synthetic"))
    parser.add_argument("--segments", type=int, default=32, help="student samples drawn")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of each")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    results = {}
    for head, (teacher_name, student_name) in MODELS.items():
        run = args.exp / head
        best = Path("checkpoints") / "best.pt"
        if (run / "teacher" / best).is_file():
            results[teacher_name] = teacher_gap(run / "teacher" / best, run / "test", args.device)
        if (run / "student" / best).is_file():
            results[student_name] = student_kl(run / "student" / best, run / "test",
                                               args.segments, args.seconds, device=args.device)
    print(gap_table(results))
    out = args.exp / "results.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written: {out}")


if __name__ == "__main__":
    main()
