"""What a push to a Hugging Face Space needs: every binary file stored through Xet/LFS, and complete front matter."""

import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in out.stdout.decode().split("\0") if f]


def is_binary(path: Path) -> bool:
    return b"\0" in path.read_bytes()[:8192]


def test_every_binary_file_in_the_repo_goes_through_lfs():
    files = tracked_files()
    binary = [f for f in files if (ROOT / f).is_file() and is_binary(ROOT / f)]
    assert "assets/shapes-resnet/model.safetensors" in binary  # the check sees what matters
    attrs = subprocess.run(["git", "check-attr", "filter", "--", *binary], cwd=ROOT, capture_output=True, text=True)
    uncovered = [line.split(":")[0] for line in attrs.stdout.splitlines() if not line.endswith(": filter: lfs")]
    assert uncovered == [], f"binary files the Hub would refuse: add them to .gitattributes: {uncovered}"


def front_matter() -> dict[str, str | list[str]]:
    """The README's YAML front matter (flat keys and lists only, as the Space's config uses), read without a YAML
    library: no dependency for one block."""
    head = (ROOT / "README.md").read_text().split("---\n")[1]
    out, key = {}, None
    for line in head.splitlines():
        if line.startswith("  - "):
            out[key].append(line[4:].strip())
        else:
            key, _, value = line.partition(":")
            out[key] = value.strip().strip('"') or []
    return out


def test_the_space_front_matter_is_complete_and_names_the_datasets_the_app_reads():
    from resnet.hub import HUB_DATASETS

    meta = front_matter()
    for field in ("title", "sdk", "sdk_version", "app_file", "short_description", "license", "suggested_hardware"):
        assert meta.get(field), f"front matter lacks {field}"
    assert len(meta["short_description"]) <= 60  # the Hub's limit
    assert meta["tags"] and sorted(meta["datasets"]) == sorted(spec.repo for spec in HUB_DATASETS.values())
    import gradio

    assert meta["sdk_version"] == gradio.__version__  # the Space runs the gradio the tests ran
