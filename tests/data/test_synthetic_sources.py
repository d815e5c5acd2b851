"""Synthetic AR sources: the generated data has the stated innovations, the exact path
log-density equals a brute-force multivariate normal, the entropy rate equals its Monte-Carlo
estimate, and the written folder is a dataset folder whose source.json recomputes the truth."""

import math

import numpy as np
import pytest
from scipy import stats

from wavedistill.cli import main
from wavedistill.config import load_config
from wavedistill.data.audio import dequantize_16bit
from wavedistill.data.corpora import SegmentDataset
from wavedistill.data.synthetic_sources import (
    LOG_BIN_WIDTH,
    NUM_FEATURES,
    STATIONARY_STD,
    ARSource,
    coefficients_from_poles,
    conditioned_source,
    control_signal,
    encode_control,
    load_sources,
    make_synthetic,
    path_log_density,
    stationary_covariance,
    stationary_source,
)
from wavedistill.errors import UserError


def innovations(x, source):
    """Residuals x_t - sum_i a_i(t) x_{t-i} for t >= p, by a plain loop."""
    a, _ = source.per_sample(len(x))
    p = source.order
    return np.array(
        [x[t] - sum(a[t, i] * x[t - 1 - i] for i in range(p)) for t in range(p, len(x))]
    )


def test_poles_give_a_stable_filter_with_those_roots():
    a = coefficients_from_poles([(0.9, 1000.0), (0.5, 3000.0)], 16000)
    roots = np.roots(np.concatenate([[1.0], -a]))
    assert sorted(np.abs(roots).round(12)) == [0.5, 0.5, 0.9, 0.9]
    with pytest.raises(UserError, match="radius"):
        coefficients_from_poles([(1.0, 100.0)], 16000)


@pytest.mark.parametrize("innovation", ["gaussian", "logistic"])
def test_generated_innovations_have_the_stated_variance_and_the_signal_its_level(innovation):
    source = stationary_source(innovation, 16000, 200)
    x = source.generate(64000, np.random.default_rng(0))
    e = innovations(x[:20000], source)
    s = source.scales[0]
    var = s**2 if innovation == "gaussian" else (s * math.pi) ** 2 / 3
    assert e.var() == pytest.approx(var, rel=0.03)
    assert abs(e.mean()) < 4 * math.sqrt(var / len(e))
    assert x.std() == pytest.approx(STATIONARY_STD, rel=0.1)


def test_stationary_path_log_density_equals_the_multivariate_normal():
    source = stationary_source("gaussian", 16000, 200)
    T, p = 24, source.order
    x = source.generate(T, np.random.default_rng(1))
    cov = stationary_covariance(np.asarray(source.coefficients[0]), source.scales[0], T)
    joint = stats.multivariate_normal(np.zeros(T), cov).logpdf(x)
    head = stats.multivariate_normal(np.zeros(p), cov[:p, :p]).logpdf(x[:p])
    assert path_log_density(x, source, "stationary") == pytest.approx(joint, rel=1e-9)
    assert path_log_density(x, source, "conditional") == pytest.approx(joint - head, rel=1e-9)


def test_time_varying_path_log_density_equals_the_multivariate_normal_of_its_linear_map():
    # x = L^-1 [x_0:p; e_p:T] with L unit lower-triangular, so x is Gaussian with covariance
    # L^-1 diag(stationary, s_t^2) L^-T: an independent, matrix-based computation.
    control = np.array([0.0, 0.3, 0.9, 1.0, 0.5, 0.1])
    source = conditioned_source(control, 16000, hop=4)
    T, p = 24, source.order
    a, scale = source.per_sample(T)
    L = np.eye(T)
    for t in range(p, T):
        L[t, t - p : t] = -a[t][::-1]
    D = np.zeros((T, T))
    D[:p, :p] = stationary_covariance(a[0], scale[0], p)
    D[p:, p:] = np.diag(scale[p:] ** 2)
    Linv = np.linalg.inv(L)
    cov = Linv @ D @ Linv.T
    x = source.generate(T, np.random.default_rng(2))
    want = stats.multivariate_normal(np.zeros(T), cov).logpdf(x)
    assert path_log_density(x, source, "stationary") == pytest.approx(want, rel=1e-9)


def test_logistic_innovation_density_and_entropy_are_the_logistic_ones():
    source = stationary_source("logistic", 16000, 200)
    s = source.scales[0]
    e = np.linspace(-0.2, 0.2, 11)
    np.testing.assert_allclose(
        source.innovation_log_density(e, np.full(11, s)),
        stats.logistic(scale=s).logpdf(e),
        rtol=1e-12,
    )
    assert source.entropy_rate(100) == pytest.approx(stats.logistic(scale=s).entropy(), rel=1e-12)


@pytest.mark.parametrize("kind", ["gaussian", "logistic", "conditioned"])
def test_entropy_rate_equals_the_monte_carlo_mean_negative_log_density(kind):
    rng = np.random.default_rng(3)
    if kind == "conditioned":
        source = conditioned_source(control_signal(200, 20, rng), 16000, hop=200)
    else:
        source = stationary_source(kind, 16000, 200)
    T = 40000
    x = source.generate(T, rng)
    mc = -path_log_density(x, source) / (T - source.order)
    _, scale = source.per_sample(T)
    spread = source.innovation_log_density(innovations(x[:2000], source), scale[4:2000]).std()
    assert mc == pytest.approx(source.entropy_rate(T), abs=4 * spread / math.sqrt(T))


def test_control_code_is_smooth_bounded_and_invertible():
    control = control_signal(100, 10, np.random.default_rng(4))
    assert control.min() >= 0 and control.max() <= 1
    assert np.abs(np.diff(control)).max() < 0.2
    feats = encode_control(control)
    assert feats.shape == (NUM_FEATURES, 100) and feats.dtype == np.float32
    centres = np.linspace(0, 1, NUM_FEATURES)
    nearest = centres[feats.argmax(0)]
    assert np.abs(nearest - control).max() <= 0.5 / (NUM_FEATURES - 1) + 1e-9


def test_conditioned_folder_is_a_dataset_whose_source_json_recomputes_the_truth(tmp_path):
    out = tmp_path / "syn"
    summary = make_synthetic("ar-conditioned", out, seconds=0.5, clips=3, seed=5)
    cfg = load_config(out / "config.yaml")
    assert cfg.audio.n_mels == NUM_FEATURES
    items = SegmentDataset(out, "train", cfg)
    assert len(items) + len(SegmentDataset(out, "valid", cfg)) == 3
    item = items[0]
    assert item["mel"].shape == (NUM_FEATURES, cfg.data.segment_length // cfg.audio.hop_length)
    assert summary["clip_rate"] == 0.0
    for clip in summary["clips"]:
        uid = clip["id"]
        source = load_sources(out)[uid]
        assert isinstance(source, ARSource)
        np.testing.assert_allclose(
            np.load(out / "mel" / f"{uid}.npy"), encode_control(np.array(clip["control"]))
        )
        # The 16-bit file scores as the float path plus log(bin width) per sample, and its
        # per-sample NLL is close to the stated 16-bit entropy rate.
        x = dequantize_16bit(np.load(out / "audio" / f"{uid}.npy")).astype(np.float64)
        nll = -(path_log_density(x, source) / (len(x) - 4) + LOG_BIN_WIDTH)
        assert nll == pytest.approx(clip["entropy_rate_16bit_nats"], abs=0.05)
    rates = [c["entropy_rate_nats"] for c in summary["clips"]]
    assert summary["entropy_rate_16bit_nats"] == pytest.approx(np.mean(rates) - LOG_BIN_WIDTH)


def test_stationary_kinds_write_constant_features(tmp_path):
    summary = make_synthetic("ar", tmp_path / "ar", seconds=0.5, clips=2, seed=0)
    mel = np.load(tmp_path / "ar" / "mel" / f"{summary['clips'][0]['id']}.npy")
    assert np.ptp(mel, axis=1).max() == 0.0
    s = summary["clips"][0]["source"]["scales"][0]
    gaussian_entropy = 0.5 * math.log(2 * math.pi * math.e * s**2)
    assert summary["entropy_rate_nats"] == pytest.approx(gaussian_entropy)


def test_same_seed_same_folder_and_bad_requests_are_user_errors(tmp_path):
    a = make_synthetic("ar-logistic", tmp_path / "a", seconds=0.5, clips=2, seed=9)
    b = make_synthetic("ar-logistic", tmp_path / "b", seconds=0.5, clips=2, seed=9)
    assert a == b
    with pytest.raises(UserError, match="--kind"):
        make_synthetic("noise", tmp_path / "c", seconds=1, clips=2, seed=0)
    with pytest.raises(UserError, match="segment_length"):
        make_synthetic("ar", tmp_path / "c", seconds=0.1, clips=2, seed=0)


def test_make_synthetic_command_writes_the_folder(tmp_path, capsys):
    rc = main(
        [
            "make-synthetic",
            "--kind",
            "ar",
            "--out",
            str(tmp_path / "o"),
            "--seconds",
            "0.5",
            "--clips",
            "2",
            "--seed",
            "1",
        ]
    )
    assert rc == 0
    assert (tmp_path / "o" / "source.json").exists()
    assert len(list((tmp_path / "o" / "wav").glob("*.wav"))) == 2
    assert "bits/sample" in capsys.readouterr().out
