"""The paper's reported numbers, the protocols they were measured under, and what to
download to measure ours.

Only numbers that ``METHOD.md`` (the project's method reference) quotes from the paper
are copied here; everything else the paper reports is left out rather than guessed:

- Table I, Flickr30K 1K test, BUTD region features + BERT text encoder:
  I2T R@1/5/10 = 87.8 / 97.7 / 98.7, T2I = 67.8 / 88.4 / 93.0, rSum 533.4;
- MS-COCO 5K test, BUTD + BERT: rSum 455.5 (the per-recall numbers and the COCO 1K
  results are not in METHOD.md, so they are not shown).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SOURCE = ("Wang, Hu, Liu, Jie, Nie, 'Redundancy Mitigation: Towards Accurate and Efficient "
          "Image-Text Retrieval', IEEE TCSVT 2025, as quoted in the project's METHOD.md")


@dataclass(frozen=True)
class PaperResult:
    """One reported result; recalls are percentages, missing values are None."""

    dataset: str
    protocol: str
    setting: str
    where: str
    i2t: tuple[float | None, float | None, float | None] = (None, None, None)
    t2i: tuple[float | None, float | None, float | None] = (None, None, None)
    rsum: float | None = None


PAPER = {
    ("f30k", "1k"): PaperResult("f30k", "1k", "BUTD + BERT", "Table I", i2t=(87.8, 97.7, 98.7),
                                t2i=(67.8, 88.4, 93.0), rsum=533.4),
    ("coco", "5k"): PaperResult("coco", "5k", "BUTD + BERT", "COCO 5K table (rSum only in METHOD.md)",
                                rsum=455.5),
}
"""(dataset, protocol) -> the paper's number; protocols missing here have no paper number."""


@dataclass(frozen=True)
class DatasetSpec:
    """Which precomp splits a dataset needs and how it is evaluated."""

    name: str
    folder: str
    """Folder name in the SCAN data package."""
    train_split: str
    val_split: str
    test_split: str
    protocols: tuple[tuple[str, str], ...]
    """(label, ``meet.metrics`` protocol) pairs evaluated on ``test_split``."""

    def required_files(self) -> list[str]:
        return [f"{s}_{kind}" for s in (self.train_split, self.val_split, self.test_split)
                for kind in ("ims.npy", "caps.txt")]


DATASETS = {
    "f30k": DatasetSpec("Flickr30K", "f30k_precomp", "train", "dev", "test", (("1k", "full"),)),
    "coco": DatasetSpec("MS-COCO", "coco_precomp", "train", "dev", "testall", (("1k", "5fold"), ("5k", "5k"))),
}
"""f30k: the 1,000-image test split; coco: the 5,000-image ``testall`` split, as five 1K
folds (mean) and as one 5K gallery."""


def missing_files(data: Path, dataset: str) -> list[str]:
    """The precomp files the dataset needs that are not in ``data`` (``val_*`` counts as ``dev_*``)."""
    spec = DATASETS[dataset]
    missing = []
    for name in spec.required_files():
        alias = name.replace("dev_", "val_") if name.startswith("dev_") else None
        if not (data / name).is_file() and not (alias and (data / alias).is_file()):
            missing.append(name)
    return missing


def download_instructions(data: Path, dataset: str, missing: list[str]) -> str:
    """What to download and where to put it, for a person, not a traceback."""
    spec = DATASETS[dataset]
    files = " ".join(spec.required_files())
    state = "does not exist" if not data.exists() else f"lacks {', '.join(missing)}"
    return "\n".join([
        f"No precomputed {spec.name} features: {data} {state}.",
        "",
        "To reproduce the paper you need the BUTD region features (36 regions x 2048-d per image) and the",
        "Karpathy-split captions in the SCAN/HREM 'precomp' layout. They are not bundled and cannot be",
        "downloaded by this tool. Get them yourself:",
        "",
        "  1. Download the SCAN data package (data.zip, which holds f30k_precomp/ and coco_precomp/),",
        "     linked from https://github.com/kuanghuei/SCAN#download-data (several tens of GB;",
        "     HREM and VSE infinity use the same files).",
        f"  2. Unzip it and pass its {spec.folder}/ folder as --data. That folder must hold:",
        f"       {files}",
        "     (a file per split: {split}_ims.npy of shape (N, 36, 2048) or (N, 2048), and",
        "     {split}_caps.txt with 5 captions per image, in image order; val_* is accepted for dev_*).",
        "  3. Run:",
        f"       python -m meet.experiments reproduce --data data/{spec.folder} --dataset {dataset} "
        "--out runs/reproduce --preset official",
        "     and again with --preset full. Training the paper's 12 epochs wants a GPU.",
    ])
