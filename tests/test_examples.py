"""The example script runs end to end and finds the nodules it renders."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quickstart_finds_every_rendered_nodule() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "quickstart.py"), "--size", "64", "--seed", "3"],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    errors = [float(e) for e in re.findall(r"nearest found box ([0-9.]+) mm away", proc.stdout)]
    n = int(re.search(r"(\d+) nodules", proc.stdout).group(1))  # type: ignore[union-attr]
    assert n >= 1 and len(errors) == n
    # oracle boxes with 1 px jitter at 64 px (12.5 mm pixels at the detector): a few mm at most
    assert max(errors) < 6.0
