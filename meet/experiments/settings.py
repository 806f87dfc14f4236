"""What the ablation trains and measures: sizes, the small preset, the variants, the sweeps.

The models are small on purpose: the ablation must run in well under an hour on a shared
2-core CPU, so each model is the ``shapes-demo`` recipe (InfoNCE with identical captions
as extra positives, specific caption families sampled more often; see
:func:`meet.config._shapes_demo`) shrunk by :meth:`MEETConfig.override` to fewer
training images, fewer epochs and 32-pixel images. Its numbers are therefore far below
the bundled demo model's; what the ablation compares is the *difference* a part of MEET
makes at equal budget.

Everything a run depends on is in :class:`AblationSettings`, stored as
``settings.json`` in the output folder; a folder holding results of other settings is
refused, so cached results of two different experiments are never mixed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from meet.config import MEETConfig, preset, validate
from meet.errors import ConfigError


@dataclass(frozen=True)
class AblationSettings:
    """The whole experiment; two runs with equal settings give the same table (up to timing)."""

    n_train: int = 4000
    """Training images (the first ``n_train`` of the train split)."""
    n_val: int = 300
    """Validation images used each epoch to pick the best checkpoint (first ``n_val``)."""
    n_test: int = 1000
    """Test images (first ``n_test``; five captions each): the gallery of every row."""
    image_size: int = 32
    """Image side fed to the CNN (and rendered, when the data set is generated)."""
    epochs: int = 4
    """Training epochs per model (one caption per image per epoch, as in shapes-demo)."""
    seeds: tuple[int, ...] = (0, 1, 2)
    """Training seeds; each number in the table is the mean over these runs. Three,
    because short training on Shapes is unstable: one seed in three of the full model
    measured rSum 68 where the others reached 169 and 174."""
    noise_seeds: tuple[int, ...] = (1, 2)
    """Extra training seeds of the full model alone (those not in ``seeds``): its run-to-run
    spread ("seed spread" rows) is the yardstick when the variants run fewer seeds, e.g.
    ``--seeds 0`` for a run three times shorter."""
    data_seed: int = 0
    """Seed of the generated Shapes data set."""
    bits: tuple[int, ...] = (16, 32, 64, 128)
    """n_bits sweep (each value is a trained model; the base model's value is the full one)."""
    hamming_rates: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.6, 1.0)
    """R sweep on the full model (both directions; q stays at its defaults)."""
    pq_rates: tuple[float, ...] = (0.1, 0.25, 0.5, 0.6, 1.0)
    """q sweep on the full model (both directions; R stays at its defaults)."""
    rerank_alphas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5)
    """Stage II sweep: consistency weights ``alpha`` (each with every ``beta``), evaluated
    on the trained models of ``rerank_models`` without retraining; (0, 0) is the plain
    dense re-rank every other point is compared with, seed by seed."""
    rerank_betas: tuple[float, ...] = (0.0, 0.05, 0.1, 0.2, 0.5)
    """Stage II sweep: complementarity weights ``beta``."""
    rerank_models: tuple[str, ...] = ("full", "gated")
    """Trained models (names of ``COMPONENTS``) the Stage II sweep re-ranks with; each also
    gets the release's re-rank (``fusion=False``: the top z re-sorted by complementarity)."""
    quick: bool = False
    """Tiny models, one epoch: a smoke run for the tests, not a measurement."""
    model_overrides: dict[str, Any] = field(default_factory=dict)
    """Extra config fields applied to every model (after the small preset)."""
    budget: str = "small"
    """``small``: the shrunk recipe above; ``demo``: the bundled model's own recipe and
    budget, unchanged (the ``shapes-demo`` preset: 20,000 training images at 64 px, its
    epochs, under 30 minutes each on 2 cores); the sizes above must then be the demo's."""

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["seeds"], data["bits"] = list(self.seeds), list(self.bits)
        data["noise_seeds"] = list(self.noise_seeds)
        data["hamming_rates"], data["pq_rates"] = list(self.hamming_rates), list(self.pq_rates)
        for name in ("rerank_alphas", "rerank_betas", "rerank_models"):
            data[name] = list(getattr(self, name))
        return data


DEMO = dict(n_train=20000, n_val=1000, n_test=1000, image_size=64, epochs=preset("shapes-demo").train.epochs,
            budget="demo", noise_seeds=(),
            bits=(64,), hamming_rates=(), pq_rates=())
"""``--budget demo``: the bundled model's recipe and data sizes; no code-length or rate
sweeps (each would be another 26-minute model per seed)."""

QUICK = dict(n_train=128, n_val=30, n_test=60, epochs=1, bits=(16, 32), seeds=(0,), noise_seeds=(1,),
             hamming_rates=(0.3, 1.0), pq_rates=(0.5, 1.0), rerank_alphas=(0.0, 0.1), rerank_betas=(0.0, 0.1),
             quick=True)
"""``--quick``: the sizes of the test fixture (``tests/conftest.py``), one epoch."""

_QUICK_MODEL = dict(embed_dim=32, word_dim=16, cnn_width=8, n_bits=16, n_codebooks=4,
                    codebook_size=16, batch_size=32, kmeans_iters=5, eval_batch_size=64)
"""The tiny model of the test suite (``TINY_FLAGS`` in ``tests/conftest.py``)."""

COMPONENTS: dict[str, tuple[str, dict[str, Any]]] = {
    "full": ("full MEET", {}),
    "no_lf": ("without L_f", {"beta1": 0.0}),
    "no_lq": ("without L_q", {"beta2": 0.0}),
    "no_filter": ("without negative filtering (training)", {"filter_negatives": False}),
    "no_pair_reweight": ("without pair reweighting (training)", {"reweight_pairs": False}),
    "gated": ("filtering and reweighting behind the label-free gate (training)",
              {"filter_start_epoch": 0, "filter_max_share": 0.005}),
}
"""Trained variants of the components group: model name -> (row label, config changes)."""


FULL_MEET: dict[str, Any] = {"filter_negatives": True, "filter_start_epoch": 1, "filter_max_share": 1.0,
                             "reweight_pairs": True}
"""The paper's training-time parts, all on from a fixed epoch: what the ablation's ``full``
model adds to ``shapes-demo`` (whose own recipe gates filtering and leaves reweighting off,
as this ablation found best), so every component row removes one part from the same model."""


def small_config(settings: AblationSettings) -> MEETConfig:
    """The full model of the ablation: ``shapes-demo`` with :data:`FULL_MEET`, shrunk to
    the settings' budget.

    At the small budget the learning rate drops tenfold for the last epoch (``step``
    schedule, ``lr_decay_epochs = epochs - 1``: the committed small-budget results were
    measured so); k-means refits on the whole (small) train split.
    """
    if settings.budget == "demo":
        cfg = preset("shapes-demo").override(**FULL_MEET)
        return validate(cfg.override(**settings.model_overrides) if settings.model_overrides else cfg)
    cfg = preset("shapes-demo").override(
        **FULL_MEET, epochs=settings.epochs, max_train_images=settings.n_train, image_size=settings.image_size,
        kmeans_sample=settings.n_train, lr_schedule="step", lr_decay_epochs=max(1, settings.epochs - 1))
    if settings.quick:
        cfg = cfg.override(**_QUICK_MODEL)
    if settings.model_overrides:
        cfg = cfg.override(**settings.model_overrides)
    return validate(cfg)


def model_variants(settings: AblationSettings) -> dict[str, MEETConfig]:
    """Every model to train: the components group, then one per extra n_bits value.

    The base model's own n_bits is not trained twice: its sweep point is ``full``.
    """
    base = small_config(settings)
    variants = {name: validate(base.override(**changes)) for name, (_, changes) in COMPONENTS.items()}
    for bits in settings.bits:
        if bits != base.model.n_bits:
            variants[bits_model(bits, base)] = validate(base.override(n_bits=bits))
    return variants


def bits_model(bits: int, base: MEETConfig) -> str:
    """Model name of one n_bits sweep point (``full`` for the base model's value)."""
    return "full" if bits == base.model.n_bits else f"bits{bits}"


def sweep_point(kind: str, rate: float) -> dict[str, float]:
    """Cascade config changes of one sweep point: the same rate in both directions
    (``kind`` ``hamming`` sweeps R, ``pq`` sweeps q)."""
    name = {"hamming": "hamming_rate", "pq": "pq_rate"}[kind]
    return {f"{name}_i2t": rate, f"{name}_t2i": rate}


def rerank_points(settings: AblationSettings) -> dict[str, dict[str, Any]]:
    """The Stage II sweep: point name -> cascade changes. ``a<alpha>-b<beta>`` fuses
    ``s + alpha c + beta comp`` (``a0-b0``: the plain dense re-rank, the baseline);
    ``release`` is the release's re-sort of the top z by complementarity (no fusion)."""
    points = {f"a{alpha:g}-b{beta:g}": {"alpha": float(alpha), "beta": float(beta), "fusion": True}
              for alpha in settings.rerank_alphas for beta in settings.rerank_betas}
    if points:
        points["release"] = {"fusion": False}
    return points


RERANK_BASELINE = "a0-b0"
"""The Stage II sweep point every other is compared with: no consistency, no complementarity."""


def check_settings(settings: AblationSettings) -> AblationSettings:
    """Reject settings no run can use, before anything is trained."""
    base = small_config(settings)
    problems = []
    if min(settings.n_train, settings.n_val, settings.n_test) < 2:
        problems.append("n_train, n_val and n_test must be at least 2")
    if not settings.seeds:
        problems.append("give at least one seed")
    for bits in settings.bits:
        if bits <= 0 or bits % 8 or bits % base.model.n_codebooks:
            problems.append(f"n_bits {bits} must be a positive multiple of 8 and of "
                            f"n_codebooks={base.model.n_codebooks}")
    if settings.budget not in ("small", "demo"):
        problems.append(f"budget {settings.budget!r} is neither small nor demo")
    if settings.budget == "demo" and (settings.epochs, settings.image_size) != (base.train.epochs,
                                                                              base.model.image_size):
        problems.append(f"the demo budget trains the shapes-demo recipe as it is ({base.train.epochs} epochs, "
                        f"{base.model.image_size} px)")
    if base.model.n_bits not in settings.bits:
        problems.append(f"the bits sweep must contain the full model's n_bits={base.model.n_bits}")
    unknown = sorted(set(settings.rerank_models) - set(COMPONENTS))
    if unknown:
        problems.append(f"rerank_models {unknown} are not trained models ({', '.join(COMPONENTS)})")
    if any(w < 0 for w in (*settings.rerank_alphas, *settings.rerank_betas)):
        problems.append("rerank weights must be 0 or more")
    if (settings.rerank_alphas or settings.rerank_betas) and not (0.0 in settings.rerank_alphas
                                                                 and 0.0 in settings.rerank_betas):
        problems.append("the Stage II sweep needs alpha 0 and beta 0 (its baseline)")
    for rate in (*settings.hamming_rates, *settings.pq_rates):
        if not 0 < rate <= 1:
            problems.append(f"rate {rate} must be a fraction in (0, 1]")
    if problems:
        raise ConfigError("invalid ablation settings: " + "; ".join(problems),
                          fix="check the --seeds / sizes given to the ablation")
    return settings
