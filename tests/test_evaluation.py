"""Exact AUC and DeLong's paired covariance (pipeline/evaluation.py)."""
import numpy as np
import pytest

from pipeline.evaluation import delong, numpy_auc


def _pairwise_auc(labels, scores):
    pos, neg = scores[labels > 0.5], scores[labels <= 0.5]
    return ((pos[:, None] > neg[None, :]).sum()
            + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))


def _two_models(n, seed):
    """Labels and two correlated scorers: b sees the signal with extra noise."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=n)
    labels = (signal + rng.normal(size=n) > 0.3).astype(np.float32)
    a = signal + 0.8 * rng.normal(size=n)
    b = a + 0.9 * rng.normal(size=n)
    return labels, a, b


def test_aucs_match_pair_counting_with_ties():
    rng = np.random.default_rng(0)
    labels = (rng.random(400) < 0.3).astype(np.float32)
    scores = np.round(rng.random(400) + 0.4 * labels, 1)  # coarse: many ties
    aucs, cov = delong(labels, [scores, -scores])
    assert aucs[0] == pytest.approx(_pairwise_auc(labels, scores), abs=1e-12)
    assert aucs[0] == pytest.approx(numpy_auc(labels, scores), abs=1e-12)
    assert aucs[1] == pytest.approx(1 - aucs[0], abs=1e-12)
    # a mirrored scorer has the same variance and a perfectly negative covariance
    assert cov[0, 0] == pytest.approx(cov[1, 1]) and cov[0, 1] == pytest.approx(-cov[0, 0])


def test_paired_standard_error_matches_a_bootstrap():
    labels, a, b = _two_models(3000, seed=1)
    aucs, cov = delong(labels, [a, b])
    se_diff = np.sqrt(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    rng = np.random.default_rng(2)
    diffs = []
    for _ in range(400):
        i = rng.integers(0, labels.size, labels.size)
        diffs.append(numpy_auc(labels[i], a[i]) - numpy_auc(labels[i], b[i]))
    boot = np.std(diffs, ddof=1)
    assert 0.8 < se_diff / boot < 1.25, (se_diff, boot)
    # pairing matters: the difference is far less noisy than the two AUCs are apart
    unpaired = np.sqrt(cov[0, 0] + cov[1, 1])
    assert se_diff < 0.8 * unpaired
    assert aucs[0] - aucs[1] > 3 * se_diff  # a is clearly better on 3000 examples


def test_identical_scores_have_no_paired_noise_and_bad_input_is_refused():
    labels, a, _ = _two_models(500, seed=3)
    _, cov = delong(labels, [a, a.copy()])
    assert cov[0, 0] + cov[1, 1] - 2 * cov[0, 1] == pytest.approx(0.0, abs=1e-15)
    with pytest.raises(ValueError, match="two positives and two negatives"):
        delong(np.ones(10), [np.arange(10.0)])
    with pytest.raises(ValueError, match="9 scores for 10 labels"):
        delong(np.arange(10) % 2, [np.arange(9.0)])
