"""Published numbers to print beside ours (unbiased test accuracy, %, keyed by conflict ratio).

Source: DiffInject, Table 1 (see METHODS.md). The DDB paper reports no Colored MNIST numbers.
"""

from __future__ import annotations

PUBLISHED: dict[tuple[str, str], dict[float, float]] = {
    ("cmnist", "erm"): {0.01: 32.59, 0.05: 82.44},
    ("cmnist", "lff"): {0.01: 74.23, 0.05: 85.33},
    ("cmnist", "disent"): {0.01: 78.89, 0.05: 89.60},
    ("cmnist", "lff_be"): {0.01: 81.17, 0.05: 90.04},
    ("cmnist", "a2"): {0.01: 83.92, 0.05: 91.64},
    ("cmnist", "amplibias"): {0.01: 67.79, 0.05: 74.88},
    ("cmnist", "diffinject"): {0.01: 85.58, 0.05: 92.29},
}
PUBLISHED_NAMES = {"erm": "Vanilla", "lff_be": "LfF + BE", "a2": "A²", "amplibias": "AmpliBias"}


def published(dataset: str, method: str, ratio: float) -> float | None:
    """The published unbiased accuracy (%) for this dataset, method and conflict ratio, if any."""
    table = PUBLISHED.get((dataset, method), {})
    for r, value in table.items():
        if abs(r - ratio) < 1e-9:
            return value
    return None
