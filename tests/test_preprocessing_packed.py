"""The packed path of the job (preprocessing.packed): lines of plain values as uint64 keys, the
numeric rule on whole arrays, the numpy hash table, both passes on packed chunks against the row
parser, ExampleEncoder.encode and the RecordChunk counting they replace, and the job with and
without the path on chunks with every edge it must leave to the previous path."""
import collections
import glob
import gzip
import json
import os
import pickle
import random

import numpy as np
import pytest

from configs.features import MISSING_TOKEN, dataset_spec, numeric_token
from preprocessing import example_codec, packed, vocabulary
from preprocessing.columnar import PlainChunkReader, RecordChunk
from preprocessing.formats import MalformedRecord, line_parser


def _lines(n: int, seed: int, width: int = 40, missing: float = 0.2) -> list[bytes]:
    """Criteo-format lines of plain values: labels 0/1, integers (some negative, some
    missing) in I1..I13, hex tokens of 1 to 8 characters (some missing) in C1..C26."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        ints = ["" if rng.random() < missing else str(rng.choice(
            [rng.randint(-3, 3), rng.randint(0, 400), rng.randint(0, 10 ** rng.randint(1, 8))]))
            for _ in range(13)]
        cats = ["" if rng.random() < missing else f"{rng.randint(0, 60):x}".rjust(
            rng.choice([1, 8]), "0") for _ in range(width - 14)]
        lines.append("\t".join([rng.choice("01")] + ints + cats).encode())
    return lines


def _records(spec, lines):
    parser = line_parser(spec)
    return [parser(line.decode()) for line in lines]


# ----------------------------------------------------------------------------- keys

def test_pack_lines_keys_hold_the_values():
    lines = _lines(500, seed=1) + [b"1" + b"\t" * 39, b"\t".join([b"abcdefgh"] * 40)]
    keys = packed.pack_lines(lines, 40, b"\t")
    assert keys.shape == (502, 40) and keys.dtype == np.uint64
    for line, row in zip(lines, keys):
        assert packed.unpack(row) == line.decode().split("\t")
    # distinct values, distinct keys; the empty value is key 0
    assert (keys == 0).sum() == sum(line.split(b"\t").count(b"") for line in lines)
    values = {v for line in lines for v in line.split(b"\t")}
    assert len(np.unique(keys)) == len(values)


@pytest.mark.parametrize("bad", [
    b"1\t" * 38 + b"1",             # 39 columns
    b"1\t" * 40 + b"1",             # 41 columns
    b"",                            # blank line
    b"1\t" * 39 + b"123456789",     # a 9-byte value
    b"1\t" * 39 + b"a b",           # a space
    b"1\t" * 39 + b"x\r",           # a carriage return
    b"1\t" * 39 + "\u00e9".encode(),  # not ASCII
    b"1\t" * 39 + b"\x00",          # a NUL byte
    b"1\t" * 19 + b"1\n" + b"1\t" * 20 + b"1",  # a line break inside the raw line
])
def test_pack_lines_refuses_chunks_with_any_line_that_is_not_plain(bad):
    lines = _lines(20, seed=2)
    assert packed.pack_lines(lines, 40, b"\t") is not None
    assert packed.pack_lines(lines[:7] + [bad] + lines[7:], 40, b"\t") is None
    assert packed.pack_lines([], 40, b"\t") is None


def test_pack_lines_counts_the_columns_of_every_line():
    """Lines of 39 and 41 values (80 in all), or a line break inside a line that makes up for
    a missing separator, are no chunk of 40-value lines."""
    short, long = b"1\t" * 38 + b"1", b"1\t" * 40 + b"1"
    assert packed.pack_lines([short, long], 40, b"\t") is None
    assert packed.pack_lines([long, short], 40, b"\t") is None
    assert packed.pack_lines([b"1\t" * 19 + b"1\n" + b"1\t" * 19 + b"1"], 40, b"\t") is None
    assert packed.pack_lines([b"a,b", b"c,d"], 2, b",").tolist() == [
        packed.pack_values(["a", "b"])[0].tolist(), packed.pack_values(["c", "d"])[0].tolist()]
    assert packed.pack_lines([b"a,b", b"c,d,"], 2, b",") is None


def test_no_value_with_a_key_is_the_missing_token():
    """Key 0 (the empty value) stands for MISSING_TOKEN in both passes; a raw value spelling
    MISSING_TOKEN must not have a key of its own (it would be counted and encoded apart)."""
    assert len(MISSING_TOKEN.encode()) > packed.MAX_BYTES
    assert packed.pack_values([MISSING_TOKEN])[1] == []


def test_pack_values_and_unpack_round_trip_only_plain_values():
    values = ["a", "abcdefgh", "abcdefghi", "", "a b", "\u00e9", "x\ty", "__missing__", "7", "-"]
    keys, at = packed.pack_values(values)
    assert at == [0, 1, 8, 9]
    assert packed.unpack(keys) == ["a", "abcdefgh", "7", "-"]
    assert packed.tokens_of(np.array([0, keys[0]], dtype=np.uint64)) == [MISSING_TOKEN, "a"]
    assert packed.unpack_one(int(keys[1])) == "abcdefgh"


def test_numeric_token_ids_give_numeric_tokens():
    """Integers (and the empty value) get numeric_token's token from whole arrays, exactly,
    also at every log-bucket boundary; other numbers and non-numbers are left to the rule."""
    rng = random.Random(5)
    values = [str(i) for i in range(-2000, 20000)]
    values += [str(rng.randrange(10 ** k, 10 ** (k + 1))) for k in range(8) for _ in range(3000)]
    starts = packed._bucket_starts().tolist()
    values += [str(v + d) for v in starts for d in (-1, 0, 1) if 0 <= v + d < 10 ** 8]
    values += ["00", "-0", "007", "-007", "99999999", "-9999999"]
    others = ["1.5", "1e3", "+3", "1_000", "-", "--1", "1-", "abc", ".5", "5.", "0x10", "nan"]
    keys, at = packed.pack_values(values + others)
    assert len(at) == len(values + others)
    keys = np.concatenate([keys, np.zeros(1, np.uint64)])  # and the empty value
    ids, ok = packed.numeric_token_ids(keys)
    assert ok[:len(values)].all() and not ok[len(values):-1].any() and ok[-1]
    for value, token_id in zip(values + [""], ids[ok].tolist()):
        assert packed.token_of_id(token_id) == numeric_token(value), value


def test_token_values_apply_the_rule_once_per_column_and_token():
    calls = collections.Counter()

    def value_of(column, token):
        calls[column, token] += 1
        return 1000 * column + len(token) + (7 if token.startswith("L") else 0)

    values = packed.TokenValues(2, value_of)
    raw = ["0", "5", "17", "-3", "", "1.5", "-5000", "99999999", "5", "17", "1e3"]
    keys, _ = packed.pack_values(raw)
    keys = np.concatenate([keys[:4], np.zeros(1, np.uint64), keys[4:]])  # "" is key 0
    columns = np.array([0, 1] * 6)[:len(keys)]
    want = [value_of(c, numeric_token(v)) for c, v in zip(columns.tolist(), raw)]
    calls.clear()
    for _ in range(3):
        assert values(columns, keys).tolist() == want
    dense = {(c, numeric_token(v)) for c, v in zip(columns.tolist(), raw)
             if v in ("0", "5", "17", "-3", "", "99999999")}
    assert all(calls[pair] == 1 for pair in dense)  # then from the table
    # beyond the table (a value below 2 - 1024; not an integer) every time
    assert calls[0, "-5000"] == 3 and calls[0, "L47"] == 3 and calls[1, "1"] == 3
    with pytest.raises(ValueError):
        values(np.array([0]), packed.pack_values(["1x"])[0])


# ----------------------------------------------------------------------------- hash tables

def test_key_index_finds_every_pair_it_holds_and_nothing_else():
    rng = np.random.default_rng(0)
    index = packed.KeyIndex(4)  # grows several times
    groups = rng.integers(0, 40, 30_000)
    keys = rng.integers(0, 1 << 62, 30_000, dtype=np.uint64) & np.uint64(0x7F7F7F7F7F7F7F7F)
    keys[:100] = 0  # the empty value, in many groups
    pairs = np.unique(keys | packed.group_bits(groups))
    groups, keys = packed.split_pairs(pairs)
    values = rng.permutation(len(pairs))
    for part in np.array_split(np.arange(len(pairs)), 7):
        index.put(groups[part], keys[part], values[part])
    assert index.size == len(pairs) and 2 * index.size <= len(index._keys)
    assert (index.get(groups, keys) == values).all()
    # the same key in another group, and keys never put, are not found
    other = (groups + 1) % 40
    absent = ~np.isin(keys | packed.group_bits(other), pairs)
    assert (index.get(other[absent], keys[absent]) == -1).all()
    assert (index.get(groups, keys ^ np.uint64(1 << 40))[
        ~np.isin((keys ^ np.uint64(1 << 40)) | packed.group_bits(groups), pairs)] == -1).all()


def test_cached_index_computes_new_keys_once_within_its_budget(monkeypatch):
    monkeypatch.setattr(packed, "CACHE_ENTRIES", 3)
    calls = []

    def compute(columns, keys):
        calls.append(len(keys))
        return (keys.astype(np.int64) * 10 + columns).astype(np.int64)

    cache = packed.CachedIndex(2, compute, computed=[True, False], default=[0, -5])
    cache.put(np.array([1]), np.array([7], np.uint64), np.array([70]))
    keys = np.array([[1, 7], [2, 8], [1, 7], [3, 9], [4, 9], [5, 7]], dtype=np.uint64)
    want = np.array([[10, 70], [20, -5], [10, 70], [30, -5], [40, -5], [50, 70]])
    assert (cache(keys) == want).all()
    assert calls == [5]  # the distinct new keys of column 0, at once
    assert (cache(keys) == want).all()
    assert calls == [5, 2]  # keys 4 and 5 were over the budget of 3
    assert (cache(keys[:3]) == want[:3]).all() and calls == [5, 2]


# ----------------------------------------------------------------------------- both passes

def _reader(spec):
    return packed.PackedReader.of(PlainChunkReader.of(line_parser(spec)), "utf-8")


def test_packed_reader_gives_the_row_parser_records():
    spec = dataset_spec("criteo")
    lines = _lines(300, seed=3)
    for row, value in ((4, b"1.5"), (5, b"1e3"), (6, b"+7"), (7, b"-0.5")):  # in I1
        values = lines[row].split(b"\t")
        values[1] = value
        lines[row] = b"\t".join(values)
    reader = _reader(spec)
    for start in range(0, 300, 100):
        chunk = reader(lines[start:start + 100])
        assert isinstance(chunk, packed.KeyChunk)
        expected = _records(spec, lines[start:start + 100])
        assert list(chunk) == expected and len(chunk) == 100
        assert list(chunk.select([7, 3])) == [expected[7], expected[3]]
        assert list(pickle.loads(pickle.dumps(chunk))) == expected
        assert chunk == pickle.loads(pickle.dumps(chunk))
    assert reader(lines[:100]) == reader(lines[:100])  # and from its caches


@pytest.mark.parametrize("bad", [b" 1", b"2", b"x"])
def test_packed_reader_leaves_bad_labels_and_numbers_to_the_row_parser(bad):
    spec = dataset_spec("criteo")
    reader = _reader(spec)
    lines = _lines(50, seed=4)
    with_label = lines[:9] + [bad + lines[9][1:]] + lines[10:]
    assert reader(with_label) is None
    text = lines[9].decode().split("\t")
    text[3] = bad.decode().strip() + "z"  # a non-number in a numeric field
    with pytest.raises(MalformedRecord):
        line_parser(spec)("\t".join(text))
    assert reader(lines[:9] + ["\t".join(text).encode()] + lines[10:]) is None
    assert reader(lines) is not None
    assert packed.PackedReader.of(PlainChunkReader.of(line_parser(spec)), "utf-16") is None
    assert packed.PackedReader.of(None, "utf-8") is None


def test_packed_encoder_gives_the_example_encoder_bytes(monkeypatch):
    """Examples of lines of every split, grouped by split in line order, as ExampleEncoder
    encodes the row parser's records: vocabulary and out-of-vocabulary tokens, missing
    values, numeric values through the cache (also beyond its budget) and through the rule."""
    monkeypatch.setattr(packed, "CACHE_ENTRIES", 5)
    spec = dataset_spec("criteo")
    lines = _lines(600, seed=6)
    values = lines[10].split(b"\t")
    values[2] = b"2.5"
    lines[10] = b"\t".join(values)
    records = _records(spec, lines)
    rng = random.Random(6)
    vocab = {f.name: sorted({r[0][i] for r in records if rng.random() < 0.7})
             for i, f in enumerate(spec.fields)}
    encoder = example_codec.ExampleEncoder(spec.field_names, "label", vocab)
    packed_encoder = packed.PackedEncoder(_reader(spec), encoder)
    splits = [rng.choice([0, 0, 0, 1, 2]) for _ in lines]
    for _ in range(2):  # the second time numeric entries come from the cache
        for start in range(0, len(lines), 200):
            got = packed_encoder.encode(lines[start:start + 200], splits[start:start + 200])
            assert sorted(got) == [0, 1, 2]
            for split, (examples, labels) in got.items():
                want = [r for r, s in zip(records[start:start + 200], splits[start:start + 200])
                        if s == split]
                assert examples == [encoder.encode(*r) for r in want]
                assert labels == [r[1] for r in want]
    examples, labels = packed_encoder(lines[:50])
    assert examples == [encoder.encode(*r) for r in records[:50]]
    values = lines[5].split(b"\t")
    values[1] = b"abc"
    assert packed_encoder.encode(lines[:5] + [b"\t".join(values)], [0] * 6) is None


def test_counting_key_chunks_equals_counting_record_chunks():
    """_CountTokensFn on KeyChunks (and a mix with RecordChunks), with room for few entries so
    that partial counts leave early, adds up to the exact counts of the records' tokens, each
    under its token's shard."""
    spec = dataset_spec("criteo")
    lines = _lines(4000, seed=7)
    for i in range(0, 4000, 3):  # a long tail of values seen once
        values = lines[i].split(b"\t")
        values[20] = b"u%07x" % i
        lines[i] = b"\t".join(values)
    records = _records(spec, lines)
    reader = _reader(spec)
    expected = [collections.Counter(r[0][i] for r in records) for i in range(len(spec.fields))]
    for mixed in (False, True):
        fn = vocabulary._CountTokensFn(len(spec.fields), max_entries=3000, shards=8)
        fn.start_bundle()
        early = []
        for k, start in enumerate(range(0, len(lines), 500)):
            chunk = (RecordChunk.from_records(records[start:start + 500]) if mixed and k % 2
                     else reader(lines[start:start + 500]))
            early += fn.process(chunk)
        late = [wv.value for wv in fn.finish_bundle()]
        assert early and late
        totals = [collections.Counter() for _ in spec.fields]
        for (field, shard), part in early + late:
            assert all(vocabulary.token_shard(t, 8) == shard for t in part)
            totals[field].update(part)
        assert totals == expected
        assert fn._entries() == 0


def test_vocabulary_tokens_side_input_keeps_the_tokens_in_id_order():
    from preprocessing.encoding import VocabularyTokens, _Encoders

    vocabs = {"C1": [("a", 9), ("é\u2028", 4), (MISSING_TOKEN, 2)], "I1": [], "C2": [("x", 1)]}
    packed_tokens = VocabularyTokens.of(vocabs)
    assert packed_tokens.tokens() == {"C1": ["a", "é\u2028", MISSING_TOKEN], "I1": [],
                                      "C2": ["x"]}
    assert VocabularyTokens.of({k: [t for t, _ in v] for k, v in vocabs.items()}) == packed_tokens
    again = pickle.loads(pickle.dumps(packed_tokens))
    assert again == packed_tokens and again.tokens() == packed_tokens.tokens()
    assert all(isinstance(blob, bytes) for blob in packed_tokens.fields.values())
    encoders = _Encoders(["C1", "I1", "C2"], None)
    encoders.use(packed_tokens)
    first = encoders.encoder
    encoders.use(again)  # an equal copy: the encoder is kept
    assert encoders.encoder is first
    assert first.encode(["é\u2028", "z", "x"], 1.0) == example_codec.ExampleEncoder(
        ["C1", "I1", "C2"], "label", vocabs).encode(["é\u2028", "z", "x"], 1.0)
    encoders.use(VocabularyTokens.of({"C1": ["b"], "I1": [], "C2": []}))
    assert encoders.encoder is not first


# ----------------------------------------------------------------------------- the job

EDGE_CHUNK = 25  # the job's chunk size in these tests: one edge per chunk of its file


def _edge_lines() -> tuple[list[bytes], list[tuple[bytes, bool]]]:
    """(lines of plain values with an edge, (line that is not plain values, whether it is
    dead-lettered)): one line each, Criteo format (label, I1..I13, C1..C26) unless the edge is
    the format."""
    def line(label=b"1", ints=(b"3",) * 13, cats=(b"a",) * 26):
        return b"\t".join([label, *ints, *cats])

    plain = [
        b"0" + b"\t" * 39,                                             # every value empty
        line(ints=(b"12345678", b"-1234567") + (b"",) * 11,
             cats=(b"abcdefgh", b"~!\"#$%&'") + (b"",) * 24),         # 8-byte values
        line(ints=(b"-5", b"1.5", b"-0.5", b"1e3", b"+7", b"0.0", b"-0", b"-1", b"-2", b"00",
                   b".5", b"2", b"1E-2")),                            # negative, decimal
    ]
    other = [
        (line(cats=(b"abcdefghi",) + (b"a",) * 25), False),           # a 9-byte value
        (line(cats=(b"a b",) + (b"a",) * 25), False),                 # a space inside a value
        (line(cats=(b"a\x7fb", b"\x01") + (b"a",) * 24), False),      # DEL, a control byte
        (line(cats=(b"a\rb",) + (b"a",) * 25), False),                # a carriage return inside
        (line(cats=("caf\u00e9".encode(),) + (b"a",) * 25), False),   # not ASCII
        (line(cats=(b"\xff\xfe",) + (b"a",) * 25), True),             # not UTF-8
        (b"\t".join([b"1"] + [b"3"] * 38), True),                     # 39 columns
        (b"\t".join([b"1"] + [b"3"] * 40), True),                     # 41 columns
        (b"", False),                                                  # blank: skipped
        (line(label=b" 1 "), False),                                   # a label with spaces
        (line(label=b"2"), True),                                      # not a label
        (line(ints=(b"x1",) + (b"3",) * 12), True),                    # not a number
    ]
    return plain, other


def write_edge_fixture(directory: str) -> tuple[str, int, int]:
    """Synthetic Criteo rows in three files, in chunks of EDGE_CHUNK lines, most of them plain
    values only, one chunk per _edge_lines line holding it: `a.tsv` (no newline after the last
    line), `b.tsv` (CRLF line ends) and `c.tsv.gz` (gzip, CRLF). Returns (the files' glob, the
    chunks of lines that are plain values only, the chunks in all)."""
    from preprocessing import synthetic

    clean = os.path.join(directory, "clean.tsv")
    synthetic.generate(clean, 900, 11)
    with open(clean, "rb") as fh:
        rows = fh.read().split(b"\n")[:-1]
    plain, other = _edge_lines()
    edges = plain + [line for line, _ in other]
    chunks = [rows[i:i + EDGE_CHUNK] for i in range(0, len(rows), EDGE_CHUNK)]
    for k, edge in enumerate(edges):  # chunks 1, 3, 5, ... hold the edges
        chunks[2 * k + 1][7] = edge
    parts = [chunks[:12], chunks[12:24], chunks[24:]]
    for name, part in zip(("a.tsv", "b.tsv", "c.tsv.gz"), parts):
        data = b"\n".join(line for chunk in part for line in chunk)
        if name != "a.tsv":
            data = data.replace(b"\n", b"\r\n") + b"\r\n"
        opener = gzip.open if name.endswith(".gz") else open
        with opener(os.path.join(directory, name), "wb") as fh:
            fh.write(data)
    for path in glob.glob(clean + "*"):  # and the generator's ground truth
        os.remove(path)
    return os.path.join(directory, "*.tsv*"), len(chunks) - len(other), len(chunks)


def _run_edge_job(directory: str) -> dict:
    from preprocessing import run as run_mod
    from tests.test_preprocessing_golden import output_digests

    pattern = os.path.join(os.path.dirname(directory), "input", "*.tsv*")
    run_mod.run(["--dataset", "criteo", "--input", pattern, "--data_dir", directory,
                 "--runner", "DirectRunner", "--direct_running_mode", "in_memory"])
    digests = output_digests(directory)
    letters = []
    for path in sorted(glob.glob(os.path.join(directory, "deadletter", "*.jsonl"))):
        with open(path, encoding="utf-8") as fh:
            letters += [json.loads(line) for line in fh]
    digests["letters"] = sorted((os.path.basename(d["file"]), d["line"]) for d in letters)
    return digests


def test_job_gives_the_fallback_records_on_chunks_with_every_edge(tmp_path, monkeypatch):
    """The job on plain chunks and chunks with one edge each (see _edge_lines; plain LF, CRLF
    and gzip files): the packed path takes exactly the chunks of plain values in the encoding
    pass (and some in the vocabulary pass), and the records, vocabularies, dead letters (file
    and line) and counts are those of the job without the packed path."""
    from preprocessing import job

    os.makedirs(tmp_path / "input")
    _, plain_chunks, all_chunks = write_edge_fixture(str(tmp_path / "input"))
    monkeypatch.setattr(job, "CHUNK_ROWS", EDGE_CHUNK)
    taken = collections.Counter()

    def counting(cls, method):
        original = getattr(cls, method)

        def call(self, *args):
            result = original(self, *args)
            taken[cls.__name__, result is not None] += 1
            return result
        return call

    for cls, method in ((packed.PackedReader, "__call__"), (packed.PackedEncoder, "encode")):
        monkeypatch.setattr(cls, method, counting(cls, method))
    got = _run_edge_job(str(tmp_path / "packed"))
    assert taken["PackedEncoder", True] == plain_chunks
    assert taken["PackedEncoder", False] == all_chunks - plain_chunks
    assert taken["PackedReader", True] > 0 and taken["PackedReader", False] > 0

    taken.clear()
    monkeypatch.setattr(packed.PackedReader, "of", classmethod(lambda cls, *args: None))
    want = _run_edge_job(str(tmp_path / "fallback"))
    assert not taken
    assert got == want
    # the bad lines' dead letters name their file and line (1-based): the edge at line 8 of
    # chunks 2k + 1 (k the edge's index in _edge_lines), chunks 0-11 in a.tsv, 12-23 in b.tsv
    plain, other = _edge_lines()
    at = [2 * (len(plain) + i) + 1 for i, (_, dead) in enumerate(other) if dead]
    files = ("a.tsv", "b.tsv", "c.tsv.gz")
    assert got["letters"] == sorted((files[k // 12], (k % 12) * EDGE_CHUNK + 8) for k in at)
    assert got["rows"]["deadlettered"] == len(at) == 5 and got["rows"]["skipped"]["blank"] == 1
