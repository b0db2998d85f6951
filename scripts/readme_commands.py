"""Walks README.md as a new user would: every shell command checked, the cheap ones run.

Every command in the README's ``bash`` blocks is taken in order:

* ``python <script>.py ...`` and ``python -m <module> ...``: the script or module must
  exist and its flags are parsed by the CLI's own flag definitions (absl or argparse:
  the script runs in a subprocess up to the call that would parse its command line,
  which is replaced, so its ``main`` never runs), so an unknown or renamed flag, a bad
  flag value or a removed script is caught. Benchmarks given without flags are
  only compiled (importing each would cost seconds of TensorFlow start-up apiece).
* ``bash <file>``, ``sbatch <file>``, ``kubectl apply -f <file>``: the file must exist.
* The commands in `EXECUTE` are also run, in README order, in a fresh temporary copy of
  the repository (so ``./experiments`` and ``data.npz`` are its own), at small sizes:
  ``train.py`` commands get ``--epochs=1`` and at most `SMALL_RUNS` runs (``--num_runs``
  capped, ``--run_ids`` cut to its first ids, ``--num_runs`` added when neither is
  given), ``--models_at_once`` of that size and ``--concurrent_programs=1`` unless
  given (one group, not padded to the default's 250 models; runs are bit-identical
  whatever the group) and ``--progress=false``; nothing else is changed. Optional ``[...]`` groups
  are left out when running and included when parsing.

Commands with ``<placeholders>`` (a released run directory, a bucket) are parsed only.
`KNOWN_FAILURES` lists README commands that fail today for a reason outside the README
(the front door's behaviour): they are reported, and the walker fails if one of them
starts to pass, so the list cannot go stale.

Usage:
  python scripts/readme_commands.py              # parse every command, run EXECUTE
  python scripts/readme_commands.py --parse_only
  python scripts/readme_commands.py --list       # the commands found, numbered

Exit status 0 when every command parses and every executed one succeeds (or fails as
listed in `KNOWN_FAILURES`), 1 otherwise, with one line per problem.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Most runs a train.py command trains when run by the walker.
SMALL_RUNS = 8

# README commands that are run (exactly as they appear, after joining continuation lines
# and dropping comments), in README order.
EXECUTE = (
    "python train.py",
    "python -c \"import numpy as np; from sklearn.datasets import load_digits; "
    "x, y = load_digits(return_X_y=True); np.savez('data.npz', x_train=x[:1400], "
    "y_train=y[:1400], x_test=x[1400:], y_test=y[1400:])\"",
    "python train.py --dataset=npz:data.npz --experiment_dir=./experiments/npz "
    "--subset_ratio=0.5 --run_ids=0-99",
    "python estimate.py --experiment_dir=./experiments/digits --plot_dir=plots "
    "--csv_dir=tables",
    "python estimate.py --estimator=all --metric=margin --fdr",
    "python train.py --experiment_dir=./experiments/by_hand --subset=full --num_runs=1000",
)

# README command -> why it fails today (outside the README's control); none today.
KNOWN_FAILURES: dict[str, str] = {}

_PLACEHOLDER = re.compile(r"<[^<>\s][^<>]*>")


@dataclasses.dataclass(frozen=True)
class Command:
    """One README command: its text (continuations joined, comments dropped) and line."""

    line: int
    text: str

    @property
    def has_placeholder(self) -> bool:
        return bool(_PLACEHOLDER.search(self.text))

    def argv(self, optional: bool) -> list[str]:
        """The words of the command; `optional`: keep the flags of ``[...]`` groups."""
        text = _PLACEHOLDER.sub("PLACEHOLDER", self.text)
        words = []
        depth = 0
        for word in shlex.split(text):
            opens, closes = word.startswith("["), word.endswith("]")
            if opens:
                depth += 1
            bare = word[1 if opens else 0:len(word) - (1 if closes else 0)]
            if (depth == 0 or optional) and bare:
                words.append(bare)
            if closes and depth:
                depth -= 1
        return words


def extract_commands(markdown: str) -> list[Command]:
    """The shell commands of every ``bash`` block, in order (``$ `` prompts stripped)."""
    commands, fenced, bash, pending, start = [], False, False, "", 0
    for number, raw in enumerate(markdown.splitlines(), start=1):
        line = raw.strip()
        if line.startswith("```"):
            fenced = not fenced
            bash = fenced and line == "```bash"
            continue
        if not bash or not line or line.startswith("#"):
            continue
        if not pending:
            start = number
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        text = pending + line
        pending = ""
        text = " ".join(shlex.split(text, comments=True, posix=False))
        if text:
            commands.append(Command(start, text.removeprefix("$ ")))
    return commands


def target(argv: list[str]) -> tuple[str, str | None]:
    """(kind, target) of a command: ("script", path), ("module", name), ("inline", None),
    ("file", path) for bash/sbatch/kubectl, or ("other", None)."""
    words = argv[1:] if argv and argv[0] == "time" else argv
    if not words:
        return "other", None
    if words[0] in ("python", "python3"):
        if words[1:2] == ["-m"]:
            return "module", words[2]
        if words[1:2] == ["-c"]:
            return "inline", None
        return "script", words[1]
    if words[0] in ("bash", "sbatch"):
        return "file", words[1]
    if words[0] == "kubectl" and "-f" in words:
        return "file", words[words.index("-f") + 1]
    return "other", None


def flag_args(argv: list[str]) -> list[str]:
    """The arguments after the script or module name."""
    words = argv[1:] if argv and argv[0] == "time" else argv
    return words[3:] if words[1:2] == ["-m"] else words[2:]


def check_static(commands: list[Command]) -> tuple[list[str], dict[str, list[Command]]]:
    """Problems found without running anything, and the commands whose flags to parse,
    grouped by script or module."""
    problems, to_parse = [], {}
    for command in commands:
        argv = command.argv(optional=True)
        kind, name = target(argv)
        where = f"README.md:{command.line}: {command.text}"
        if kind in ("script", "file"):
            if not (REPO_ROOT / name).is_file():
                problems.append(f"{where}: {name} does not exist")
                continue
        if kind == "script" and name.startswith("benchmarks/") and not flag_args(argv):
            try:
                compile((REPO_ROOT / name).read_text(encoding="utf-8"), name, "exec")
            except SyntaxError as e:
                problems.append(f"{where}: does not compile ({e})")
            continue
        if kind in ("script", "module"):
            to_parse.setdefault(name, []).append(command)
        elif kind == "other":
            problems.append(f"{where}: not a command this walker knows how to check")
    return problems, to_parse


def parse_in_subprocess(name: str, commands: list[Command]) -> list[str]:
    """Parses every command's flags with the flag definitions of script or module
    `name`, in one subprocess; returns the problems."""
    request = json.dumps({"target": name,
                          "argvs": [flag_args(c.argv(optional=True)) for c in commands]})
    environ = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "TF_CPP_MIN_LOG_LEVEL": "3",
               "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run([sys.executable, __file__, "--_parse_child"], input=request,
                            capture_output=True, text=True, cwd=REPO_ROOT, env=environ,
                            timeout=300)
    try:
        answers = json.loads(result.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        return [f"{name}: could not be imported to read its flags ({tail})"]
    return [f"README.md:{c.line}: {c.text}: {answer}"
            for c, answer in zip(commands, answers, strict=True) if answer]


class _FlagsDefined(Exception):
    """Raised in place of the CLI's ``app.run`` / ``parse_args``: its flags are defined."""


def _parse_child() -> None:
    """In the subprocess: run the script or module as ``__main__`` up to the point where
    it would parse its command line (absl's ``app.run`` or argparse's ``parse_args``,
    replaced here so its ``main`` never runs), then parse each argv with those flag
    definitions; print one JSON list of errors ("" for none)."""
    import argparse
    import contextlib
    import io
    import runpy

    from absl import app, flags

    request = json.loads(sys.stdin.read())
    name = request["target"]
    found: dict[str, object] = {}

    def absl_run(*args, **kwargs):
        found["absl"] = True
        raise _FlagsDefined

    def argparse_parse(parser, *args, **kwargs):
        found["argparse"] = parser
        raise _FlagsDefined

    app.run = absl_run
    argparse.ArgumentParser.parse_args = argparse_parse
    sys.argv = [name]
    try:
        if name.endswith(".py"):
            runpy.run_path(str(REPO_ROOT / name), run_name="__main__")
        else:
            runpy.run_module(name, run_name="__main__", alter_sys=True)
    except _FlagsDefined:
        pass
    answers = []
    for argv in request["argvs"]:
        if "absl" in found:
            flags.FLAGS.unparse_flags()
            try:
                rest = flags.FLAGS([name, *argv])
                answers.append(f"unexpected arguments {rest[1:]}" if len(rest) > 1 else "")
            except flags.Error as e:
                answers.append(str(e).splitlines()[0])
        elif "argparse" in found:
            errors = io.StringIO()
            try:
                with contextlib.redirect_stderr(errors):
                    unknown = argparse.ArgumentParser.parse_known_args(found["argparse"],
                                                                       argv)[1]
                answers.append(f"unrecognized arguments: {' '.join(unknown)}"
                               if unknown else "")
            except SystemExit:
                answers.append((errors.getvalue().strip().splitlines() or ["error"])[-1])
        else:
            answers.append("its command line is not parsed by absl or argparse")
    print(json.dumps(answers))


def small(argv: list[str]) -> list[str]:
    """A train.py command at the walker's small size (see the module docstring)."""
    words = list(argv)
    if len(words) < 2 or not words[1].endswith("train.py"):
        return words
    sized = False
    for position, word in enumerate(words):
        if word.startswith("--num_runs="):
            words[position] = f"--num_runs={min(int(word.split('=')[1]), SMALL_RUNS)}"
            sized = True
        elif word.startswith("--run_ids="):
            first = int(re.split(r"[-,]", word.split("=")[1])[0])
            words[position] = f"--run_ids={first}-{first + SMALL_RUNS - 1}"
            sized = True
    extra = [] if sized else [f"--num_runs={SMALL_RUNS}"]
    # Speed only (runs are bit-identical whatever the group): one group of the runs.
    for flag, value in (("--models_at_once", SMALL_RUNS), ("--concurrent_programs", 1)):
        if not any(word.startswith(f"{flag}=") for word in words):
            extra.append(f"{flag}={value}")
    return words + extra + ["--epochs=1", "--progress=false"]


def execute(commands: list[Command]) -> tuple[list[str], list[str]]:
    """Runs the `EXECUTE` commands in order in a fresh copy; returns (problems, notes)."""
    by_text = {c.text: c for c in commands}
    missing = [text for text in EXECUTE if text not in by_text]
    if missing:
        return [f"README.md no longer has this command of EXECUTE: {text}"
                for text in missing], []
    problems, notes = [], []
    order = sorted((by_text[text] for text in EXECUTE), key=lambda c: c.line)
    with tempfile.TemporaryDirectory(prefix="readme-") as temporary:
        copy = pathlib.Path(temporary) / "repo"
        shutil.copytree(REPO_ROOT, copy, ignore=shutil.ignore_patterns(
            ".git", "experiments", "__pycache__", "*.egg-info", ".ruff_cache",
            ".pytest_cache"))
        environ = {**os.environ, "PYTHONPATH": str(copy), "TF_CPP_MIN_LOG_LEVEL": "3",
                   "CUDA_VISIBLE_DEVICES": ""}
        for command in order:
            argv = small(command.argv(optional=False))
            argv = [sys.executable if word in ("python", "python3") else word
                    for word in argv]
            start = time.time()
            result = subprocess.run(argv, cwd=copy, env=environ, capture_output=True,
                                    text=True, timeout=600)
            seconds = time.time() - start
            last = (result.stderr.strip().splitlines() or [""])[-1]
            where = f"README.md:{command.line}: {command.text}"
            known = KNOWN_FAILURES.get(command.text)
            if result.returncode == 0 and known:
                problems.append(f"{where}: passes now; remove it from KNOWN_FAILURES")
            elif result.returncode and known:
                notes.append(f"known failure ({seconds:.0f} s) {where}: {last} [{known}]")
            elif result.returncode:
                problems.append(f"{where}: exit status {result.returncode}: {last}")
            else:
                notes.append(f"ran ({seconds:.0f} s) {where}")
    return problems, notes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(REPO_ROOT / "README.md"))
    parser.add_argument("--parse_only", action="store_true")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--_parse_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._parse_child:
        _parse_child()
        return 0
    start = time.time()
    commands = extract_commands(pathlib.Path(args.readme).read_text(encoding="utf-8"))
    if args.list:
        for number, command in enumerate(commands, start=1):
            print(f"{number:>3} README.md:{command.line}: {command.text}")
        return 0
    problems, to_parse = check_static(commands)
    notes: list[str] = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        parsed = pool.map(lambda item: parse_in_subprocess(*item), to_parse.items())
        ran = pool.submit(execute, commands) if not args.parse_only else None
        for found in parsed:
            problems += found
        if ran is not None:
            found, notes = ran.result()
            problems += found
    for note in notes:
        print(note)
    for problem in problems:
        print(f"problem: {problem}")
    print(f"{len(commands)} README commands: flags of {sum(map(len, to_parse.values()))} "
          f"parsed by {len(to_parse)} CLIs, {0 if args.parse_only else len(EXECUTE)} run; "
          f"{len(problems)} problems; {time.time() - start:.0f} s")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
