"""Probability density distillation: KL(student || teacher), the Gaussian closed form, the power
and contrastive terms, and the :class:`Distillation` objective of the shared trainer.

Per sample (all terms are means over the batch and the ``T`` steps, in nats per sample):

- Entropy, closed form. Given ``z_<t`` the student's step is the unit noise moved to
  ``mu_tot,t`` and scaled by ``s_tot,t``, so ``H(p_S) = E[sum_t log s_tot,t] + T * h`` with
  ``h = 2`` for logistic noise and ``log(2 pi e) / 2`` for Gaussian noise.
- Cross-entropy, Monte Carlo. One student sample ``x`` is scored by ONE teacher pass, giving
  ``p_T(. | x_<t)`` for every ``t``; ``N = distill.num_draws`` values per step are drawn from
  the student's step distribution, ``mu_tot,t + s_tot,t * eps_n``, and
  ``H(p_S, p_T) ~ sum_t mean_n -log p_T(mu_tot,t + s_tot,t eps_n | x_<t)``. The extra draws cost
  no network pass. The spread of the draws (``std_n / sqrt(N)`` per step, ``ce_stderr``, and its
  ratio to the per-step cross-entropy's magnitude, ``ce_stderr_rel``) is logged: when it is a
  sizeable fraction, ``num_draws`` is too small and the gradient is noisy.
- Gaussian teacher with Gaussian student (ClariNet): per step
  ``KL(N(mu_S, s_S) || N(mu_T, s_T))`` in closed form, plus ``lambda (log s_T - log s_S)^2``
  (``distill.gaussian_reg_lambda``), which keeps the scales matched when the means are far.
- Floors: inside the KL the teacher's log-scales are floored at
  ``max(teacher head floor, distill.teacher_log_scale_min)`` and the student's collapsed
  log-scale at ``distill.student_log_scale_min``; how often each binds is logged
  (``teacher_floor_rate``: the share of teacher mixture weight on floored components;
  ``student_floor_rate``: the share of floored steps).
- Power loss (:mod:`wavedistill.dsp.spectral`): the student sample against the real clip whose mel
  conditions both models, relative squared power error, averaged over resolutions. Optionally
  also a log-magnitude distance (``power_log_weight``) and the multi-resolution STFT distance,
  spectral convergence + log magnitude (``stft_weight``): the squared power error alone has its
  optimum at half the power for a noise-like student and ignores quiet bins, which a log term
  does not.
- Contrastive term: ``-gamma * KL(student || teacher given mismatched conditioning)``, the
  batch's mel (and speaker) rolled by one clip, scored with the same student sample and draws
  (one more teacher pass).

Gradients reach the student through ``x`` (via the teacher's parameters ``p_T(. | x_<t)``) and
through ``mu_tot``, ``log_s_tot`` (via the draws and the entropy); the teacher's weights are
frozen and never change.
"""

from __future__ import annotations

import dataclasses
import math
import weakref

import torch
from torch import Tensor, nn

from wavedistill.config import Config, audio_differences
from wavedistill.data.features import log_mel
from wavedistill.dsp.levels import loudness_gap_db
from wavedistill.dsp.spectral import MultiResolutionSTFT
from wavedistill.errors import UserError
from wavedistill.models.distributions import (
    DiscretizedGaussian,
    DiscretizedLogisticMixture,
    OutputDistribution,
)
from wavedistill.models.distributions.gaussian import gaussian_kl
from wavedistill.models.iaf_flow import NOISE_ENTROPY, sample_noise
from wavedistill.models.student import IAFStudent
from wavedistill.models.teacher import WaveNetTeacher
from wavedistill.objectives.base import bare_model

# The teacher heads with a continuous density, which distillation scores the student against.
ContinuousHead = DiscretizedGaussian | DiscretizedLogisticMixture

# -- compatibility -----------------------------------------------------------------------------


def check_teacher_compatible(teacher_cfg: Config, student_cfg: Config) -> None:
    """Raise one :class:`UserError` naming every reason the teacher described by
    ``teacher_cfg`` cannot teach the student of ``student_cfg``: differing ``audio.*`` keys,
    differing hop of the upsamplers, a teacher head without a continuous density, a Gaussian
    teacher with non-Gaussian student noise, an unconditional teacher, differing excitation
    sources."""
    problems = []
    audio = audio_differences(teacher_cfg.audio, student_cfg.audio)
    if audio:
        problems.append("the audio settings differ, teacher vs student: " + ", ".join(audio))
    t_factors = teacher_cfg.teacher.upsample_factors
    s_factors = student_cfg.student.upsample_factors
    assert t_factors is not None and s_factors is not None  # Config fills them in from the hop
    t_hop, s_hop = math.prod(t_factors), math.prod(s_factors)
    if t_hop != s_hop:
        problems.append(
            f"teacher.upsample_factors {teacher_cfg.teacher.upsample_factors} "
            f"(hop {t_hop}) and student.upsample_factors "
            f"{student_cfg.student.upsample_factors} (hop {s_hop}) differ"
        )
    output = teacher_cfg.teacher.output
    if output == "categorical":
        problems.append(
            "teacher.output is 'categorical', which has no continuous density; "
            "distillation needs mol or gaussian"
        )
    if output == "gaussian" and student_cfg.student.noise != "gaussian":
        problems.append(
            "teacher.output is 'gaussian' (closed-form KL) but student.noise is "
            f"{student_cfg.student.noise!r}; set student.noise=gaussian"
        )
    if not teacher_cfg.teacher.use_mel:
        problems.append(
            "teacher.use_mel is false; the student is conditioned on mel and needs "
            "a mel-conditioned teacher"
        )
    if teacher_cfg.teacher.source != student_cfg.student.source:
        problems.append(
            f"teacher.source is {teacher_cfg.teacher.source!r} but student.source "
            f"is {student_cfg.student.source!r}; the student takes the teacher's "
            "excitation, set student.source to match"
        )
    if problems:
        raise UserError("teacher and student do not fit: " + "; ".join(problems))


# -- the KL terms --------------------------------------------------------------------------------


def entropy_per_step(log_s_tot: Tensor, noise: str) -> Tensor:
    """Student entropy of each step given its past, ``log s_tot,t + h``: ``(B, T)``."""
    return log_s_tot + NOISE_ENTROPY[noise]


def draw_values(mu_tot: Tensor, log_s_tot: Tensor, eps: Tensor) -> Tensor:
    """``N`` values per step from the student's step distributions:
    ``mu (B, T)``, ``log_s (B, T)``, unit noise ``eps (B, N, T)`` -> ``(B, N, T)``."""
    return mu_tot.unsqueeze(1) + torch.exp(log_s_tot).unsqueeze(1) * eps


def mc_cross_entropy(
    distribution: OutputDistribution, params: Tensor, values: Tensor, log_scale_min: float
) -> tuple[Tensor, Tensor]:
    """Per-step Monte-Carlo cross-entropy ``-mean_n log p_T(values_n | x_<t)`` and its
    standard error ``std_n / sqrt(N)`` (no gradient).

    ``params (B, P, T)``: one teacher pass; ``values (B, N, T)``: draws of every step, scored
    against that step's parameters. Returns two ``(B, T)`` tensors.
    """
    log_p = distribution.log_density(params, values, log_scale_min)  # (B, N, T)
    n = values.shape[1]
    stderr = log_p.detach().std(dim=1) / math.sqrt(n) if n > 1 else torch.zeros_like(log_p[:, 0])
    return -log_p.mean(dim=1), stderr


def gaussian_kl_per_step(
    mu_s: Tensor, log_s_s: Tensor, mu_t: Tensor, log_s_t: Tensor, reg_lambda: float
) -> tuple[Tensor, Tensor]:
    """ClariNet's closed form: ``(KL(N_S || N_T), lambda (log s_T - log s_S)^2)``, each
    ``(B, T)``."""
    return gaussian_kl(mu_s, log_s_s, mu_t, log_s_t), reg_lambda * (log_s_t - log_s_s).square()


def teacher_floor_rate(distribution: ContinuousHead, params: Tensor, floor: float) -> Tensor:
    """Share of the teacher's probability weight whose log-scale is below ``floor`` (for a
    mixture, weighted by the components' mixture weights): a 0-dim tensor, no gradient."""
    parts = distribution.location_scale(params.detach())
    log_scales = parts[-1]
    below = (log_scales < floor).float()
    if len(parts) == 3:  # mixture: (log weights, means, log-scales), each (B, K, T)
        return (parts[0].exp() * below).sum(1).mean()
    return below.mean()


@dataclasses.dataclass
class KLTerms:
    """Per-sample means over the batch and steps (0-dim tensors). ``kl``, ``cross_entropy`` and
    ``entropy`` carry gradients; ``regulariser`` is the Gaussian scale penalty (0 otherwise);
    the diagnostics ``ce_stderr``, ``ce_stderr_rel`` and ``teacher_floor_rate`` do not."""

    kl: Tensor
    cross_entropy: Tensor
    entropy: Tensor
    regulariser: Tensor
    ce_stderr: Tensor
    ce_stderr_rel: Tensor
    teacher_floor_rate: Tensor


# -- the objective -------------------------------------------------------------------------------


class Distillation:
    """The distillation objective for :class:`~wavedistill.training.loop.Trainer`.

    Holds the frozen teacher (``eval()`` and ``requires_grad_(False)``: its weights never
    change). ``loss(student, batch)`` draws noise, runs the student once and the teacher once
    (twice with the contrastive term) and returns ``(total, logs)``; ``validate`` reports the
    copy-synthesis STFT distance (the value that selects the best checkpoint), the loudness
    gap and the KL estimate; ``log_media`` gives a student sample for TensorBoard.
    """

    valid_metric = "stft_distance"

    def __init__(self, teacher: nn.Module, cfg: Config):
        self.teacher = bare_model(teacher, WaveNetTeacher).eval().requires_grad_(False)
        distribution = self.teacher.distribution
        self.cfg = cfg.distill
        self.noise = cfg.student.noise
        if not isinstance(distribution, ContinuousHead):
            raise UserError(
                "teacher.output is 'categorical', which has no continuous density; "
                "distillation needs a mol or gaussian teacher"
            )
        self.distribution: ContinuousHead = distribution
        self.closed_form = isinstance(self.distribution, DiscretizedGaussian)
        if self.closed_form and self.noise != "gaussian":
            raise UserError(
                "the teacher has a Gaussian head (teacher.output=gaussian) but "
                f"student.noise is {self.noise!r}; set student.noise=gaussian"
            )
        if self.cfg.contrastive_weight > 0 and cfg.data.batch_size < 2:
            raise UserError(
                "distill.contrastive_weight > 0 needs data.batch_size >= 2 "
                "(the mismatched mel comes from another clip of the batch)"
            )
        longest = max(self.cfg.power_fft_sizes)
        segment = cfg.data.segment_length
        if self.cfg.power_weight > 0 and segment is not None and segment < longest:
            raise UserError(
                f"data.segment_length ({segment}) is shorter than the power loss's "
                f"largest FFT (distill.power_fft_sizes has {longest}); lengthen the "
                "segments or drop that resolution"
            )
        self.teacher_floor = max(self.distribution.log_scale_min, self.cfg.teacher_log_scale_min)
        self.student_floor = self.cfg.student_log_scale_min
        self.stft = MultiResolutionSTFT.from_config(cfg.distill, cfg.audio)
        self.audio = cfg.audio
        self._checked_students: weakref.WeakSet[nn.Module] = weakref.WeakSet()

    # -- KL(student || teacher) --------------------------------------------------------------

    def kl_terms(
        self,
        x: Tensor,
        mu_tot: Tensor,
        log_s_tot: Tensor,
        mel: Tensor,
        speaker: Tensor | None,
        eps: Tensor | None = None,
    ) -> KLTerms:
        """KL(student || teacher) of one student sample ``x (B, T)`` with its collapsed step
        parameters, the teacher conditioned on ``mel``/``speaker``; ``eps (B, N, T)`` are the
        unit draws of the Monte-Carlo cross-entropy, of the student's noise kind (unused by
        the closed form)."""
        params = self.teacher(x, mel, speaker)  # (B, P, T): p_T(x_t | x_<t) for every t
        log_s = log_s_tot.clamp_min(self.student_floor)
        entropy = entropy_per_step(log_s, self.noise)
        floor_rate = teacher_floor_rate(self.distribution, params, self.teacher_floor)
        if isinstance(self.distribution, DiscretizedGaussian):  # self.closed_form
            mu_t, log_s_t = self.distribution.location_scale(params, self.teacher_floor)
            kl, reg = gaussian_kl_per_step(
                mu_tot, log_s, mu_t, log_s_t, self.cfg.gaussian_reg_lambda
            )
            zero = kl.new_zeros(())  # no Monte-Carlo draws: no spread
            return KLTerms(
                kl.mean(), (kl + entropy).mean(), entropy.mean(), reg.mean(), zero, zero, floor_rate
            )
        assert eps is not None  # drawn by the caller for the Monte-Carlo estimate
        values = draw_values(mu_tot, log_s, eps)
        ce, stderr = mc_cross_entropy(self.distribution, params, values, self.teacher_floor)
        spread = stderr.mean()
        # the float32 tiny floor, as a tensor op: no wait for the device on every step
        rel = spread / ce.detach().abs().mean().clamp_min(torch.finfo(torch.float32).tiny)
        zero = ce.new_zeros(())
        return KLTerms(
            (ce - entropy).mean(), ce.mean(), entropy.mean(), zero, spread, rel, floor_rate
        )

    def _draws(self, x: Tensor) -> Tensor | None:
        if self.closed_form:
            return None
        B, T = x.shape
        return _noise(x, (B, self.cfg.num_draws, T), self.noise)

    # -- the trainer's interface -----------------------------------------------------------------

    def _checked(self, student: nn.Module) -> None:
        """:meth:`_check_noise` once per student module (the training weights, the EMA copy):
        a module's noise kind is fixed at construction, so one check covers every step."""
        model = bare_model(student, IAFStudent)
        if model not in self._checked_students:
            self._check_noise(model)
            self._checked_students.add(model)

    def _check_noise(self, student: IAFStudent) -> None:
        """The student must draw the noise kind whose entropy and draws this objective uses."""
        if student.noise != self.noise:
            raise UserError(
                f"the student's noise is {student.noise!r} but the config "
                f"given to the objective says student.noise={self.noise!r}"
            )

    def loss(
        self, student: nn.Module, batch: dict[str, Tensor]
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Weighted total ``kl_weight (KL + reg) + power_weight power
        [+ power_log_weight log_magnitude] [+ stft_weight (spectral_convergence +
        log_magnitude)] - contrastive_weight KL_mismatched`` and its parts, as detached 0-dim
        tensors on the device (converting them here would make every step wait for it)."""
        self._checked(student)
        audio, mel, speaker = batch["audio"], batch["mel"], batch.get("speaker")
        z = _noise(audio, audio.shape, self.noise)
        x, mu_tot, log_s_tot = student(z, mel, speaker)
        eps = self._draws(x)
        c = self.cfg
        total, logs = x.new_zeros(()), {}
        if c.kl_weight > 0:  # kl_weight 0 trains on the spectral terms alone: no teacher pass
            terms = self.kl_terms(x, mu_tot, log_s_tot, mel, speaker, eps)
            total = c.kl_weight * (terms.kl + terms.regulariser)
            logs = self._kl_logs(terms, log_s_tot)
        spectra = self._spectral(x.float(), audio.float())
        total = total + c.power_weight * spectra["power"]
        if c.power_log_weight > 0:
            total = total + c.power_log_weight * spectra["log_magnitude"]
        if c.stft_weight > 0:
            total = total + c.stft_weight * (
                spectra["spectral_convergence"] + spectra["log_magnitude"]
            )
        if c.mel_weight > 0:
            spectra["mel_l1"] = self.mel_l1(x.float(), audio.float())
            total = total + c.mel_weight * spectra["mel_l1"]
        contrastive = torch.zeros((), device=x.device)
        if c.contrastive_weight > 0 and x.shape[0] > 1:
            rolled = speaker.roll(1, 0) if speaker is not None else None
            contrastive = self.kl_terms(x, mu_tot, log_s_tot, mel.roll(1, 0), rolled, eps).kl
            total = total - c.contrastive_weight * contrastive
        logs.update({k: _value(v) for k, v in spectra.items()})
        logs["contrastive"] = _value(contrastive)
        logs["loudness_gap_db"] = loudness_gap_db(x, audio).mean()
        return total, logs

    def mel_l1(self, x: Tensor, audio: Tensor) -> Tensor:
        """Mean absolute difference of the log-mel of ``x`` and of ``audio``, ``(B, T)`` each:
        the feature function's own log-mel (its log base and floor), a scalar."""
        return (log_mel(x, self.audio) - log_mel(audio, self.audio)).abs().mean()

    def _spectral(self, x: Tensor, audio: Tensor) -> dict[str, Tensor]:
        if self.cfg.power_log_weight > 0 or self.cfg.stft_weight > 0:
            return self.stft.distances(x, audio)
        return {"power": self.stft.power(x, audio)}

    def _kl_logs(self, terms: KLTerms, log_s_tot: Tensor) -> dict[str, Tensor]:
        logs = {
            "kl": _value(terms.kl),
            "cross_entropy": _value(terms.cross_entropy),
            "entropy": _value(terms.entropy),
            "ce_stderr": _value(terms.ce_stderr),
            "ce_stderr_rel": _value(terms.ce_stderr_rel),
            "teacher_floor_rate": _value(terms.teacher_floor_rate),
            "student_floor_rate": (log_s_tot.detach() < self.student_floor).float().mean(),
        }
        if self.closed_form:
            logs["gaussian_reg"] = _value(terms.regulariser)
        return logs

    @torch.no_grad()
    def validate(self, student: nn.Module, batch: dict[str, Tensor]) -> dict[str, float]:
        """Copy-synthesis of one held-out batch: ``stft_distance`` (multi-resolution spectral
        convergence + log magnitude, student audio vs the real clips), ``power``,
        ``loudness_gap_db``, and the KL estimate (``kl``, ``cross_entropy``, ``entropy``)."""
        self._checked(student)
        audio, mel, speaker = batch["audio"], batch["mel"], batch.get("speaker")
        z = _noise(audio, audio.shape, self.noise)
        x, mu_tot, log_s_tot = student(z, mel, speaker)
        terms = self.kl_terms(x, mu_tot, log_s_tot, mel, speaker, self._draws(x))
        clipped = x.float().clamp(-1.0, 1.0)
        d = self.stft.distances(clipped, audio.float())
        return {
            "stft_distance": float(d["spectral_convergence"] + d["log_magnitude"]),
            "power": float(d["power"]),
            "mel_l1": float(self.mel_l1(clipped, audio.float())),
            "loudness_gap_db": float(loudness_gap_db(x.clamp(-1.0, 1.0), audio).mean()),
            "kl": float(terms.kl),
            "cross_entropy": float(terms.cross_entropy),
            "entropy": float(terms.entropy),
        }

    @torch.no_grad()
    def log_media(self, student: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``{"student": (T,)}``: the student's copy-synthesis of the batch's first clip."""
        speaker = batch.get("speaker")
        audio = bare_model(student, IAFStudent).synthesize(
            batch["mel"][:1], speaker[:1] if speaker is not None else None
        )
        return {"student": audio[0]}


def _value(t: Tensor) -> Tensor:
    """A logged scalar: ``t`` without its graph, left on the device (0-dim)."""
    return t.detach()


def _noise(like: Tensor, shape, noise: str) -> Tensor:
    """Unit noise of kind ``noise`` on ``like``'s device (the global generator)."""
    return sample_noise(shape, noise, device=like.device)
