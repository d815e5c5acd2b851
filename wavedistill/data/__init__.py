"""Audio and features: reading audio, the log-mel, external mels, corpora, preprocessing,
sources of known entropy."""
