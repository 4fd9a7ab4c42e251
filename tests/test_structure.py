import itertools

import numpy as np
import pytest

from protrna.data.fasta import read_fasta
from protrna.structure import (
    BasePairs,
    StructureError,
    StructureRecord,
    decode_matrix,
    is_canonical,
    read_bpseq,
    read_ct,
    read_dbn,
    read_pdb_tsv,
    read_reference,
    resolve_conflicts,
    sigmoid,
    write_bpseq,
    write_ct,
    write_dbn,
)


# --- dot-bracket -------------------------------------------------------------------------------


def test_all_bracket_types_and_letters_parse():
    pairs = BasePairs.from_dot_bracket("([{<A.)]}>a")
    assert pairs.to_list() == [(0, 6), (1, 7), (2, 8), (3, 9), (4, 10)]


def test_nested_structures_only_use_round_brackets():
    text = "((..((...))..((..))))...(.)"
    assert BasePairs.from_dot_bracket(text).to_dot_bracket() == text


def test_mutually_crossing_pairs_get_one_bracket_type_each():
    # Five pairs, each crossing all others: five pages, the fifth is the letter pair Aa.
    pairs = BasePairs(10, [(k, k + 5) for k in range(5)])
    text = pairs.to_dot_bracket()
    assert sorted(text[:5]) == sorted("([{<A") and set(text[5:]) == set(")]}>a")
    assert BasePairs.from_dot_bracket(text) == pairs


def test_larger_crossing_group_keeps_round_brackets():
    # A 2-pair stem crossing a 4-pair stem: the larger one is written with ().
    pairs = BasePairs(14, [(0, 6), (1, 5), (2, 12), (3, 11), (4, 10), (7, 9)])
    text = pairs.to_dot_bracket()
    assert text.count("(") == 4 and text.count("[") == 2
    assert BasePairs.from_dot_bracket(text) == pairs


def test_all_tr0_records_round_trip_through_dot_bracket(data_dir):
    knotted = same_knotted = 0
    for fasta in read_fasta(data_dir / "bprna" / "TR0.dbn"):
        pairs = BasePairs.from_dot_bracket(fasta.structure)
        written = pairs.to_dot_bracket()
        assert BasePairs.from_dot_bracket(written) == pairs, fasta.id
        if set(fasta.structure) <= set("()."):
            assert written == fasta.structure, fasta.id
        else:
            knotted += 1
            same_knotted += written == fasta.structure
    assert knotted == 999
    # bpRNA's bracket choice is its own heuristic; ours matches it on all but a handful.
    assert same_knotted >= 990


def test_ts0_brackets_are_written_exactly_as_bprna(data_dir):
    for fasta in read_fasta(data_dir / "bprna" / "TS0.dbn"):
        written = BasePairs.from_dot_bracket(fasta.structure).to_dot_bracket()
        assert written == fasta.structure, fasta.id


@pytest.mark.parametrize(
    "text, message",
    [
        ("((..)", r"unbalanced '\(' at position 1 \(never closed\)"),
        ("(..))", r"unbalanced '\)' at position 5"),
        ("(([..))]]", r"unbalanced '\]' at position 9"),
        ("((..#))", r"unexpected character '#' at position 5"),
        ("A..(.)", r"unbalanced 'A' at position 1"),
    ],
)
def test_malformed_dot_bracket_names_the_position(text, message):
    with pytest.raises(StructureError, match=message):
        BasePairs.from_dot_bracket(text)


# --- the representation ------------------------------------------------------------------------


def test_pairs_are_normalised_and_validated():
    assert BasePairs(5, [(4, 0), (1, 3), (0, 4)]) == BasePairs(5, [(0, 4), (1, 3)])
    with pytest.raises(StructureError, match="base 3 is paired with itself"):
        BasePairs(5, [(2, 2)])
    with pytest.raises(StructureError, match=r"pair \(2, 6\) lies outside a sequence of length 5"):
        BasePairs(5, [(1, 5)])


def test_matrix_round_trip_and_symmetry():
    pairs = BasePairs.from_dot_bracket("((.[[..))..]]")
    matrix = pairs.to_matrix()
    assert matrix.shape == (13, 13) and (matrix == matrix.T).all() and matrix.sum() == 2 * 4
    assert BasePairs.from_matrix(matrix) == pairs
    assert BasePairs.from_matrix(np.triu(matrix)) == pairs  # either triangle is enough
    with_diagonal = matrix.copy()
    np.fill_diagonal(with_diagonal, 1)
    assert BasePairs.from_matrix(with_diagonal) == pairs


def test_multi_partner_pairs_are_kept_but_refused_by_writers(tmp_path):
    pairs = BasePairs(6, [(0, 4), (0, 5), (1, 3)])
    assert pairs.multi_partner_bases().tolist() == [0]
    record = StructureRecord("triple", "GAAAUC", pairs)
    with pytest.raises(StructureError, match=r"base 1 pairs with several bases \(5, 6\)"):
        pairs.to_dot_bracket()
    with pytest.raises(StructureError, match="several bases"):
        write_bpseq(record, tmp_path / "x.bpseq")
    with pytest.raises(StructureError, match="several bases"):
        write_ct(record, tmp_path / "x.ct")
    with pytest.raises(StructureError, match="triple"):
        write_dbn([record], tmp_path / "x.dbn")


# --- files ---------------------------------------------------------------------------------------


def _tr0_sample(data_dir, n_plain=40, n_knotted=40):
    plain, knotted = [], []
    for record in read_dbn(data_dir / "bprna" / "TR0.dbn"):
        bucket = plain if set(record.dot_bracket) <= set("().") else knotted
        if len(bucket) < (n_plain if bucket is plain else n_knotted):
            bucket.append(record)
        if len(plain) == n_plain and len(knotted) == n_knotted:
            break
    return plain + knotted


def test_dbn_bpseq_ct_round_trips_on_real_records(data_dir, tmp_path):
    records = _tr0_sample(data_dir)
    write_dbn(records, tmp_path / "sample.dbn")
    back = list(read_dbn(tmp_path / "sample.dbn"))
    assert [(r.id, r.sequence, r.pairs) for r in back] == [(r.id, r.sequence, r.pairs) for r in records]
    for record in records:
        write_bpseq(record, tmp_path / f"{record.id}.bpseq")
        from_bpseq = read_bpseq(tmp_path / f"{record.id}.bpseq")
        write_ct(from_bpseq, tmp_path / f"{record.id}.ct")
        from_ct = read_ct(tmp_path / f"{record.id}.ct")
        for copy in (from_bpseq, from_ct):
            assert (copy.id, copy.sequence, copy.pairs) == (record.id, record.sequence, record.pairs)
        assert from_ct.dot_bracket == record.dot_bracket


def test_ct_layout(tmp_path):
    record = StructureRecord("hp", "GGAAACC", BasePairs.from_dot_bracket("((...))"))
    write_ct(record, tmp_path / "hp.ct")
    lines = (tmp_path / "hp.ct").read_text().splitlines()
    assert lines[0].split() == ["7", "hp"]
    assert lines[1].split() == ["1", "G", "0", "2", "7", "1"]
    assert lines[7].split() == ["7", "C", "6", "0", "1", "7"]


def test_bpseq_with_crw_header(tmp_path):
    path = tmp_path / "crw.bpseq"
    path.write_text("Filename: crw.bpseq\nOrganism: E. coli\n1 G 4\n2 A 0\n3 A 0\n4 C 1\n")
    record = read_bpseq(path)
    assert (record.id, record.sequence, record.pairs.to_list()) == ("crw", "GAAC", [(0, 3)])


@pytest.mark.parametrize(
    "content, message",
    [
        ("1 G 4\n2 A 0\n3 A 0\n4 C 2\n", r"base 1 pairs with 4, but base 4 pairs with 2"),
        ("1 G 0\n3 A 0\n", r"line 2: base index 3, expected 2"),
        # A missing base line is reported as such, not as base 1's partner beyond the end.
        ("1 G 5\n2 A 0\n4 A 0\n5 C 1\n", r"line 3: base index 4, expected 3"),
        ("1 G 9\n2 A 0\n", r"line 1: base 1 has partner 9, not in 1..2"),
        ("1 G 0\n2 A\n", r"line 2: expected 'index base partner'"),
        ("1 G x\n", r"line 1: partner 'x' is not an integer"),
    ],
)
def test_malformed_bpseq_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.bpseq"
    path.write_text(content)
    with pytest.raises(StructureError, match=message) as error:
        read_bpseq(path)
    assert "bad.bpseq" in str(error.value)


@pytest.mark.parametrize(
    "content, message",
    [
        ("3 short\n1 G 0 2 0 1\n2 A 1 3 0 2\n", r"header says 3 bases, the file has 2"),
        ("2 x\n1 G 0 2 0 1\n2 A 1 0\n", r"line 3: expected 6 columns"),
        ("two x\n", r"line 1: length in the header 'two' is not an integer"),
    ],
)
def test_malformed_ct_names_file_and_line(tmp_path, content, message):
    path = tmp_path / "bad.ct"
    path.write_text(content)
    with pytest.raises(StructureError, match=message):
        read_ct(path)


def test_ct_with_several_structures_reads_the_first_and_warns(tmp_path):
    path = tmp_path / "multi.ct"
    first = "2 ENERGY = -1 a\n1 G 0 2 2 1\n2 C 1 0 1 2\n"
    path.write_text(first + "2 ENERGY = 0 a\n1 G 0 2 0 1\n2 C 1 0 0 2\n")
    with pytest.warns(UserWarning, match="more than one structure"):
        record = read_ct(path)
    assert record.pairs.to_list() == [(0, 1)]


def test_dbn_errors_name_file_and_record(tmp_path):
    path = tmp_path / "bad.dbn"
    path.write_text(">ok\nGGAACC\n((..))\n>short\nGGAACC\n((..)\n")
    message = r"bad.dbn, record 'short' \(line 4\): structure length 5 != sequence length 6"
    with pytest.raises(StructureError, match=message):
        list(read_dbn(path))
    path.write_text(">ok\nGGAACC\n((..))\n>open\nGGAACC\n((.(.)\n")
    with pytest.raises(StructureError, match=r"record 'open' \(line 4\): unbalanced '\(' at position 2"):
        list(read_dbn(path))
    path.write_text(">nostructure\nGGAACC\n")
    with pytest.raises(StructureError, match="'nostructure'.*no dot-bracket line after the sequence$"):
        list(read_dbn(path))
    path.write_text(">dots\nGGAACC\n.....\n")
    with pytest.raises(StructureError, match="'dots'.*no dot-bracket line.*as long as the sequence"):
        list(read_dbn(path))


def test_reference_folder_of_bpseq_and_ct(tmp_path):
    records = [
        StructureRecord("a", "GGAAACC", BasePairs.from_dot_bracket("((...))")),
        StructureRecord("b", "GGAAAACCUU", BasePairs.from_dot_bracket("((.[..))].")),
    ]
    write_bpseq(records[0], tmp_path / "a.bpseq")
    write_ct(records[1], tmp_path / "b.ct")
    (tmp_path / "notes.txt").write_text("ignored")
    read = read_reference(tmp_path)
    assert [(r.id, r.sequence, r.pairs) for r in read] == [(r.id, r.sequence, r.pairs) for r in records]
    write_ct(records[0], tmp_path / "a.ct")
    with pytest.raises(StructureError, match=r"1 RNAs have both a .bpseq and a .ct file \(e.g. 'a'\)"):
        read_reference(tmp_path)


def test_pdb_sets_keep_multi_partner_pairs(data_dir):
    folder = data_dir / "generalization"
    counts = {}
    multi = 0
    for name in ("pdb_ts1", "pdb_ts2", "pdb_ts3", "pdb_ts_hard"):
        records = read_reference(folder / f"{name}.tsv")
        counts[name] = len(records)
        for record in records:
            multi += len(record.pairs.multi_partner_bases()) > 0
    assert counts == {"pdb_ts1": 67, "pdb_ts2": 39, "pdb_ts3": 19, "pdb_ts_hard": 28}
    assert multi > 100  # "most entries have bases with more than one partner"
    first = next(read_pdb_tsv(folder / "pdb_ts1.tsv"))
    assert first.id == "632970" and len(first) == 81
    assert (0, 76) in first.pairs.to_list() and {(7, 13), (7, 20)} <= set(first.pairs.to_list())


def test_pdb_tsv_errors_name_record(tmp_path):
    path = tmp_path / "x.tsv"
    header = "id\tlength\tsequence\tdbn\tn_pairs\tpairs_1based\n"
    path.write_text(header + "r1\t4\tGAAC\t(..)\t1\t1,4\nr2\t4\tGAAC\t(..)\t1\t1;4\n")
    with pytest.raises(StructureError, match=r"record 'r2' \(line 3\): malformed pair '1'"):
        list(read_pdb_tsv(path))
    path.write_text(header + "r1\t5\tGAAC\t(..)\t1\t1,4\n")
    with pytest.raises(StructureError, match="'r1'.*length column 5 != sequence length 4"):
        list(read_pdb_tsv(path))
    path.write_text(header + "r1\t4\tGAAC\t(..)\t1\t1,9\n")
    with pytest.raises(StructureError, match=r"'r1'.*pair \(1, 9\) lies outside"):
        list(read_pdb_tsv(path))


# --- decoding ------------------------------------------------------------------------------------


def _random_probabilities(length, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(-2.0, 2.0, (length, length))
    return sigmoid((logits + logits.T) / 2)


def test_sigmoid_matches_the_textbook_formula_and_never_overflows():
    x = np.linspace(-30, 30, 121)
    np.testing.assert_allclose(sigmoid(x), np.exp(x) / (1 + np.exp(x)), rtol=1e-12)
    assert np.isfinite(sigmoid(np.array([-1e6, 1e6]))).all()


def test_decode_matrix_is_a_strict_threshold():
    probabilities = np.array([[0.0, 0.25, 0.26], [0.25, 0.0, 0.9], [0.26, 0.9, 0.0]])
    assert decode_matrix(probabilities).astype(int).tolist() == [[0, 0, 1], [0, 0, 1], [1, 1, 0]]
    assert decode_matrix(probabilities, threshold=0.5).sum() == 2


def test_resolve_conflicts_gives_one_partner_from_the_thresholded_pairs():
    probabilities = _random_probabilities(60)
    everything = set(BasePairs.from_matrix(decode_matrix(probabilities)).to_list())
    assert len(BasePairs.from_matrix(decode_matrix(probabilities)).multi_partner_bases()) > 0
    resolved = resolve_conflicts(probabilities)
    assert len(resolved.multi_partner_bases()) == 0
    assert set(resolved.to_list()) <= everything
    # Greedy: no left-out candidate has both bases free, and each left-out candidate lost to
    # a kept pair on one of its bases that is at least as probable.
    partner = resolved.partners()
    for i, j in everything - set(resolved.to_list()):
        rivals = [probabilities[min(k, partner[k]), max(k, partner[k])] for k in (i, j) if partner[k] >= 0]
        assert rivals and max(rivals) >= probabilities[i, j]
    BasePairs.from_dot_bracket(resolved.to_dot_bracket())  # writable


def test_resolve_conflicts_options():
    sequence = "GGGAAAUCCCAAAUGC"
    probabilities = _random_probabilities(len(sequence), seed=3)
    canonical = resolve_conflicts(probabilities, sequence=sequence, canonical_only=True)
    assert len(canonical.to_list()) > 0
    assert all(is_canonical(sequence[i], sequence[j]) for i, j in canonical)
    loops = resolve_conflicts(probabilities, min_hairpin=3)
    assert all(j - i > 3 for i, j in loops)
    assert any(j - i <= 3 for i, j in resolve_conflicts(probabilities))  # the filter did something
    with pytest.raises(ValueError, match="needs the sequence"):
        resolve_conflicts(probabilities, canonical_only=True)
    with pytest.raises(ValueError, match="sequence has 3 nt"):
        resolve_conflicts(probabilities, sequence="GGG")


def _weight(probabilities, pairs):
    return sum(probabilities[i, j] for i, j in pairs)


def _best_weight_by_enumeration(probabilities, threshold):
    """The largest sum over every set of disjoint candidate pairs, by trying them all."""
    length = probabilities.shape[0]

    def best(free):
        if len(free) < 2:
            return 0.0
        first, rest = free[0], free[1:]
        options = [best(rest)]  # the first base unpaired
        for k, other in enumerate(rest):
            p = probabilities[min(first, other), max(first, other)]
            if p > threshold:
                options.append(p + best(rest[:k] + rest[k + 1 :]))
        return max(options)

    return best(tuple(range(length)))


@pytest.mark.parametrize("seed", range(5))
def test_matching_finds_the_heaviest_set_of_pairs(seed):
    probabilities = _random_probabilities(9, seed=seed)
    matched = resolve_conflicts(probabilities, threshold=0.3, method="matching")
    assert len(matched.multi_partner_bases()) == 0
    assert all(probabilities[i, j] > 0.3 for i, j in matched)
    assert _weight(probabilities, matched) == pytest.approx(_best_weight_by_enumeration(probabilities, 0.3))


def test_matching_never_loses_to_greedy_and_keeps_the_filters():
    sequence = "GGGAAAUCCCAAAUGCGCAUUAGCGGAUCCAGUC" * 3
    probabilities = _random_probabilities(len(sequence), seed=7)
    greedy = resolve_conflicts(probabilities, threshold=0.1)
    matched = resolve_conflicts(probabilities, threshold=0.1, method="matching")
    assert _weight(probabilities, matched) >= _weight(probabilities, greedy) - 1e-12
    filtered = resolve_conflicts(probabilities, threshold=0.1, sequence=sequence, canonical_only=True,
                                 min_hairpin=3, method="matching")
    assert len(filtered.to_list()) > 0
    assert all(j - i > 3 and is_canonical(sequence[i], sequence[j]) for i, j in filtered)
    BasePairs.from_dot_bracket(matched.to_dot_bracket())  # writable
    with pytest.raises(ValueError, match="method must be one of"):
        resolve_conflicts(probabilities, method="optimal")


@pytest.mark.parametrize("a, b", list(itertools.product("ACGUTacgutN", repeat=2)))
def test_canonical_pairs(a, b):
    letters = {a.upper().replace("T", "U"), b.upper().replace("T", "U")}
    expected = letters in ({"A", "U"}, {"G", "C"}, {"G", "U"})
    assert is_canonical(a, b) == expected


def _cross(a, b):
    (i, j), (k, l) = a, b
    return i < k < j < l or k < i < l < j


def _random_structure(rng, length, n_pairs):
    bases = rng.permutation(length)[: 2 * n_pairs]
    return BasePairs(length, bases.reshape(-1, 2))


def test_round_brackets_hold_a_largest_non_crossing_set():
    rng = np.random.default_rng(1)
    for _ in range(200):
        pairs = _random_structure(rng, 16, int(rng.integers(1, 8)))
        listed = pairs.to_list()
        largest = max(
            len(subset)
            for size in range(len(listed) + 1)
            for subset in itertools.combinations(listed, size)
            if not any(_cross(a, b) for a, b in itertools.combinations(subset, 2))
        )
        text = pairs.to_dot_bracket()
        assert text.count("(") == largest, (listed, text)
        assert BasePairs.from_dot_bracket(text) == pairs


# --- ct headers name the record -------------------------------------------------------------------


def _b2ct(path, name, sequence, structure, energy):
    """A ct file in the layout of ViennaRNA's b2ct (and RNAstructure): header
    ``%5d ENERGY = %7.1f    %s``, then ``%5d %c   %5d %4d %4d %4d`` per base."""
    partner = [0] * len(sequence)
    stack = []
    for k, symbol in enumerate(structure, start=1):
        if symbol == "(":
            stack.append(k)
        elif symbol == ")":
            opening = stack.pop()
            partner[opening - 1], partner[k - 1] = k, opening
    lines = [f"{len(sequence):5d} ENERGY = {energy:7.1f}    {name}"]
    lines += [f"{k:5d} {base}   {k - 1:5d} {k + 1 if k < len(sequence) else 0:4d} {partner[k - 1]:4d} {k:4d}"
              for k, base in enumerate(sequence, start=1)]
    path.write_text("\n".join(lines) + "\n")


def test_a_ct_file_takes_its_id_from_the_header(data_dir, tmp_path):
    RNA = pytest.importorskip("RNA", reason="ViennaRNA is not installed: pip install 'protrna[rnafold]'")
    record = next(r for r in read_dbn(data_dir / "bprna" / "TS0.dbn") if 40 < len(r) < 90)
    structure, energy = RNA.fold(record.sequence)  # a real MFE structure and its energy, from ViennaRNA
    _b2ct(tmp_path / "prediction_1.ct", record.id, record.sequence, structure, energy)
    from_header = read_ct(tmp_path / "prediction_1.ct")
    assert from_header.id == record.id  # not the file name
    assert (from_header.sequence, from_header.pairs) == (record.sequence, BasePairs.from_dot_bracket(structure))
    # The common "length id description" header, and a bare length (the file name is all there is).
    (tmp_path / "two.ct").write_text("2 my-rna some description\n1 G 0 2 2 1\n2 C 1 0 1 2\n")
    assert read_ct(tmp_path / "two.ct").id == "my-rna"
    (tmp_path / "bare.ct").write_text("2\n1 G 0 2 2 1\n2 C 1 0 1 2\n")
    assert read_ct(tmp_path / "bare.ct").id == "bare"
    (tmp_path / "energy_only.ct").write_text("2 dG = -0.5\n1 G 0 2 2 1\n2 C 1 0 1 2\n")
    assert read_ct(tmp_path / "energy_only.ct").id == "energy_only"


def test_ids_fold_could_not_use_as_file_names_come_back_from_ct_files(tmp_path):
    record = StructureRecord(".hidden/odd", "GGAAACC", BasePairs.from_dot_bracket("((...))"))
    write_ct(record, tmp_path / "hidden_odd.ct")
    assert read_ct(tmp_path / "hidden_odd.ct").id == ".hidden/odd"
    assert [r.id for r in read_reference(tmp_path)] == [".hidden/odd"]
