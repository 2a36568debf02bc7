"""Statistics over seeds: mean and spread, relative improvement, the paired t-test."""

import math


def mean_std(values):
    """Mean and sample standard deviation (ddof = 1; 0 for a single value)."""
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def relative_improvement(new, old):
    """``(new - old) / old``; None when ``old`` is 0."""
    return None if old == 0 else (new - old) / old


def paired_t_test(a, b):
    """Two-sided paired t-test of ``a`` against ``b`` (same seeds): ``(t, p)``.

    None for fewer than two pairs; identical differences give t = +-inf, p = 0 (or t = 0,
    p = 1 when they are all zero).
    """
    from scipy import stats

    if len(a) != len(b):
        raise ValueError("paired test needs the same seeds on both sides")
    if len(a) < 2:
        return None
    differences = [x - y for x, y in zip(a, b)]
    mean, std = mean_std(differences)
    if std <= 1e-12 * max(abs(d) for d in differences):  # identical but for rounding (0.15 - 0.11 != 0.16 - 0.12)
        return (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / (std / math.sqrt(len(a)))
    return t, float(2 * stats.t.sf(abs(t), df=len(a) - 1))
