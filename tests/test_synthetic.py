"""preprocessing.synthetic: format, determinism, planned cardinalities / missing rates, and that
the planted informative fields really carry the label signal."""
import json
import math
import re

import numpy as np
import pytest

from configs.features import DATASETS, numeric_token
from preprocessing import synthetic as S

ROWS = 200_000
HEX = re.compile(r"^[0-9a-f]{8}$")
NAMES = DATASETS["criteo"].field_names


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("synthetic") / "data.tsv"
    truth = S.generate(path, ROWS, seed=7)
    lines = path.read_text(encoding="ascii").splitlines()
    rows = [line.split("\t") for line in lines]
    return path, truth, rows


_COLUMNS = {}


def _columns(rows):
    key = id(rows)
    if key not in _COLUMNS:
        _COLUMNS[key] = list(zip(*rows))
    return _COLUMNS[key]


def _codes(column) -> np.ndarray:
    """Integer codes of a column's distinct strings (order of first appearance)."""
    table = {}
    return np.fromiter((table.setdefault(v, len(table)) for v in column), np.int64, len(column))


def test_plan_matches_the_criteo_schema():
    assert S.FIELD_NAMES == NAMES
    kinds = {f.name: f.kind for f in DATASETS["criteo"].fields}
    assert all(p.kind == kinds[p.name] for p in S.PLAN)
    assert set(f for pair in S.PAIRS for f in pair) == set(S.INFORMATIVE)


def test_same_seed_same_bytes_other_seed_differs_and_prefix(tmp_path):
    a, b, c, short = (tmp_path / n for n in ("a.tsv", "b.tsv", "c.tsv", "short.tsv"))
    S.generate(a, 3000, seed=11)
    S.generate(b, 3000, seed=11)
    S.generate(c, 3000, seed=12)
    S.generate(short, 1000, seed=11)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert a.read_bytes().startswith(short.read_bytes())
    assert short.read_bytes().count(b"\n") == 1000
    truth_a, truth_b = (json.loads((tmp_path / f"{n}.tsv.truth.json").read_text()) for n in "ab")
    assert truth_a.pop("data_file") == "a.tsv" and truth_b.pop("data_file") == "b.tsv"
    assert truth_a == truth_b


def test_chunks_equal_the_written_file(tmp_path):
    path = tmp_path / "d.tsv"
    S.generate(path, S.BLOCK_ROWS + 10, seed=3)
    chunks = list(S.iter_chunks(S.BLOCK_ROWS + 10, seed=3))
    assert len(chunks) == 2
    assert "".join(chunks).encode() == path.read_bytes()


def test_rows_parse_as_criteo(dataset):
    _, truth, rows = dataset
    assert len(rows) == ROWS == truth["rows"]
    assert {len(r) for r in rows} == {40}
    cols = _columns(rows)
    assert set(cols[0]) == {"0", "1"}
    for j, name in enumerate(NAMES, start=1):
        values = set(cols[j]) - {""}
        if name.startswith("I"):
            ints = [int(v) for v in values]  # ValueError if not an integer
            assert all(numeric_token(v) for v in values)
            assert min(ints) >= (-3 if name == "I2" else 0), name
        else:
            assert all(HEX.match(v) for v in values), name
    negatives = sum(1 for v in cols[2] if v.startswith("-"))
    assert 0.05 < negatives / ROWS < 0.11  # I2 has ~8% negative values, as in Criteo


def test_rows_parse_with_the_criteo_reader(dataset):
    from preprocessing.formats import line_parser

    path, _, rows = dataset
    parser = line_parser(DATASETS["criteo"])
    lines = path.read_text(encoding="ascii").splitlines()[:5000]
    parsed = [parser(line, i) for i, line in enumerate(lines)]  # MalformedRecord if not
    assert [label for _, label in parsed] == [float(r[0]) for r in rows[:5000]]
    assert all(len(tokens) == 39 for tokens, _ in parsed)


def test_numeric_bucket_agrees_with_numeric_token():
    values = np.array(list(range(-3, 3000)) + [10**k + d for k in range(4, 7) for d in (-1, 0, 1)])
    plan = S.PLAN[S.FIELD_NAMES.index("I2")]  # vmin -3
    tokens = S.bucket_tokens(S.dataclasses.replace(plan, vmax=int(values.max())))
    buckets = S.numeric_bucket(values, -3)
    assert [tokens[b] for b in buckets] == [numeric_token(str(v)) for v in values]


def test_planned_cardinalities_follow_a_power_law(dataset):
    _, truth, rows = dataset
    cats = [p for p in S.PLAN if p.kind == "categorical"]
    planned = sorted(p.cardinality for p in cats)
    assert planned[0] == 2 and planned[-1] == 100_000
    # geometric ladder: log cardinality is linear in rank (up to rounding of the small rungs)
    x, y = np.arange(len(planned)), np.log(planned)
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    assert np.abs(residual).max() < 0.1
    assert slope == pytest.approx(math.log(50000) / 25, rel=0.01)
    cols = _columns(rows)
    observed = {name: len(set(cols[j]) - {""}) for j, name in enumerate(NAMES, start=1)}
    assert max(observed[p.name] for p in cats) >= 10_000
    assert observed[min(cats, key=lambda p: p.cardinality).name] == 2
    for p in S.PLAN:
        assert observed[p.name] <= p.num_tokens if p.kind == "categorical" else True
        field = next(f for f in truth["fields"] if f["name"] == p.name)
        assert field["cardinality"] == p.num_tokens
        if p.kind == "categorical":
            assert field["observed_cardinality"] == observed[p.name]
    # small and mid fields are fully observed at this size
    assert all(observed[p.name] == p.cardinality for p in cats if p.cardinality <= 1000)


def test_values_are_zipf_within_a_field(dataset):
    _, _, rows = dataset
    j = NAMES.index("C10") + 1  # noise field, 7446 values, s = 1.0
    _, counts = np.unique(_columns(rows)[j], return_counts=True)
    counts = np.sort(counts)[::-1][:200]
    slope = np.polyfit(np.log(np.arange(1, 201)), np.log(counts), 1)[0]
    assert -1.15 < slope < -0.85


def test_missing_rates_near_plan(dataset):
    _, truth, rows = dataset
    cols = _columns(rows)
    for j, p in enumerate(S.PLAN, start=1):
        rate = sum(1 for v in cols[j] if v == "") / ROWS
        tolerance = 5 * math.sqrt(max(p.missing * (1 - p.missing), 1e-4) / ROWS)
        assert abs(rate - p.missing) < tolerance, (p.name, rate, p.missing)
        field = next(f for f in truth["fields"] if f["name"] == p.name)
        assert field["observed_missing_rate"] == pytest.approx(rate)
    assert max(p.missing for p in S.PLAN) > 0.4


def test_label_rate_in_range(dataset):
    _, truth, rows = dataset
    rate = sum(r[0] == "1" for r in rows) / ROWS
    assert 0.2 < rate < 0.35
    assert truth["label_rate"] == pytest.approx(rate)


def _dependence_z(labels: np.ndarray, column) -> float:
    """Chi-square test of label vs value (values seen < 50 times pooled), as a normal z score
    (Wilson-Hilferty); ~N(0, 1) when the field carries no label information."""
    values, inverse, counts = np.unique(np.asarray(column), return_inverse=True, return_counts=True)
    groups = np.where(counts[inverse] >= 50, inverse, -1)
    _, g, n = np.unique(groups, return_inverse=True, return_counts=True)
    pos = np.bincount(g, weights=labels)
    p = labels.mean()
    chi2 = float(np.sum((pos - n * p) ** 2 / (n * p * (1 - p))))
    k = len(n) - 1
    return _wilson_hilferty(chi2, k) if k else 0.0


def test_informative_fields_carry_the_label_signal(dataset):
    _, truth, rows = dataset
    cols = _columns(rows)
    labels = np.array(cols[0], dtype=np.float64)
    z = {name: _dependence_z(labels, _codes(cols[j])) for j, name in enumerate(NAMES, start=1)}
    informative = [f["name"] for f in truth["fields"] if f["informative"]]
    noise = [f["name"] for f in truth["fields"] if not f["informative"]]
    assert sorted(informative) == sorted(S.INFORMATIVE)
    assert min(z[n] for n in informative) > 6, {n: round(z[n], 1) for n in informative}
    assert max(z[n] for n in noise) < 4.5, {n: round(z[n], 1) for n in noise}


def _wilson_hilferty(chi2: float, k: int) -> float:
    return ((chi2 / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))


def _interaction_z(labels: np.ndarray, a, b, min_count: int = 300) -> float:
    """Likelihood-ratio test of an additive logistic model (value of a + value of b; values seen
    < min_count times pooled) against the saturated model of the (a, b) cells, as a z score:
    large only when the label depends on the pair beyond the two fields' separate effects."""
    codes = []
    for col in (a, b):
        _, inv, counts = np.unique(np.asarray(col), return_inverse=True, return_counts=True)
        kept = np.where(counts[inv] >= min_count, inv, -1)
        codes.append(np.unique(kept, return_inverse=True)[1])
    na, nb = codes[0].max() + 1, codes[1].max() + 1
    cell = codes[0] * nb + codes[1]
    n = np.bincount(cell, minlength=na * nb).astype(np.float64)
    pos = np.bincount(cell, weights=labels, minlength=na * nb)
    used = n > 0
    ia, ib = np.divmod(np.arange(na * nb), nb)
    design = np.concatenate(
        [np.ones((na * nb, 1)), np.eye(na)[ia][:, 1:], np.eye(nb)[ib][:, 1:]], 1
    )
    design, n, pos = design[used], n[used], pos[used]
    theta = np.zeros(design.shape[1])
    for _ in range(50):  # Newton on the cell table
        p = 1 / (1 + np.exp(-design @ theta))
        hess = design.T @ (design * (n * p * (1 - p))[:, None]) + 1e-9 * np.eye(len(theta))
        step = np.linalg.solve(hess, design.T @ (pos - n * p))
        theta += step
        if np.abs(step).max() < 1e-10:
            break
    p_add = np.clip(1 / (1 + np.exp(-design @ theta)), 1e-12, 1 - 1e-12)
    p_sat = np.clip(pos / n, 1e-12, 1 - 1e-12)
    def loglik(q):
        return float(np.sum(pos * np.log(q) + (n - pos) * np.log(1 - q)))

    df = len(n) - design.shape[1]
    return _wilson_hilferty(2 * (loglik(p_sat) - loglik(p_add)), df)


def test_planted_pairs_interact_noise_pairs_do_not(dataset):
    _, _, rows = dataset
    cols = _columns(rows)
    labels = np.array(cols[0], dtype=np.float64)
    col = {name: _codes(cols[j]) for j, name in enumerate(NAMES, start=1)}
    planted = {pair: _interaction_z(labels, col[pair[0]], col[pair[1]])
               for pair in (("C23", "C6"), ("C1", "C14"), ("C15", "I1"))}
    # same cardinalities, no planted interaction (a noise and an informative field; two noise)
    unplanted = {pair: _interaction_z(labels, col[pair[0]], col[pair[1]])
                 for pair in (("C8", "C6"), ("C23", "C14"), ("C17", "C25"))}
    assert min(planted.values()) > 20, planted
    assert max(unplanted.values()) < 4.5, unplanted


def test_ground_truth_describes_the_plan(dataset):
    path, truth, _ = dataset
    on_disk = json.loads((path.parent / (path.name + ".truth.json")).read_text())
    assert on_disk == json.loads(json.dumps(truth))
    assert truth["seed"] == 7 and truth["version"] == S.GENERATOR_VERSION
    by_name = {f["name"]: f for f in truth["fields"]}
    for f in truth["fields"]:
        assert (f["latent_dim"] > 0) == f["informative"]
        assert (f["importance"] > 0.01) == f["informative"], f
    cards = [by_name[n]["cardinality"] for n in S.INFORMATIVE]
    assert max(cards) >= 10_000 and min(cards) <= 20  # high- and low-cardinality informative
    noise_cards = [f["cardinality"] for f in truth["fields"] if not f["informative"]]
    assert min(noise_cards) == 2 and max(noise_cards) > 40_000
    assert {tuple(i["fields"]) for i in truth["interactions"]} == set(S.PAIRS)
    assert all(i["variance"] > 0.05 for i in truth["interactions"])
    # rich fields (largest latent) matter more than the 4-dimensional ones on average
    rich = np.mean(
        [by_name[n]["importance"] for n in S.INFORMATIVE if by_name[n]["latent_dim"] == 16]
    )
    small = np.mean(
        [by_name[n]["importance"] for n in S.INFORMATIVE if by_name[n]["latent_dim"] == 4]
    )
    assert rich > small


def test_cli_writes_data_and_truth(tmp_path, capsys):
    out, truth = tmp_path / "x.tsv", tmp_path / "t.json"
    assert (
        S.main(["--output", str(out), "--rows", "500", "--seed", "5", "--truth", str(truth)]) == 0
    )
    assert out.read_text().count("\n") == 500
    assert json.loads(truth.read_text())["rows"] == 500
    assert "wrote 500 rows" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        S.main(["--output", str(out), "--rows", "0"])
    with pytest.raises(SystemExit):
        S.main(["--output", str(tmp_path / "no" / "x.tsv"), "--rows", "5"])
