"""Inference: the Synthesizer and file and corpus decoding."""
