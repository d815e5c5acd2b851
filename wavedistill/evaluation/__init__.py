"""Evaluation: metrics, the Griffin-Lim baseline, the evaluation run and its report."""
