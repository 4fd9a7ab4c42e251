import gzip
import itertools
import logging
import random

import pytest

from protrna.alphabet import encode_rna
from protrna.data.streaming import FastaStream, InvalidSequenceError


def write(path, records):
    path.write_text("".join(f">{name}\n{seq}\n" for name, seq in records))
    return path


def corpus(tmp_path, n=60, files=3, seed=0, max_len=40):
    rng = random.Random(seed)
    paths, records = [], []
    for f in range(files):
        chunk = [
            (f"f{f}r{i}", "".join(rng.choice("ACGT") for _ in range(rng.randint(3, max_len))))
            for i in range(n)
        ]
        paths.append(write(tmp_path / f"part{f}.fa", chunk))
        records += chunk
    return paths, records


def test_dna_letters_become_rna_tokens(tmp_path):
    path = write(tmp_path / "x.fa", [("r", "ACGTacgtN")])
    ((name, ids),) = list(FastaStream([path], loop=False))
    assert name == "r" and ids == [33, 36, 35, 34, 33, 36, 35, 34, 37]


def test_long_sequences_get_a_random_window(tmp_path):
    rng = random.Random(0)
    sequence = "".join(rng.choice("ACGU") for _ in range(1200))
    full = encode_rna(sequence)
    path = write(tmp_path / "long.fa", [("long", sequence)])
    starts = set()
    for _, ids in itertools.islice(FastaStream([path], seed=3), 6):  # one window per epoch
        assert len(ids) == 510
        start = next(s for s in range(len(full) - 509) if full[s : s + 510] == ids)
        starts.add(start)
    assert len(starts) > 1


def test_ranks_split_the_records(tmp_path):
    paths, records = corpus(tmp_path)
    seen = [
        [name for name, _ in FastaStream(paths, rank=r, world_size=3, loop=False, shuffle_buffer=8)]
        for r in range(3)
    ]
    assert sorted(itertools.chain(*seen)) == sorted(name for name, _ in records)
    assert all(len(s) == len(records) // 3 for s in seen)


def test_shuffle_buffer_permutes_reproducibly(tmp_path):
    paths, records = corpus(tmp_path)
    names = [name for name, _ in records]
    a = [name for name, _ in FastaStream(paths, loop=False, shuffle_buffer=16, seed=1)]
    b = [name for name, _ in FastaStream(paths, loop=False, shuffle_buffer=16, seed=1)]
    c = [name for name, _ in FastaStream(paths, loop=False, shuffle_buffer=16, seed=2)]
    assert sorted(a) == sorted(names) and a != names
    assert a == b and a != c


@pytest.mark.parametrize("stop", [0, 1, 17, 59, 60, 61, 179, 180, 250])
def test_resume_from_state_continues_exactly(tmp_path, stop):
    # Positions at the start, inside a file, at a file boundary and across epochs, with
    # shuffling, crops (max_residues below the longest sequence) and two ranks.
    paths, _ = corpus(tmp_path, max_len=60)
    make = lambda: FastaStream(paths, rank=1, world_size=2, shuffle_buffer=10, seed=4, max_residues=30)  # noqa: E731
    reference = list(itertools.islice(make(), stop + 40))
    first = make()
    iterator = iter(first)
    consumed = [next(iterator) for _ in range(stop)]
    state = first.state_dict()
    second = make()
    second.load_state_dict(state)
    assert consumed + list(itertools.islice(second, 40)) == reference


def test_resume_refuses_other_files(tmp_path):
    paths, _ = corpus(tmp_path)
    state = FastaStream(paths).state_dict()
    with pytest.raises(ValueError, match="same files"):
        FastaStream(paths[:2]).load_state_dict(state)


def test_invalid_records_are_skipped_with_a_log_line(tmp_path, caplog):
    path = write(tmp_path / "mixed.fa", [("ok1", "ACGU"), ("protein", "MKVLE"), ("empty", ""), ("ok2", "GG")])
    with caplog.at_level(logging.WARNING, logger="protrna.data.streaming"):
        names = [name for name, _ in FastaStream([path], loop=False)]
    assert names == ["ok1", "ok2"]
    assert "'protein'" in caplog.text and str(path) in caplog.text and "line 3" in caplog.text
    assert "'empty'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="protrna.data.streaming"):
        stream = iter(FastaStream([path], loop=True))
        names = [next(stream)[0] for _ in range(10)]  # five epochs
    assert names.count("ok1") == 5 and caplog.text.count("'protein'") == 1  # said once, not per epoch


def test_invalid_record_error_names_record_file_and_line(tmp_path):
    path = write(tmp_path / "bad.fa", [("ok", "ACGU"), ("weird", "ACGUZ")])
    with pytest.raises(InvalidSequenceError) as error:
        list(FastaStream([path], loop=False, invalid="error"))
    message = str(error.value)
    assert "'weird'" in message and str(path) in message and "line 3" in message and "'Z'" in message
    assert "--invalid skip" in message


def test_invalid_letters_as_unknown(tmp_path):
    path = write(tmp_path / "u.fa", [("r", "AEZ")])
    assert list(FastaStream([path], loop=False, invalid="unknown")) == [("r", [33, 37, 37])]


def test_nothing_usable_is_an_error_not_an_endless_loop(tmp_path):
    path = write(tmp_path / "none.fa", [("p", "MKQE")])
    with pytest.raises(ValueError, match="no usable sequence"):
        next(iter(FastaStream([path])))


def test_gzip_and_missing_files(tmp_path):
    path = tmp_path / "x.fa.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(">r\nAC\nGU\n")
    assert list(FastaStream([path], loop=False)) == [("r", [33, 36, 35, 34])]
    with pytest.raises(FileNotFoundError, match="nope.fa"):
        FastaStream([tmp_path / "nope.fa"])


def test_ncrna_corpus_reads_whole(data_dir):
    path = data_dir / "ncrna" / "dataset_nRC_test.fasta"
    items = list(FastaStream([path], loop=False))
    assert len(items) == 2529
    assert all(set(ids) <= {33, 34, 35, 36, 37} for _, ids in items)
