"""Tests of scripts/readme_commands.py, the README walker, on its pure parts (the walk
itself runs in scripts/run_tests.sh: it starts CLIs, a minute or more)."""

import importlib.util
import pathlib
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("readme_commands",
                                               REPO_ROOT / "scripts" / "readme_commands.py")
walker = importlib.util.module_from_spec(_spec)
sys.modules["readme_commands"] = walker  # its dataclass looks its module up
_spec.loader.exec_module(walker)

MARKDOWN = """
```bash
python train.py --a=1 \\
    --b=2     # a comment
# a whole comment line
python estimate.py --x=<your dir> [--all] [--plan --effect=0.25]
```

```
python not_a_command.py
```

  ```bash
  python -c "print('a # b')"
  ```
"""


def test_commands_are_joined_stripped_of_comments_and_only_from_bash_blocks():
    commands = walker.extract_commands(MARKDOWN)
    assert [c.text for c in commands] == [
        "python train.py --a=1 --b=2",
        "python estimate.py --x=<your dir> [--all] [--plan --effect=0.25]",
        "python -c \"print('a # b')\""]
    assert [c.line for c in commands] == [3, 6, 14]
    second = commands[1]
    assert second.has_placeholder and not commands[0].has_placeholder
    assert second.argv(optional=True) == ["python", "estimate.py", "--x=PLACEHOLDER",
                                          "--all", "--plan", "--effect=0.25"]
    assert second.argv(optional=False) == ["python", "estimate.py", "--x=PLACEHOLDER"]
    assert walker.target(commands[2].argv(True)) == ("inline", None)
    assert walker.target(["python", "-m", "heldout.x", "--y"]) == ("module", "heldout.x")
    assert walker.flag_args(["python", "-m", "heldout.x", "--y"]) == ["--y"]
    assert walker.target(["kubectl", "apply", "-f", "k.yaml"]) == ("file", "k.yaml")


def test_small_caps_training_and_leaves_other_commands_alone():
    cap = walker.SMALL_RUNS
    assert walker.small(["python", "train.py", "--num_runs=1000"]) == [
        "python", "train.py", f"--num_runs={cap}", f"--models_at_once={cap}",
        "--concurrent_programs=1", "--epochs=1", "--progress=false"]
    assert walker.small(["python", "train.py", "--run_ids=5-99", "--models_at_once=4"]) == [
        "python", "train.py", f"--run_ids=5-{4 + cap}", "--models_at_once=4",
        "--concurrent_programs=1", "--epochs=1", "--progress=false"]
    assert walker.small(["python", "train.py"])[2] == f"--num_runs={cap}"
    assert walker.small(["python", "estimate.py", "--fdr"]) == ["python", "estimate.py",
                                                               "--fdr"]


def test_the_commands_the_walker_runs_are_in_the_readme():
    texts = {c.text for c in walker.extract_commands(
        (REPO_ROOT / "README.md").read_text(encoding="utf-8"))}
    assert set(walker.EXECUTE) <= texts
    assert set(walker.KNOWN_FAILURES) <= set(walker.EXECUTE)
    problems, to_parse = walker.check_static(walker.extract_commands(
        (REPO_ROOT / "README.md").read_text(encoding="utf-8")))
    assert problems == [] and {"train.py", "estimate.py", "demo.py"} <= set(to_parse)
