"""Config loading: presets, YAML and --set overrides, strict unknown keys, round trips."""
import json

import pytest

from configs import experiment
from configs.features import (
    MISSING_TOKEN,
    DataSchema,
    FieldSchema,
    categorical_token,
    dataset_spec,
    numeric_token,
)
from configs.loader import ConfigError, config_hash, from_dict, parse_set_overrides, to_dict


def test_set_overrides_reach_nested_fields_with_types():
    cfg = experiment.resolve("movielens-100k", None, [
        "model.backbone=fm", "model.candidate_dims=[2,4,8]", "search.arch_update_every=5",
        "search.learning_rate=0.01", "search.variant=autodim_s"])
    assert cfg.model.backbone == "fm"
    assert cfg.model.candidate_dims == (2, 4, 8)
    assert cfg.search.arch_update_every == 5
    assert cfg.search.learning_rate == pytest.approx(0.01)
    assert cfg.search.variant == "autodim_s"
    # the preset's adaptive values survive untouched overrides
    assert cfg.search.temperature == "anneal"


def test_paper_preset_is_the_papers_recipe():
    cfg = experiment.resolve("paper")
    assert cfg.model.candidate_dims == (2, 8, 16, 24, 32)
    assert cfg.model.candidate_norm == "batchnorm"
    assert (cfg.model.lookup, cfg.model.unify) == ("weight_sharing", "linear")  # AD-2
    assert (cfg.search.batch_size, cfg.search.learning_rate, cfg.search.arch_update_every) == (
        2000,
        1e-3,
        10,
    )
    assert cfg.search.temperature == "paper" and cfg.search.min_arch_updates == 0


@pytest.mark.parametrize("preset", ["default", "movielens-100k", "frappe", "criteo", "synthetic"])
def test_adaptive_presets_search_with_raw_zero_padded_candidates(preset):
    cfg = experiment.resolve(preset)
    assert (cfg.model.lookup, cfg.model.unify, cfg.model.candidate_norm) == (
        "weight_sharing", "zero_pad", "none")
    assert cfg.retrain.unify == "linear"  # retraining and the FDE baselines are unchanged


@pytest.mark.parametrize("override, needle", [
    ("model.bakbone=fm", "model.bakbone"),
    ("serch.batch_size=3", "serch"),
    ("model.backbone=transformer", "transformer"),
    ("model.candidate_dims=[8,2]", "strictly increasing"),
    ("search.batch_size=0", "batch_size=0"),
    ("search.variant=bogus", "bogus"),
    ("search.arch_update_every=abc", "abc"),
])
def test_bad_overrides_are_errors_that_name_the_key(override, needle):
    with pytest.raises(ConfigError, match=needle):
        experiment.resolve(None, None, [override])


def test_yaml_file_strict_and_safe(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("model:\n  backbone: nfm\nsearch:\n  seed: 7\n")
    cfg = experiment.resolve("default", str(good))
    assert cfg.model.backbone == "nfm" and cfg.search.seed == 7
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  backbone: nfm\n  hidden: 3\n")
    with pytest.raises(ConfigError, match="model.hidden"):
        experiment.resolve("default", str(bad))
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("model: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        experiment.resolve("default", str(unsafe))
    with pytest.raises(ConfigError, match="does not exist"):
        experiment.resolve("default", str(tmp_path / "missing.yaml"))


def test_round_trip_and_hash_stability():
    cfg = experiment.resolve("frappe", None, ["model.backbone=autoint"])
    again = from_dict(experiment.ExperimentConfig, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)
    assert config_hash(experiment.resolve("frappe")) != config_hash(cfg)


def test_parse_set_overrides_nested():
    assert parse_set_overrides(["a.b=1", "a.c=x", "d=[1, 2]"]) == {
        "a": {"b": 1, "c": "x"},
        "d": [1, 2],
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_set_overrides(["nokey"])


def test_token_rules_on_hand_written_values():
    assert numeric_token("") == MISSING_TOKEN
    assert numeric_token("  ") == MISSING_TOKEN
    assert numeric_token("0") == "0"
    assert numeric_token("2") == "2"
    assert numeric_token("-3") == "-3"
    assert numeric_token("1.5") == "1"
    assert numeric_token("-0.5") == "-1"
    assert numeric_token("3") == "L1"      # floor(ln(3)^2) = floor(1.207) = 1
    assert numeric_token("100") == "L21"   # floor(4.605^2) = 21
    assert numeric_token("2.5") == "L0"    # floor(0.916^2 = 0.84) = 0
    for bad in ("abc", "nan", "inf", "1e999"):
        with pytest.raises(ValueError):
            numeric_token(bad)
    assert categorical_token("") == MISSING_TOKEN
    assert categorical_token(" 68fd1e64 ") == "68fd1e64"
    assert categorical_token("a\tb\nc") == "a b c"


def test_dataset_presets_and_csv_spec():
    assert len(dataset_spec("criteo").fields) == 39
    assert dataset_spec("criteo").default_min_count == 10
    assert len(dataset_spec("avazu").fields) == 23
    assert dataset_spec("movielens-100k").field_names[0] == "userId"
    spec = dataset_spec("csv", {"fields": [{"name": "a"}, {"name": "n", "kind": "numeric"}],
                                "columns": ["y", "a", "n"], "label_column": "y", "delimiter": ";"})
    assert spec.delimiter == ";" and spec.fields[1].kind == "numeric"
    with pytest.raises(ConfigError, match="not among columns"):
        dataset_spec("csv", {"fields": [{"name": "zz"}], "columns": ["y"], "label_column": "y"})
    with pytest.raises(ConfigError, match="unknown dataset"):
        dataset_spec("imagenet")


def test_data_schema_round_trip_and_tamper_detection(tmp_path):
    schema = DataSchema(dataset="criteo", fields=(FieldSchema("I1", "numeric", 40, 10),
                                                   FieldSchema("C1", "categorical", 1000, 10)),
                        splits={"train": 8, "valid": 1, "test": 1}, label_rate=0.25,
                        config={"a": 1}, config_hash="abc")
    schema.save(tmp_path)
    loaded = DataSchema.load(tmp_path)
    assert loaded == schema and loaded.schema_hash == schema.schema_hash
    data = json.loads((tmp_path / "schema.json").read_text())
    data["fields"][1]["vocab_size"] = 999
    (tmp_path / "schema.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="edited by hand"):
        DataSchema.load(tmp_path)
    with pytest.raises(ConfigError, match="not the output of"):
        DataSchema.load(tmp_path / "nowhere")


@pytest.mark.parametrize("override, key, shown", [
    ("search.learning_rate=.inf", "search.learning_rate", "inf"),
    ("search.learning_rate=.nan", "search.learning_rate", "nan"),
    ("search.param_cost=-.inf", "search.param_cost", "-inf"),
    ("search.temperature_decay=inf", "search.temperature_decay", "'inf'"),
    ("retrain.max_epochs=.inf", "retrain.max_epochs", "inf"),
    ("search.batch_size=.inf", "search.batch_size", "inf"),
    ("model.candidate_dims=[2,.inf]", "model.candidate_dims[1]", "inf"),
])
def test_non_finite_numbers_are_refused_naming_key_and_value(override, key, shown):
    with pytest.raises(ConfigError) as err:
        experiment.resolve("default", None, [override])
    assert f"{key}: {shown} is not a finite number" in str(err.value)


def test_non_finite_numbers_in_yaml_files_are_refused(tmp_path):
    from configs.preprocess import load_preprocess_config

    search = tmp_path / "search.yaml"
    search.write_text("search:\n  arch_learning_rate: .NaN\n")
    with pytest.raises(ConfigError, match=r"search\.arch_learning_rate: nan is not a finite"):
        experiment.resolve("default", str(search))
    # the preprocessing config goes through the same loader, its untyped `dataset:` section too
    for text, needle in [
        ("max_bad_fraction: .inf\n", r"max_bad_fraction: inf "),
        ("split: {train: .nan, valid: 0.1, test: 0.1}\n", r"split\.train: nan "),
        ("dataset: {default_min_count: .inf}\n", r"dataset\.default_min_count: inf "),
        ("num_shards: {train: -.inf}\n", r"num_shards\.train: -inf "),
    ]:
        path = tmp_path / "pre.yaml"
        path.write_text(text)
        with pytest.raises(ConfigError, match=needle + "is not a finite number"):
            load_preprocess_config(str(path))
    # a config.json written with NaN (json allows it) is refused when read back
    data = to_dict(experiment.resolve("default"))
    data["search"]["learning_rate"] = float("nan")
    with pytest.raises(ConfigError, match=r"search\.learning_rate: nan is not a finite"):
        from_dict(experiment.ExperimentConfig, json.loads(json.dumps(data)))
    # finite values still load
    assert (
        experiment.resolve("default", None, ["search.learning_rate=1e-2"]).search.learning_rate
        == 0.01
    )
