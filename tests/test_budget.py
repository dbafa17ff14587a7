"""The memory budget (`--budget`, `--budget_ratio`, `--budget_bytes`; pipeline/budget.py): the
search's multiplier, the repair step, the refusals, and budgets of 10/25/50% end to end on planted
data."""
import json

import numpy as np
import pytest

from configs import experiment
from configs.features import SPLITS
from configs.loader import ConfigError
from pipeline import budget as budget_lib
from tests.fixtures import write_dataset

# Three interacting fields with a planted rank-8 structure (f0, f1, f3) and three noise fields.
VOCAB = [60, 40, 12, 80, 10, 30]
LATENT = [8, 8, 0, 8, 0, 0]
DIMS = (2, 8, 16, 24, 32)  # the presets' candidates
FULL = sum(VOCAB) * 32
SMALLEST = sum(VOCAB) * 2
SEARCH = ["model.backbone=fm", "search.batch_size=500", "search.learning_rate=0.01",
          "search.pretrain_steps=80", "search.search_steps=240", "search.min_arch_updates=80",
          "search.checkpoint_every=1000"]


def planted_interactions(rows: int, seed: int = 0):
    """Labels from pairwise inner products of planted 8-dim latent vectors (FM's model class)."""
    rng = np.random.default_rng(seed)
    k = max(LATENT)
    tables = [rng.normal(0, 1.0, (v, k)) * (np.arange(k) < d) for v, d in zip(VOCAB, LATENT)]
    ids, labels = {}, {}
    for split, n in zip(SPLITS, (rows, rows // 4, rows // 4)):
        x = np.stack([rng.integers(0, v, n) for v in VOCAB], axis=1)
        u = [t[x[:, f]] for f, t in enumerate(tables)]
        logit = 1.5 * ((u[0] * u[1]).sum(1) + (u[0] * u[3]).sum(1)
                       + (u[1] * u[3]).sum(1)) / np.sqrt(k)
        ids[split] = x
        labels[split] = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return ids, labels


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("budget_data")
    ids, labels = planted_interactions(20_000)
    write_dataset(d, ids, labels, VOCAB)
    return d


@pytest.fixture(scope="module")
def searches(data, tmp_path_factory):
    """One search per budget ratio: {ratio: (model_dir, dims.json)}."""
    from pipeline.search import run_search

    out = {}
    for ratio in (0.1, 0.25, 0.5):
        cfg = experiment.resolve("default", set_overrides=SEARCH + [f"search.budget_ratio={ratio}"])
        model_dir = tmp_path_factory.mktemp("budget") / f"r{ratio}"
        out[ratio] = (model_dir, run_search(str(data), str(model_dir), cfg, quiet=True))
    return out


# ---------------------------------------------------------------------- end to end
def test_budgets_are_met_and_auc_does_not_fall_as_the_budget_grows(searches):
    aucs = []
    for ratio, (model_dir, dims) in searches.items():
        b = dims["budget"]
        budget = int(np.floor(ratio * FULL))
        assert b["params"] == budget and b["requested"] == {"flag": "--budget_ratio",
                                                            "value": ratio}
        params = sum(v * dims["fields"][f"f{i}"]["dim"] for i, v in enumerate(VOCAB))
        assert params == dims["embedding_params"] == b["achieved"] <= budget
        assert b["share_of_budget"] == pytest.approx(params / budget)
        # in the 5% window under the budget, unless no field's next candidate still fits
        dims_now = [dims["fields"][f"f{i}"]["dim"] for i in range(len(VOCAB))]
        fits = [v * (min([c for c in DIMS if c > d], default=10**9) - d) <= budget - params
                for v, d in zip(VOCAB, dims_now)]
        assert b["share_of_budget"] >= 0.95 or not any(fits), (ratio, dims_now)
        assert json.loads((model_dir / "dims.json").read_text())["budget"] == b
        # the derived architecture's validation AUC (one-hot supernet, whole valid split)
        aucs.append(dims["final_metrics"]["derived_valid_auc"])
    # measured 0.685 / 0.818 / 0.848 (704 / 1,808 / 3,536 params: 95 / 97 / 95% of the budget)
    assert aucs[1] >= aucs[0] - 0.005 and aucs[2] >= aucs[1] - 0.005, aucs
    assert aucs[1] > aucs[0] + 0.05, aucs  # 10% cannot hold the planted rank; 25% can
    dims25 = searches[0.25][1]["fields"]
    assert all(dims25[f"f{i}"]["dim"] >= 8 for i in (0, 1, 3)), dims25


def test_the_multiplier_is_checkpointed_and_the_search_is_hashed_with_its_budget(searches):
    import tensorflow as tf

    model_dir, dims = searches[0.1]
    ckpt = tf.train.latest_checkpoint(str(model_dir / "ckpt"))
    assert ckpt, list(model_dir.iterdir())
    names = {n: s for n, s in tf.train.list_variables(ckpt)}
    key = next(n for n in names if n.startswith("budget_multiplier"))
    mu = float(tf.train.load_variable(ckpt, key))
    assert mu == pytest.approx(dims["budget"]["final_multiplier"])
    assert mu > 0  # 10% binds: the multiplier is active at the end
    from tests.test_summaries import scalar_series

    series = scalar_series(model_dir / "train", "budget/multiplier")
    assert series and series[-1][1] == pytest.approx(mu, rel=1e-5)
    assert scalar_series(model_dir / "train", "budget/expected_params")
    # the run hash covers the budget; runs without one keep their old hash
    with_budget = experiment.resolve("default", set_overrides=["search.budget_ratio=0.1"])
    without = experiment.resolve("default")
    assert experiment.run_hash(with_budget) != experiment.run_hash(without)
    legacy = experiment.to_dict(without)
    for k in ("budget", "budget_ratio", "budget_bytes", "budget_multiplier_lr"):
        legacy["search"].pop(k)
    assert experiment.run_hash(legacy) == experiment.run_hash(without)


def test_the_budget_search_runs_mirrored_over_two_replicas(data, tmp_path):
    """The multiplier's update runs in cross-replica context on the all-reduced alpha (a short
    search; 2 logical CPUs; a 1-replica run of the same config measured the same multiplier)."""
    from tests.fixtures import read_json, run_module

    model_dir = tmp_path / "mirrored"
    short = [s for s in SEARCH if "steps" not in s and "updates" not in s]
    sets = [*short, "search.pretrain_steps=10", "search.search_steps=30",
            "search.min_arch_updates=10"]
    proc = run_module("pipeline.search", [
        "--data_dir", str(data), "--model_dir", str(model_dir), "--preset", "default", "--quiet",
        "--logical_cpus", "2", "--budget_ratio", "0.1", *[a for s in sets for a in ("--set", s)]])
    assert proc.returncode == 0, proc.stderr[-2000:]
    b = read_json(model_dir / "dims.json")["budget"]
    assert b["achieved"] <= b["params"] == int(0.1 * FULL)
    assert b["final_multiplier"] > 0
    assert "budget 742 embedding parameters (--budget_ratio 0.1): achieved" in proc.stdout + \
        proc.stderr


# ---------------------------------------------------------------------- multiplier (unit)
class _Embedding:
    """expected_dims() = the variable's value: a stand-in with E[d] set directly."""

    def __init__(self, dims):
        import tensorflow as tf

        self.var = tf.Variable(np.asarray(dims, np.float32))

    def expected_dims(self):
        import tensorflow as tf

        return tf.convert_to_tensor(self.var)


def test_the_multiplier_integrates_the_log_violation_from_both_sides():
    import tensorflow as tf

    vocab = [100, 50]
    budget = budget_lib.Budget(1000, "budget", 1000, 300, 4800)
    emb = _Embedding([16.0, 8.0])  # E[P] = 2000 = 2000 / 975 of the target
    c = budget_lib.BudgetConstraint(emb, vocab, budget, multiplier_lr=0.5)
    target = 1000 * budget_lib.TARGET_SHARE
    assert float(c.expected_params()) == 2000
    update = tf.function(c.update)
    update()
    g = np.log(2000 / target)
    assert float(c.multiplier.numpy()) == pytest.approx(0.5 * g, rel=1e-5)
    # the penalty's weight adds the proportional term; its gradient is weight x dg/dE[d]
    with tf.GradientTape() as tape:
        p = c.penalty()
    grad = tape.gradient(p, emb.var).numpy()
    weight = 0.5 * g + budget_lib.PROPORTIONAL * g
    assert grad == pytest.approx(weight * np.asarray(vocab) / 2000, rel=1e-4)
    emb.var.assign([4.0, 2.0])  # E[P] = 500: under the target, mu shrinks ...
    update()
    under = np.log(500 / target)
    expected = 0.5 * g + 0.5 * under
    assert float(c.multiplier.numpy()) == pytest.approx(expected, abs=1e-6)
    for _ in range(5):  # ... and goes negative: an equality constraint, E[P] = T
        update()
    expected += 5 * 0.5 * under
    assert expected < 0
    assert float(c.multiplier.numpy()) == pytest.approx(expected, rel=1e-5)
    assert float(c.weight()) == pytest.approx(expected + budget_lib.PROPORTIONAL * under, rel=1e-5)
    # a negative weight's gradient is negative: descending it raises E[d], the large field most
    with tf.GradientTape() as tape:
        p = c.penalty()
    grad = tape.gradient(p, emb.var).numpy()
    assert (grad < 0).all() and grad[0] == pytest.approx(2 * grad[1], rel=1e-5)


# ---------------------------------------------------------------------- repair (unit)
def _fake_losses(costs, rows=400, seed=0):
    """evaluate(dims): per-example losses whose mean is sum_m costs[m] / dims[m] (+ fixed noise),
    so shrinking field m from a to b costs costs[m] x (1/b - 1/a)."""
    noise = np.random.default_rng(seed).normal(0, 0.01, rows)

    def evaluate(dims):
        return 0.5 + noise + sum(c / d for c, d in zip(costs, dims))
    return evaluate


def test_repair_shrinks_the_cheapest_loss_per_parameter_first_and_never_exceeds():
    vocab = [100, 100, 10, 1000]
    cands = [DIMS] * 4
    costs = [0.5, 0.01, 0.5, 0.02]
    names = [f"f{i}" for i in range(4)]
    start = (32, 32, 32, 32)
    full = sum(v * 32 for v in vocab)
    budget = 28_000
    out = budget_lib.fit_budget(_fake_losses(costs), start, cands, vocab, budget, names,
                                fill=False)
    steps = out["repair"]
    # per parameter: f3 (vocab 1000, cost 0.02) and f1 (vocab 100, cost 0.01) are cheapest
    score = {n: costs[i] * (1 / 24 - 1 / 32) / (vocab[i] * 8) for i, n in enumerate(names)}
    assert steps[0]["field"] == min(score, key=score.get) == "f3"
    assert steps[0] == {"field": "f3", "from": 32, "to": 24, "params_saved": 8000,
                        "valid_loss_delta": pytest.approx(0.02 * (1 / 24 - 1 / 32))}
    assert budget_lib.params_of(out["dims"], vocab) <= budget < full
    assert not out["fill"]
    # every budget from the smallest model up is met, and never by more shrinking than needed:
    # undoing the last repair step goes over
    for budget in (2 * sum(vocab), 5000, 12_345, 40_000, full):
        out = budget_lib.fit_budget(_fake_losses(costs), start, cands, vocab, budget, names,
                                    fill=False)
        assert budget_lib.params_of(out["dims"], vocab) <= budget
        if out["repair"]:
            last = out["repair"][-1]
            assert budget_lib.params_of(out["dims"], vocab) + last["params_saved"] > budget
    with pytest.raises(ValueError, match="smallest"):
        budget_lib.fit_budget(_fake_losses(costs), start, cands, vocab, 2 * sum(vocab) - 1, names)


def test_fill_grows_only_where_the_loss_improves_and_stays_within():
    vocab = [100, 100, 100]
    costs = [1.0, 0.0, 0.0]  # only f0 gains from a larger dimension
    out = budget_lib.fit_budget(_fake_losses(costs), (2, 2, 2), [DIMS] * 3, vocab, 2000,
                                ["a", "b", "c"])
    assert out["dims"] == [16, 2, 2] and not out["repair"]
    assert [s["to"] for s in out["fill"]] == [8, 16]  # 24 would exceed 2000
    assert all(s["params_saved"] < 0 and s["valid_loss_delta"] < 0 for s in out["fill"])
    assert all(s["improves"] for s in out["fill"])


def test_fill_reaches_the_budget_window_when_no_move_improves():
    vocab = [100, 1000, 10]
    costs = [0.0, 0.0, 0.0]  # no field gains from a larger dimension
    for budget in (5_300, 20_000, 36_000):
        out = budget_lib.fit_budget(_fake_losses(costs), (2, 2, 2), [DIMS] * 3, vocab, budget,
                                    ["a", "b", "c"])
        used = budget_lib.params_of(out["dims"], vocab)
        assert 0.95 * budget <= used <= budget, (budget, out["dims"])
        assert out["fill"] and not any(s["improves"] for s in out["fill"])
    # a move that improves is taken before the cheapest non-improving one
    out = budget_lib.fit_budget(_fake_losses([0.0, 0.0, 1.0]), (2, 2, 2), [DIMS] * 3, vocab,
                                20_000, ["a", "b", "c"])
    assert out["fill"][0]["field"] == "c" and out["fill"][0]["improves"]
    # the candidates' granularity can leave it below the window, never over the budget
    out = budget_lib.fit_budget(_fake_losses(costs), (2, 2, 2), [DIMS] * 3, [1000, 1000, 1000],
                                7_000, ["a", "b", "c"])
    assert budget_lib.params_of(out["dims"], [1000] * 3) == 6_000


def test_fill_exchanges_when_no_single_step_fits():
    """A large field whose next candidate does not fit is grown by shrinking a small one, when
    that lowers the validation loss; never over the budget, and the record says what paid."""
    vocab = [1000, 500, 10]
    # a gains most from a larger dimension; b a little; c not at all
    costs = [1.0, 0.05, 0.0]
    start = (8, 32, 32)  # 8,000 + 16,000 + 320 = 24,320: under 95% of the budget
    budget = 28_500  # a 8 -> 16 needs 8,000 more: fits only if b gives up 3,820 (32 -> 24)
    out = budget_lib.fit_budget(_fake_losses(costs), start, [DIMS] * 3, vocab, budget,
                                ["a", "b", "c"])
    assert out["dims"] == [16, 24, 32], out
    step = out["fill"][0]
    assert step["field"] == "a" and (step["from"], step["to"]) == (8, 16)
    assert step["exchange"] == {"field": "b", "from": 32, "to": 24}
    assert step["params_saved"] == -(8000 - 4000) and step["improves"]
    assert step["valid_loss_delta"] == pytest.approx(1.0 * (1 / 16 - 1 / 8)
                                                     + 0.05 * (1 / 24 - 1 / 32))
    assert budget_lib.params_of(out["dims"], vocab) == 28_320 <= budget
    rec = budget_lib.record(budget_lib.Budget(budget, "budget", budget, 3020, 48320),
                            28_320, out, 0.0, 0.0)
    assert "fill: a 8 -> 16, b 32 -> 24 (-4,000 params saved" in budget_lib.format_record(rec)
    # no exchange that would raise the loss: f1 worth more than f0's growth keeps its size
    out = budget_lib.fit_budget(_fake_losses([0.01, 1.0, 0.0]), start, [DIMS] * 3, vocab,
                                budget, ["a", "b", "c"])
    assert not any("exchange" in s for s in out["fill"]) and out["dims"][:2] == [8, 32]


# ---------------------------------------------------------------------- refusals
@pytest.mark.parametrize("flag,value,message", [
    ("--budget", "0", "--budget: must be more than 0"),
    ("--budget", "-5", "--budget: must be more than 0"),
    ("--budget", "abc", "--budget: expected a number"),
    ("--budget", "10.5", "--budget: a whole number"),
    ("--budget_ratio", "0", "--budget_ratio: must be more than 0"),
    ("--budget_ratio", "1.5", "--budget_ratio: a share of the largest model"),
    ("--budget_ratio", "nan", "--budget_ratio: must be more than 0"),
    ("--budget_bytes", "-1", "--budget_bytes: must be more than 0 bytes"),
    ("--budget_bytes", "lots", "--budget_bytes: cannot parse"),
    ("--budget", "463", f"smallest possible model, {SMALLEST:,} embedding parameters"),
    ("--budget_ratio", "0.05", f"smallest possible model, {SMALLEST:,} embedding parameters"),
    ("--budget_bytes", "1000",
     f"{SMALLEST:,} embedding parameters = {4 * SMALLEST:,} bytes as float32"),
])
def test_bad_budgets_are_refused_before_anything_is_written(data, tmp_path, flag, value,
                                                            message, capsys):
    from pipeline import search

    model_dir = tmp_path / "search"
    rc = search.main(["--data_dir", str(data), "--model_dir", str(model_dir), "--quiet",
                      "--preset", "default", flag, value])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and flag in err, err
    assert not model_dir.exists()


def test_budget_flags_are_exclusive_and_config_budgets_too(data, tmp_path, capsys):
    from pipeline import run, search

    argv = ["--data_dir", str(data), "--model_dir", str(tmp_path / "s"), "--budget", "1000",
            "--budget_ratio", "0.5"]
    with pytest.raises(SystemExit) as exc:
        search.main(argv)
    assert exc.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="budget and budget_ratio are alternatives"):
        experiment.resolve("default", set_overrides=["search.budget=1000",
                                                     "search.budget_ratio=0.5"])
    # a flag replaces the config's budget rather than clashing with it
    cfg = experiment.resolve("default", set_overrides=["search.budget_ratio=0.5"]
                             + budget_lib.overrides(type("A", (), {"budget": "2000"})()))
    assert (cfg.search.budget, cfg.search.budget_ratio) == (2000, 0.0)
    # pipeline.run: with --param_costs refused, nothing written
    work = tmp_path / "run"
    rc = run.main(["--workdir", str(work), "--demo", "--budget_ratio", "0.25",
                   "--param_costs", "0.01,0.05"])
    err = capsys.readouterr().err
    assert rc == 2 and "--budget_ratio and --param_costs do not combine" in err, err
    assert not work.exists()
    rc = run.main(["--workdir", str(work), "--demo", "--budget", "-3"])
    assert rc == 2 and "--budget: must be more than 0" in capsys.readouterr().err
    assert not work.exists()
