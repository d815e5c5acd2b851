"""Signal maths shared by objectives and evaluation: STFT, spectral distances, levels."""
