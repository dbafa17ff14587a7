"""Shared, session-scoped fixtures (expensive data built once per test run)."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def planted(tmp_path_factory):
    """100k synthetic rows with planted structure, preprocessed by the real Beam job."""
    from tests.fixtures import planted_dataset

    data_dir, truth = planted_dataset(tmp_path_factory.mktemp("planted"), rows=100_000, seed=1)
    return data_dir, truth


@pytest.fixture(scope="session")
def planted_search(planted, tmp_path_factory):
    """The synthetic preset's search on the planted data, run once: (data_dir, search_dir, dims)."""
    from configs import experiment
    from pipeline.search import run_search

    data_dir, _ = planted
    search_dir = tmp_path_factory.mktemp("planted_search") / "search"
    dims = run_search(str(data_dir), str(search_dir), experiment.resolve("synthetic"), quiet=True)
    return data_dir, search_dir, dims


@pytest.fixture(scope="session")
def served(tmp_path_factory):
    """A Criteo-format raw file, its preprocessing, a trained model_dir and its export, built
    once: (raw file, data_dir, model_dir, version dir)."""
    from tests.serving_fixtures import build_served

    return build_served(tmp_path_factory.mktemp("serving"))
