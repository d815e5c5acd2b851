"""wavedistill: an autoregressive WaveNet teacher (MAF direction) distilled into a
parallel Inverse Autoregressive Flow student (IAF direction)."""

__version__ = "0.1.0"
