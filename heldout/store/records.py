"""The run record, ``<run>/run.json``: how one run was made and how well it did.

One owner for the file: `RunRecord` is its typed content (`to_json` / `from_json`),
`write_run_record` its one writer and `read_run_record` its one reader. Training
builds the record (`heldout.training.records`); everything else reads it here, by
attribute, never by string key.

Besides the settings (data set, seed, training config and data fingerprint, the same
as ``experiment.json``'s) and the outcome (accuracies, steps, seconds, host), the record
keeps the facts later readers need and must not re-derive: every checkpoint written
with its epoch, optimizer step and learning rate (`CheckpointRecord`), the checkpoints
saved during training (``checkpoint_every``) under ``checkpoints`` and the final model
(``save_checkpoints``) under ``final_checkpoint``. TracIn weighs each checkpoint by that
learning rate: the mean rate of the stretch of steps that ended there.

Tolerant reading, so files of every version read:
  * no ``run.json`` (the released Feldman-Zhang runs have none): an empty record, every
    field unknown (None or empty);
  * a key this version does not know (written by a later version): kept in
    `RunRecord.extra` and written back unchanged by `to_json`;
  * a key an earlier version did not write (``final_checkpoint`` before it existed):
    its field is None, and the reader that needs it says so in one line
    (`RunRecord.tracin_checkpoints`).
A known key holding the wrong type is a damaged file (`files.StoredFileError`, naming
the file and the key).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from heldout.errors import ParameterError
from heldout.store import files
from heldout.store import layout as layout_lib


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """One checkpoint a run wrote (``checkpoints/ckpt-<epoch>``).

    Attributes:
        epoch: epochs completed when it was saved (its file number).
        global_step: optimizer steps taken by then.
        learning_rate: mean learning rate of the steps since the previous checkpoint (or
            the start): TracIn's weight of this checkpoint.
    """

    epoch: int
    global_step: int
    learning_rate: float

    def to_json(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "global_step": self.global_step,
                "learning_rate": self.learning_rate}

    @classmethod
    def from_json(cls, content: Any) -> CheckpointRecord:
        """Raises: TypeError / KeyError / ValueError on a malformed entry."""
        return cls(epoch=int(content["epoch"]), global_step=int(content["global_step"]),
                   learning_rate=float(content["learning_rate"]))


@dataclasses.dataclass(frozen=True)
class Accuracy:
    """Accuracy of a run's final model on the examples it trained on (``train``), the
    training examples it did not see (``removed``; None for a run on all of them) and the
    test split."""

    train: float
    removed: float | None
    test: float

    def to_json(self) -> dict[str, Any]:
        return {"train": self.train, "removed": self.removed, "test": self.test}

    @classmethod
    def from_json(cls, content: Any) -> Accuracy:
        removed = content.get("removed")
        return cls(train=float(content["train"]),
                   removed=None if removed is None else float(removed),
                   test=float(content["test"]))


def _scalar(kind: type) -> Any:
    """A reader of one JSON value of type `kind` (an int may be written as 3.0)."""
    def read(value: Any) -> Any:
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if (kind is str and not isinstance(value, str)) or (kind is not str and not number) \
                or (kind is int and value != int(value)):
            raise TypeError(f"expected {kind.__name__}, got {value!r}")
        return kind(value)
    return read


# JSON key -> how its value is read (the field of the same name holds the result).
_SCALARS = {"dataset": _scalar(str), "seed": _scalar(int), "subset": _scalar(str),
            "run_id": _scalar(int), "num_train_examples": _scalar(int),
            "optimizer_steps": _scalar(int), "seconds": _scalar(float),
            "models_trained_together": _scalar(int), "finished_at": _scalar(str),
            "host": _scalar(str), "pid": _scalar(int)}
_MAPPINGS = ("train_config", "data", "versions", "targets")
_SETTINGS = ("dataset", "seed", "train_config", "data")  # what experiment.json also holds


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """The content of one ``run.json``; a field the file does not hold is None (empty).

    Attributes:
        dataset: data source spec the run trained on (``digits``, ``tfds:cifar10``).
        seed: the experiment seed (with `subset` and `run_id` it fixes the run's seeds).
        train_config: the training settings (`TrainConfig` fields that change what is
            computed: ``model``, ``model_width``, ``epochs``, ``learning_rate``, ...).
        data: fingerprint of the data set (as in ``experiment.json``).
        subset: the design folder (``0.7``, ``full``, ``drop-<name>``).
        run_id: the run's id.
        num_train_examples: training examples the run trained on.
        optimizer_steps: optimizer steps it took.
        accuracy: of the final model (`Accuracy`).
        seconds: training time per run of its group.
        models_trained_together: size of its group (K).
        finished_at, host, pid, versions: when, where and with which library versions.
        targets: the target set of a ``drop-<name>`` run (``name``, ``groups``).
        checkpoints: checkpoints saved during training (``checkpoint_every``), by epoch.
        final_checkpoint: the final model's checkpoint (``save_checkpoints``).
        extra: keys of the file this version does not know, kept as they were.
    """

    dataset: str | None = None
    seed: int | None = None
    train_config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    data: Mapping[str, Any] | None = None
    subset: str | None = None
    run_id: int | None = None
    num_train_examples: int | None = None
    optimizer_steps: int | None = None
    accuracy: Accuracy | None = None
    seconds: float | None = None
    models_trained_together: int | None = None
    finished_at: str | None = None
    host: str | None = None
    pid: int | None = None
    versions: Mapping[str, str] | None = None
    targets: Mapping[str, Any] | None = None
    checkpoints: tuple[CheckpointRecord, ...] = ()
    final_checkpoint: CheckpointRecord | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def is_empty(self) -> bool:
        """Whether nothing is known (no ``run.json``, as for the released runs, or ``{}``)."""
        return self == RunRecord()

    @property
    def model(self) -> str | None:
        """The architecture's name (``train_config["model"]``), or None when unknown."""
        return self.train_config.get("model")

    @property
    def model_width(self) -> float:
        """The width multiplier of the model (1 when not recorded)."""
        return float(self.train_config.get("model_width", 1.0))

    def with_settings(self, settings: Mapping[str, Any]) -> RunRecord:
        """This record with the experiment's settings (the JSON object of
        ``experiment.json``: ``dataset``, ``seed``, ``train_config``, ``data``); keys
        of it that are no field of the record are kept in `extra`."""
        read = RunRecord.from_json({key: value for key, value in settings.items()
                                    if key in _SETTINGS}, where="settings")
        others = {key: value for key, value in settings.items() if key not in _SETTINGS}
        return dataclasses.replace(self, **{key: getattr(read, key) for key in _SETTINGS},
                                   extra={**self.extra, **others})

    def saved_epochs(self) -> list[int]:
        """Epochs of every checkpoint written: during training, then the final model."""
        saved = [c.epoch for c in self.checkpoints]
        final = self.final_checkpoint
        return saved + ([final.epoch] if final and final.epoch not in saved else [])

    def tracin_checkpoints(self, run_dir: str | None = None) -> list[tuple[int, float]]:
        """``(epoch, learning rate)`` of every checkpoint TracIn uses, the final model last:
        the checkpoints saved during training and the final model, as recorded.

        Raises:
            ParameterError: the record lacks the final model's checkpoint (a run without
                ``save_checkpoints``, or a ``run.json`` of an earlier version, which did
                not record its learning rate); `run_dir`, when given, names the run.
        """
        if self.final_checkpoint is None:
            raise ParameterError(
                "run_dir", "run.json records no final checkpoint with its learning rate "
                "(a run without save_checkpoints, or one trained by an earlier version); "
                "train it again with save_checkpoints and retrain_complete",
                *([run_dir] if run_dir is not None else []))
        result = [(c.epoch, c.learning_rate) for c in sorted(self.checkpoints,
                                                               key=lambda c: c.epoch)]
        if not result or result[-1][0] != self.final_checkpoint.epoch:
            result.append((self.final_checkpoint.epoch, self.final_checkpoint.learning_rate))
        return result

    def to_json(self) -> dict[str, Any]:
        """The JSON object of ``run.json`` (fields that are None or empty left out, unknown
        keys of a file read earlier written back)."""
        content: dict[str, Any] = dict(self.extra)
        for key in (*_SCALARS, *_MAPPINGS):
            value = getattr(self, key)
            if value is not None and not (key == "train_config" and not value):
                content[key] = dict(value) if key in _MAPPINGS else value
        if self.accuracy is not None:
            content["accuracy"] = self.accuracy.to_json()
        if self.checkpoints:
            content["checkpoints"] = [c.to_json() for c in self.checkpoints]
        if self.final_checkpoint is not None:
            content["final_checkpoint"] = self.final_checkpoint.to_json()
        return content

    @classmethod
    def from_json(cls, content: Any, where: str = "run.json") -> RunRecord:
        """The record of a ``run.json`` object (see the module docstring for what is
        tolerated).

        Raises:
            files.StoredFileError: `content` is not an object, or a known key holds the
                wrong type; `where` names the file.
        """
        if not isinstance(content, Mapping):
            raise files.StoredFileError(f"{where}: expected a JSON object, got "
                                        f"{type(content).__name__}")
        fields: dict[str, Any] = {}
        readers = {**_SCALARS, **dict.fromkeys(_MAPPINGS, _mapping),
                   "accuracy": Accuracy.from_json,
                   "checkpoints": lambda v: tuple(CheckpointRecord.from_json(c) for c in v),
                   "final_checkpoint": CheckpointRecord.from_json}
        for key, value in content.items():
            if key not in readers or value is None:
                continue
            try:
                fields[key] = readers[key](value)
            except (TypeError, KeyError, ValueError, AttributeError) as e:
                raise files.StoredFileError(
                    f"{where}: malformed {key!r} ({type(e).__name__}: {e})") from None
        extra = {key: value for key, value in content.items() if key not in readers}
        return cls(**fields, extra=extra)


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TypeError(f"expected an object, got {type(value).__name__}")
    return dict(value)


def write_run_record(directory: str, record: RunRecord) -> None:
    """Writes the ``run.json`` of the run in `directory` atomically (`runs.save_run`
    calls this for new runs)."""
    files.write_json(layout_lib.RunDir(directory).run_info, record.to_json())


def read_run_record(directory: str) -> RunRecord:
    """The record of the run in `directory`; an empty `RunRecord` when the run has no
    ``run.json`` (released runs).

    Raises:
        files.StoredFileError: the file is not valid JSON or not a run record.
    """
    path = layout_lib.RunDir(directory).run_info
    try:
        content = files.read_json(path)
    except files.StoredFileMissing:
        return RunRecord()
    return RunRecord.from_json(content, where=path)
