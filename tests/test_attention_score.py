"""The spread reported with the demo's attention-correctness score."""
from __future__ import annotations

import numpy as np

from pipeline.evaluation.attention import bootstrap_std


def test_bootstrap_spread_of_attention_correctness() -> None:
    assert bootstrap_std(np.array([[3, 3], [2, 2], [4, 4]], dtype=float)) == 0.0  # every word a hit: no spread
    half = np.array([[1, 1], [0, 1]] * 50, dtype=float)  # 100 images, one word each, half of them hits
    spread = bootstrap_std(half)
    assert abs(spread - 0.05) < 0.01  # binomial: sqrt(0.5 * 0.5 / 100)
