"""preprocessing.synthetic's criteo profile (Criteo Kaggle's cardinalities, up to 10M values per
field, without per-value tables) and `--shards`: shape, determinism, shards, ground truth,
bounded memory and the CLI's refusals."""
import json
import re
import tracemalloc
from collections import Counter

import numpy as np
import pytest

from configs.features import numeric_token
from preprocessing import synthetic as S
from tests.test_synthetic import _dependence_z

ROWS = 20_000
HEX = re.compile(r"^[0-9a-f]{8}$")
PUBLISHED = (1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
             27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572)
BIG = ("C3", "C4", "C12", "C16", "C21")  # > 1M values each


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("criteo") / "data.tsv"
    truth = S.generate(path, ROWS, seed=3, profile="criteo")
    rows = [line.split("\t") for line in path.read_text(encoding="ascii").splitlines()]
    return path, truth, rows


def _column(rows, name, n=None):
    j = S.FIELD_NAMES.index(name) + 1
    return [r[j] for r in rows[:n]]


def test_plan_has_criteos_cardinalities_and_the_default_label_model():
    assert "criteo" in S.PROFILES
    assert tuple(p.name for p in S.CRITEO_PLAN) == S.FIELD_NAMES
    cats = [p for p in S.CRITEO_PLAN if p.kind == "categorical"]
    assert tuple(p.cardinality for p in cats) == PUBLISHED
    for criteo, default in zip(S.CRITEO_PLAN, S.PLAN):
        assert (criteo.latent_dim, criteo.missing, criteo.kind) == \
            (default.latent_dim, default.missing, default.kind)
        if default.kind == "numeric":
            assert criteo == default
    assert all(p.zipf_offset > -1 for p in cats)


@pytest.mark.parametrize("s, q", [(1.1, 0.6), (1.0, 0.5), (0.7, 3.0)])
def test_zipf_sampler_draws_the_planned_law_without_a_table(s, q):
    n = 50_000
    sampler = S.ZipfSampler(n, s, q)
    assert len(sampler.head_cdf) == S.ZipfSampler.HEAD_RANKS < n  # the tail is analytic
    ranks = sampler.ranks(np.random.default_rng(0).random(400_000))
    assert ranks.min() >= 0 and ranks.max() < n
    p = (np.arange(1, n + 1) + q) ** -s
    p /= p.sum()
    edges = np.unique(np.geomspace(1, n, 40).astype(np.int64)) - 1
    edges[-1] = n
    expected = np.add.reduceat(p, edges[:-1]) * len(ranks)
    observed = np.histogram(ranks, bins=edges)[0]
    assert np.abs(observed - expected).max() / np.sqrt(expected).max() < 5
    assert np.all(np.abs(observed - expected) < 5 * np.sqrt(expected) + 1)
    # the extreme uniforms stay inside the field, for every field of the profile
    for p in S.CRITEO_PLAN:
        if p.kind == "categorical":
            edge = S.ZipfSampler(p.cardinality, p.zipf, p.zipf_offset).ranks(
                np.array([0.0, 0.5, np.nextafter(1.0, 0.0)]))
            assert edge[0] == 0 and edge[-1] <= p.cardinality - 1, p.name


def test_value_ranks_stay_below_each_fields_count():
    gen = S.CriteoGenerator(5)
    block = gen.block(0)
    assert len(block) == gen.block_rows
    for p in gen.plan:
        idx, missing = block.idx[p.name], block.missing[p.name]
        assert np.all(idx[~missing] < p.num_tokens), p.name
        assert np.all(idx[~missing] >= 0) and np.all(idx[missing] == p.num_tokens), p.name


def test_rows_are_criteo_tsv_with_distinct_tokens_per_rank(dataset):
    _, truth, rows = dataset
    assert len(rows) == ROWS and {len(r) for r in rows} == {40}
    assert {r[0] for r in rows} == {"0", "1"}
    for p in S.CRITEO_PLAN:
        values = set(_column(rows, p.name)) - {""}
        if p.kind == "numeric":  # counted as the tokens the Beam job makes of them
            values = {numeric_token(v) for v in values}
        field = next(f for f in truth["fields"] if f["name"] == p.name)
        assert field["observed_cardinality"] == len(values) <= p.num_tokens, p.name
        if p.kind == "categorical":
            assert all(HEX.match(v) for v in values), p.name
    # tokens are a bijection of ranks: the hashed token of a rank is the same in every block
    gen = S.CriteoGenerator(3)
    ranks = np.array([0, 1, 7, 10131226, 10131227])
    tokens = gen.tokens("C3", ranks)
    assert list(tokens[-1:]) == [""] and len(set(tokens[:-1])) == 4
    assert list(gen.tokens("C3", ranks[::-1])) == list(tokens[::-1])


def test_big_fields_keep_growing_and_their_tails_are_mostly_seen_once(dataset):
    _, _, rows = dataset
    for name in BIG:
        small, full = (Counter(v for v in _column(rows, name, n) if v) for n in (5000, ROWS))
        assert len(full) > 2.5 * len(small), name  # far from saturated at 20k rows
        counts = np.array(list(full.values()))
        assert np.mean(counts == 1) > 0.6, name
        assert np.mean(counts <= 3) > 0.85, name
    # the calibration point: the real sample's first 8,000 rows hold 4,524 distinct C3 values
    c3 = {v for v in _column(rows, "C3", 8000) if v}
    assert 3900 < len(c3) < 5200
    # small fields are saturated, as in Criteo
    assert len(set(_column(rows, "C9")) - {""}) == 3


def test_ground_truth_of_the_criteo_profile(dataset):
    path, truth, rows = dataset
    on_disk = json.loads((path.parent / (path.name + ".truth.json")).read_text())
    assert on_disk == json.loads(json.dumps(truth))
    assert truth["profile"] == "criteo" and truth["seed"] == 3 and truth["rows"] == ROWS
    assert truth["data_file"] == "data.tsv" and truth["data_files"] == ["data.tsv"]
    assert truth["shards"] == 1
    assert truth["informative_fields"] == list(S.INFORMATIVE)
    by_name = {f["name"]: f for f in truth["fields"]}
    for p in S.CRITEO_PLAN:
        f = by_name[p.name]
        assert f["cardinality"] == p.num_tokens and f["latent_dim"] == p.latent_dim
        assert f["informative"] == p.informative
        assert (f["importance"] > 0.01) == p.informative, f
        if p.kind == "categorical":
            assert (f["zipf_exponent"], f["zipf_offset"]) == (p.zipf, p.zipf_offset)
    assert by_name["C3"]["cardinality"] == 10131227 and by_name["C3"]["latent_dim"] == 16
    assert {tuple(i["fields"]) for i in truth["interactions"]} == set(S.PAIRS)
    assert all(i["variance"] > 0.05 for i in truth["interactions"])
    assert 0.2 < truth["label_rate"] < 0.35
    assert truth["label_rate"] == pytest.approx(sum(r[0] == "1" for r in rows) / ROWS)


def test_informative_fields_carry_the_label_signal(dataset):
    _, _, rows = dataset
    labels = np.array([float(r[0]) for r in rows])
    z = {}
    for name in ("C1", "C5", "C6", "C14", "C23", "C2", "C8", "C9", "C17", "C20", "C25"):
        table = {}
        codes = np.array([table.setdefault(v, len(table)) for v in _column(rows, name)])
        z[name] = _dependence_z(labels, codes)
    assert min(z[n] for n in ("C1", "C5", "C6", "C14", "C23")) > 4, z
    assert max(z[n] for n in ("C2", "C8", "C9", "C17", "C20", "C25")) < 4.5, z


def _shards_and_whole(tmp_path, profile: str, rows: int) -> tuple[dict, dict, bytes]:
    """Writes `rows` rows unsharded (a.tsv) and in 3 shards (d.tsv); checks the shards' names and
    that they concatenate to the unsharded file; returns both truths and the unsharded bytes."""
    a, d = tmp_path / "a.tsv", tmp_path / "d.tsv"
    S.generate(a, rows, seed=11, profile=profile)
    truth = S.generate(d, rows, seed=11, profile=profile, shards=3)
    names = ["d-00000-of-00003.tsv", "d-00001-of-00003.tsv", "d-00002-of-00003.tsv"]
    assert truth["data_files"] == names and truth["shards"] == 3 and "data_file" not in truth
    assert not d.exists()
    parts = [(tmp_path / n).read_bytes() for n in names]
    assert b"".join(parts) == a.read_bytes()
    assert [p.count(b"\n") for p in parts] == [k * rows // 3 - (k - 1) * rows // 3
                                                for k in (1, 2, 3)]
    whole = json.loads((tmp_path / "a.tsv.truth.json").read_text())
    sharded = json.loads((tmp_path / "d.tsv.truth.json").read_text())
    assert sharded["data_files"] == names
    for key in ("rows", "label_rate", "seed", "informative_fields", "intercept"):
        assert sharded[key] == whole[key]
    assert [f["observed_cardinality"] for f in sharded["fields"]] == \
        [f["observed_cardinality"] for f in whole["fields"]]
    return whole, sharded, a.read_bytes()


def test_criteo_same_seed_same_bytes_and_shards_concatenate(tmp_path, monkeypatch):
    # small blocks so that the shards and the row prefix cut blocks: 3,500 rows = 3.5 blocks
    monkeypatch.setattr(S.CriteoGenerator, "block_rows", 1000)
    _, _, data = _shards_and_whole(tmp_path, "criteo", 3500)
    b, c, short = (tmp_path / n for n in ("b.tsv", "c.tsv", "s.tsv"))
    S.generate(b, 3500, seed=11, profile="criteo")
    S.generate(c, 3500, seed=12, profile="criteo")
    S.generate(short, 1200, seed=11, profile="criteo")
    assert data == b.read_bytes() != c.read_bytes()
    assert data.startswith(short.read_bytes())
    assert "".join(S.iter_chunks(3500, 11, profile="criteo")).encode() == data


def test_default_profile_shards_concatenate(tmp_path):
    whole, sharded, _ = _shards_and_whole(tmp_path, "default", 3000)
    assert "profile" not in whole and "data_files" not in whole  # the default truth unchanged
    assert whole["data_file"] == "a.tsv"


def _peak_bytes(path, rows: int) -> int:
    tracemalloc.start()
    try:
        S.generate(path, rows, seed=1, profile="criteo")
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_memory_is_bounded_and_needs_no_per_value_tables(tmp_path):
    small = _peak_bytes(tmp_path / "small.tsv", 2 * S.CRITEO_BLOCK_ROWS)
    large = _peak_bytes(tmp_path / "large.tsv", 200_000)
    # one float per value of C3 alone would be 81 MB (of every categorical value: 314 MB)
    assert large < 0.6 * 10131227 * 8, large / 1e6
    assert large < 1.25 * small, (small / 1e6, large / 1e6)  # does not grow with rows


def test_cli_criteo_shards_and_refusals(tmp_path, capsys):
    out = tmp_path / "x.tsv"
    args = ["--output", str(out), "--rows", "300", "--profile", "criteo", "--shards", "2"]
    assert S.main(args) == 0
    assert "wrote 300 rows to 2 files x-00000-of-00002.tsv" in capsys.readouterr().out
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["x-00000-of-00002.tsv", "x-00001-of-00002.tsv", "x.tsv.truth.json"]
    truth = json.loads((tmp_path / "x.tsv.truth.json").read_text())
    assert truth["profile"] == "criteo" and truth["data_files"] == names[:2]

    def refused(argv, text):
        with pytest.raises(SystemExit) as exc:
            S.main(argv)
        assert exc.value.code == 2
        assert text in capsys.readouterr().err

    new = str(tmp_path / "new.tsv")
    refused(["--output", new, "--rows", "10", "--shards", "0"], "--shards")
    refused(["--output", new, "--rows", "10", "--shards", "11"], "--shards")
    refused(["--output", new, "--rows", "10", "--profile", "kaggle"], "--profile")
    assert not (tmp_path / "new.tsv").exists()
    # an existing shard or truth file: exit 2, nothing written, nothing replaced
    assert S.main(args) == 2
    assert "exists" in capsys.readouterr().err
    (tmp_path / "y-00001-of-00002.tsv").write_text("precious\n")
    assert S.main(["--output", str(tmp_path / "y.tsv"), "--rows", "10", "--shards", "2"]) == 2
    assert "y-00001-of-00002.tsv exists" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == names + ["y-00001-of-00002.tsv"]
    assert (tmp_path / "y-00001-of-00002.tsv").read_text() == "precious\n"
    with pytest.raises(ValueError, match="unknown profile"):
        S.generate(tmp_path / "z.tsv", 10, 0, profile="kaggle")
    with pytest.raises(ValueError, match="shards"):
        S.generate(tmp_path / "z.tsv", 10, 0, shards=0)
