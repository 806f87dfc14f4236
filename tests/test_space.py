"""The repository as a Hugging Face Space: the README's front matter is a valid Gradio Space
configuration whose ``app_file`` exists and whose SDK matches the gradio this was tested
with, ``requirements.txt`` holds what ``app.py`` imports, and the Space's variables
(``MEET_CHECKPOINT``, ``MEET_DATA``, ``MEET_CAPTIONS``) reach the app's settings; without
them the app serves the offline Shapes default."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def front_matter() -> dict:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n", 2)[1])


def test_the_readme_front_matter_is_a_gradio_space_config():
    import gradio

    config = front_matter()
    assert config["sdk"] == "gradio" and (ROOT / config["app_file"]).is_file()
    assert config["sdk_version"].split(".")[0] == gradio.__version__.split(".")[0]
    assert isinstance(config["title"], str) and len(config.get("short_description", "")) <= 60
    requirements = (ROOT / "requirements.txt").read_text()
    for package in ("gradio", "torch", "transformers", "huggingface_hub", "faiss-cpu", "safetensors"):
        assert f"\n{package}" in f"\n{requirements}", package


def test_space_variables_reach_the_settings():
    from app.settings import REPO_ROOT, from_env

    clip = from_env({"MEET_CHECKPOINT": "openai/clip-vit-base-patch32", "MEET_DATA": "photos",
                     "MEET_CAPTIONS": "photos.tsv", "GRADIO_SERVER_NAME": "0.0.0.0", "MEET_CACHE": "/data/m"})
    assert (clip.checkpoint, clip.data, clip.captions, clip.host, clip.cache_dir) == \
        ("openai/clip-vit-base-patch32", "photos", "photos.tsv", "0.0.0.0", "/data/m")
    default = from_env({})
    assert default.checkpoint == str(REPO_ROOT / "assets" / "shapes-demo") and default.data == ""
