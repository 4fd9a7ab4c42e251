"""The command line as a whole: one vocabulary of shared flags, help for every option, and log
lines that never share a line with a progress bar."""

import argparse
import logging
import subprocess
import sys
import textwrap

import pytest
from tqdm import tqdm

from protrna import options
from protrna.cli import ProgressAwareHandler, build_parser

# Which commands take which shared flag; a command that loses one, or spells it its own way, fails.
EXPECTED = {
    "model": {"embed", "fold", "evaluate", "score", "train-ss", "finetune"},
    "head": {"fold", "evaluate"},
    "device": {"embed", "fold", "evaluate", "score", "finetune"},
    "dtype": {"embed", "fold", "evaluate", "score"},
    "max-tokens": {"embed", "fold", "evaluate", "score"},
    "quiet": {"embed", "fold", "evaluate", "score", "pretrain", "train-ss", "finetune", "download"},
    "unique-ids": {"embed", "fold", "score"},
    "lm-dtype": {"train-ss", "finetune"},
    "lm-max-tokens": {"train-ss", "finetune"},
}
# Training commands whose flag of that name is their own: --max-tokens there is the training
# micro-batch budget (its check is still the shared one: test_every_token_budget_flag_has_the_same_check).
OWN_MEANING = {"max-tokens": {"pretrain", "finetune"}}
INVALID_COMMANDS = {"embed", "fold", "score", "train-ss", "finetune", "pretrain"}


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (subparsers,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def action(parser: argparse.ArgumentParser, flag: str) -> argparse.Action | None:
    return next((a for a in parser._actions if flag in a.option_strings), None)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_a_shared_flag_is_spelled_documented_and_checked_alike_everywhere(name):
    flags, keywords = options.SHARED[name]
    having = {}
    for command, parser in commands().items():
        found = action(parser, flags[0])
        if found is not None and command not in OWN_MEANING.get(name, ()):
            having[command] = found
    assert set(having) == EXPECTED[name]
    reference = argparse.ArgumentParser()
    options.add_options(reference, name)
    expected = action(reference, flags[0])
    assert expected.help == keywords["help"] and expected.help.strip()
    for command, found in having.items():
        for attribute in ("option_strings", "dest", "help", "default", "choices", "type", "nargs", "const",
                          "metavar"):
            assert getattr(found, attribute) == getattr(expected, attribute), (command, attribute)


def test_every_token_budget_flag_has_the_same_check():
    budgets = [(command, found) for command, parser in commands().items()
               for flag in ("--max-tokens", "--lm-max-tokens") if (found := action(parser, flag))]
    assert {command for command, _ in budgets} >= {"embed", "fold", "evaluate", "score", "pretrain", "finetune",
                                                   "train-ss"}
    assert all(found.type is options.token_count for _, found in budgets), budgets


def test_every_dtype_flag_offers_the_same_precisions():
    dtypes = [found for parser in commands().values()
              for flag in ("--dtype", "--lm-dtype") if (found := action(parser, flag))]
    assert len(dtypes) == 6
    assert all(tuple(found.choices) == ("float32", "bfloat16", "float16") for found in dtypes)


def test_one_invalid_record_flag_with_the_old_spelling_as_an_alias():
    for command, parser in commands().items():
        invalid, alias = action(parser, "--invalid"), action(parser, "--skip-invalid")
        if command not in INVALID_COMMANDS:
            assert invalid is None and alias is None, command
            continue
        assert invalid is not None and alias is not None, command
        assert invalid.dest == alias.dest == "invalid" and alias.const == "skip", command
        assert {"error", "skip"} <= set(invalid.choices), command
        assert invalid.help == options.invalid_help(tuple(invalid.choices), invalid.default), command
        assert alias.help == options.SKIP_INVALID_HELP
    # Only pretrain's streams read odd letters as the unknown base, and it skips by default.
    parsers = commands()
    assert tuple(action(parsers["pretrain"], "--invalid").choices) == ("skip", "error", "unknown")
    assert action(parsers["pretrain"], "--invalid").default == "skip"
    assert {tuple(action(parsers[c], "--invalid").choices) for c in INVALID_COMMANDS - {"pretrain"}} == {
        ("error", "skip")}


def test_skip_invalid_parses_as_invalid_skip():
    parser = build_parser()
    assert parser.parse_args(["embed", "x.fa", "-o", "x.h5"]).invalid == "error"
    assert parser.parse_args(["embed", "x.fa", "-o", "x.h5", "--skip-invalid"]).invalid == "skip"
    assert parser.parse_args(["fold", "x.fa", "-o", "d", "--invalid", "skip"]).invalid == "skip"
    pretrain = ["pretrain", "--esm", "e", "--train", "t.fa", "--output", "run"]
    assert parser.parse_args(pretrain).invalid == "skip"
    assert parser.parse_args([*pretrain, "--invalid", "unknown"]).invalid == "unknown"


@pytest.mark.parametrize("argv", [
    ["embed", "x.fa", "-o", "x.h5", "--invalid", "unknown"],
    ["fold", "x.fa", "-o", "d", "--max-tokens", "0"],
    ["evaluate", "--reference", "r.dbn", "--max-tokens", "-5"],
    ["score", "x.fa", "--pppl", "-o", "p.tsv", "--dtype", "float64"],
    ["train-ss", "--train", "t", "--valid", "v", "--output", "o", "--lm-max-tokens", "0"],
])
def test_a_bad_shared_value_is_refused_with_the_flag_named(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    flag = next(a for a in argv if a.startswith("--") and a not in ("--reference", "--pppl", "--train", "--valid",
                                                                  "--output"))
    assert f"argument {flag}" in capsys.readouterr().err


def test_every_option_of_every_command_has_help():
    parser = build_parser()
    missing = [f"protrna {a.option_strings}" for a in parser._actions
               if not isinstance(a, argparse._SubParsersAction) and not (a.help or "").strip()]
    for command, sub in commands().items():
        missing += [f"{command} {a.option_strings or a.dest}" for a in sub._actions if not (a.help or "").strip()]
    assert not missing


def test_a_log_line_during_a_progress_bar_gets_a_line_of_its_own(capsys):
    message = "WARNING protrna.test: record x left out"

    def run(handler: logging.Handler) -> list[str]:
        logger = logging.getLogger("protrna.test")
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
        try:
            with tqdm(total=10, desc="work", file=sys.stderr, ascii=True, mininterval=0) as bar:
                bar.update(3)
                logger.warning("record x left out")
                bar.update(3)
        finally:
            logger.removeHandler(handler)
            logger.propagate = True
        # What a terminal shows on each line: the text after the last carriage return.
        return [segment.split("\r")[-1] for segment in capsys.readouterr().err.split("\n")]

    assert message in run(ProgressAwareHandler())
    # The same with a plain handler lands on the bar's line: the check above can fail.
    assert message not in run(logging.StreamHandler(sys.stderr))


def test_the_command_line_routes_logging_past_progress_bars(tmp_path):
    script = tmp_path / "log_during_bar.py"
    script.write_text(textwrap.dedent("""
        import logging, sys
        from tqdm import tqdm
        from protrna.cli import setup_logging
        setup_logging(verbose=False)
        with tqdm(total=4, desc="work", ascii=True, mininterval=0) as bar:
            bar.update(1)
            logging.getLogger("protrna.embed").info("resuming x.h5")
            bar.update(1)
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120,
                            env={"PYTHONPATH": str(options.__file__).rsplit("/protrna/", 1)[0], "PATH": ""})
    assert result.returncode == 0, result.stderr
    lines = [segment.split("\r")[-1] for segment in result.stderr.split("\n")]
    assert "INFO protrna.embed: resuming x.h5" in lines
    assert any(line.startswith("work:") and "2/4" in line for line in lines)  # the bar goes on below it


def test_an_error_line_is_not_appended_to_a_bar_the_failed_job_left_open(tmp_path):
    script = tmp_path / "fail_during_bar.py"
    script.write_text(textwrap.dedent(f"""
        import sys
        from tqdm import tqdm
        from protrna.cli import main
        bar = tqdm(total=4, desc="work", ascii=True, mininterval=0)  # as a loop that an error left
        bar.update(1)
        sys.exit(main(["embed", {str(tmp_path / "missing.fa")!r}, "-o", {str(tmp_path / "x.h5")!r}]))
    """))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                            env={"PYTHONPATH": str(options.__file__).rsplit("/protrna/", 1)[0], "PATH": "",
                                 "PROTRNA_HOME": str(tmp_path / "home"), "PROTRNA_OFFLINE": "1"})
    assert result.returncode == 2, result.stderr
    lines = [segment.split("\r")[-1] for segment in result.stderr.split("\n")]
    assert any(line.startswith("protrna embed: error: ") and "missing.fa" in line for line in lines), lines
