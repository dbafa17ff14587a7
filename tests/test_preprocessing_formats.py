"""Pure-Python parts of the preprocessing job: token rules, line parsers, split, config."""
import math

import pytest

from configs.features import MISSING_TOKEN, categorical_token, dataset_spec, numeric_token
from configs.loader import ConfigError
from configs.preprocess import PreprocessConfig, load_preprocess_config, resolve
from preprocessing import formats
from preprocessing.formats import MalformedRecord

# ----------------------------------------------------------------------------- token rules

@pytest.mark.parametrize("raw, token", [
    ("", MISSING_TOKEN), ("  ", MISSING_TOKEN), (None, MISSING_TOKEN),
    ("0", "0"), ("1", "1"), ("2", "2"), ("-1", "-1"), ("1.5", "1"), ("-0.5", "-1"),
    ("3", "L1"), ("100", "L21"), (" 1382 ", "L52"), ("2.5", "L0"),
])
def test_numeric_token_buckets(raw, token):
    assert numeric_token(raw) == token


def test_numeric_token_bucket_formula():
    for v in (3, 10, 1000, 123456):
        assert numeric_token(str(v)) == "L" + str(int(math.floor(math.log(v) ** 2)))


@pytest.mark.parametrize("raw", ["abc", "1e400", "nan", "inf", "0x10"])
def test_numeric_token_rejects_non_numbers(raw):
    with pytest.raises(ValueError):
        numeric_token(raw)


def test_categorical_token_rules():
    assert categorical_token("") == MISSING_TOKEN
    assert categorical_token(" \t") == MISSING_TOKEN
    assert categorical_token(" 68fd1e64 ") == "68fd1e64"
    assert categorical_token("a\tb\nc\rd") == "a b c d"


# ----------------------------------------------------------------------------- parsers

def _criteo_line(label="1", ints=None, cats=None):
    ints = ints if ints is not None else ["1", "", "100"] + ["0"] * 10
    cats = cats if cats is not None else ["68fd1e64", ""] + ["aa"] * 24
    return "\t".join([label] + ints + cats)


def test_criteo_parser_golden():
    parser = formats.line_parser(dataset_spec("criteo"))
    tokens, label = parser(_criteo_line())
    assert label == 1.0
    assert len(tokens) == 39
    assert tokens[:4] == ("1", MISSING_TOKEN, "L21", "0")
    assert tokens[13:16] == ("68fd1e64", MISSING_TOKEN, "aa")


@pytest.mark.parametrize("line, reason", [
    ("1\t2\t3", "expected 40 '\\t'-separated columns in a Criteo row, got 3"),
    (_criteo_line(ints=["1", "x7"] + ["0"] * 11), "field I2: non-numeric value 'x7'"),
    (_criteo_line(label="2"), "bad label '2'"),
    (_criteo_line() + "\t", "got 41"),
])
def test_criteo_parser_malformed(line, reason):
    parser = formats.line_parser(dataset_spec("criteo"))
    with pytest.raises(MalformedRecord) as info:
        parser(line)
    assert reason in str(info.value)


AVAZU_HEADER = ("id,click,hour,C1,banner_pos,site_id,site_domain,site_category,app_id,app_domain,"
                "app_category,device_id,device_ip,device_model,device_type,device_conn_type,C14,"
                "C15,C16,C17,C18,C19,C20,C21")
AVAZU_ROW = ("10000094,1,14102117,1005,0,1fbe01fe,f3845767,28905ebd,ecad2386,7801e8d9,07d7df22,"
             "a99f214a,ddd2926e,44956a24,1,2,15706,320,50,1722,0,35,-1,79")


def test_avazu_parser_header_and_derived_fields():
    spec = dataset_spec("avazu")
    parser = formats.line_parser(spec)
    assert parser(AVAZU_HEADER, 1) is None
    tokens, label = parser(AVAZU_ROW, 2)
    assert label == 1.0
    got = dict(zip(spec.field_names, tokens))
    assert got["hour_of_day"] == "17"
    assert got["weekday"] == "1"  # 2014-10-21 was a Tuesday
    assert got["C1"] == "1005" and got["C20"] == "-1" and got["site_id"] == "1fbe01fe"
    assert "id" not in got and "hour" not in got and len(tokens) == 23


def test_avazu_parser_bad_hour_and_columns():
    parser = formats.line_parser(dataset_spec("avazu"))
    with pytest.raises(MalformedRecord, match="hour: '14133100' is not YYMMDDHH"):
        parser(AVAZU_ROW.replace("14102117", "14133100"))
    with pytest.raises(MalformedRecord, match="got 23"):
        parser(AVAZU_ROW.rsplit(",", 1)[0])


def test_frappe_parser():
    parser = formats.line_parser(dataset_spec("frappe"))
    line = "-1 204:1 4798:1 5041:1 5046:1 5053:1 5055:1 5058:1 5060:1 5073:1 5183:1"
    tokens, label = parser(line)
    assert label == 0.0
    assert tokens == ("204", "4798", "5041", "5046", "5053", "5055", "5058", "5060", "5073",
                      "5183")
    assert parser("1" + line[2:])[1] == 1.0
    with pytest.raises(MalformedRecord, match="got 9 features"):
        parser(line.rsplit(" ", 1)[0])
    with pytest.raises(MalformedRecord, match="bad label '2'"):
        parser("2" + line[2:])
    with pytest.raises(MalformedRecord, match="feature 3 \\(daytime\\)"):
        parser(line.replace("5041:1", "abc"))


def test_csv_parser_from_config():
    spec = dataset_spec("csv", {"fields": [{"name": "a"}, {"name": "n", "kind": "numeric"}],
                                "columns": ["y", "a", "n", "unused"], "label_column": "y",
                                "delimiter": ";", "header": True,
                                "positive_labels": ["yes"], "negative_labels": ["no"]})
    parser = formats.line_parser(spec)
    assert parser("y;a;n;unused", 1) is None
    assert parser('yes;"x;y";150;zz', 2) == (("x;y", "L25"), 1.0)
    assert parser("no;;;", 3) == ((MISSING_TOKEN, MISSING_TOKEN), 0.0)
    with pytest.raises(MalformedRecord, match="expected 4"):
        parser("no;a;1", 4)
    with pytest.raises(MalformedRecord, match="field n: non-numeric"):
        parser("no;a;b;c", 5)


def test_movielens_100k_tables():
    tables = formats.MovieLensTables(dataset_spec("movielens-100k"), "movielens-100k")
    flags = ["0"] * 19
    flags[1] = flags[5] = "1"  # Action, Comedy
    user = tables.parse_user("7|57|M|administrator|91344")
    movie = tables.parse_movie("|".join(["42", "Clerks (1994)", "01-Jan-1994", "", "http://x"]
                                        + flags))
    assert user == ("7", ("M", "57", "administrator", "91344"))
    assert movie == ("42", ("1994", "Action|Comedy"))
    tokens, label = tables.parse_rating("7\t42\t4\t881250949", dict([user]), dict([movie]))
    assert tokens == ("7", "42", "1994", "Action|Comedy", "M", "57", "administrator", "91344")
    assert label == 1.0
    assert tables.parse_rating("7\t42\t3\t0", dict([user]), dict([movie]))[1] == 0.0
    with pytest.raises(MalformedRecord, match="userId '8' is not in the users table"):
        tables.parse_rating("8\t42\t3\t0", dict([user]), dict([movie]))
    with pytest.raises(MalformedRecord, match="bad rating 'x'"):
        tables.parse_rating("7\t42\tx\t0", dict([user]), dict([movie]))


def test_movielens_1m_tables():
    tables = formats.MovieLensTables(dataset_spec("movielens-1m"), "movielens-1m")
    assert tables.parse_user("1::F::1::10::48067") == ("1", ("F", "1", "10", "48067"))
    assert tables.parse_movie("1::Toy Story (1995)::Animation|Children's|Comedy") == (
        "1", ("1995", "Animation|Children's|Comedy"))
    assert formats.title_year("Untitled") == ""
    with pytest.raises(MalformedRecord, match="expected 3 '::'-separated"):
        tables.parse_movie("1::Toy Story (1995)")


def test_field_subset_and_unknown_field():
    spec = dataset_spec("criteo", {"fields": [{"name": "C3"}, {"name": "I1", "kind": "numeric"}]})
    parser = formats.line_parser(spec)
    assert parser(_criteo_line())[0] == ("aa", "1")
    with pytest.raises(ConfigError, match=r"field\(s\) \['nope'\] are not columns"):
        formats.line_parser(dataset_spec("criteo", {"fields": [{"name": "nope"}]}))


# ----------------------------------------------------------------------------- split, config

def test_split_index_deterministic_and_proportional():
    fractions = (0.8, 0.1, 0.1)
    got = [formats.split_index("part-0.txt", i, fractions, 0) for i in range(1, 20001)]
    assert got == [formats.split_index("part-0.txt", i, fractions, 0) for i in range(1, 20001)]
    share = [got.count(k) / len(got) for k in range(3)]
    assert abs(share[0] - 0.8) < 0.015 and abs(share[1] - 0.1) < 0.01
    other_seed = [formats.split_index("part-0.txt", i, fractions, 1) for i in range(1, 20001)]
    assert other_seed != got
    assert formats.split_index("a", 1, (1.0, 0.0, 0.0), 3) == 0


def test_preprocess_config_strict(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("split: {train: 0.5, valid: 0.25, test: 0.25, seed: 7}\n"
                    "num_shards: {train: 3}\nmax_bad_fraction: 0.2\n"
                    "dataset: {default_min_count: 4}\n")
    cfg = load_preprocess_config(str(path), max_bad_fraction=0.3)
    assert (cfg.split.train, cfg.split.seed, cfg.num_shards.train, cfg.num_shards.valid) == (
        0.5, 7, 3, 0)
    assert cfg.max_bad_fraction == 0.3
    spec, resolved, chash = resolve("criteo", cfg)
    assert spec.default_min_count == 4 and resolved["dataset"]["default_min_count"] == 4
    assert resolve("criteo", cfg)[2] == chash != resolve("criteo", PreprocessConfig())[2]
    path.write_text("splits: {train: 1.0}\n")
    with pytest.raises(ConfigError, match="unknown config key\\(s\\) splits"):
        load_preprocess_config(str(path))
    path.write_text("split: {train: 0.5, valid: 0.1, test: 0.1}\n")
    with pytest.raises(ConfigError, match="must sum to 1"):
        load_preprocess_config(str(path))
    path.write_text("dataset: {min_cnt: 3}\n")
    with pytest.raises(ConfigError, match="dataset.min_cnt"):
        resolve("criteo", load_preprocess_config(str(path)))
