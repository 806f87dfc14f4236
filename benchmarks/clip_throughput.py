"""How long CLIP's towers take per 10,000 photos and captions on this machine.

No CLIP weights can be downloaded here, so the towers are built with random weights at the
published architectures' sizes (``transformers.CLIPConfig`` presets below): the compute per
image and per caption is the real model's, only the numbers the weights hold differ. This
is the encoding part of ``python -m meet.fit_codes`` and of the app's first start on a
folder of photos; the fit itself (hash heads and codebooks) does not depend on the tower.

    python benchmarks/clip_throughput.py [--models vit-b-32,vit-b-16] [--batch 32] [--images 64]
"""

from __future__ import annotations

import argparse
import time

import torch
import transformers

ARCHITECTURES = {
    # openai/clip-vit-base-patch32 and -patch16: ViT-B vision tower (768 wide, 12 layers),
    # 512-wide 12-layer text tower, 512-d projection.
    "vit-b-32": dict(vision_config=dict(patch_size=32, image_size=224), projection_dim=512),
    "vit-b-16": dict(vision_config=dict(patch_size=16, image_size=224), projection_dim=512),
}
"""Architectures timed: keyword arguments of ``transformers.CLIPConfig``."""


def _rate(step, items: int, repeats: int) -> float:
    """Items per second of ``step`` (one warm-up call, then the best of ``repeats``)."""
    step()
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - started)
    return items / best


def measure(name: str, batch: int, images: int, device: str, repeats: int) -> dict[str, float]:
    """Images and captions per second of one architecture's towers, fp32 on CPU and fp16
    autocast on CUDA (as ``meet.encoders.clip`` runs them)."""
    model = transformers.CLIPModel(transformers.CLIPConfig(**ARCHITECTURES[name])).to(device).eval()
    size = model.config.vision_config.image_size
    pixels = torch.randn(images, 3, size, size, device=device)
    tokens = torch.randint(0, model.config.text_config.vocab_size - 2, (batch * 4, 16), device=device)
    autocast = torch.autocast("cuda", dtype=torch.float16) if device == "cuda" else torch.autocast("cpu", enabled=False)

    def encode_images() -> None:
        with torch.inference_mode(), autocast:
            for start in range(0, images, batch):
                model.get_image_features(pixel_values=pixels[start:start + batch])

    def encode_texts() -> None:
        with torch.inference_mode(), autocast:
            for start in range(0, len(tokens), batch):
                model.get_text_features(input_ids=tokens[start:start + batch])

    return {"images_per_s": _rate(encode_images, images, repeats),
            "captions_per_s": _rate(encode_texts, len(tokens), repeats)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit-b-32", help=f"comma list of {', '.join(ARCHITECTURES)}")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--images", type=int, default=64, help="images per timed pass")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    print("| architecture | images/s | captions/s | 10k images | 10k images + 50k captions |")
    print("|---|---|---|---|---|")
    for name in args.models.split(","):
        rates = measure(name.strip(), args.batch, args.images, args.device, args.repeats)
        images_s = 10_000 / rates["images_per_s"]
        total_s = images_s + 50_000 / rates["captions_per_s"]
        print(f"| {name} | {rates['images_per_s']:.1f} | {rates['captions_per_s']:.1f} | "
              f"{images_s / 60:.1f} min | {total_s / 60:.1f} min |")


if __name__ == "__main__":
    main()
