"""The chunk-at-a-time paths of the job against their row-by-row references: PlainChunkReader
vs the row parser, FieldEncoder.column_tokens vs FieldEncoder.tokens, ExampleEncoder.encode_all
vs encode, and ParseRecords with a chunk reader vs without one."""
import random

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from configs.features import MISSING_TOKEN, dataset_spec
from preprocessing import example_codec, transforms
from preprocessing.columnar import PlainChunkReader
from preprocessing.formats import FieldEncoder, MalformedRecord, line_parser

INMEM = ["--runner=DirectRunner", "--direct_running_mode=in_memory"]
ODD_NUMBERS = ["", " 4 ", "7.5", "-3", "1e3", "abc", "nan", "inf", "0x10", "L5", MISSING_TOKEN]
ODD_CATEGORIES = ["", " a", "a ", "a b", "\u00a0c", "d\u2003e", "\x0bv", "\u00e9", MISSING_TOKEN,
                  "  ", "\x1c"]
ODD_LABELS = [" 1", "1 ", "2", "", "x", " "]


def _criteo_lines(n: int, seed: int, odd: float) -> list[str]:
    """Criteo-format lines, a fraction `odd` of values (and lines) unusual or malformed."""
    rng = random.Random(seed)

    def pick(common, unusual):
        return rng.choice(unusual) if rng.random() < odd else common

    lines = []
    for _ in range(n):
        label = pick(rng.choice("01"), ODD_LABELS)
        ints = [pick(str(rng.randint(0, 400)), ODD_NUMBERS) for _ in range(13)]
        cats = [pick(f"{rng.randint(0, 50):08x}", ODD_CATEGORIES) for _ in range(26)]
        columns = [label] + ints + cats
        shape = rng.random()
        if shape < odd / 4:
            columns = columns[:-1]
        elif shape < odd / 2:
            columns.append("extra")
        elif shape < odd * 3 / 4:
            columns = [""] * 40
        lines.append("\t".join(columns))
    return lines


def _reference(parser, text):
    try:
        return parser(text)
    except MalformedRecord:
        return None


@pytest.mark.parametrize("odd", [0.0, 0.02, 0.3])
def test_plain_chunk_reader_equals_row_parser(odd):
    parser = line_parser(dataset_spec("criteo"))
    reader = PlainChunkReader.of(line_parser(dataset_spec("criteo")))
    lines = _criteo_lines(3000, seed=int(odd * 100), odd=odd)
    flagged = 0
    for start in range(0, len(lines), 500):
        chunk = lines[start:start + 500]
        flags, records = reader(chunk)
        if odd == 0.0:
            assert flags is None
        flags = flags or [True] * len(chunk)
        assert len(records) == sum(flags)
        read = iter(records)
        for text, was_read in zip(chunk, flags):
            expected = _reference(parser, text)
            if was_read:
                assert next(read) == expected, text
            else:
                flagged += 1
                columns = text.split("\t")
                clean = (len(columns) == 40 and columns[0] in ("0", "1")
                         and all(v.isdigit() for v in columns[1:14]))
                assert not clean, f"a plain row was left to the row parser: {text!r}"
    if odd:
        assert flagged > 0  # malformed rows were never read by the fast path


def test_plain_chunk_reader_only_for_plain_formats():
    assert PlainChunkReader.of(line_parser(dataset_spec("avazu"))) is None
    assert PlainChunkReader.of(line_parser(dataset_spec("frappe"))) is None
    with pytest.raises(ValueError, match="not a plain delimited format"):
        PlainChunkReader(line_parser(dataset_spec("frappe")))
    reader = PlainChunkReader.of(line_parser(dataset_spec("criteo")))
    assert reader([]) == (None, [])
    assert reader(["", "1\t2"]) == ([False, False], [])


def test_column_tokens_equal_tokens_and_flag_non_numbers():
    spec = dataset_spec("criteo", {"fields": [{"name": "C2"}, {"name": "I1", "kind": "numeric"},
                                              {"name": "C1"}, {"name": "I2", "kind": "numeric"}]})
    columns = ("C1", "C2", "I1", "I2")
    rng = random.Random(1)
    rows = [(rng.choice(["a", "b", ""] + ODD_CATEGORIES), rng.choice(["a", "b"]),
             rng.choice(["1", "3", "100"] + ODD_NUMBERS), rng.choice(["0", "5", "", "zz"]))
            for _ in range(400)]
    rows.append(("a", "b", "1", "2"))
    reference = FieldEncoder(spec, columns)
    encoder = FieldEncoder(spec, columns)
    by_field = [[row[columns.index(name)] for row in rows] for name in spec.field_names]
    got, bad = encoder.column_tokens(by_field)
    for i, row in enumerate(rows):
        try:
            expected = reference.tokens(row)
        except MalformedRecord:
            assert i in bad, row
            continue
        assert i not in bad and tuple(column[i] for column in got) == expected, row
    assert bad and len(bad) < len(rows)
    clean = [["a", "", "b"], ["3", "", "1"]]  # whitespace-free categorical: no rule calls
    assert FieldEncoder(dataset_spec("criteo", {"fields": [
        {"name": "C1"}, {"name": "I1", "kind": "numeric"}]}), columns).column_tokens(clean) == (
        [["a", MISSING_TOKEN, "b"], ["L1", MISSING_TOKEN, "1"]], set())


@pytest.mark.parametrize("names", [["I1", "I10", "C1", "C10", "a"], ["x"]])
def test_encode_all_equals_encode(names):
    vocab = {name: [f"t{j}" for j in range(200)] for name in names}
    enc = example_codec.ExampleEncoder(names, "label", vocab)
    rng = random.Random(2)
    records = [(tuple(rng.choice([f"t{rng.randint(0, 199)}", "oov"]) for _ in names),
                rng.choice([0.0, 1.0, 0.5])) for _ in range(300)]
    assert enc.encode_all(records) == [enc.encode(t, label) for t, label in records]
    assert enc.encode_all([]) == []


def test_encode_all_long_examples_fall_back_to_encode():
    name = "f" * 17000  # one entry longer than the precomputed length prefixes
    enc = example_codec.ExampleEncoder([name], "label", {name: ["a"]})
    records = [(("a",), 1.0), (("b",), 0.0)]
    assert enc.encode_all(records) == [enc.encode(t, label) for t, label in records]
    assert len(enc.encode_all(records)[0]) > example_codec._LEN_CACHE


def test_decode_lines_keeps_undecodable_lines_for_the_row_parser():
    assert transforms._decode_lines([b"a\tb", "\u00e9".encode()], "utf-8") == ["a\tb", "\u00e9"]
    assert transforms._decode_lines([b"a", b"\xff\xfe", b"c"], "utf-8") == ["a", "", "c"]


def test_parse_records_with_chunk_reader_equals_row_by_row():
    """Same records per split, dead letters (with reasons) and counts with and without the
    chunk reader, on chunks mixing plain, odd, malformed, blank and undecodable lines."""
    spec = dataset_spec("criteo")
    lines = [text.encode() for text in _criteo_lines(600, seed=3, odd=0.05)]
    lines[7] = b""
    lines[8] = b"   "
    lines[9] = b"1\t" + b"\xff\xfe" + lines[10][2:]
    elements = [(i % 3, "f.txt", i + 1, raw) for i, raw in enumerate(lines)]
    chunks = [elements[i:i + 100] for i in range(0, len(elements), 100)]
    from preprocessing.job import _LineParse

    p = test_pipeline.TestPipeline(argv=INMEM)
    outputs = {}
    for name, reader in (("rows", None), ("chunks", PlainChunkReader.of(line_parser(spec)))):
        parsed = (p | f"Create{name}" >> beam.Create(chunks)
                  | f"Parse{name}" >> transforms.ParseRecords(
                      _LineParse(line_parser(spec)), "utf-8", chunk_reader=reader))
        outputs[name] = {
            split: parsed[split] | f"Flat{split}{name}" >> beam.FlatMap(lambda c: c)
            for split in ("train", "valid", "test")}
        outputs[name]["dead"] = parsed.deadletter | f"Dead{name}" >> beam.Map(
            lambda d: (d["line"], d["reason"]))
        outputs[name]["counts"] = parsed.counts | f"Sum{name}" >> beam.CombinePerKey(sum)
    expected_parser = line_parser(spec)
    expected = {"train": [], "valid": [], "test": []}
    dead, blank = [], 0
    for split, _, line_no, raw in elements:
        if not raw.strip():
            blank += 1
            continue
        try:
            expected[("train", "valid", "test")[split]].append(
                expected_parser(raw.decode("utf-8")))
        except (MalformedRecord, UnicodeDecodeError):
            dead.append(line_no)
    assert len(dead) > 5 and blank >= 2
    for name in ("rows", "chunks"):
        for split in ("train", "valid", "test"):
            assert_that(outputs[name][split], equal_to(expected[split]), label=f"{name}{split}")
        assert_that(outputs[name]["dead"] | f"Lines{name}" >> beam.Map(lambda d: d[0]),
                    equal_to(dead), label=f"{name}dead")
        assert_that(outputs[name]["counts"],
                    equal_to([("read", 600 - blank), ("deadletter", len(dead)),
                              ("blank", blank)]),
                    label=f"{name}counts")
    # the reasons too: identical row by row and chunked
    both = (outputs["rows"]["dead"] | "TagRows" >> beam.Map(lambda d: (d, "rows")),
            outputs["chunks"]["dead"] | "TagChunks" >> beam.Map(lambda d: (d, "chunks")))
    paired = (both | beam.Flatten() | beam.GroupByKey()
              | beam.MapTuple(lambda reason, where: sorted(where)))
    assert_that(paired, equal_to([["chunks", "rows"]] * len(dead)), label="reasons")
    p.run().wait_until_finish()
