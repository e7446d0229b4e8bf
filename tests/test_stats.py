import pytest

from llamaduo.stats import aggregate_values, bootstrap_ci, share_at_least, spread


def test_mean_and_median():
    assert aggregate_values([1, 2, 9]) == 4 and aggregate_values([1, 2, 9], "median") == 2
    with pytest.raises(ValueError):
        aggregate_values([])


def test_spread_is_zero_when_repeats_agree():
    assert spread([70, 70, 70]) == 0 and spread([60, 80]) == 10 and spread([50]) == 0


def test_bootstrap_ci_is_seeded_contains_mean_and_narrows_with_more_items():
    vals = [50, 60, 70, 80, 90] * 4
    a, b = bootstrap_ci(vals, seed=1), bootstrap_ci(vals, seed=1)
    assert a == b and a[0] < 70 < a[1]
    wide = bootstrap_ci([50, 90], seed=1)
    assert (wide[1] - wide[0]) > (a[1] - a[0])
    assert bootstrap_ci([75] * 10) == (75, 75)


def test_share_at_least():
    assert share_at_least([10, 80, 90, 79.9], 80) == 0.5 and share_at_least([], 1) == 0
