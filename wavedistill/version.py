"""The package version: one home, read by the package root, checkpoints, bundles and the build."""

__version__ = "0.1.0"
