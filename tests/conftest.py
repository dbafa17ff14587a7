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
