"""Features: log-mel has exactly T // hop frames, frame f is the windowed spectrum centred on
sample f*hop, it matches librosa, and the statistics are exact, streamable and portable."""

import librosa
import numpy as np
import pytest
import torch

from wavedistill.config import AudioConfig
from wavedistill.data.features import (
    FeatureStats,
    log_mel,
    mel_filters,
    shortest_clip,
    whole_frames,
)
from wavedistill.errors import UserError

CFG = AudioConfig(
    sample_rate=16000, n_fft=256, hop_length=64, win_length=200, n_mels=20, fmin=30.0, fmax=7600.0
)


def _noise(length, seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    return (0.3 * torch.randn(length, dtype=torch.float64)).clamp(-1, 1).to(dtype)


@pytest.mark.parametrize("length", [64 * 50, 64 * 50 + 17])
def test_frame_count_is_samples_floor_divided_by_hop(length):
    assert log_mel(_noise(length), CFG).shape == (20, length // 64)


def test_batch_equals_one_clip_at_a_time():
    audio = torch.stack([_noise(3200, seed=s) for s in range(3)])
    batched = log_mel(audio, CFG)
    assert batched.shape == (3, 20, 50)
    for b in range(3):
        torch.testing.assert_close(batched[b], log_mel(audio[b], CFG))


def test_matches_librosa_melspectrogram():
    audio = _noise(6400, dtype=torch.float64)
    reference = librosa.feature.melspectrogram(
        y=audio.numpy(),
        sr=CFG.sample_rate,
        n_fft=CFG.n_fft,
        hop_length=CFG.hop_length,
        win_length=CFG.win_length,
        window="hann",
        center=True,
        pad_mode="reflect",
        power=1.0,
        n_mels=CFG.n_mels,
        fmin=CFG.fmin,
        fmax=CFG.fmax,
    )
    reference = np.log(np.maximum(reference[:, :-1], CFG.log_floor))  # drop the frame at T
    np.testing.assert_allclose(log_mel(audio.float(), CFG).numpy(), reference, atol=1e-4)
    np.testing.assert_allclose(log_mel(audio, CFG).numpy(), reference, atol=1e-9)


def test_frame_f_is_the_windowed_spectrum_of_the_samples_around_f_times_hop():
    """Brute force in float64: frame f sees samples [f*hop - n_fft/2, f*hop + n_fft/2) with the
    Hann window of win_length centred in it (interior frames need no edge padding)."""
    audio = _noise(3200, dtype=torch.float64)
    features = log_mel(audio, CFG)
    n = np.arange(CFG.win_length)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / CFG.win_length)  # periodic Hann
    window = np.zeros(CFG.n_fft)
    offset = (CFG.n_fft - CFG.win_length) // 2
    window[offset : offset + CFG.win_length] = hann
    basis = mel_filters(CFG, dtype=torch.float64).numpy()
    for f in (2, 17, 45):
        start = f * CFG.hop_length - CFG.n_fft // 2
        frame = audio.numpy()[start : start + CFG.n_fft] * window
        k = np.arange(CFG.n_fft // 2 + 1)[:, None]
        dft = np.abs((frame * np.exp(-2j * np.pi * k * np.arange(CFG.n_fft) / CFG.n_fft)).sum(1))
        expected = np.log(np.maximum(basis @ dft, CFG.log_floor))
        np.testing.assert_allclose(features[:, f].numpy(), expected, atol=1e-9)


def test_segment_frames_match_the_whole_clip_away_from_the_segment_edges():
    audio = _noise(6400)
    whole = log_mel(audio, CFG)
    start_frame, frames = 30, 40
    hop = CFG.hop_length
    part = log_mel(audio[start_frame * hop : (start_frame + frames) * hop], CFG)
    edge = CFG.n_fft // 2 // hop  # frames whose window reaches past the segment
    torch.testing.assert_close(
        part[:, edge : frames - edge], whole[:, start_frame + edge : start_frame + frames - edge]
    )


def test_silence_sits_at_the_log_floor():
    features = log_mel(torch.zeros(1280), CFG)
    assert torch.all(features == np.float32(np.log(CFG.log_floor)))


def test_mel_filterbank_is_cached_per_config_and_device():
    assert mel_filters(CFG) is mel_filters(AudioConfig(**vars(CFG)))
    assert mel_filters(CFG).shape == (20, 129)
    assert mel_filters(CFG, dtype=torch.float64) is not mel_filters(CFG)


def test_whole_frames_crop_to_the_hop_and_refuse_what_log_mel_cannot_take():
    shortest = shortest_clip(CFG)
    assert shortest == 192  # the first multiple of hop 64 above n_fft // 2 = 128
    assert whole_frames(3200 + 17, CFG) == 3200
    assert whole_frames(shortest + 63, CFG) == shortest
    assert whole_frames(shortest - 1, CFG) is None
    log_mel(torch.zeros(shortest), CFG)  # the shortest clip is taken
    with pytest.raises(UserError, match="too short"):
        log_mel(torch.zeros(shortest - CFG.hop_length), CFG)


def test_too_short_audio_is_a_user_error():
    with pytest.raises(UserError, match="too short"):
        log_mel(torch.zeros(128), CFG)


# -- statistics ------------------------------------------------------------------------------


def _mels(seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.normal(-4 + np.arange(20)[:, None] * 0.1, 1.5, size=(20, n)).astype(np.float32)
        for n in (7, 1, 30, 12)
    ]


def test_streamed_statistics_equal_the_statistics_of_all_frames():
    mels = _mels()
    stats = FeatureStats.compute(iter(mels))  # a one-pass iterator is enough
    frames = np.concatenate(mels, axis=1).astype(np.float64)
    np.testing.assert_allclose(stats.mean.numpy(), frames.mean(1), rtol=1e-6)
    np.testing.assert_allclose(stats.std.numpy(), frames.std(1), rtol=1e-6)


def test_statistics_stay_exact_with_a_large_offset():
    # a one-pass sum of squares in float32 would lose everything here
    mels = [m + 1e4 for m in (np.float64(x) for x in _mels())]
    frames = np.concatenate(mels, axis=1)
    stats = FeatureStats.compute(mels)
    np.testing.assert_allclose(stats.std.numpy(), frames.std(1), rtol=1e-5)


def test_a_constant_channel_gets_the_std_floor():
    mel = np.random.default_rng(0).normal(size=(3, 50))
    mel[1] = -11.5
    stats = FeatureStats.compute([mel], std_floor=0.01)
    assert stats.std[1].item() == pytest.approx(0.01)
    assert torch.isfinite(stats.normalize(torch.from_numpy(mel))).all()


def test_normalize_gives_zero_mean_unit_std_and_denormalize_inverts_it():
    mels = _mels()
    stats = FeatureStats.compute(mels)
    batch = torch.from_numpy(np.stack([m[:, :7] for m in (mels[0], mels[2])]))  # (B, n_mels, F)
    torch.testing.assert_close(stats.denormalize(stats.normalize(batch)), batch)
    normalised = np.concatenate([stats.normalize(m) for m in mels], axis=1)
    np.testing.assert_allclose(normalised.mean(1), 0, atol=1e-5)
    np.testing.assert_allclose(normalised.std(1), 1, atol=1e-5)


def test_statistics_survive_npz_and_checkpoint_round_trips(tmp_path):
    stats = FeatureStats.compute(_mels())
    stats.save(tmp_path / "stats.npz")
    loaded = FeatureStats.load(tmp_path / "stats.npz")
    assert torch.equal(loaded.mean, stats.mean) and torch.equal(loaded.std, stats.std)
    torch.save({"stats": stats.to_dict()}, tmp_path / "ckpt.pt")
    restored = torch.load(tmp_path / "ckpt.pt", weights_only=True)["stats"]
    again = FeatureStats.from_dict(restored)
    assert torch.equal(again.mean, stats.mean) and torch.equal(again.std, stats.std)


def test_loading_missing_or_foreign_statistics_names_the_file(tmp_path):
    with pytest.raises(UserError, match="no such statistics file"):
        FeatureStats.load(tmp_path / "none.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(UserError, match="other.npz"):
        FeatureStats.load(tmp_path / "other.npz")
