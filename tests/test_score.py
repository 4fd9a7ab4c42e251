"""protrna score: every method against a brute-force computation written out here (one forward
pass per masked copy through ``model(tokens)["logits"]``), windows, the job's files and resume."""

from __future__ import annotations

import collections
import csv
import json
import math
import random

import h5py
import numpy as np
import pytest
import torch

from protrna import ProtRNA, ProtRNAConfig
from protrna.alphabet import Alphabet
from protrna.cli import main
from protrna.runtime import plan_windows
from protrna.score import (
    MaskedScorer,
    dinucleotide_shuffle,
    parse_mutations,
    pseudo_likelihoods,
    pseudo_perplexity,
    read_saturation,
    read_variants,
    saturation,
    score_variants,
)

ALPHABET = Alphabet()
LETTERS = "ACGU"
TOLERANCE = dict(rel=1e-5, abs=1e-5)


# ---- brute force: one plain forward pass per masked copy -----------------------------------------


def token_of(letter: str) -> int:
    return ALPHABET.get_idx(letter.lower().replace("t", "u"))


def plain_log_probs(model, sequence: str, masked=(), start: int = 0, end: int | None = None) -> torch.Tensor:
    """log_softmax over the vocabulary at every position of sequence[start:end], the positions
    in ``masked`` (0-based, whole sequence) replaced by <mask>: (end - start, 38)."""
    end = len(sequence) if end is None else end
    tokens = ALPHABET.get_batch_converter()([sequence[start:end]])
    for position in masked:
        tokens[0, position - start + 1] = ALPHABET.mask_idx
    with torch.no_grad():
        logits = model(tokens)["logits"][0].float()
    return logits.log_softmax(-1)[1:-1]


def most_central_window(length: int, positions, window: int, overlap: int) -> tuple[int, int]:
    low, high = min(positions), max(positions)
    best, best_margin = None, -1
    for start, end in plan_windows(length, window, overlap):
        if start <= low and high < end:
            margin = min(low - start, end - 1 - high)
            if margin > best_margin:
                best, best_margin = (start, end), margin
    if best is None:  # positions too far apart for any planned window: one centred on them
        start = (low + high + 1) // 2 - window // 2
        start = max(0, min(start, length - window))
        best = (start, start + window)
    return best


def brute_pll(model, sequence: str, window: int = 510, overlap: int = 128) -> tuple[float, int]:
    total, scored = 0.0, 0
    for i, letter in enumerate(sequence):
        if letter.upper() not in "ACGUT":
            continue
        start, end = most_central_window(len(sequence), [i], window, overlap)
        log_probs = plain_log_probs(model, sequence, [i], start, end)
        total += float(log_probs[i - start, token_of(letter)])
        scored += 1
    return total, scored


def mutate(sequence: str, mutations: str) -> tuple[str, list[tuple[int, str, str]]]:
    changes = [(int(m[1:-1]) - 1, m[0], m[-1]) for m in mutations.split(":")]
    letters = list(sequence)
    for i, _, new in changes:
        letters[i] = new
    return "".join(letters), changes


def brute_masked_marginal(model, sequence, mutations, window=510, overlap=128) -> float:
    _, changes = mutate(sequence, mutations)
    positions = [i for i, _, _ in changes]
    start, end = most_central_window(len(sequence), positions, window, overlap)
    log_probs = plain_log_probs(model, sequence, positions, start, end)
    return sum(float(log_probs[i - start, token_of(new)] - log_probs[i - start, token_of(old)])
               for i, old, new in changes)


def brute_wt_marginal(model, sequence, mutations, window=510, overlap=128) -> float:
    _, changes = mutate(sequence, mutations)
    total = 0.0
    for i, old, new in changes:
        start, end = most_central_window(len(sequence), [i], window, overlap)
        log_probs = plain_log_probs(model, sequence, (), start, end)
        total += float(log_probs[i - start, token_of(new)] - log_probs[i - start, token_of(old)])
    return total


def brute_pseudo_likelihood(model, sequence, mutations, window=510, overlap=128) -> float:
    mutant, _ = mutate(sequence, mutations)
    return brute_pll(model, mutant, window, overlap)[0] - brute_pll(model, sequence, window, overlap)[0]


def random_rna(length: int, seed: int) -> str:
    rng = random.Random(seed)
    return "".join(rng.choice(LETTERS) for _ in range(length))


@pytest.fixture
def dropout_model():
    """A tiny model with ESM-2's token dropout on (as the pretrained tiny example model has):
    masked copies then rescale their embeddings by their own share of <mask> tokens."""
    torch.manual_seed(1)
    return ProtRNA(ProtRNAConfig(num_layers=2, embed_dim=64, attention_heads=2, token_dropout=True)).eval()


SEQUENCES = [("short", "GGCAUC"), ("ambiguous", "GGNACUUAGC"), ("lowercase-t", "acgtACGUugcaGG"),
             ("longer", random_rna(37, 3))]


# ---- pseudo-log-likelihood ----------------------------------------------------------------------


@pytest.mark.parametrize("which", ["tiny_model", "dropout_model"])
@pytest.mark.parametrize("max_tokens", [None, 40])
def test_pseudo_likelihood_matches_one_pass_per_masked_copy(request, which, max_tokens):
    model = request.getfixturevalue(which)
    results = pseudo_likelihoods(model, SEQUENCES, max_tokens=max_tokens)
    for (name, sequence), result in zip(SEQUENCES, results):
        pll, scored = brute_pll(model, sequence)
        assert (result.id, result.length, result.scored) == (name, len(sequence), scored)
        assert result.pll == pytest.approx(pll, **TOLERANCE)
        assert result.pppl == pytest.approx(math.exp(-pll / scored), **TOLERANCE)
    assert results[1].scored == 9  # the N is context, not scored


def test_pseudo_perplexity_is_exp_of_minus_mean_pll(tiny_model):
    sequences = [s for _, s in SEQUENCES]
    expected = [math.exp(-pll / n) for pll, n in (brute_pll(tiny_model, s) for s in sequences)]
    assert pseudo_perplexity(tiny_model, sequences) == pytest.approx(expected, **TOLERANCE)
    with pytest.raises(TypeError, match="not one string"):
        pseudo_perplexity(tiny_model, "GGGAAACCC")


def test_masked_log_probs_of_single_positions(tiny_model):
    sequence = "GGACUNCG"
    found = MaskedScorer(tiny_model, max_tokens=25).masked_log_probs(sequence, [0, 5, 7])
    for row, i in zip(found, [0, 5, 7]):
        expected = plain_log_probs(tiny_model, sequence, [i])[i]
        assert row == pytest.approx([float(expected[token_of(b)]) for b in LETTERS], **TOLERANCE)


def test_an_rna_of_only_ambiguous_letters_has_no_pppl(tiny_model):
    result = pseudo_likelihoods(tiny_model, ["NNN"])[0]
    assert (result.scored, result.pll) == (0, 0.0) and math.isnan(result.pppl)


def test_the_callers_model_is_left_as_it_was(tiny_model):
    linear_types = {type(m) for m in tiny_model.modules()}
    pseudo_perplexity(tiny_model, ["GGGAAACCC"])
    assert {type(m) for m in tiny_model.modules()} == linear_types
    assert not getattr(tiny_model, "packed_for_cpu", False)


# ---- variants -----------------------------------------------------------------------------------

WT = "GGACUUCGAUCCAGUA"
VARIANTS = ["G1A", "C4U", "G1A:C4U", "A3G:G8C:A16C", "U5G", "WT"]


@pytest.mark.parametrize("method, brute", [
    ("masked-marginal", brute_masked_marginal),
    ("wt-marginal", brute_wt_marginal),
    ("pseudo-likelihood", brute_pseudo_likelihood),
])
@pytest.mark.parametrize("which", ["tiny_model", "dropout_model"])
def test_variant_scores_match_brute_force(request, which, method, brute):
    model = request.getfixturevalue(which)
    scores = score_variants(model, WT, VARIANTS, method, max_tokens=60)
    expected = [0.0 if v == "WT" else brute(model, WT, v) for v in VARIANTS]
    assert scores == pytest.approx(expected, **TOLERANCE)
    assert scores[-1] == 0.0


def test_variants_of_several_rnas_by_id(tiny_model):
    sequences = {"a": WT, "b": "ACGUACGUAAGG"}
    variants = [("b", "A1G"), ("a", "G1A"), ("b", "U4C:G12A"), ("a", "G1A")]
    scores = score_variants(tiny_model, sequences, variants)
    expected = [brute_masked_marginal(tiny_model, sequences[i], v) for i, v in variants]
    assert scores == pytest.approx(expected, **TOLERANCE)
    with pytest.raises(ValueError, match=r"variant 0 \('c', 'G1A'\): no RNA with id 'c'"):
        score_variants(tiny_model, sequences, [("c", "G1A")])
    with pytest.raises(ValueError, match="variant 1 .*position 2 is G in the sequence, not C"):
        score_variants(tiny_model, WT, ["G1A", "C2A"])


def test_t_in_the_sequence_and_in_mutations_means_u(tiny_model):
    scores = score_variants(tiny_model, "GGATCCT", ["T4C", "U4C", "t7g"])
    assert scores[0] == scores[1]
    assert scores == pytest.approx([brute_masked_marginal(tiny_model, "GGAUCCU", m) for m in ["U4C", "U4C", "U7G"]],
                                   **TOLERANCE)


@pytest.mark.parametrize("text, problem", [
    ("C1A", "position 1 is G in the sequence, not C"),
    ("G17A", r"position 17 is outside the sequence \(1..16\)"),
    ("G0A", "outside the sequence"),
    ("G1X", "X is not a nucleotide"),
    ("N1A", "N is not a nucleotide"),
    ("G1G", "does not change the sequence"),
    ("G1A:G1C", "position 1 is mutated twice"),
    ("G1A,C4U", "not of the form G12A"),
    ("1A", "not of the form G12A"),
])
def test_bad_mutations_are_named(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_mutations(text, WT)


def test_a_mutation_at_an_ambiguous_letter_is_refused():
    with pytest.raises(ValueError, match=r"position 3 is 'N' \(not A, C, G or U\)"):
        parse_mutations("A3G", "GGNA")


# ---- saturation ---------------------------------------------------------------------------------


def test_saturation_is_every_single_masked_marginal(tiny_model):
    sequence = "GGACUNCGAU"
    table = saturation(tiny_model, [sequence])[0]
    assert table.shape == (len(sequence), 4)
    assert np.isnan(table[5]).all()
    substitutions, where = [], []
    for i, letter in enumerate(sequence):
        if letter == "N":
            continue
        for column, new in enumerate(LETTERS):
            if new == letter:
                assert table[i, column] == 0.0  # exactly: the wild-type letter's own entry
            else:
                substitutions.append(f"{letter}{i + 1}{new}")
                where.append((i, column))
    scores = score_variants(tiny_model, sequence, substitutions)
    assert [table[i, c] for i, c in where] == pytest.approx(scores, **TOLERANCE)
    assert [table[i, c] for i, c in where] == pytest.approx(
        [brute_masked_marginal(tiny_model, sequence, s) for s in substitutions], **TOLERANCE)


# ---- long RNAs: windows -------------------------------------------------------------------------

WINDOW, OVERLAP = 12, 4
LONG = random_rna(41, 7)


def test_windows_are_chosen_where_the_position_is_most_central(tiny_model):
    scorer = MaskedScorer(tiny_model, window=WINDOW, window_overlap=OVERLAP)
    assert scorer.windows(41) == [(0, 12), (8, 20), (16, 28), (24, 36), (29, 41)]
    assert scorer.window_for(41, [9]) == (0, 12)  # 2 nt from its end; 1 nt from the start of (8, 20)
    assert scorer.window_for(41, [10]) == (8, 20)  # also in (0, 12), but 1 nt from its end
    assert scorer.window_for(41, [30]) == (24, 36)
    assert scorer.window_for(41, [39]) == (29, 41)
    assert scorer.window_for(41, [2, 12]) == (1, 13)  # in no planned window together: centred on them
    with pytest.raises(ValueError, match="13 nt apart, more than the 12 nt"):
        scorer.window_for(41, [0, 12])


def test_long_rna_pll_through_windows(tiny_model):
    result = pseudo_likelihoods(tiny_model, [LONG], window=WINDOW, window_overlap=OVERLAP)[0]
    pll, scored = brute_pll(tiny_model, LONG, WINDOW, OVERLAP)
    assert result.pll == pytest.approx(pll, **TOLERANCE) and result.scored == scored == 41
    # The windows matter: the same RNA seen whole gives another PLL.
    assert result.pll != pytest.approx(brute_pll(tiny_model, LONG)[0], **TOLERANCE)


@pytest.mark.parametrize("method, brute", [
    ("masked-marginal", brute_masked_marginal),
    ("wt-marginal", brute_wt_marginal),
    ("pseudo-likelihood", brute_pseudo_likelihood),
])
def test_long_rna_variants_through_windows(tiny_model, method, brute):
    variants = [f"{LONG[9]}10{'A' if LONG[9] != 'A' else 'C'}", f"{LONG[2]}3{'G' if LONG[2] != 'G' else 'U'}:"
                f"{LONG[12]}13{'G' if LONG[12] != 'G' else 'U'}", f"{LONG[40]}41{'A' if LONG[40] != 'A' else 'C'}"]
    scores = score_variants(tiny_model, LONG, variants, method, window=WINDOW, window_overlap=OVERLAP)
    assert scores == pytest.approx([brute(tiny_model, LONG, v, WINDOW, OVERLAP) for v in variants], **TOLERANCE)


def test_long_rna_saturation_through_windows(tiny_model):
    table = saturation(tiny_model, [LONG], window=WINDOW, window_overlap=OVERLAP)[0]
    for i in (0, 9, 20, 40):
        start, end = most_central_window(len(LONG), [i], WINDOW, OVERLAP)
        log_probs = plain_log_probs(tiny_model, LONG, [i], start, end)[i - start]
        expected = [float(log_probs[token_of(b)] - log_probs[token_of(LONG[i])]) for b in LETTERS]
        assert table[i] == pytest.approx(expected, **TOLERANCE)


# ---- the dinucleotide shuffle -------------------------------------------------------------------


def dinucleotides(sequence: str) -> collections.Counter:
    return collections.Counter(zip(sequence, sequence[1:]))


def test_shuffle_keeps_dinucleotide_counts_and_ends():
    rng = random.Random(0)
    changed = 0
    for n in range(300):
        sequence = "".join(rng.choice("ACGUN") for _ in range(rng.randint(1, 60)))
        shuffled = dinucleotide_shuffle(sequence, rng)
        assert dinucleotides(shuffled) == dinucleotides(sequence), sequence
        assert (shuffled[:1], shuffled[-1:], len(shuffled)) == (sequence[:1], sequence[-1:], len(sequence))
        changed += shuffled != sequence
    assert changed > 250


def walks_with_the_same_dinucleotides(sequence: str) -> set[str]:
    """Every sequence starting like ``sequence`` and using each of its dinucleotides as often."""
    found = set()

    def extend(prefix: str, left: collections.Counter) -> None:
        if len(prefix) == len(sequence):
            found.add(prefix)
        for (a, b), count in left.items():
            if a == prefix[-1] and count:
                left[a, b] -= 1
                extend(prefix + b, left)
                left[a, b] += 1

    extend(sequence[0], dinucleotides(sequence))
    return found


def test_shuffle_is_uniform_over_sequences_with_the_same_dinucleotides():
    sequence = "AACGUAGCAUG"
    same = sorted(walks_with_the_same_dinucleotides(sequence))
    assert len(same) == 96
    draws = 200 * len(same)
    counts = collections.Counter(dinucleotide_shuffle(sequence, random.Random(s)) for s in range(draws))
    assert set(counts) == set(same)
    expected = draws / len(same)
    chi_square = sum((counts[s] - expected) ** 2 / expected for s in same)
    # 95 degrees of freedom: mean 95, standard deviation 13.8; 160 is beyond the 99.99th percentile.
    assert chi_square < 160


# ---- the job: files, errors, resume -------------------------------------------------------------


@pytest.fixture
def saved_model(tiny_model, tmp_path):
    return tiny_model, tiny_model.save_pretrained(tmp_path / "lm")


@pytest.fixture
def fasta(tmp_path):
    path = tmp_path / "rnas.fa"
    path.write_text("".join(f">{name}\n{sequence}\n" for name, sequence in SEQUENCES))
    return path


def read_tsv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def run(*argv) -> int:
    """The command's exit status, as a shell sees it (argparse's refusals exit with 2)."""
    try:
        return main(["score", *map(str, argv), "--quiet"])
    except SystemExit as exit:
        return exit.code


def test_cli_pppl(saved_model, fasta, tmp_path):
    model, directory = saved_model
    out = tmp_path / "pppl.tsv"
    assert run(fasta, "--pppl", "-o", out, "--model", directory) == 0
    rows = read_tsv(out)
    assert [r["id"] for r in rows] == [name for name, _ in SEQUENCES]
    for row, (_, sequence) in zip(rows, SEQUENCES):
        pll, scored = brute_pll(model, sequence)
        assert (int(row["length"]), int(row["scored"])) == (len(sequence), scored)
        assert float(row["pll"]) == pytest.approx(pll, **TOLERANCE)
        assert float(row["pppl"]) == pytest.approx(math.exp(-pll / scored), **TOLERANCE)
    settings = json.loads((tmp_path / "pppl.tsv.json").read_text())
    assert settings["mode"] == "pppl" and settings["dtype"] == "float32"
    assert not (tmp_path / "pppl.tsv.partial").exists()


def write_variants(path, rows, delimiter=","):
    with open(path, "w", newline="") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)
    return path


@pytest.mark.parametrize("suffix, delimiter", [(".csv", ","), (".tsv", "\t")])
def test_cli_variants_keep_the_input_columns(saved_model, fasta, tmp_path, suffix, delimiter):
    model, directory = saved_model
    variants = write_variants(tmp_path / f"v{suffix}", [
        ["id", "mutations", "measured"], ["longer", f"{SEQUENCES[3][1][0]}1{'A' if SEQUENCES[3][1][0] != 'A' else 'C'}", "0.5"],
        ["short", "G1A:C3U", "-1"], ["short", "WT", "0"]], delimiter)
    out = tmp_path / "effects.tsv"
    assert run(fasta, "--variants", variants, "--method", "wt-marginal", "-o", out, "--model", directory) == 0
    rows = read_tsv(out)
    assert list(rows[0]) == ["id", "mutations", "measured", "wt_marginal"]
    assert [r["measured"] for r in rows] == ["0.5", "-1", "0"]
    sequences = dict(SEQUENCES)
    expected = [brute_wt_marginal(model, sequences[r["id"]], r["mutations"]) if r["mutations"] != "WT" else 0.0
                for r in rows]
    assert [float(r["wt_marginal"]) for r in rows] == pytest.approx(expected, **TOLERANCE)


def test_a_bad_variant_row_is_named_and_nothing_is_written(saved_model, fasta, tmp_path, capsys):
    _, directory = saved_model
    variants = write_variants(tmp_path / "v.csv", [["id", "mutations"], ["short", "G1A"], ["short", "C2A"]])
    out = tmp_path / "effects.tsv"
    assert run(fasta, "--variants", variants, "-o", out, "--model", directory) == 2
    error = capsys.readouterr().err
    assert f"{variants}, line 3 (id 'short', mutations 'C2A'): mutation 'C2A': position 2 is G" in error
    assert "--skip-invalid" in error
    assert not list(tmp_path.glob("effects.tsv*"))
    assert run(fasta, "--variants", variants, "-o", out, "--model", directory, "--skip-invalid") == 0
    assert [r["mutations"] for r in read_tsv(out)] == ["G1A"]


def test_unknown_ids_and_missing_columns_in_the_variants_file(tmp_path):
    path = write_variants(tmp_path / "v.csv", [["id", "mutations"], ["x", "G1A"]])
    with pytest.raises(ValueError, match=r"line 2 \(id 'x', mutations 'G1A'\): no RNA with id 'x'"):
        read_variants(path, {"a": "GG"})
    skipped = []
    assert read_variants(path, {"a": "GG"}, skip_invalid=True, skipped=skipped)[1] == [] and len(skipped) == 1
    path = write_variants(tmp_path / "w.csv", [["name", "mutation"], ["a", "G1A"]])
    with pytest.raises(ValueError, match="needs columns 'id' and 'mutations'"):
        read_variants(path, {"a": "GG"})
    path = write_variants(tmp_path / "z.csv", [["id", "mutations"], ["a", "G1A", "extra"]])
    with pytest.raises(ValueError, match="line 2 .*3 fields, the header has 2"):
        read_variants(path, {"a": "GG"})


def test_cli_saturation_file_and_plots(saved_model, fasta, tmp_path):
    model, directory = saved_model
    out = tmp_path / "sat.h5"
    assert run(fasta, "--saturation", "--plot", "-o", out, "--model", directory) == 0
    tables = saturation(model, SEQUENCES)
    found = list(read_saturation(out))
    assert [(i, s) for i, s, _ in found] == SEQUENCES
    for (_, _, table), expected in zip(found, tables):
        np.testing.assert_allclose(table, expected, rtol=1e-5, atol=1e-5)
    with h5py.File(out, "r") as h5:
        assert h5.attrs["columns"] == "ACGU" and h5.attrs["complete"]
        assert h5["done"][:].all()
        for k, (_, sequence) in enumerate(SEQUENCES):
            pll, scored = brute_pll(model, sequence)
            assert h5["pll"][k] == pytest.approx(pll, **TOLERANCE) and h5["scored"][k] == scored
            assert h5["pppl"][k] == pytest.approx(math.exp(-pll / scored), **TOLERANCE)
    pngs = sorted(p.name for p in (tmp_path / "sat_plots").iterdir())
    assert pngs == sorted(f"{name}.png" for name, _ in SEQUENCES)
    assert all((tmp_path / "sat_plots" / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)


class Interrupt(Exception):
    pass


@pytest.fixture
def forward_calls(monkeypatch):
    """Counts the scorer's forward passes, and raises Interrupt after ``stop_after`` of them
    (a stand-in for a killed run; the model and files are real)."""
    state = {"calls": 0, "stop_after": None}
    original = MaskedScorer._forward

    def counted(self, *args):
        if state["stop_after"] is not None and state["calls"] >= state["stop_after"]:
            raise Interrupt
        state["calls"] += 1
        return original(self, *args)

    monkeypatch.setattr(MaskedScorer, "_forward", counted)
    return state


def test_an_interrupted_variants_run_resumes_where_it_stopped(saved_model, fasta, tmp_path, forward_calls):
    _, directory = saved_model
    sequence = dict(SEQUENCES)["longer"]
    mutations = [f"{sequence[i]}{i + 1}{b}" for i in range(6) for b in LETTERS if b != sequence[i]]
    variants = write_variants(tmp_path / "v.csv", [["id", "mutations"]] + [["longer", m] for m in mutations])
    args = [fasta, "--variants", variants, "--method", "pseudo-likelihood", "-o", tmp_path / "e.tsv",
            "--model", directory, "--max-tokens", "80"]

    assert run(*args[:-4], "-o", tmp_path / "whole.tsv", *args[-4:]) == 0
    whole_calls = forward_calls["calls"]
    forward_calls.update(calls=0, stop_after=whole_calls // 2)
    with pytest.raises(Interrupt):
        main(["score", *map(str, args), "--quiet"])
    partial = tmp_path / "e.tsv.partial"
    done_before = len(partial.read_text().splitlines()) - 1
    assert 0 < done_before < len(mutations)
    with open(partial, "a") as handle:
        handle.write("35\t0.12")  # a line torn by the kill
    forward_calls.update(calls=0, stop_after=None)
    assert run(*args) == 0
    assert forward_calls["calls"] < whole_calls * 0.75
    assert read_tsv(tmp_path / "e.tsv") == read_tsv(tmp_path / "whole.tsv")
    assert not partial.exists()

    forward_calls.update(calls=0)
    assert run(*args) == 0  # complete: nothing runs
    assert forward_calls["calls"] == 0


def test_an_interrupted_saturation_run_resumes(saved_model, fasta, tmp_path, forward_calls):
    _, directory = saved_model
    args = [fasta, "--saturation", "-o", tmp_path / "s.h5", "--model", directory, "--max-tokens", "40"]
    forward_calls.update(stop_after=40)  # the longest RNA (37 passes, one per batch) goes first
    with pytest.raises(Interrupt):
        main(["score", *map(str, args), "--quiet"])
    with h5py.File(tmp_path / "s.h5.partial", "r") as h5:
        assert 0 < h5["done"][:].sum() < len(SEQUENCES)
    forward_calls.update(calls=0, stop_after=None)
    assert run(*args) == 0
    assert run(fasta, "--saturation", "-o", tmp_path / "fresh.h5", "--model", directory) == 0
    for (_, _, resumed), (_, _, fresh) in zip(read_saturation(tmp_path / "s.h5"), read_saturation(tmp_path / "fresh.h5")):
        np.testing.assert_allclose(resumed, fresh, rtol=1e-5, atol=1e-6)


def test_a_rerun_with_other_settings_is_refused_naming_them(saved_model, fasta, tmp_path, capsys, forward_calls):
    _, directory = saved_model
    variants = write_variants(tmp_path / "v.csv", [["id", "mutations"], ["short", "G1A"]])
    out = tmp_path / "e.tsv"
    assert run(fasta, "--variants", variants, "-o", out, "--model", directory) == 0
    before = out.read_bytes()
    assert run(fasta, "--variants", variants, "--method", "wt-marginal", "-o", out, "--model", directory) == 2
    assert "method (then 'masked-marginal', now 'wt-marginal')" in capsys.readouterr().err
    fasta.write_text(fasta.read_text().replace("GGCAUC", "GGCAUA"))
    assert run(fasta, "--variants", variants, "-o", out, "--model", directory) == 2
    assert "the FASTA records (ids or sequences)" in capsys.readouterr().err
    assert out.read_bytes() == before

    forward_calls.update(stop_after=1)
    sat = tmp_path / "s.h5"
    with pytest.raises(Interrupt):
        main(["score", str(fasta), "--saturation", "-o", str(sat), "--model", str(directory), "--quiet"])
    forward_calls.update(stop_after=None)
    assert run(fasta, "--saturation", "-o", sat, "--model", directory, "--dtype", "bfloat16") == 2
    assert "dtype (then 'float32', now 'bfloat16')" in capsys.readouterr().err


def test_foreign_files_and_bad_options_are_refused_before_any_work(saved_model, fasta, tmp_path, capsys):
    _, directory = saved_model
    foreign = tmp_path / "mine.tsv"
    foreign.write_text("precious\n")
    assert run(fasta, "--pppl", "-o", foreign, "--model", directory) == 2
    assert "was not written by protrna score" in capsys.readouterr().err
    assert foreign.read_text() == "precious\n"
    foreign_h5 = tmp_path / "mine.h5"
    foreign_h5.write_text("not hdf5")
    assert run(fasta, "--saturation", "-o", foreign_h5, "--model", directory) == 2
    assert "not an HDF5 file from protrna score" in capsys.readouterr().err
    for argv, message in [
        ([fasta, "--pppl", "-o", tmp_path / "x.tsv", "--plot"], "--plot draws saturation tables"),
        ([fasta, "--pppl", "-o", tmp_path / "x.tsv", "--method", "wt-marginal"], "it goes with --variants"),
        ([fasta, "--saturation", "-o", tmp_path / "x.tsv"], "give an output ending in .h5"),
        ([fasta, "--pppl", "-o", tmp_path / "x.h5"], "writes a TSV table"),
        ([fasta, "--pppl", "-o", fasta], "would write over the input"),
        ([fasta, "--pppl", "-o", tmp_path / "x.tsv", "--max-tokens", "0"], "--max-tokens: must be at least 1"),
        ([tmp_path / "none.fa", "--pppl", "-o", tmp_path / "x.tsv"], "does not exist"),
    ]:
        assert run(*argv, "--model", directory) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "x.tsv").exists() and not (tmp_path / "x.tsv.json").exists()


def test_real_nrc_rnas(saved_model, data_dir, tmp_path):
    """The nRC test file (its ids are class names, hence --unique-ids) through the CLI."""
    model, directory = saved_model
    lines = (data_dir / "ncrna" / "dataset_nRC_test.fasta").read_text().splitlines()
    records, header = [], None
    for line in lines:
        if line.startswith(">"):
            header = line[1:].split()[0]
        elif header and len(records) < 4 and len(line) <= 80 and records.count(header) < 2:
            records.append((header, line.strip()))
            header = None
    subset = tmp_path / "nrc.fa"
    subset.write_text("".join(f">{i}\n{s}\n" for i, s in records))
    out = tmp_path / "nrc.tsv"
    assert run(subset, "--pppl", "-o", out, "--model", directory, "--unique-ids") == 0
    rows = read_tsv(out)
    assert len(rows) == len(records)
    for row, (_, sequence) in zip(rows, records):
        assert float(row["pll"]) == pytest.approx(brute_pll(model, sequence)[0], **TOLERANCE)
        shuffled = dinucleotide_shuffle(sequence, 0)
        assert dinucleotides(shuffled) == dinucleotides(sequence)
