"""The Beam preprocessing job: transforms with TestPipeline, whole runs with the in-process
DirectRunner on hand-written fixtures (written to tmp_path)."""
import glob
import gzip
import json
import os
import subprocess
import sys

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from configs.features import MISSING_TOKEN, DataSchema, dataset_spec
from preprocessing import encoding, example_codec, parsing, vocabulary, writing
from preprocessing import run as run_mod
from preprocessing.formats import line_parser
from preprocessing.job import InputError
from preprocessing.parsing import LineParse

INMEM = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _criteo(label, i1, c1, c2="x"):
    return "\t".join([str(label), str(i1)] + [""] * 12 + [c1, c2] + [""] * 24)


def _run(dataset, inp, out, *extra):
    return run_mod.run(["--dataset", dataset, "--input", str(inp), "--data_dir", str(out),
                        *extra, *INMEM])


def _records(directory):
    from tensorflow.core.example import example_pb2

    out = []
    for path in sorted(glob.glob(os.path.join(directory, "part-*.tfrecord.gz"))):
        import tensorflow as tf
        for raw in tf.data.TFRecordDataset(path, compression_type="GZIP").as_numpy_iterator():
            out.append(raw)
    return out, example_pb2


def _decode(raw, example_pb2):
    ex = example_pb2.Example.FromString(raw)
    return {k: (v.int64_list.value[0] if v.HasField("int64_list") else v.float_list.value[0])
            for k, v in ex.features.feature.items()}


# ----------------------------------------------------------------------------- PTransforms

def test_parse_vocab_encode_golden_with_counters():
    """Hand-written Criteo lines through ParseRecords, ComputeVocabularies and ParseRecords
    again, encoding (the job's two passes)."""
    spec = dataset_spec("criteo", {"fields": [{"name": "I1", "kind": "numeric"},
                                              {"name": "C1", "min_count": 2}],
                                   "default_min_count": 1})
    lines = [_criteo(1, 5, "b"), _criteo(0, 5, "a"), _criteo(0, "", "b"), _criteo(1, 0, "c"),
             _criteo(0, "zz", "a"), "1\t2", ""]
    elements = [(0, "f.txt", i + 1, ln.encode()) for i, ln in enumerate(lines)]
    elements.append((0, "f.txt", 9, b"\xff\xfe" + lines[0].encode()))
    p = test_pipeline.TestPipeline(argv=INMEM)
    lines_in = p | beam.Create(elements)
    parsed = lines_in | "Count" >> parsing.ParseRecords(LineParse(line_parser(spec)), "utf-8",
                                                       report_counts=False)
    assert_that(parsed.train, equal_to([(("L2", "b"), 1.0), (("L2", "a"), 0.0),
                                        ((MISSING_TOKEN, "b"), 0.0), (("0", "c"), 1.0)]),
                label="train")
    assert_that(parsed.deadletter | beam.Map(lambda d: (d["line"], d["reason"][:24])),
                equal_to([(5, "field I1: non-numeric va"), (6, "expected 40 '\\t'-separat"),
                          (9, "undecodable bytes (utf-8")]), label="dead")
    vocabs = parsed.train | vocabulary.ComputeVocabularies(["I1", "C1"], [1, 2])
    # I1: L0 x2, 0 x1, __missing__ x1 (ties by bytes: "0" < "__missing__"); C1: only b reaches 2.
    assert_that(vocabs, equal_to([{"I1": [("L2", 2), ("0", 1), (MISSING_TOKEN, 1)],
                                   "C1": [("b", 2)]}]), label="vocab")
    encoded = lines_in | "Encode" >> encoding.ParseAndEncode(
        LineParse(line_parser(spec)), "utf-8", ["I1", "C1"], vocabs)

    def ids(raw):
        from tensorflow.core.example import example_pb2
        f = example_pb2.Example.FromString(raw).features.feature
        return (f["I1"].int64_list.value[0], f["C1"].int64_list.value[0],
                f["label"].float_list.value[0])

    assert_that(encoded.train | beam.Map(len), equal_to([1] * 4), label="one_per_line")
    assert_that(encoded.train | beam.FlatMap(lambda examples: examples) | beam.Map(ids),
                equal_to([(1, 1, 1.0), (1, 0, 0.0), (3, 1, 0.0), (2, 0, 1.0)]), label="ids")
    result = p.run()
    result.wait_until_finish()

    def counter(name):
        found = result.metrics().query(beam.metrics.MetricsFilter().with_name(name))["counters"]
        return sum(c.committed for c in found if c.key.metric.namespace == "preprocess")

    assert counter("read") == 7 and counter("deadletter") == 3 and counter("blank") == 1
    assert counter("written_train") == 4


# ----------------------------------------------------------------------------- whole runs

@pytest.fixture
def criteo_file(tmp_path):
    rows = [_criteo(int(i % 3 == 0), i % 7, f"c{i % 4}", f"d{i % 2}") for i in range(200)]
    rows[10] = "only\tthree\tcols"
    path = tmp_path / "in" / "day0.txt"
    path.parent.mkdir()
    path.write_text("\n".join(rows) + "\n")
    return path


def test_criteo_run_outputs_schema_vocab_and_tfrecords(criteo_file, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("dataset: {default_min_count: 1}\nnum_shards: {train: 2}\n")
    out = tmp_path / "out"
    res = _run("criteo", criteo_file, out, "--preprocess_config", str(cfg),
               "--max_bad_fraction", "0.1")
    st = json.loads((out / "stats.json").read_text())
    assert st["rows_read"] == 200 and st["rows_deadlettered"] == 1
    assert st["rows_written_total"] == 199 == sum(st["rows_written"].values())
    schema = DataSchema.load(out)
    assert schema.splits == st["rows_written"] and schema.config_hash == res.schema.config_hash
    assert schema.vocab_sizes["C1"] == 5 and schema.vocab_sizes["C2"] == 3
    assert schema.vocab_sizes["I3"] == 2  # only __missing__
    assert schema.read_vocab(out, "I3") == [MISSING_TOKEN]
    c1 = (out / "vocab" / "C1.txt").read_text().splitlines()
    assert sorted(c1) == sorted(set(c1)) and all("\t" in ln for ln in c1)
    assert [int(ln.split("\t")[1]) for ln in c1] == sorted(
        [int(ln.split("\t")[1]) for ln in c1], reverse=True)
    assert len(glob.glob(str(out / "train" / "part-*.tfrecord.gz"))) == 2
    dead = [json.loads(ln) for f in glob.glob(str(out / "deadletter" / "*"))
            for ln in open(f)]
    assert [(d["line"], d["raw"], os.path.basename(d["file"])) for d in dead] == [
        (11, "only\tthree\tcols", "day0.txt")]
    # Read back with tf.data and check ids against the vocabulary files.
    recs, pb = _records(out / "train")
    assert len(recs) == st["rows_written"]["train"]
    c1_ids = {tok.split("\t")[0]: i + 1 for i, tok in enumerate(c1)}
    decoded = [_decode(r, pb) for r in recs]
    assert set(decoded[0]) == set(schema.field_names) | {"label"}
    assert {d["C1"] for d in decoded} == set(c1_ids.values())
    label_rate = sum(d["label"] for d in decoded) / len(decoded)
    assert abs(label_rate - schema.label_rate) < 1e-9
    assert not glob.glob(str(tmp_path / "out.*"))  # no temp/failed siblings left


def test_two_runs_identical(criteo_file, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _run("criteo", criteo_file, a, "--max_bad_fraction", "0.1")
    _run("criteo", criteo_file, b, "--max_bad_fraction", "0.1")
    for f in sorted(os.listdir(a / "vocab")):
        assert (a / "vocab" / f).read_bytes() == (b / "vocab" / f).read_bytes()
    assert (a / "schema.json").read_bytes() == (b / "schema.json").read_bytes()
    for split in ("train", "valid", "test"):
        assert sorted(_records(a / split)[0]) == sorted(_records(b / split)[0])
        # one input file: the shard files themselves are byte-identical (no name or time in the
        # GZIP header)
        shards = sorted(os.listdir(a / split))
        assert shards and shards == sorted(os.listdir(b / split))
        for shard in shards:
            assert (a / split / shard).read_bytes() == (b / split / shard).read_bytes(), shard


def test_refusals_and_errors(criteo_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        _run("criteo", criteo_file, out)
    with pytest.raises(InputError, match="no files match"):
        _run("criteo", tmp_path / "nothing*.txt", tmp_path / "o2")
    with pytest.raises(InputError, match=r"missing: \['u.user'\]"):
        (tmp_path / "ml").mkdir()
        (tmp_path / "ml" / "u.data").write_text("1\t1\t5\t0\n")
        (tmp_path / "ml" / "u.item").write_text("")
        _run("movielens-100k", tmp_path / "ml", tmp_path / "o3")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()
    _run("criteo", criteo_file, out, "--overwrite", "--max_bad_fraction", "0.1")
    assert DataSchema.load(out).splits["train"] > 0
    proc = subprocess.run([sys.executable, "-m", "preprocessing.run", "--dataset", "criteo",
                           "--input", str(tmp_path / "none*.txt"), "--data_dir",
                           str(tmp_path / "o4")], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 2 and "no files match" in proc.stderr  # a usage error
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_max_bad_fraction_fails_after_writing_dead_letters(criteo_file, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(run_mod.JobFailed,
                       match=r"exceed max_bad_fraction 0.10%.*are in (\S+)") as info:
        _run("criteo", criteo_file, out, "--max_bad_fraction", "0.001")
    assert not out.exists()
    failed = info.value.args[0].rsplit(" ", 1)[1]
    assert os.path.basename(failed).startswith("out.failed-")
    dead = [json.loads(ln) for f in glob.glob(os.path.join(failed, "deadletter", "*"))
            for ln in open(f)]
    assert [d["line"] for d in dead] == [11]
    assert json.loads(open(os.path.join(failed, "stats.json")).read())["rows_deadlettered"] == 1
    assert not glob.glob(str(tmp_path / "out.tmp-*"))


def test_avazu_frappe_csv_runs(tmp_path):
    from tests.test_preprocessing_formats import AVAZU_HEADER, AVAZU_ROW

    (tmp_path / "av.csv").write_text("\n".join(
        [AVAZU_HEADER] + [AVAZU_ROW.replace("10000094,1", f"{i},{i % 2}") for i in range(30)])
        + "\n")
    st = _run("avazu", tmp_path / "av.csv", tmp_path / "o1").stats
    assert (st["rows_read"], st["rows_written_total"], st["lines_skipped"]["header"]) == (30, 30, 1)
    assert st["vocab_sizes"]["site_id"] == 2 and st["vocab_sizes"]["hour_of_day"] == 2

    base = "204:1 4798:1 5041:1 5046:1 5053:1 5055:1 5058:1 5060:1 5073:1 5183:1"
    (tmp_path / "a.libfm").write_text("".join(f"{'1' if i % 4 == 0 else '-1'} {base}\n"
                                              for i in range(40)))
    with gzip.open(tmp_path / "b.libfm.gz", "wt") as fh:  # compressed input is read too
        fh.write(f"1 {base}\n-1 {base.rsplit(' ', 1)[0]}\n")
    res = _run("frappe", tmp_path / "*.libfm*", tmp_path / "o2", "--max_bad_fraction", "0.05")
    dead = [json.loads(ln) for f in glob.glob(str(tmp_path / "o2" / "deadletter" / "*"))
            for ln in open(f)]
    assert [(os.path.basename(d["file"]), d["line"]) for d in dead] == [("b.libfm.gz", 2)]
    assert (res.stats["rows_read"], res.stats["rows_deadlettered"]) == (42, 1)
    assert res.schema.vocab_sizes == {n: 2 for n in res.schema.field_names}

    (tmp_path / "d.tsv").write_text("y|a|n\n"
                                    + "".join(f"{i % 2}|t{i % 3}|{i}\n" for i in range(20)))
    cfg = tmp_path / "csv.yaml"
    cfg.write_text("dataset:\n  fields: [{name: a}, {name: n, kind: numeric}]\n"
                   "  columns: [y, a, n]\n  label_column: y\n  delimiter: '|'\n  header: true\n")
    res = _run("csv", tmp_path / "d.tsv", tmp_path / "o3", "--preprocess_config", str(cfg))
    assert res.stats["rows_read"] == 20 and res.schema.vocab_sizes["a"] == 4
    assert res.schema.config["dataset"]["delimiter"] == "|"


def test_movielens_100k_and_1m_runs(tmp_path):
    d = tmp_path / "ml100k"
    d.mkdir()
    (d / "u.user").write_text("1|24|M|technician|85711\n2|53|F|other|94043\n")
    flags = "|".join(["0"] * 8 + ["1"] + ["0"] * 10)  # Drama
    (d / "u.item").write_bytes(f"1|Caf\xe9 (1995)|01-Jan-1995||http://x|{flags}\n"
                               f"2|No Year|||http://y|{flags}\n".encode("latin-1"))
    (d / "u.data").write_text("1\t1\t5\t1\n2\t1\t2\t2\n1\t2\t4\t3\n3\t1\t5\t4\n")
    (d / "u1.base").write_text("ignored\n")
    cfg = tmp_path / "all_train.yaml"
    cfg.write_text("split: {train: 1.0, valid: 0.0, test: 0.0}\n")
    res = _run("movielens-100k", d, tmp_path / "o1", "--max_bad_fraction", "0.3",
               "--preprocess_config", str(cfg))
    st = res.stats
    assert (st["rows_read"], st["rows_written_total"], st["rows_deadlettered"]) == (4, 3, 1)
    assert st["side_tables"]["rows_read"] == 4
    assert res.schema.vocab_sizes == {"userId": 3, "movieId": 3, "year": 3, "genres": 2,
                                      "gender": 3, "age": 3, "occupation": 3, "zip": 3}
    assert DataSchema.load(tmp_path / "o1").read_vocab(tmp_path / "o1", "genres") == ["Drama"]

    d = tmp_path / "ml1m"
    d.mkdir()
    (d / "users.dat").write_text("1::F::1::10::48067\n")
    (d / "movies.dat").write_bytes("1::Toy Story (1995)::Animation|Comedy\n".encode("latin-1"))
    (d / "ratings.dat").write_text("1::1::5::978300760\n1::1::3::978300761\n")
    res = _run("movielens-1m", str(d / "*.dat"), tmp_path / "o2")
    assert res.stats["rows_written_total"] == 2 and res.schema.vocab_sizes["genres"] == 2


def _tfds_examples():
    def ex(user, movie, title, genres, rating, male, age, occ, zip_code):
        return {"movie_id": movie, "movie_title": title, "movie_genres": genres,
                "user_id": user, "user_rating": rating, "timestamp": 0, "user_gender": male,
                "bucketized_user_age": age, "user_occupation_label": 0,
                "user_occupation_text": occ, "user_zip_code": zip_code}

    return [ex("1", "10", "Heat (1995)", [0, 16], 5.0, True, 25.0, "writer", "02138"),
            ex("2", "10", "Heat (1995)", [0, 16], 2.0, False, 18.0, "artist", "94043"),
            ex("1", "11", "Untitled", [], 4.0, True, 25.0, "writer", "02138"),
            ex("3", "12", "Bad (2000)", [4], 7.0, True, 35.0, "doctor", "10001")]


def test_movielens_tfds_path_with_mock_data(tmp_path):
    import numpy as np
    import tensorflow as tf
    import tensorflow_datasets as tfds

    examples = _tfds_examples()

    def as_dataset(self, *args, **kwargs):
        def gen():
            for e in examples:
                yield {**e, "movie_genres": np.array(e["movie_genres"], np.int64)}
        sig = {k: tf.TensorSpec((), tf.string) for k in ("movie_id", "movie_title", "user_id",
                                                           "user_occupation_text", "user_zip_code")}
        sig.update({"movie_genres": tf.TensorSpec((None,), tf.int64),
                    "user_rating": tf.TensorSpec((), tf.float32),
                    "timestamp": tf.TensorSpec((), tf.int64),
                    "user_gender": tf.TensorSpec((), tf.bool),
                    "bucketized_user_age": tf.TensorSpec((), tf.float32),
                    "user_occupation_label": tf.TensorSpec((), tf.int64)})
        return tf.data.Dataset.from_generator(gen, output_signature=sig)

    cfg = tmp_path / "c.yaml"
    cfg.write_text("split: {train: 1.0, valid: 0.0, test: 0.0}\n")
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        res = _run("movielens-1m", "tfds:movielens/1m-ratings", tmp_path / "o",
                   "--preprocess_config", str(cfg), "--max_bad_fraction", "0.5")
    st = res.stats
    assert (st["rows_read"], st["rows_written_total"], st["rows_deadlettered"]) == (4, 3, 1)
    assert st["label_rate"]["train"] == pytest.approx(2 / 3)
    out = tmp_path / "o"
    schema = DataSchema.load(out)
    assert schema.read_vocab(out, "genres") == ["Action|Thriller", MISSING_TOKEN]
    assert schema.read_vocab(out, "year") == ["1995", MISSING_TOKEN]
    assert schema.read_vocab(out, "gender") == ["M", "F"]
    assert schema.read_vocab(out, "age") == ["25", "18"]
    dead = [json.loads(ln) for f in glob.glob(str(out / "deadletter" / "*")) for ln in open(f)]
    assert [(d["line"], d["reason"]) for d in dead] == [
        (4, "rating np.float32(7.0) outside 0.5..5")]
    recs, pb = _records(out / "train")
    assert sorted((r["userId"], r["movieId"], r["label"]) for r in map(
        lambda r: _decode(r, pb), recs)) == [(1, 1, 1.0), (1, 2, 1.0), (2, 1, 0.0)]


def test_chunked_elements_give_the_same_records_vocab_examples_and_counts(tmp_path):
    """The job's chunks (lists of lines/records/examples) through the same transforms give what
    the one-by-one elements give; dead letters stay one per line; WriteTFRecordChunks deals a
    chunk over fixed shards."""
    from apache_beam.io.tfrecordio import _TFRecordUtil

    spec = dataset_spec("criteo", {"fields": [{"name": "I1", "kind": "numeric"},
                                              {"name": "C1", "min_count": 2}],
                                   "default_min_count": 1})
    lines = [_criteo(1, 5, "b"), _criteo(0, 5, "a"), _criteo(0, "", "b"), "",
             _criteo(0, "zz", "a"), "1\t2", _criteo(1, 0, "c"), _criteo(1, 9, " b ")]
    elements = [(i % 2, "f.txt", i + 1, ln.encode()) for i, ln in enumerate(lines)]
    chunks = [elements[:3], elements[3:7], elements[7:]]
    p = test_pipeline.TestPipeline(argv=INMEM)
    chunks_in = p | beam.Create(chunks)
    parsed = chunks_in | parsing.ParseRecords(LineParse(line_parser(spec)), "utf-8")
    assert_that(parsed.train | "FlatTrain" >> beam.FlatMap(lambda chunk: chunk),
                equal_to([(("L2", "b"), 1.0), ((MISSING_TOKEN, "b"), 0.0), (("0", "c"), 1.0)]),
                label="train")
    assert_that(parsed.valid | beam.Map(len), equal_to([1, 1]), label="valid_chunks")
    assert_that(parsed.deadletter | beam.Map(lambda d: (d["file"], d["line"], d["reason"][:8])),
                equal_to([("f.txt", 5, "field I1"), ("f.txt", 6, "expected")]), label="dead")
    assert_that(parsed.counts | "SumCounts" >> beam.CombinePerKey(sum),
                equal_to([("read", 7), ("deadletter", 2), ("blank", 1)]), label="counts")
    vocabs = parsed.train | vocabulary.ComputeVocabularies(["I1", "C1"], [1, 2])
    assert_that(vocabs, equal_to([{"I1": [("0", 1), ("L2", 1), (MISSING_TOKEN, 1)],
                                   "C1": [("b", 2)]}]), label="vocab")
    encoded = chunks_in | "Encode" >> encoding.ParseAndEncode(
        LineParse(line_parser(spec)), "utf-8", ["I1", "C1"], vocabs)

    def ids(raw):
        from tensorflow.core.example import example_pb2
        f = example_pb2.Example.FromString(raw).features.feature
        return (f["I1"].int64_list.value[0], f["C1"].int64_list.value[0],
                f["label"].float_list.value[0])

    assert_that(encoded.train | beam.FlatMap(lambda chunk: chunk) | beam.Map(ids),
                equal_to([(2, 1, 1.0), (3, 1, 0.0), (1, 0, 1.0)]), label="ids")
    assert_that(encoded.valid | "ValidLen" >> beam.Map(len), equal_to([1, 1]),
                label="valid_lists")
    assert_that(encoded.counts | "SumWritten" >> beam.CombinePerKey(sum),
                equal_to([("read", 7), ("deadletter", 2), ("blank", 1), ("written/train", 3),
                          ("label_sum/train", 2.0), ("written/valid", 2),
                          ("label_sum/valid", 1.0)]), label="written")
    records = [b"r%d" % i for i in range(10)]
    _ = (p | "Records" >> beam.Create([records])
         | writing.WriteTFRecordChunks(str(tmp_path / "w" / "part"), ".tfrecord.gz", 3,
                                       "gzip"))
    p.run().wait_until_finish()

    files = sorted(glob.glob(str(tmp_path / "w" / "part-*-of-00003.tfrecord.gz")))
    per_file = []
    for path in files:
        with gzip.open(path, "rb") as fh:
            got = []
            while (rec := _TFRecordUtil.read_record(fh)) is not None:
                got.append(rec)
        per_file.append(got)
    assert sorted(map(len, per_file)) == [3, 3, 4]
    assert sorted(r for got in per_file for r in got) == sorted(records)


@pytest.mark.parametrize("level", [1, 3, 6])
def test_gzip_writer_isal_for_low_levels_zlib_otherwise_same_records(tmp_path, level, monkeypatch):
    """Levels 1-3 are written by ISA-L (isal is pinned), higher ones by zlib, and without isal
    every level falls back to zlib. Every writer gives standard GZIP that TensorFlow reads back,
    with the same bytes on a second write."""
    import tensorflow as tf
    from isal import igzip

    framed = example_codec.TFRecordFramer().frame([b"record %d" % i * (i % 7) for i in range(500)])
    assert writing.gzip_class(level) is (igzip.IGzipFile if level <= 3 else gzip.GzipFile)

    def write(path):
        handle = writing.GzipFile(open(path, "wb"), level)
        handle.write(framed)
        handle.close()
        return path.read_bytes()

    first = write(tmp_path / "a.tfrecord.gz")
    assert write(tmp_path / "b.tfrecord.gz") == first
    assert gzip.decompress(first) == framed
    got = [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "a.tfrecord.gz"), "GZIP")]
    assert got == [b"record %d" % i * (i % 7) for i in range(500)]
    monkeypatch.setitem(sys.modules, "isal", None)  # not installed
    assert writing.gzip_class(level) is gzip.GzipFile
    assert gzip.decompress(write(tmp_path / "c.tfrecord.gz")) == framed
