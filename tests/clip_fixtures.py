"""Tiny CLIP models and photo folders built by the tests (nothing is downloaded).

:func:`tiny_clip` saves a randomly initialised ``transformers.CLIPModel`` in the Hub's CLIP
layout: ``config.json`` + ``model.safetensors`` (``save_pretrained``), a CLIP byte-level BPE
tokenizer written from ``vocab.json`` / ``merges.txt`` files made here (the 512 byte tokens
with and without ``</w>``, a few merges, the two special tokens), and an image processor
config. :func:`photo_folder` writes images of coloured shapes, optionally with captions.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MERGES = ["r e", "re d</w>", "b l", "bl u", "blu e</w>", "c i", "ci r", "cir c", "circ l", "circl e</w>",
          "s q", "sq u", "squ a", "squa r", "squar e</w>", "a </w>"]
"""BPE merges of the tiny tokenizer (``a </w>`` is dropped: ``a</w>`` is already a token)."""
COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square")


def _byte_alphabet() -> list[str]:
    """GPT-2 / CLIP's printable stand-ins for the 256 bytes, in their order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    codes, extra = printable[:], 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def tiny_clip(folder: Path, seed: int = 0, projection_dim: int = 16, image_size: int = 32,
              processor: bool = True) -> Path:
    """Save a tiny random CLIP model with its tokenizer (and image processor) in ``folder``."""
    import torch
    import transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    alphabet = _byte_alphabet()
    vocab = {token: i for i, token in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    merges = [m for m in MERGES if m != "a </w>"]
    for merge in merges:
        vocab.setdefault(merge.replace(" ", ""), len(vocab))
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    tokenizer = transformers.CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    end = vocab["<|endoftext|>"]
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab["<|startoftext|>"],
                         eos_token_id=end, pad_token_id=end),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=projection_dim)
    torch.manual_seed(seed)
    transformers.CLIPModel(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    if processor:
        klass = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
        klass(size={"shortest_edge": image_size},
              crop_size={"height": image_size, "width": image_size}).save_pretrained(str(folder))
    return folder


def shape_image(colour: str, shape: str, size: tuple[int, int] = (48, 40), seed: int = 0) -> Image.Image:
    """One coloured shape on a light, slightly noisy background."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(225, 255, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    w, h = size
    box = (w * 0.2, h * 0.2, w * 0.8, h * 0.8)
    (draw.ellipse if shape == "circle" else draw.rectangle)(box, fill=COLOURS[colour])
    return image


def photo_folder(folder: Path, n_images: int = 12, captions: bool = True, seed: int = 0) -> tuple[Path, Path | None]:
    """``n_images`` PNG/JPEG files of coloured shapes in ``folder/images`` and, with
    ``captions``, ``folder/captions.tsv`` with two captions per image; returns both paths."""
    images = Path(folder) / "images"
    images.mkdir(parents=True, exist_ok=True)
    lines = []
    combos = [(c, s) for c in COLOURS for s in SHAPES]
    for i in range(n_images):
        colour, shape = combos[i % len(combos)]
        name = f"photo{i:03d}.{'jpg' if i % 3 == 2 else 'png'}"
        shape_image(colour, shape, size=(40 + 4 * (i % 5), 36 + 2 * (i % 4)), seed=seed + i).save(images / name)
        lines += [f"{name}\ta {colour} {shape}", f"{name}\ta {shape} that is {colour} number {i}"]
    if not captions:
        return images, None
    path = Path(folder) / "captions.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return images, path
