"""Every default of MEET lives here, in one place.

The configuration is three dataclasses (model, loss, training) under one
:class:`MEETConfig`. A checkpoint stores the whole config as JSON, so a model is
rebuilt from its files alone (nanoGPT's habit), and the training CLI derives one
flag per field from these dataclasses, so a default is never repeated elsewhere.

Field names are unique across the sections on purpose: ``--n-bits`` on the command
line maps to exactly one field. Defaults follow ``METHOD.md`` (the paper and the
released code); presets (:data:`PRESETS`) change only what they must.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args

from meet.errors import ConfigError

# Every list of choices exists once, as a Literal type here; validation, the CLIs'
# ``choices`` and the code that dispatches on a value all read it (``choices(...)``).
ReleaseVariant = Literal["release_bert", "release_bigru"]
"""The MEET release's two models (``at_bert/``, ``at/``), ported; built by ``meet.convert``."""
ImageEncoder = Literal["precomp", "cnn", "hf", "clip", ReleaseVariant]
TextEncoder = Literal["bigru", "bert", "clip", ReleaseVariant]
Reranker = Literal["", "esa_bert", "esa_bigru"]
"""The dense tower of a release model: none (MEET's own embedding) or an ESA model."""
Ranking = Literal["hinge", "infonce"]
CaptionSampling = Literal["all", "per_image"]
LRSchedule = Literal["step", "cosine"]
HammingScores = Literal["symmetric", "asymmetric"]
HammingIndex = Literal["flat", "ivf"]
PQSpace = Literal["hash", "dense", "residual"]
SurvivorRounding = Literal["nearest", "floor"]
HashRefitMethod = Literal["distill", "structure", "itq"]
SearchMode = Literal["dense", "hash", "pq", "cascade", "meet", "release"]
"""How a query is scored: ``dense`` (exact inner product), ``hash`` (the Hamming stage
alone over the whole gallery), ``pq`` (the quantization stage alone), ``cascade`` (Hamming
-> quantization -> dense re-rank), ``meet`` (the cascade with the reweighted re-rank) and
``release`` (the MEET release's evaluation: the cascade, then the top z re-sorted by the
query's rank among the searched batch's queries for each candidate; with
:func:`release_cascade`'s settings it is the release's ``evalrank_test``)."""


def choices(literal: Any) -> tuple[str, ...]:
    """The values of a ``Literal`` type, e.g. ``choices(PQSpace)``."""
    return get_args(literal)


@dataclass
class ModelConfig:
    """Encoders, joint space and Stage I heads."""

    image_encoder: ImageEncoder = "precomp"
    """Image tower: ``precomp`` (region features), ``cnn`` (small grid CNN trained from
    scratch on raw pixels), ``hf`` (a transformers vision backbone) or ``clip`` (a frozen
    CLIP image tower; with ``text_encoder=clip``, made by ``meet.fit_codes``)."""
    text_encoder: TextEncoder = "bigru"
    """Text tower: ``bigru`` (vocabulary from the training captions), ``bert`` or ``clip``
    (a frozen CLIP text tower, with ``image_encoder=clip``)."""
    embed_dim: int = 1024
    """Joint (dense) embedding size."""
    n_bits: int = 64
    """Hash code length H; the binary code is ``sign(h)``, H/8 bytes per item."""
    n_codebooks: int = 8
    """M, product-quantization sub-spaces over the hash features (one byte each)."""
    codebook_size: int = 256
    """K, codewords per codebook (256 = 8-bit codes)."""
    detach_hash: bool = True
    """Feed the hash heads a detached embedding, so hashing never trains the encoders
    (the released code's behaviour)."""
    image_size: int = 64
    """Side of the square raw image fed to ``cnn``/``hf`` encoders."""
    precomp_dim: int = 2048
    """Width of precomputed region features (BUTD: 2048)."""
    cnn_width: int = 64
    """Channels of the first CNN stage; later stages double it."""
    vision_backbone: str = ""
    """Path or hub name of a transformers vision model, for ``image_encoder=hf``."""
    freeze_backbone: bool = False
    """Keep pretrained backbone (BERT / vision) weights fixed; train only the heads."""
    word_dim: int = 300
    """Word embedding size of the BiGRU text encoder."""
    gru_layers: int = 1
    """Stacked bidirectional GRU layers."""
    bert_path: str = "bert-base-uncased"
    """Path or hub name of the BERT model and tokenizer, for ``text_encoder=bert``."""
    max_text_len: int = 32
    """Tokens kept per caption (longer captions are truncated)."""
    vocab_size: int = 0
    """Filled from the vocabulary at build time; 0 means 'not built yet'."""
    clip_backbone: str = ""
    """``clip`` towers: where the CLIP model came from (a Hub id such as
    ``openai/clip-vit-base-patch32`` or a local folder in transformers' CLIPModel layout).
    A record: a checkpoint rebuilds the towers from its own saved files and weights."""

    # --- The MEET release's architectures, ported (``python -m meet.convert release``) ---
    # Written by :mod:`meet.convert` from the release checkpoint's ``opt`` and weight shapes;
    # ignored by every other encoder. See :mod:`meet.encoders.release_towers`.
    reranker: Reranker = ""
    """Stage 3 dense scorer beside a release model's own towers: ``""`` (none: ``dense`` is
    MEET's own global embedding), ``esa_bert`` or ``esa_bigru`` (an ESA model whose
    embeddings become ``dense``; the hash heads still read MEET's own embedding)."""
    hash_input_dim: int = 0
    """Width of the embedding the hash heads read; 0 = ``embed_dim`` (the dense embedding
    itself). A release model with a reranker sets it to MEET's own embedding size."""
    release_nhead: int = 16
    """``release_bert``: heads of the one-layer relation transformer (the release's ``opt.nhead``)."""
    release_dropout: float = 0.1
    """``release_bert``: that transformer's dropout (``opt.dropout``; inactive at inference)."""
    release_residual_weight: float = 0.8
    """``release_bert``: embedding = w * (max-2 pooling of the projected positions) + (1 - w) *
    (mean of the transformer's outputs), before L2 norm (``opt.residual_weight``)."""
    release_regions: int = 36
    """``release_bigru``: regions per image; the release's VisualSA normalises each region slot
    with its own BatchNorm statistics, so the count is part of the architecture."""
    release_bytes_captions: bool = True
    """``release_bigru``: tokenise ``str(caption.encode())`` (``"b'a dog.'"``) as the release's
    data loader does (it reads captions as bytes and calls ``str()`` on them, so the model was
    trained and evaluated on that form); False tokenises the plain caption."""
    reranker_word_dim: int = 300
    """``esa_bigru``: the reranker's word embedding size."""
    reranker_gru_layers: int = 1
    """``esa_bigru``: the reranker's stacked bidirectional GRU layers."""
    reranker_vocab_size: int = 0
    """``esa_bigru``: rows of the reranker's word embedding (the vocabulary plus ``<mask>``)."""


@dataclass
class LossConfig:
    """The training objective: ranking losses, L_f, L_q, filtering, reweighting."""

    ranking: Ranking = "hinge"
    """``hinge``: triplet ranking loss (VSE++); ``infonce``: symmetric contrastive."""
    margin: float = 0.2
    """Hinge margin."""
    max_violation: bool = True
    """Hinge on the hardest in-batch negative (VSE++) instead of the sum of violations."""
    sum_violation_epochs: int = 0
    """Warm-up epochs that use the summed violation before switching to the hardest
    negative (VSE infinity / ESA do this; 0 = start with the hardest)."""
    temperature: float = 0.05
    """InfoNCE temperature."""
    hash_ranking_weight: float = 1.0
    """Weight of the ranking loss computed on the hash-space features."""
    beta1: float = 0.0
    """Weight of L_f, the hash/dense similarity-structure discrepancy."""
    beta2: float = 0.0
    """Weight of L_q, the encoding loss (quantization error + push towards binary)."""
    binary_weight: float = 0.1
    """Inside L_q: weight of ||h - sign(h)||^2 relative to the quantization error."""
    text_positives: bool = False
    """Count in-batch captions whose normalised text equals the anchor's caption as
    extra positives (a signal every real data set has)."""
    filter_negatives: bool = False
    """Mask in-batch negatives that look like misleading negatives (near-duplicate
    captions in the model's own text space) out of the ranking loss."""
    filter_threshold: float = 0.9
    """Cosine between two captions in the model's text space above which the negative
    is treated as a misleading one."""
    filter_start_epoch: int = 1
    """First epoch (0-based) with model-similarity filtering; an untrained text space
    calls everything similar. See also ``filter_max_share``, the label-free gate."""
    filter_max_share: float = 1.0
    """Filtering and pair reweighting act only in batches where the filter would flag at
    most this share of the in-batch negatives (1.0: always). A label-free measure of
    whether the text space is resolved yet: an untrained one calls many captions near
    duplicates. In the bundled model's run the flagged share fell from 1.9% (epoch 2,
    27% of the flags truly relevant) to 0.2% (epoch 15, 83%), passing 0.5% where the
    precision crossed one half (``assets/shapes-demo/metrics.jsonl``)."""
    oracle_filter: bool = False
    """Ablation only: mask negatives that ground truth (Shapes facts) calls relevant."""
    reweight_pairs: bool = False
    """Adaptive reweighting: weight each anchor's loss by how informative it is."""
    reweight_strength: float = 1.0
    """How far weights may move from 1 (0 = off)."""
    reweight_temperature: float = 0.1
    """Softness of the informativeness score (positive-vs-hardest-negative gap)."""


@dataclass
class TrainConfig:
    """Optimisation, sampling, checkpoint selection."""

    epochs: int = 12
    batch_size: int = 128
    lr: float = 2e-4
    """Learning rate of the encoders."""
    hash_lr: float = 2e-2
    """Learning rate of the hash heads."""
    lr_schedule: LRSchedule = "step"
    """``step``: multiply the learning rates by ``lr_decay`` every ``lr_decay_epochs`` epochs
    (the released code); ``cosine``: decay them along a half cosine to 0 over the run, set
    at every batch (a fixed short budget ends at a small rate instead of wherever the last
    step left it)."""
    lr_decay_epochs: int = 15
    """``step``: multiply learning rates by ``lr_decay`` every this many epochs."""
    lr_decay: float = 0.1
    grad_clip: float = 2.0
    """Max gradient norm (0 = no clipping), applied to the encoders and to the hash heads
    separately, so the hash losses never change how far the encoders step."""
    seed: int = 0
    device: str = "auto"
    """``auto`` (CUDA if available, else CPU), ``cpu`` or ``cuda``."""
    num_workers: int = 0
    """DataLoader worker processes."""
    caption_sampling: CaptionSampling = "all"
    """``all``: one sample per caption (the standard epoch); ``per_image``: one caption
    per image per epoch, drawn with ``family_weights``."""
    family_weights: dict[str, float] = field(default_factory=dict)
    """Sampling weight per caption family (Shapes facts); missing families weigh 1."""
    kmeans_iters: int = 20
    """faiss k-means iterations per sub-space when codebooks are refit."""
    kmeans_sample: int = 20000
    """Training images (and as many captions) re-encoded after each epoch to refit the
    codebooks; the whole training set when it is smaller."""
    hash_distill: bool = False
    """After the last epoch, distil the dense ranking into the best epoch's hash heads
    (``meet.hash_refit``'s listwise distillation with its default settings, on the training
    split) and refit its codebooks; that checkpoint (``checkpoints/distilled``) becomes the
    run's best. With ``detach_hash`` the encoders are untouched, so the dense model is the
    same; only the codes the cascade filters with change."""
    select_metric: str = "dense/rsum"
    """``mode/metric`` on the val split that picks the best epoch (never the test split)."""
    eval_batch_size: int = 256
    max_train_images: int = 0
    """Use only the first N training images (0 = all); handy for smoke runs."""


@dataclass
class CascadeConfig:
    """Stage II search: Hamming filter -> quantization filter -> reweighted re-rank.

    A rate is a fraction of the gallery when it is <= 1.0 (the paper's) and a count of
    items when it is > 1 (the fast setting: the work per query no longer grows with the
    gallery). Directions: ``i2t`` (image queries over captions), ``t2i`` (text queries
    over images).
    """

    hamming_rate_i2t: float = 0.3
    """R for image->text: share (<=1) or count (>1) of the gallery the Hamming filter keeps."""
    hamming_rate_t2i: float = 0.6
    """R for text->image."""
    pq_rate_i2t: float = 0.5
    """q for image->text: share (<=1) or count (>1) of the Hamming survivors the
    quantization filter keeps."""
    pq_rate_t2i: float = 0.6
    """q for text->image."""
    top_z_i2t: int = 15
    """Candidates whose own ranking is consulted for complementarity (official: 15)."""
    top_z_t2i: int = 12
    """Same for text->image (official: 12)."""
    alpha: float = 0.1
    """Weight of the consistency term in the fused re-rank score."""
    beta: float = 0.1
    """Weight of the complementarity term in the fused re-rank score."""
    consistency_temperature: float = 0.05
    """Softmax temperature of the external attention over the candidate set."""
    reciprocal_k: int = 100
    """Each gallery item stores its top-k scores in the other modality's gallery, so the
    complementarity rank of a query is exact up to k (beyond k it counts as k)."""
    fusion: bool = True
    """Fuse dense, consistency and complementarity scores (the paper); False re-sorts the
    top z by reciprocal rank alone (the released code)."""
    hamming_scores: HammingScores = "symmetric"
    """How the Hamming filter ranks the gallery's sign codes: ``symmetric`` (METHOD.md:
    Hamming distance to the query's sign code; faiss ``IndexBinaryFlat``, exact) or
    ``asymmetric`` (the query's float hash feature against each +-1 code, ``<h, b>``: the
    same 8 bytes per item, far fewer ties at the survivor boundary; faiss fast scan
    proposes candidates that are re-scored exactly, see
    :func:`meet.search.hamming.asymmetric_filter`)."""
    pq_space: PQSpace = "hash"
    """What an index built with this config quantizes for the quantization filter:
    ``hash`` (METHOD.md: the hash features, with the model's codebooks), ``dense`` (the
    dense embedding behind an OPQ rotation fitted on the gallery; same bytes per item,
    far closer to the dense ranking on large galleries) or ``residual`` (the dense
    embedding by residual quantization fitted on the gallery; same bytes and lookup-table
    size, closer still); see :mod:`meet.search.quantizers`."""
    pq_fit_items: int = 100_000
    """``pq_space="dense"``/``"residual"``: gallery items sampled to fit the codebooks
    (and the rotation)."""
    pq_beam_size: int = 8
    """``pq_space="residual"``: faiss ``ResidualQuantizer``'s beam width, for fitting and
    encoding (wider: closer codes, slower index builds)."""
    hamming_index: HammingIndex = "flat"
    """How the Hamming filter finds its survivors: ``flat`` (every code of the gallery, the
    paper's) or ``ivf`` (inverted lists over the codes: the query visits the lists of its
    ``hamming_nprobe`` best binary centroids, and as many more as hold R items, and keeps the
    exact top R among their items; sublinear, see :mod:`meet.search.inverted`)."""
    hamming_nlist: int = 0
    """``hamming_index="ivf"``: lists (binary k-means centroids) per gallery; 0: about
    4 sqrt(n), a power of two (1,024 at 100k items, 4,096 at 1M)."""
    hamming_nprobe: int = 16
    """``hamming_index="ivf"``: lists each query visits at least."""
    survivor_rounding: SurvivorRounding = "nearest"
    """How a fractional rate becomes a count of survivors: ``nearest`` (half rounds up) or
    ``floor`` (``int(rate * n)``, what the MEET release's evaluation does)."""


@dataclass
class HashRefitConfig:
    """``python -m meet.hash_refit``: retrain only the hash heads of a trained model on its
    cached (detached) dense embeddings, so the codes keep the dense ranking better.

    ``method="structure"``: trained; the loss is ``weight * L_f'`` + ``binary_weight *
    ||h| - 1|^2``, where ``L_f'`` is the MSE between the cosine matrices of the hash and
    dense spaces in each batch, across the modalities *and* within each (the cascade
    compares codes across the whole gallery, not only matched pairs); it keeps the
    cascade's i2t mAP@R at the paper's fractional rates. ``method="itq"``: no training;
    both heads become faiss's ITQ (PCA to ``n_bits`` dims + the rotation that minimises
    the binarisation error) fitted on images and captions together; better than
    ``structure`` at keeping each query's exact dense top-k inside its Hamming top-R,
    which is what the cascade needs on a large gallery (measured in
    ``meet/hash_refit.py``). ``method="distill"``: starts
    from ITQ with each modality centred on its own mean, then trains the heads so the
    *binary* codes (straight-through sign) rank a batch of caption queries against the
    training images as the dense model does: the KL divergence between
    ``softmax(dense / teacher_temperature)`` and ``softmax(code inner product / n_bits /
    student_temperature)`` over the whole gallery (listwise distillation), optionally plus
    the same for image queries against captions (``i2t_weight``). Best of the three at
    keeping the dense top-k in the Hamming top-R, and for hash-only rSum; worst for the
    cascade's i2t mAP@R at fractional rates (it learns the top of the ranking only)."""

    method: HashRefitMethod = "distill"
    """``distill`` (the default: what the cascade needs), ``structure`` or ``itq``."""
    itq_items: int = 50_000
    """``itq``: images and as many captions (each sampled) that ITQ is fitted on."""
    itq_scale: float = 0.5
    """``itq``: ``h = tanh(itq_scale * z / rms(z))``; small keeps ``h`` nearly linear in the
    projection ``z``, so the hash-space PQ and lookup tables still see inner products."""
    distill_steps: int = 600
    """``distill``: optimiser steps (cosine learning-rate decay to 0)."""
    distill_batch: int = 128
    """``distill``: caption queries per step, each ranked against the whole image gallery."""
    distill_gallery: int = 50_000
    """``distill``: at most this many training images (and captions, for ``i2t_weight``)
    form the gallery the queries are ranked against."""
    teacher_temperature: float = 0.01
    """``distill``: softmax temperature of the dense cosine (the target ranking)."""
    student_temperature: float = 0.05
    """``distill``: softmax temperature of the code inner product divided by n_bits."""
    i2t_weight: float = 0.3
    """``distill``: weight of the image-query term (text->image has weight 1). 0 favours
    text queries a little; 0.3 keeps image queries as good as ITQ's (measured: README)."""
    epochs: int = 20
    """Passes over the training captions (each paired with its image)."""
    lr: float = 1e-3
    batch_size: int = 1024
    weight: float = 10.0
    """Weight of the similarity-structure loss."""
    binary_weight: float = 0.1
    """Weight of the push of ``h`` towards {-1, +1}."""
    seed: int = 0


@dataclass
class FitCodesConfig:
    """``python -m meet.fit_codes``: MEET's Stage I codes (the two hash heads and the PQ
    codebooks) fitted on a *frozen* dual encoder's cached embeddings (a CLIP model, or a
    MEET checkpoint's dense towers). The heads are trained by ``meet.hash_refit``'s
    listwise distillation (its settings are the checkpoint's ``hash_refit`` section) plus
    Stage I's L_f and L_q; the codebooks L_q reads are refit by k-means as the heads move.

    The first fields record how the checkpoint was made (written by the CLI, not flags)."""

    backbone: str = ""
    """Record: the dual encoder (a CLIP Hub id or folder, or a MEET checkpoint folder)."""
    data: str = ""
    """Record: the data the codes were fitted on."""
    split: str = ""
    """Record: its split (``all`` for a plain image folder)."""
    captions: str = ""
    """Record: the captions file of a plain folder ("" when none)."""
    n_images: int = 0
    """Record: images encoded."""
    n_captions: int = 0
    """Record: captions encoded."""
    pseudo_queries: bool = False
    """Record: True when there were no captions and the text head was trained with image
    embeddings as pseudo-queries (see ``meet/fit_codes.py``)."""
    encode_seconds: float = 0.0
    """Record: wall time of the encoding (0 when every chunk came from the cache)."""
    fit_seconds: float = 0.0
    """Record: wall time of the head training and codebook fitting."""
    lf_weight: float = 1.0
    """Weight of L_f (MSE between the hash-space and dense cosine matrices of a paired batch)."""
    lq_weight: float = 0.1
    """Weight of L_q (quantization error against the current codebooks + push towards binary)."""
    lq_binary_weight: float = 0.1
    """Inside L_q: weight of the push of h towards {-1, +1}."""
    codebook_refits: int = 4
    """Times the codebooks that L_q reads are refit (k-means) during the head training."""
    regularizer_batch: int = 256
    """Paired items per step for L_f and L_q."""
    chunk_size: int = 2048
    """Items per chunk of the on-disk embedding cache; an interrupted run loses at most one."""
    encode_batch: int = 64
    """Images (and 4x as many captions) per encoder forward pass."""


@dataclass
class MEETConfig:
    """The whole configuration; stored as ``config.json`` in each checkpoint."""

    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    preset: str = "default"
    hash_refit: HashRefitConfig | None = None
    """Set by ``meet.hash_refit``: the settings its hash heads and codebooks were refit
    with (None: trained with the model). A record of how the checkpoint was made; its
    fields are not training flags."""
    fit_codes: FitCodesConfig | None = None
    """Set by ``meet.fit_codes``: the frozen encoder and data the codes were fitted on, and
    the settings (None otherwise). A record, like ``hash_refit``."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MEETConfig":
        """Strict: an unknown section or key is an error (a config from another tool,
        or a typo, must not be silently half-applied)."""
        if not isinstance(data, dict):
            raise ConfigError("config must be a JSON object", fix="check config.json")
        known = {name: SECTIONS.get(name) for name in CONFIG_KEYS}
        unknown = set(data) - CONFIG_KEYS
        if unknown:
            raise ConfigError(f"unknown config section(s) {sorted(unknown)}",
                              fix="remove them; sections are model, loss, train, cascade, hash_refit, fit_codes")
        sections = {}
        for name, klass in known.items():
            if klass is None:
                continue
            sections[name] = _build_section(klass, data.get(name, {}), name)
        refit, fitted = data.get("hash_refit"), data.get("fit_codes")
        return cls(preset=str(data.get("preset", "default")), **sections,
                   hash_refit=None if refit is None else _build_section(HashRefitConfig, refit, "hash_refit"),
                   fit_codes=None if fitted is None else _build_section(FitCodesConfig, fitted, "fit_codes"))

    def override(self, **changes: Any) -> "MEETConfig":
        """Return a copy with fields changed by their (unique) names."""
        new = MEETConfig.from_dict(self.to_dict())
        index = field_index()
        for key, value in changes.items():
            if key not in index:
                raise ConfigError(f"unknown config field {key!r}",
                                  fix=f"choose one of {sorted(index)}")
            setattr(getattr(new, index[key]), key, value)
        return new


def validate(cfg: MEETConfig) -> MEETConfig:
    """Reject values no run can use, naming the flag; returns ``cfg`` unchanged."""
    m, lo, t, c = cfg.model, cfg.loss, cfg.train, cfg.cascade
    checks = [
        (m.image_encoder in choices(ImageEncoder), "--image-encoder",
         "precomp, cnn or hf (release_bert/release_bigru come from meet.convert, clip from meet.fit_codes)"),
        (m.text_encoder in choices(TextEncoder), "--text-encoder",
         "bigru or bert (release_bert/release_bigru come from meet.convert, clip from meet.fit_codes)"),
        (m.embed_dim > 0, "--embed-dim", "a positive size"),
        (m.n_bits > 0 and m.n_bits % 8 == 0, "--n-bits", "a positive multiple of 8"),
        (m.n_codebooks > 0 and m.n_bits % max(m.n_codebooks, 1) == 0, "--n-codebooks",
         "a positive divisor of --n-bits"),
        (2 <= m.codebook_size <= 65536, "--codebook-size", "between 2 and 65536"),
        (m.image_size >= 16, "--image-size", "at least 16 pixels"),
        (m.precomp_dim > 0 and m.cnn_width > 0 and m.word_dim > 0, "--precomp-dim/--cnn-width/--word-dim",
         "positive sizes"),
        (m.gru_layers > 0 and m.max_text_len > 0, "--gru-layers/--max-text-len", "positive values"),
        (m.image_encoder != "hf" or bool(m.vision_backbone), "--vision-backbone",
         "a path or name when --image-encoder hf"),
        ((m.image_encoder == "clip") == (m.text_encoder == "clip"), "--image-encoder/--text-encoder",
         "clip on both sides (one CLIP model's two towers; made by python -m meet.fit_codes)"),
        (lo.ranking in choices(Ranking), "--ranking", " or ".join(choices(Ranking))),
        (lo.margin >= 0 and lo.temperature > 0, "--margin/--temperature", "margin >= 0, temperature > 0"),
        (0 <= lo.reweight_strength <= 1 and lo.reweight_temperature > 0,
         "--reweight-strength/--reweight-temperature", "strength in [0, 1], temperature > 0"),
        (-1 <= lo.filter_threshold <= 1, "--filter-threshold", "a cosine in [-1, 1]"),
        (0 <= lo.filter_max_share <= 1, "--filter-max-share", "a share in [0, 1]"),
        (t.epochs > 0, "--epochs", "at least 1"),
        (t.batch_size >= 2, "--batch-size", "at least 2 (in-batch negatives)"),
        (t.lr > 0 and t.hash_lr > 0, "--lr/--hash-lr", "positive learning rates"),
        (t.lr_decay_epochs > 0 and 0 < t.lr_decay <= 1, "--lr-decay-epochs/--lr-decay",
         "a positive period and a factor in (0, 1]"),
        (t.grad_clip >= 0 and t.num_workers >= 0 and t.max_train_images >= 0,
         "--grad-clip/--num-workers/--max-train-images", "non-negative values"),
        (t.lr_schedule in choices(LRSchedule), "--lr-schedule", " or ".join(choices(LRSchedule))),
        (not t.hash_distill or m.detach_hash, "--hash-distill",
         "false when --detach-hash is false (the heads then trained the encoders; refitting them alone "
         "would break that coupling)"),
        (t.caption_sampling in choices(CaptionSampling), "--caption-sampling", " or ".join(choices(CaptionSampling))),
        (t.kmeans_iters > 0 and t.kmeans_sample > 0 and t.eval_batch_size > 0,
         "--kmeans-iters/--kmeans-sample/--eval-batch-size", "positive values"),
        (t.device in ("auto", "cpu", "cuda") or t.device.startswith("cuda:"), "--device", "auto, cpu or cuda"),
        (all(w >= 0 for w in t.family_weights.values()), "--family-weights", "non-negative weights"),
        (t.select_metric.count("/") == 1, "--select-metric", "mode/metric, e.g. dense/rsum"),
        (min(lo.hash_ranking_weight, lo.beta1, lo.beta2, lo.binary_weight) >= 0,
         "--hash-ranking-weight/--beta1/--beta2/--binary-weight", "non-negative loss weights"),
        (lo.sum_violation_epochs >= 0 and lo.filter_start_epoch >= 0,
         "--sum-violation-epochs/--filter-start-epoch", "non-negative epoch numbers"),
        (0 <= t.seed < 2**32, "--seed", "an integer in [0, 2**32)"),
        (min(c.hamming_rate_i2t, c.hamming_rate_t2i, c.pq_rate_i2t, c.pq_rate_t2i) > 0,
         "--hamming-rate-*/--pq-rate-*", "positive rates (<= 1 a fraction, > 1 a count)"),
        (min(c.top_z_i2t, c.top_z_t2i, c.reciprocal_k) >= 0, "--top-z-*/--reciprocal-k", "0 or more"),
        (c.consistency_temperature > 0, "--consistency-temperature", "a positive temperature"),
        (c.pq_space in choices(PQSpace), "--pq-space", " or ".join(choices(PQSpace))),
        (c.pq_beam_size >= 1, "--pq-beam-size", "at least 1"),
        (c.hamming_scores in choices(HammingScores), "--hamming-scores", " or ".join(choices(HammingScores))),
        (c.pq_fit_items >= 1, "--pq-fit-items", "at least 1"),
        (c.hamming_index in choices(HammingIndex), "--hamming-index", " or ".join(choices(HammingIndex))),
        (c.hamming_nlist >= 0 and c.hamming_nprobe >= 1, "--hamming-nlist/--hamming-nprobe",
         "nlist 0 (automatic) or more, nprobe at least 1"),
        (c.survivor_rounding in choices(SurvivorRounding), "--survivor-rounding",
         " or ".join(choices(SurvivorRounding))),
        *_release_checks(m),
    ]
    if cfg.hash_refit is not None:
        validate_hash_refit(cfg.hash_refit)
    if cfg.fit_codes is not None:
        validate_fit_codes(cfg.fit_codes)
    _raise_first_failure((m, lo, t, c), checks)
    return cfg


def validate_hash_refit(cfg: HashRefitConfig) -> HashRefitConfig:
    """Reject hash-refit settings no run can use, naming the flag; returns ``cfg``."""
    checks = [
        (cfg.method in choices(HashRefitMethod), "--method", " or ".join(choices(HashRefitMethod))),
        (cfg.epochs >= 1 and cfg.distill_steps >= 1, "--epochs/--distill-steps", "at least 1"),
        (cfg.batch_size >= 2 and cfg.distill_batch >= 2, "--batch-size/--distill-batch", "at least 2"),
        (cfg.itq_items >= 1 and cfg.distill_gallery >= 1, "--itq-items/--distill-gallery", "at least 1"),
        (cfg.lr > 0 and cfg.itq_scale > 0, "--lr/--itq-scale", "positive values"),
        (cfg.teacher_temperature > 0 and cfg.student_temperature > 0,
         "--teacher-temperature/--student-temperature", "positive temperatures"),
        (min(cfg.weight, cfg.binary_weight, cfg.i2t_weight) >= 0, "--weight/--binary-weight/--i2t-weight",
         "non-negative weights"),
        (0 <= cfg.seed < 2**32, "--seed", "an integer in [0, 2**32)"),
    ]
    _raise_first_failure((cfg,), checks)
    return cfg


def validate_fit_codes(cfg: FitCodesConfig) -> FitCodesConfig:
    """Reject fit_codes settings no run can use, naming the flag; returns ``cfg``."""
    checks = [
        (min(cfg.lf_weight, cfg.lq_weight, cfg.lq_binary_weight) >= 0,
         "--lf-weight/--lq-weight/--lq-binary-weight", "non-negative weights"),
        (cfg.codebook_refits >= 1, "--codebook-refits", "at least 1"),
        (cfg.regularizer_batch >= 2, "--regularizer-batch", "at least 2"),
        (cfg.chunk_size >= 1 and cfg.encode_batch >= 1, "--chunk-size/--encode-batch", "at least 1"),
        (min(cfg.n_images, cfg.n_captions) >= 0 and min(cfg.encode_seconds, cfg.fit_seconds) >= 0,
         "fit_codes record", "non-negative counts and times"),
    ]
    _raise_first_failure((cfg,), checks)
    return cfg


def _raise_first_failure(sections: tuple[Any, ...], checks: list[tuple[bool, str, str]]) -> None:
    """A :class:`ConfigError` naming the first non-finite float field of ``sections``, else
    the flag of the first failed ``(ok, flag, expected)`` check."""
    for section in sections:
        for name, value in dataclasses.asdict(section).items():
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"invalid value for --{name.replace('_', '-')}",
                                  fix="expected a finite number (not nan or inf)")
    for ok, flag, expected in checks:
        if not ok:
            raise ConfigError(f"invalid value for {flag}", fix=f"expected {expected}")


RELEASE_ENCODERS = choices(ReleaseVariant)
"""Image/text towers ported from the MEET release (both sides name the same variant)."""
RERANKERS = choices(Reranker)
"""Values of ``ModelConfig.reranker``."""
REGION_FEATURE_ENCODERS = ("precomp", *RELEASE_ENCODERS)
"""Image encoders that read precomputed region features, not pixels."""


def takes_region_features(cfg: ModelConfig) -> bool:
    """Whether the image tower reads region-feature arrays (precomp layout) rather than images."""
    return cfg.image_encoder in REGION_FEATURE_ENCODERS


def _release_checks(m: ModelConfig) -> list[tuple[bool, str, str]]:
    """The ported release towers: one variant on both sides, a reranker of the same text
    encoder (the release pairs them so), sizes the modules can be built with."""
    release = m.image_encoder in RELEASE_ENCODERS or m.text_encoder in RELEASE_ENCODERS
    own_dim = m.hash_input_dim or m.embed_dim
    return [
        (not release or m.image_encoder == m.text_encoder, "--image-encoder/--text-encoder",
         "the same release variant on both sides (release_bert or release_bigru)"),
        (m.reranker in RERANKERS, "--reranker", "empty, esa_bert or esa_bigru"),
        (not m.reranker or (release and m.reranker == "esa_" + m.text_encoder.removeprefix("release_")),
         "--reranker", "an ESA model of the release model's own text encoder"),
        (m.hash_input_dim >= 0, "--hash-input-dim", "0 (= embed_dim) or a positive size"),
        (m.release_nhead > 0 and own_dim % m.release_nhead == 0, "--release-nhead",
         "a positive divisor of MEET's embedding size"),
        (0 <= m.release_dropout < 1 and 0 <= m.release_residual_weight <= 1,
         "--release-dropout/--release-residual-weight", "a dropout in [0, 1) and a weight in [0, 1]"),
        (m.release_regions > 0 and m.reranker_word_dim > 0 and m.reranker_gru_layers > 0
         and m.reranker_vocab_size >= 0, "--release-regions/--reranker-*", "positive sizes"),
    ]


def _build_section(klass: type, values: Any, name: str) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(f"config section {name!r} must be an object")
    names = {f.name for f in fields(klass)}
    unknown = set(values) - names
    if unknown:
        raise ConfigError(f"unknown key(s) {sorted(unknown)} in config section {name!r}",
                          fix="the checkpoint was written by another version, or the file was edited")
    defaults = klass()
    for key, value in values.items():
        expected = type(getattr(defaults, key))
        if not _has_type(value, expected):
            raise ConfigError(f"config field {name}.{key} must be {expected.__name__}, got {value!r}",
                              fix="the file was edited or written by another tool; fix the value")
    return klass(**values)


def _has_type(value: Any, expected: type) -> bool:
    """JSON-typed check: ints pass as floats, bools never pass as numbers, and a dict
    (``family_weights``) maps strings to numbers."""
    if isinstance(value, bool) or expected is bool:
        return isinstance(value, bool) and expected is bool
    if expected is float:
        return isinstance(value, (int, float))
    if expected is dict:
        return isinstance(value, dict) and all(
            isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
            for k, v in value.items())
    return isinstance(value, expected)


RELEASE_SEARCH: dict[str, dict[str, float | int]] = {
    "bert": {"hamming_rate_i2t": 0.3, "hamming_rate_t2i": 0.6, "pq_rate_i2t": 0.5, "pq_rate_t2i": 0.6,
             "top_z_i2t": 15, "top_z_t2i": 12},
    "bigru": {"hamming_rate_i2t": 0.6, "hamming_rate_t2i": 0.7, "pq_rate_i2t": 0.5, "pq_rate_t2i": 0.7,
              "top_z_i2t": 15, "top_z_t2i": 15},
}
"""The MEET release's Stage II constants per variant, as its test script (``evalrank_test`` in
``at_bert/lib/evalution_AHR.py`` and ``at/lib/...``) runs them: the BERT variant keeps 0.3 /
0.6 (Hamming, i2t / t2i) and 0.5 / 0.6 (quantization) and re-sorts the top 15 / 12; the BiGRU
variant's test keeps 0.6 / 0.7 and 0.5 / 0.7 and re-sorts 15 / 15 (both variants' training
validation, ``hq_train.py``, uses the BERT numbers)."""


def release_cascade(cfg: "MEETConfig") -> CascadeConfig:
    """The release's Stage II settings for a model like ``cfg``: :data:`RELEASE_SEARCH` of its
    text encoder's variant (BiGRU for ``bigru``/``release_bigru``, else BERT), symmetric
    Hamming over the model's own hash-space PQ codes, no reciprocal store (the re-sort ranks
    within the query batch), no fusion. What ``mode="release"`` runs with in
    ``meet.evaluate`` and the app."""
    variant = "bigru" if cfg.model.text_encoder in ("bigru", "release_bigru") else "bert"
    return dataclasses.replace(cfg.cascade, **RELEASE_SEARCH[variant], hamming_scores="symmetric", fusion=False,
                               pq_space="hash", reciprocal_k=0, survivor_rounding="floor")


FIT_CODES_SEARCH: dict[str, float | str] = {
    "hamming_scores": "asymmetric", "pq_space": "residual",
    "hamming_rate_t2i": 2000, "pq_rate_t2i": 300, "hamming_rate_i2t": 2000, "pq_rate_i2t": 300}
"""The Stage II settings a ``meet.fit_codes`` checkpoint starts with: the README's
recommended count rates for a large gallery (R = 2,000 Hamming survivors, q = 300 after
the quantization filter) with the asymmetric Hamming filter and residual quantization of
the dense vectors, the combination measured to keep >= 0.95 of the dense top-10 on 100k
Shapes images with distilled heads. A gallery smaller than R is searched by the
quantization filter and re-rank alone (every item survives the Hamming filter)."""


FIT_CODES_DISTILL_FIELDS = ("distill_steps", "distill_batch", "distill_gallery", "teacher_temperature",
                            "student_temperature", "i2t_weight", "lr", "itq_items", "itq_scale", "seed")
"""The HashRefitConfig fields ``meet.fit_codes``'s distillation reads (flags of the CLI;
``--lr`` is the heads' learning rate)."""
FIT_CODES_SETTING_FIELDS = ("lf_weight", "lq_weight", "lq_binary_weight", "codebook_refits", "regularizer_batch",
                            "chunk_size", "encode_batch")
"""The FitCodesConfig fields that are settings (flags), not records."""


SECTIONS: dict[str, type] = {"model": ModelConfig, "loss": LossConfig, "train": TrainConfig,
                             "cascade": CascadeConfig}
"""The sections whose fields are training flags (``hash_refit`` is a record, not flags)."""
CONFIG_KEYS = frozenset({*SECTIONS, "preset", "hash_refit", "fit_codes"})
"""Every top-level key a ``config.json`` may hold."""


def field_index() -> dict[str, str]:
    """Map each field name to its section name (names are unique across sections)."""
    index: dict[str, str] = {}
    for section, klass in SECTIONS.items():
        for f in fields(klass):
            assert f.name not in index, f"duplicate config field {f.name}"
            index[f.name] = section
    return index


def _shapes_demo() -> MEETConfig:
    """The bundled demo: trains from scratch on Shapes on a 2-core CPU in < 30 min.

    Not the paper's loss: METHOD.md measured that max-violation hinge collapses on
    Shapes, where the hardest in-batch negative is nearly always a true match. The demo
    uses symmetric InfoNCE with identical captions as extra positives and samples
    specific captions more often than generic ones, and says so in its model card.

    What the investigation (``assets/investigation/small``, 3 seeds, paired) supports:
    negative filtering behind the label-free gate (``filter_max_share``; +47.7 rSum over
    filtering from a fixed epoch), no pair reweighting (-49.0 rSum, worse on every seed)
    and, at search time, complementarity without consistency (alpha 0, beta 0.1: +4.5 rSum
    over the plain dense re-rank on every seed; consistency -15.4), behind the asymmetric
    Hamming filter (on the bundled model it drops fewer relevant items both ways than the
    symmetric one; model card). A cosine learning-rate decay over 36 epochs fits the
    30-minute budget (about 40 s per epoch on 2 cores).
    """
    cfg = MEETConfig(preset="shapes-demo")
    cfg.model = ModelConfig(image_encoder="cnn", text_encoder="bigru", embed_dim=256,
                            word_dim=128, cnn_width=32, image_size=64)
    cfg.loss = LossConfig(ranking="infonce", temperature=0.05, beta1=1.0, beta2=0.1,
                          text_positives=True, filter_negatives=True, filter_threshold=0.95,
                          filter_start_epoch=0, filter_max_share=0.005, reweight_pairs=False)
    cfg.train = TrainConfig(epochs=36, batch_size=128, lr=2e-3, hash_lr=2e-3,
                            lr_schedule="cosine", kmeans_sample=5000, caption_sampling="per_image",
                            family_weights={"all_objects": 3.0, "one_object": 2.0,
                                            "relation": 2.0, "rephrased": 2.0,
                                            "count": 0.5, "attribute": 0.5})
    cfg.cascade = CascadeConfig(alpha=0.0, beta=0.1, hamming_scores="asymmetric")
    return cfg


def _official() -> MEETConfig:
    """The released code's settings: hinge max-violation on both spaces, no L_f, no
    L_q, no filtering or reweighting at training time, 12 epochs, Adam 2e-4 / 2e-2."""
    return MEETConfig(preset="official")


def _full() -> MEETConfig:
    """The paper's full Stage I: official settings plus L_f, L_q, in-batch filtering
    of misleading negatives and adaptive pair reweighting."""
    cfg = MEETConfig(preset="full")
    cfg.loss = LossConfig(beta1=1.0, beta2=0.1, text_positives=True,
                          filter_negatives=True, reweight_pairs=True)
    return cfg


PRESETS = {"shapes-demo": _shapes_demo, "official": _official, "full": _full}


def preset(name: str) -> MEETConfig:
    """Build a named preset (a fresh object each call)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}", fix=f"choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
