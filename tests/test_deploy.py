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
