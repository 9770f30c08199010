"""mudsc.demo.problems: the synthetic matching problems the solver table, the tests and the benchmarks share."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from mudsc.demo.problems import FLAVOURS, correlation_problem, merge_similarity


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_correlation_problem_is_a_deterministic_correlation(flavour):
    c = correlation_problem(64, flavour, seed=3)
    assert c.shape == (64, 64) and c.dtype == np.float32
    assert np.all(np.abs(c) <= 1 + 1e-6)
    np.testing.assert_array_equal(c, correlation_problem(64, flavour, seed=3))
    assert not np.array_equal(c, correlation_problem(64, flavour, seed=4))
    assert correlation_problem(16, flavour, seed=[1, 2], dtype=np.float64, samples=40).dtype == np.float64


def test_easy_is_solved_by_the_row_argmax_and_hard_is_not():
    easy = correlation_problem(128, "easy", seed=0)
    _, cols = linear_sum_assignment(easy, maximize=True)
    np.testing.assert_array_equal(easy.argmax(1), cols)
    hard = correlation_problem(128, "hard", seed=0)
    _, cols = linear_sum_assignment(hard, maximize=True)
    assert (hard.argmax(1) != cols).mean() > 0.1


def test_unknown_flavour_is_rejected():
    with pytest.raises(ValueError, match="flavour must be one of"):
        correlation_problem(8, "medium")


def test_merge_similarity_is_symmetric_model_major():
    s = merge_similarity(32, num_models=3, seed=1)
    assert s.shape == (96, 96) and s.dtype == np.float32
    np.testing.assert_array_equal(s, s.T)
    np.testing.assert_allclose(np.diag(s), 1.0, atol=1e-5)
    np.testing.assert_array_equal(s, merge_similarity(32, num_models=3, seed=1))
