"""Griffin-Lim from a log-mel: the baseline every vocoder is compared with.

The mel of :func:`wavedistill.data.features.log_mel` is inverted the usual way (librosa's
``mel_to_audio``): the magnitude spectrogram is the non-negative least-squares solution of
``mel = M |STFT|`` for the same Slaney filterbank, then ``n_iter`` Griffin-Lim iterations
estimate a phase consistent with it (with momentum 0.99, librosa's fast variant). The STFT
settings are the model's ``audio`` section, so the baseline sees exactly the features a
vocoder is conditioned on and nothing more.
"""

from __future__ import annotations

import librosa
import numpy as np

from wavedistill.config import AudioConfig
from wavedistill.data.features import exp_of

DEFAULT_ITERATIONS = 32


def griffin_lim(
    log_mel: np.ndarray, audio: AudioConfig, n_iter: int = DEFAULT_ITERATIONS, seed: int = 0
) -> np.ndarray:
    """Audio ``(F * hop,)`` float32 in [-1, 1] from an unnormalised log-mel ``(n_mels, F)``
    (the log of the magnitude mel in ``audio.log_base``, as
    :func:`~wavedistill.data.features.log_mel` returns).

    ``seed`` fixes the random initial phase, so the same mel always gives the same audio."""
    if n_iter < 1:
        raise ValueError(f"griffin_lim needs at least one iteration, got {n_iter}")

    mel = exp_of(np.asarray(log_mel, dtype=np.float64), audio)
    magnitude = librosa.feature.inverse.mel_to_stft(
        mel, sr=audio.sample_rate, n_fft=audio.n_fft, power=1.0, fmin=audio.fmin, fmax=audio.fmax
    )
    length = mel.shape[-1] * audio.hop_length
    # log_mel drops the STFT's last frame (centred on sample T); pad one copy of the final
    # frame so the inverse covers the whole clip.
    magnitude = np.concatenate([magnitude, magnitude[:, -1:]], axis=-1)
    out = librosa.griffinlim(
        magnitude,
        n_iter=n_iter,
        hop_length=audio.hop_length,
        win_length=audio.win_length,
        n_fft=audio.n_fft,
        window="hann",
        center=True,
        length=length,
        init="random",
        random_state=np.random.default_rng(seed),
    )
    if audio.frame_center == "middle":  # frame f is centred half a hop later than librosa's
        out = np.concatenate([np.zeros(audio.hop_length // 2), out])[:length]
    return np.clip(out, -1.0, 1.0).astype(np.float32)
