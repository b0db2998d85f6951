"""Fingerprints the aux arrays of the digits default, to show a change kept behaviour.

A fingerprint is, per run, the SHA-256 of every array of its aux_arrays.npz (key, dtype,
shape and bytes, keys sorted). `--write` stores the fingerprints of an experiment's runs;
`--check` compares an experiment's runs with the stored ones and names every run and key
that differs.

Bits depend on the CPU's vector instructions (XLA compiles the program for the host), so
there is one stored file per instruction set, chosen by `default_file`:
`benchmarks/results/digits_default_250.json` (AVX-512; written from `python train.py
--num_runs=250` before the package was redesigned into layers) and
`digits_default_250_avx2.json` (AVX2 without AVX-512; written from the redesigned
package at commit 264db71, whose runs the AVX-512 file had checked).

Usage:
  python train.py --num_runs=250 --experiment_dir=/tmp/fp/digits
  python benchmarks/digits_fingerprint.py --experiment_dir=/tmp/fp/digits --check
"""

import argparse
import hashlib
import json
import os
import sys

import numpy as np

RESULTS = os.path.join(os.path.dirname(__file__), "results")
FILES = {"avx512": os.path.join(RESULTS, "digits_default_250.json"),
         "avx2": os.path.join(RESULTS, "digits_default_250_avx2.json")}


def instruction_set() -> str:
    """The widest vector instruction set of this CPU that XLA compiles for: "avx512",
    "avx2" or "other" (from /proc/cpuinfo; "other" where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return "other"
    if "avx512f" in flags:
        return "avx512"
    return "avx2" if "avx2" in flags else "other"


def default_file() -> str | None:
    """The stored fingerprints of this CPU's instruction set, or None if none are stored."""
    return FILES.get(instruction_set())


def run_fingerprint(path: str) -> dict[str, str]:
    """SHA-256 of each array in one aux_arrays.npz, keyed by array name."""
    out = {}
    with np.load(path) as arrays:
        for key in sorted(arrays.files):
            value = np.ascontiguousarray(arrays[key])
            digest = hashlib.sha256()
            digest.update(f"{key}|{value.dtype.str}|{value.shape}|".encode())
            digest.update(value.tobytes())
            out[key] = digest.hexdigest()
    return out


def experiment_fingerprints(experiment_dir: str, subset: str = "0.7") -> dict[str, dict]:
    """Fingerprints of every complete run of one subset folder, keyed by run id."""
    folder = os.path.join(experiment_dir, subset)
    runs = {}
    for name in sorted(os.listdir(folder), key=lambda s: (len(s), s)):
        path = os.path.join(folder, name, "aux_arrays.npz")
        if name.isdigit() and os.path.exists(path):
            runs[name] = run_fingerprint(path)
    return runs


def compare(stored: dict[str, dict], found: dict[str, dict]) -> list[str]:
    """Differences between stored and found fingerprints, for the runs both have."""
    problems = []
    for run_id in sorted(set(stored) & set(found), key=int):
        for key in sorted(set(stored[run_id]) | set(found[run_id])):
            if stored[run_id].get(key) != found[run_id].get(key):
                problems.append(f"run {run_id}: {key} differs")
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment_dir", default="./experiments/digits")
    parser.add_argument("--file", default=None,
                        help="fingerprint file (default: the one of this CPU's instruction set)")
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    args.file = args.file or default_file()
    if args.file is None:
        sys.exit(f"digits_fingerprint.py: error: --file: no fingerprints are stored for "
                 f"this CPU's instruction set ({instruction_set()}); give a file to write")
    found = experiment_fingerprints(args.experiment_dir)
    if args.write:
        with open(args.file + ".tmp", "w") as f:
            json.dump(found, f, indent=0, sort_keys=True)
        os.replace(args.file + ".tmp", args.file)
        print(f"wrote fingerprints of {len(found)} runs to {args.file}")
    if args.check:
        with open(args.file) as f:
            stored = json.load(f)
        common = set(stored) & set(found)
        problems = compare(stored, found)
        for line in problems[:20]:
            print(line)
        print(f"{len(common)} runs compared: {len(problems)} differences")
        sys.exit(1 if problems or not common else 0)


if __name__ == "__main__":
    main()
