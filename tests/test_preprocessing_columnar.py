"""The chunk-at-a-time paths of the job against their row-by-row references: PlainChunkReader
vs the row parser, FieldEncoder.column_tokens vs FieldEncoder.tokens, ExampleEncoder.encode_all
vs encode, ParseRecords with a chunk reader vs without one, and the block reader of
ReadWithLineNumbers vs reading line by line."""
import gzip
import io
import random

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from configs.features import MISSING_TOKEN, dataset_spec
from preprocessing import encoding, example_codec, parsing, reading, vocabulary
from preprocessing.columnar import PlainChunkEncoder, PlainChunkReader
from preprocessing.formats import FieldEncoder, MalformedRecord, line_parser, split_index

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


def _vocabularies(spec, texts):
    """Every token the row parser gives `texts`, in a fixed order, minus every fifth (OOV)."""
    parser = line_parser(spec)
    tokens = [set() for _ in spec.fields]
    for text in texts:
        record = _reference(parser, text)
        if record:
            for seen, token in zip(tokens, record[0]):
                seen.add(token)
    return {f.name: [t for i, t in enumerate(sorted(seen)) if i % 5]
            for f, seen in zip(spec.fields, tokens)}


@pytest.mark.parametrize("odd", [0.0, 0.02, 0.3])
def test_plain_chunk_encoder_equals_reader_then_encoder(odd):
    """PlainChunkEncoder gives the flags of PlainChunkReader and, for the lines read, the bytes
    of ExampleEncoder.encode_columns on the reader's columns: numeric values through its
    per-field caches (also when full), categoricals with and without whitespace, missing values,
    OOV tokens, unusual labels and malformed lines."""
    spec = dataset_spec("criteo")
    texts = _criteo_lines(900, seed=11, odd=odd)
    encoder = example_codec.ExampleEncoder(spec.field_names, "label",
                                           _vocabularies(spec, texts))
    reader = PlainChunkReader.of(line_parser(spec))
    chunk_encoder = PlainChunkEncoder(PlainChunkReader.of(line_parser(spec)), encoder)
    for start in range(0, len(texts), 100):
        chunk = texts[start:start + 100]
        flags, columns, labels = reader.read_columns(chunk)
        got_flags, examples, got_labels = chunk_encoder(chunk)
        assert got_flags == flags and got_labels == labels
        assert examples == encoder.encode_columns(columns, labels)
        if odd == 0.3:
            assert flags is not None and 0 < sum(flags) < len(chunk)
        # the second time through the numeric entries come from the caches
        assert chunk_encoder(chunk) == (flags, examples, labels)
    from preprocessing import columnar

    full = PlainChunkEncoder(reader, encoder)
    old, columnar._ENTRY_CACHE = columnar._ENTRY_CACHE, 3
    try:
        for start in range(0, len(texts), 100):
            chunk = texts[start:start + 100]
            flags, columns, labels = reader.read_columns(chunk)
            assert full(chunk) == (flags, encoder.encode_columns(columns, labels), labels)
        assert all(len(cache) <= 3 for _, _, cache in full._plan if cache is not None)
    finally:
        columnar._ENTRY_CACHE = old


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
    assert parsing.decode_lines([b"a\tb", "\u00e9".encode()], "utf-8") == ["a\tb", "\u00e9"]
    assert parsing.decode_lines([b"a", b"\xff\xfe", b"c"], "utf-8") == ["a", "", "c"]


def test_parse_records_with_chunk_reader_equals_row_by_row():
    """Same records per split, dead letters (with reasons) and counts with and without the
    chunk reader, on chunks mixing plain, odd, malformed, blank and undecodable lines."""
    spec = dataset_spec("criteo")
    lines = [text.encode() for text in _criteo_lines(600, seed=3, odd=0.05)]
    lines[7] = b""
    lines[8] = b"   "
    lines[9] = b"1\t" + b"\xff\xfe" + lines[10][2:]
    # then clean chunks (every line read at once: RecordChunks split by split, no row step)
    lines += [text.encode() for text in _criteo_lines(300, seed=4, odd=0.0)]
    elements = [(i % 3, "f.txt", i + 1, raw) for i, raw in enumerate(lines)]
    chunks = [elements[i:i + 100] for i in range(0, len(elements), 100)]
    line_chunks = [reading.LineChunk("f.txt", [e[2] for e in c], [e[0] for e in c],
                                     [e[3] for e in c]) for c in chunks]
    from preprocessing.parsing import LineParse

    p = test_pipeline.TestPipeline(argv=INMEM)
    outputs = {}
    plain = PlainChunkReader.of(line_parser(spec))
    vocab = _vocabularies(spec, [raw.decode("utf-8", "replace") for raw in lines])
    vocab_in = p | "Vocab" >> beam.Create([vocab])
    encoder = example_codec.ExampleEncoder(spec.field_names, "label", vocab)
    for name, reader, inputs in (("rows", None, chunks), ("chunks", plain, chunks),
                                 ("linechunks", plain, line_chunks)):
        parsed = (p | f"Create{name}" >> beam.Create(inputs)
                  | f"Parse{name}" >> parsing.ParseRecords(
                      LineParse(line_parser(spec)), "utf-8", chunk_reader=reader))
        outputs[name] = {
            split: parsed[split] | f"Flat{split}{name}" >> beam.FlatMap(lambda c: c)
            for split in ("train", "valid", "test")}
        outputs[name]["dead"] = parsed.deadletter | f"Dead{name}" >> beam.Map(
            lambda d: (d["line"], d["reason"]))
        outputs[name]["counts"] = parsed.counts | f"Sum{name}" >> beam.CombinePerKey(sum)
        # the encoding pass over the same lines: per split, the bytes of the expected records
        encoded = (p | f"Again{name}" >> beam.Create(inputs)
                   | f"Encode{name}" >> encoding.ParseAndEncode(
                       LineParse(line_parser(spec)), "utf-8", spec.field_names, vocab_in,
                       chunk_reader=reader))
        for split in ("train", "valid", "test"):
            outputs[name]["examples_" + split] = encoded[split] | f"FlatEx{split}{name}" >> (
                beam.FlatMap(lambda examples: examples))
        outputs[name]["written"] = (encoded.counts | f"Written{name}" >> beam.CombinePerKey(sum)
                                    | f"OnlyWritten{name}" >> beam.Filter(
                                        lambda kv: kv[0].startswith("written/")))
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
    for name in ("rows", "chunks", "linechunks"):
        for split in ("train", "valid", "test"):
            assert_that(outputs[name][split], equal_to(expected[split]), label=f"{name}{split}")
        assert_that(outputs[name]["dead"] | f"Lines{name}" >> beam.Map(lambda d: d[0]),
                    equal_to(dead), label=f"{name}dead")
        assert_that(outputs[name]["counts"],
                    equal_to([("read", 900 - blank), ("deadletter", len(dead)),
                              ("blank", blank)]),
                    label=f"{name}counts")
        for split in ("train", "valid", "test"):
            assert_that(outputs[name]["examples_" + split],
                        equal_to([encoder.encode(*r) for r in expected[split]]),
                        label=f"{name}examples{split}")
        assert_that(outputs[name]["written"],
                    equal_to([(f"written/{s}", len(expected[s])) for s in expected]),
                    label=f"{name}written")
    # the reasons too: identical row by row and chunked
    both = [outputs[n]["dead"] | f"Tag{n}" >> beam.Map(lambda d, n=n: (d, n))
            for n in ("rows", "chunks", "linechunks")]
    paired = (both | beam.Flatten() | beam.GroupByKey()
              | beam.MapTuple(lambda reason, where: sorted(where)))
    assert_that(paired, equal_to([["chunks", "linechunks", "rows"]] * len(dead)),
                label="reasons")
    p.run().wait_until_finish()


@pytest.mark.parametrize("data", [
    b"a\nbb\r\nccc\n\n\r\nlast-without-newline",
    b"x\r\r\n\ry\n" * 7 + b"\n",
    b"",
    b"\n\n\n",
    "\u00e9t\u00e9\tz\n".encode() * 50,
])
@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 1 << 20])
def test_line_blocks_equal_line_iteration(data, size):
    """Block reads give exactly the lines of `for line in fh` (each rstrip(b"\\r\\n")), for
    blocks that cut lines, CR LF and CR CR LF endings, blank lines and a last line without a
    newline."""
    got = [line for block in reading.line_blocks(io.BytesIO(data), size) for line in block]
    assert got == [line.rstrip(b"\r\n") for line in io.BytesIO(data)]


def _read(pattern, only, chunk):
    p = test_pipeline.TestPipeline(argv=INMEM)
    lines = (p | reading.ReadWithLineNumbers([pattern], (0.8, 0.1, 0.1), 3, only, chunk)
             | beam.FlatMap(lambda e: list(e) if isinstance(e, reading.LineChunk) else [e])
             | beam.Map(lambda t: (t[0], t[1].rsplit("/", 1)[-1], t[2], t[3])))
    return p, lines


@pytest.mark.parametrize("only", [None, 0, 2])
@pytest.mark.parametrize("chunk", [None, 7, 1000])
def test_read_with_line_numbers(tmp_path, only, chunk):
    """Every line of plain and GZIP files with its 1-based number, its split by split_index,
    one by one or in LineChunks, and `only_split` keeps just that split's lines."""
    plain = [f"line {i}".encode() + (b"\r" if i % 5 == 0 else b"") for i in range(1, 301)]
    (tmp_path / "a.txt").write_bytes(b"\n".join(plain))  # no final newline
    with gzip.open(tmp_path / "b.txt.gz", "wb") as fh:
        fh.write(b"".join(f"gz {i}\n".encode() for i in range(1, 101)))
    want = [(split_index("a.txt", i, (0.8, 0.1, 0.1), 3), "a.txt", i, raw.rstrip(b"\r"))
            for i, raw in enumerate(plain, 1)]
    want += [(split_index("b.txt.gz", i, (0.8, 0.1, 0.1), 3), "b.txt.gz", i, f"gz {i}".encode())
             for i in range(1, 101)]
    want = [w for w in want if only is None or w[0] == only]
    assert {w[0] for w in want} == ({0, 1, 2} if only is None else {only})
    p, lines = _read(str(tmp_path / "*"), only, chunk)
    assert_that(lines, equal_to(want))
    p.run()


def test_fast_path_vocab_and_examples_equal_row_path():
    """LineChunks read by the chunk reader (missing categoricals left as "" in RecordChunks,
    mixed splits cut with RecordChunk.select) give the same vocabularies, and encoded by the
    chunk encoder (examples split by split) the same tf.Example bytes, as the row parser on
    one-by-one lines."""
    spec = dataset_spec("criteo", {"default_min_count": 1})
    texts = _criteo_lines(400, seed=5, odd=0.0)
    rng = random.Random(0)
    texts = ["\t".join("" if 14 <= i and rng.random() < 0.3 else v  # missing categoricals
                       for i, v in enumerate(t.split("\t"))) for t in texts]
    assert sum(t.count("\t\t") for t in texts) > 100
    elements = [(i % 3 if i % 7 else 0, "f.txt", i + 1, t.encode()) for i, t in enumerate(texts)]
    line_chunks = [reading.LineChunk("f.txt", [e[2] for e in elements[i:i + 50]],
                                     [e[0] for e in elements[i:i + 50]],
                                     [e[3] for e in elements[i:i + 50]])
                   for i in range(0, len(elements), 50)]
    from preprocessing.parsing import LineParse

    names = spec.field_names
    p = test_pipeline.TestPipeline(argv=INMEM)
    out = {}
    for name, inputs, reader in (("rows", elements, None),
                                 ("fast", line_chunks, PlainChunkReader.of(line_parser(spec)))):
        lines_in = p | f"Create{name}" >> beam.Create(inputs)
        parsed = lines_in | f"Parse{name}" >> parsing.ParseRecords(
            LineParse(line_parser(spec)), "utf-8", chunk_reader=reader)
        vocabs = parsed.train | f"Vocab{name}" >> vocabulary.ComputeVocabularies(
            names, [1] * len(names))
        out[name] = {"vocab": vocabs}
        encoded = (lines_in | f"Encode{name}" >> encoding.ParseAndEncode(
            LineParse(line_parser(spec)), "utf-8", names, vocabs, chunk_reader=reader))
        for split in ("train", "valid", "test"):
            out[name][split] = encoded[split] | f"Flat{split}{name}" >> beam.FlatMap(
                lambda e: e)
    from configs.features import MISSING_TOKEN

    def check_vocab(pair):
        rows, fast = pair
        assert rows == fast
        assert sum(MISSING_TOKEN in [t for t, _ in v] for v in rows.values()) >= 20
        return True

    joined = ((out["rows"]["vocab"], out["fast"]["vocab"]) | "BothVocabs" >> beam.Flatten()
              | beam.combiners.ToList()
              | beam.Map(lambda vs: check_vocab(vs) if len(vs) == 2 else False))
    assert_that(joined, equal_to([True]), label="vocab")
    for split in ("train", "valid", "test"):
        both = ((out["rows"][split] | f"TagR{split}" >> beam.Map(lambda b: (b, "rows")),
                 out["fast"][split] | f"TagF{split}" >> beam.Map(lambda b: (b, "fast")))
                | f"Flat{split}" >> beam.Flatten() | f"Group{split}" >> beam.GroupByKey()
                | f"Where{split}" >> beam.MapTuple(lambda b, where: sorted(where)))
        assert_that(both | f"Bad{split}" >> beam.Filter(lambda w: w != ["fast", "rows"]),
                    equal_to([]), label=f"same{split}")
        assert_that(out["fast"][split] | f"Count{split}" >> beam.combiners.Count.Globally(),
                    equal_to([sum(1 for e in elements if e[0] == "train valid test".split()
                                  .index(split))]), label=f"n{split}")
    p.run().wait_until_finish()
