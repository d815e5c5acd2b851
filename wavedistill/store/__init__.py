"""What is stored: the checkpoint format, loading, export bundles, the shipped models."""
