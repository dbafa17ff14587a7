"""The Beam job's output, byte for byte: sha256 of the decompressed train/valid/test records, of
the vocabulary files and of the dead letters of one small deterministic run (synthetic Criteo rows
with a few bad lines mixed in), captured with the job as it was before it was split by stage.

If this fails, the job's output changed. When that is intended, say why in the commit and put the
new digests here (`python tests/test_preprocessing_golden.py` prints them).
"""
from __future__ import annotations

import collections
import glob
import gzip
import hashlib
import json
import os
import sys

from configs.features import SPLITS

ROWS, SEED = 3000, 7
# (0-based position in the generated rows, line inserted before it): a blank line, a wrong column
# count, a bad label, a label with spaces (read by the row parser), a non-number in I1, bytes that
# are not UTF-8 and a missing value; spread over the job's chunks of 1000 lines.
BAD_LINES = (
    (5, b""),
    (17, b"1\tonly two columns"),
    (999, b"7" + b"\t" * 39),
    (1000, b" 1 " + b"\t" * 39),
    (1733, b"0\tx1" + b"\t" * 38),
    (2400, b"1\t\t\t\t\t\t\t\t\t\t\t\t\t\t\xff\xfe" + b"\t" * 25),
    (2999, b"0" + b"\t" * 39),
)
EXPECTED = {
    "records/train": "97fd3e639fe9cbf554502f7d584a44511fa022b7300dfea5919f7eaf5efa105f",
    "records/valid": "6025d324f68c93e08ab71d64af42cd153ef84f2937d066907a74e5b87956bc27",
    "records/test": "4d355cf52f99ee3ccf106ab318813184380046c24a9ab58b34365abefbfc2929",
    "vocab": "096e49104361df9e71462514ae2f0eeb6fc09087c590d81e269a89b253686eb3",
    "deadletter": "63b37ff846198d9fd59633b079945e0fa711905434d2d4ee61612440ee52b8cd",
    "rows": {"read": 3006, "written": {"train": 2431, "valid": 282, "test": 289},
             "deadlettered": 4, "skipped": {"header": 0, "blank": 1}},
}


# The same rows with only the first three bad lines (in the first 1002 lines): the later
# chunks hold plain values only, which both passes read by the packed path
# (preprocessing.packed); captured with the job as it was before that path existed.
PLAIN_TAIL_BAD_LINES = BAD_LINES[:3]
PLAIN_TAIL_EXPECTED = {
    "records/train": "64c0d01637e0c19f175004a0921bd0c53615a8b85ff9f9a20998a4f2a1d137e3",
    "records/valid": "d870494767735566a4ee88cb8f70d2709b4ca9ec75643eb9c7d578289f1ca7c7",
    "records/test": "25515b6150c9444e5b12495f24f60242df7ce50b763c0f282d4257b8d62471b3",
    "vocab": "d4d18b0aeb5eccca8e29d7902a3253b619152d82d217397fbd43c0857421626f",
    "deadletter": "f312b037f4ea736831b9cd56817c12a9d25ff3f74d15a255381e6ab8c2e9857d",
    "rows": {"read": 3002, "written": {"train": 2429, "valid": 282, "test": 289},
             "deadlettered": 2, "skipped": {"header": 0, "blank": 1}},
}


def write_fixture(directory: str, bad_lines=BAD_LINES) -> str:
    """The generator's rows (fixed seed) with `bad_lines` inserted -> `directory`/logs.tsv."""
    from preprocessing import synthetic

    clean = os.path.join(directory, "clean.tsv")
    synthetic.generate(clean, ROWS, SEED)
    with open(clean, "rb") as fh:
        lines = fh.read().split(b"\n")[:-1]
    for position, line in reversed(bad_lines):
        lines.insert(position, line)
    path = os.path.join(directory, "logs.tsv")
    with open(path, "wb") as fh:
        fh.write(b"\n".join(lines) + b"\n")
    return path


def _sha256(parts) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return digest.hexdigest()


def output_digests(data_dir: str) -> dict:
    """sha256 of each split's decompressed TFRecord files (in shard order), of the vocabulary
    files (name and content, by name) and of the dead letters (file names without their
    directory, which varies); the stats' row counts."""
    digests = {}
    for split in SPLITS:
        shards = sorted(glob.glob(os.path.join(data_dir, split, "*.tfrecord.gz")))
        digests[f"records/{split}"] = _sha256(gzip.open(p).read() for p in shards)
    vocab = sorted(glob.glob(os.path.join(data_dir, "vocab", "*.txt")))
    digests["vocab"] = _sha256(os.path.basename(p).encode() + b"\0" + open(p, "rb").read()
                               for p in vocab)
    letters = []
    for path in sorted(glob.glob(os.path.join(data_dir, "deadletter", "*.jsonl"))):
        for line in open(path, encoding="utf-8"):
            letter = json.loads(line)
            letter["file"] = os.path.basename(letter["file"])
            letters.append(json.dumps(letter, sort_keys=True).encode() + b"\n")
    digests["deadletter"] = _sha256(letters)
    with open(os.path.join(data_dir, "stats.json"), encoding="utf-8") as fh:
        stats = json.load(fh)
    digests["rows"] = {"read": stats["rows_read"], "written": stats["rows_written"],
                       "deadlettered": stats["rows_deadlettered"],
                       "skipped": stats["lines_skipped"]}
    return digests


def run_job(directory: str, bad_lines=BAD_LINES) -> dict:
    """The job (DirectRunner, in memory) on the fixture -> output_digests."""
    from preprocessing import run as run_mod

    data_dir = os.path.join(directory, "data")
    run_mod.run(["--dataset", "criteo", "--input", write_fixture(directory, bad_lines),
                 "--data_dir", data_dir, "--runner", "DirectRunner", "--direct_running_mode",
                 "in_memory"])
    return output_digests(data_dir)


def test_job_output_is_unchanged(tmp_path):
    got = run_job(str(tmp_path))
    assert got["rows"] == EXPECTED["rows"]
    assert got == EXPECTED


def test_job_output_through_the_packed_path_is_unchanged(tmp_path, monkeypatch):
    from preprocessing import packed

    read = collections.Counter()  # chunks each packed step read

    def counting(cls, method):
        original = getattr(cls, method)

        def call(self, *args):
            result = original(self, *args)
            read[cls.__name__] += result is not None
            return result
        return call

    for cls, method in ((packed.PackedReader, "__call__"), (packed.PackedEncoder, "encode")):
        monkeypatch.setattr(cls, method, counting(cls, method))
    got = run_job(str(tmp_path), PLAIN_TAIL_BAD_LINES)
    assert got["rows"] == PLAIN_TAIL_EXPECTED["rows"]
    assert got == PLAIN_TAIL_EXPECTED
    # the encoding pass's chunks of 1000 lines after the second (the bad lines are in lines 6,
    # 19 and 1002), and the vocabulary pass's chunks of 1000 training lines after the first
    assert read["PackedEncoder"] == 2 and read["PackedReader"] == 2


if __name__ == "__main__":
    import tempfile

    for bad_lines in (BAD_LINES, PLAIN_TAIL_BAD_LINES):
        with tempfile.TemporaryDirectory() as tmp:
            print(json.dumps(run_job(tmp, bad_lines), indent=4, sort_keys=True))
    sys.exit(0)
