"""Builds indexed ImageNet TFRecord shards, in the order of the published index file.

The released ImageNet ResNet-50 runs store example indices that refer to the order of
``imagenet_index.npz`` (Feldman & Zhang): ``tr_filenames``/``tr_labels`` for
the 1,281,167 training images, ``tt_filenames``/``tt_labels`` for the 50,000 validation
images. This module turns a raw ImageNet folder into TFRecords in exactly that order,
with the features the published demo reads (see `heldout.data.imagenet`):

* ``image/encoded``: RGB JPEG bytes; ``image/class/label``: int64, **1-based**;
  ``image/filename``: the file's base name; ``index``: int64 position in the index file;
* and, as the published (TF models ``build_imagenet_data.py``) builder wrote them,
  ``image/height``, ``image/width``, ``image/channels`` (3), ``image/colorspace``
  (``RGB``), ``image/format`` (``JPEG``) and ``image/class/synset``.

Shard ``s`` of ``n`` (``train-00012-of-01024``, ``validation-00003-of-00128``) holds a
contiguous range of indices (`numpy.array_split`), so reading the shards in name order
gives the records in index order. (The published builder, ``tools/imagenet-tfrecords-
builder/build_dataset.py`` of google-research/heldout-influence-estimation, writes the
same ``index`` feature but stores records in synset-folder order; readers that go by the
``index`` feature, as `heldout.data.imagenet` does, see no difference.)

Dirty files are cleaned as the published builder did: CMYK JPEGs are decoded to RGB and
re-encoded, and the PNG file named ``.JPEG`` is re-encoded as JPEG, both at quality 100.
The published builder recognised them by a list of names (22 CMYK files and
``n02105855_2933.JPEG``, from github.com/cytsai/ilsvrc-cmyk-image-list); here they are
recognised by their content (PNG signature; four components in the JPEG frame header),
which finds the same files and any renamed copy.

Folder layout: ``<imagenet_dir>/train/<synset>/<file>`` and ``<imagenet_dir>/val/`` with
the validation files either flat or in ``<synset>/`` folders. Files are found by base
name anywhere under ``train/`` (resp. ``val/``), so either form of the index's filenames
(``n01440764_10026.JPEG`` or ``n01440764/n01440764_10026.JPEG``) works. Class ``c``
(0-based) is the ``c``-th synset: the lines of `synsets_file`, else the sorted
``train/`` folder names (the standard order). Each image's synset (its folder, or for
flat validation files a labels file) must give the class the index says.

Building runs over shards in threads, is resumable (each shard is written to a temporary
name and renamed when whole; a shard whose final name exists is never rewritten) and shows
a progress bar. Resuming is safe:

* Temporaries are hidden names (``.tmp-<uuid>.tfrecord``) that no reader pattern
  (``train-*``, ``validation-*``) matches, and the temporaries a killed build left are
  deleted when the next build starts.
* ``build_imagenet.json`` records what the shards are built from (SHA-256 of the index
  file and of the synset list, shard counts, label offset) before the first shard is
  written; a build into a folder recorded for another index file or other shard counts
  is refused, so two builds are never mixed. A folder with shards but no record is
  refused too.
* A lock file (``.build_imagenet.lock``: host, pid) keeps a second builder out of the
  folder while one runs; the lock of a builder that died on this host is taken over.

Every failure (a bad setting, an unreadable index, image or labels file, an unwritable
output folder, a second builder) is one ``ValueError`` line naming the file. Usage::

    python -m heldout.data.build_imagenet --imagenet_dir=/data/imagenet \\
        --index_file=imagenet_index.npz --output_dir=/data/imagenet-tfrecords \\
        --num_shards=1024 --num_validation_shards=128
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import os
import posixpath
import re
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from heldout.progress import Progress
from heldout.runtime import import_tensorflow, process_alive

tf = import_tensorflow()  # quietly, before heldout.data.imagenet imports it

from heldout.data import imagenet as imagenet_lib  # noqa: E402

SPLITS = ("train", "validation")
# Index-file keys and folder of each split.
_SPLIT_KEYS = {"train": ("tr_filenames", "tr_labels"), "validation": ("tt_filenames",
                                                                       "tt_labels")}
_SPLIT_FOLDERS = {"train": "train", "validation": "val"}
_JPEG_QUALITY = 100  # of re-encoded CMYK/PNG files, as published
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# JPEG start-of-frame markers (baseline, progressive, lossless, ...; not DHT/JPG/DAC).
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
RECORD_FILENAME = "build_imagenet.json"  # what the shards of a folder are built from
LOCK_FILENAME = ".build_imagenet.lock"  # held by the builder writing into the folder
_TEMPORARY_PREFIX = ".tmp-"  # hidden: matches no reader pattern (train-*, validation-*)
# Temporaries of older builds, named <shard>.tmp-<hex>: they matched train-*.
_OLD_TEMPORARY = re.compile(r"^(train|validation)-\d+-of-\d+\.tmp-[0-9a-f]{32}$")
_SHARD = re.compile(r"^(train|validation)-\d+-of-\d+$")
_LOCK_SETTLE_SECONDS = 1.0  # on object stores (no exclusive create): write, wait, read back


@dataclasses.dataclass(frozen=True)
class BuildSummary:
    """What one `build_imagenet_tfrecords` call did.

    Attributes:
        output_dir: where the shards are.
        written: shard file names written by this call.
        skipped: shard file names that were already complete (untouched).
        images: images encoded by this call.
        converted: base names of files re-encoded (CMYK or PNG) by this call.
        seconds: wall time.
    """

    output_dir: str
    written: tuple[str, ...]
    skipped: tuple[str, ...]
    images: int
    converted: tuple[str, ...]
    seconds: float

    def __str__(self) -> str:
        rate = self.images / max(self.seconds, 1e-9)
        return (f"{self.output_dir}: wrote {len(self.written)} shard(s), "
                f"{len(self.skipped)} already complete; {self.images} images in "
                f"{self.seconds:.1f} s ({rate:.0f}/s), {len(self.converted)} converted "
                "from CMYK/PNG")


def shard_name(split: str, shard: int, num_shards: int) -> str:
    """``train-00012-of-01024``: the published shard naming."""
    return f"{split}-{shard:05d}-of-{num_shards:05d}"


def build_imagenet_tfrecords(imagenet_dir: str, index_file: str, output_dir: str, *,
                             num_train_shards: int = 1024,
                             num_validation_shards: int = 128,
                             splits: Sequence[str] = SPLITS,
                             synsets_file: str | None = None,
                             validation_labels_file: str | None = None,
                             index_label_offset: int = 0, num_threads: int = 8,
                             progress: bool = True,
                             on_shard_written: Callable[[str], None] | None = None
                             ) -> BuildSummary:
    """Writes the TFRecord shards of `splits` in the order of `index_file`.

    Every file and label is checked before any shard is written, so a wrong folder fails
    at once with one line.

    Args:
        imagenet_dir: folder with ``train/`` and ``val/`` (local or any tf.io.gfile path).
        index_file: the published ``imagenet_index.npz``.
        output_dir: folder of the shards (created).
        num_train_shards, num_validation_shards: shards per split.
        splits: which of ``train``, ``validation`` to build.
        synsets_file: one synset per line, line ``c`` being class ``c``; None: the sorted
            folder names under ``train/``.
        validation_labels_file: synsets of flat validation files: either one synset per
            line for the validation files in sorted name order (TF's
            ``imagenet_2012_validation_synset_labels.txt``), or ``<filename> <synset>``
            (space or comma separated, e.g. ``LOC_val_solution.csv``). None: validation
            synsets come from ``val/<synset>/`` folders, or, for flat files, from the
            index's labels (unchecked).
        index_label_offset: the label the index file gives class 0 (0 for 0-based).
        num_threads: shards built at once.
        progress: show a progress bar (images, rate, ETA).
        on_shard_written: called with each shard's path once it is renamed into place.

    Returns:
        A `BuildSummary`.

    Raises:
        ValueError: a setting is invalid, the index lacks a key, a file named in the index
            is not on disk, or an image's synset disagrees with the index's label (one
            line naming the file).
    """
    start = time.monotonic()
    shard_counts = {"train": num_train_shards, "validation": num_validation_shards}
    for name, count in (("num_train_shards", num_train_shards),
                        ("num_validation_shards", num_validation_shards),
                        ("num_threads", num_threads)):
        if count < 1:
            raise ValueError(f"{name} must be >= 1, got {count}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise ValueError(f"splits={list(splits)}: expected some of {', '.join(SPLITS)}")
    index = imagenet_lib.load_imagenet_index(index_file)
    synsets = _read_synsets(imagenet_dir, synsets_file)
    jobs = []  # (split, shard path, filenames, paths, labels 0-based, indices)
    for split in splits:
        filenames, labels = (getattr(index, key) for key in _SPLIT_KEYS[split])
        labels = np.asarray(labels, np.int64) - index_label_offset
        paths, folder_synsets = _locate(imagenet_dir, split, filenames)
        if split == "validation" and validation_labels_file is not None:
            folder_synsets = _validation_synsets(validation_labels_file, filenames)
        _check_labels(index_file, split, filenames, labels, folder_synsets, synsets,
                      index_label_offset)
        count = shard_counts[split]
        if count > len(filenames):
            raise ValueError(f"num_{'train' if split == 'train' else 'validation'}_shards="
                             f"{count} exceeds the {len(filenames)} {split} images")
        for shard, rows in enumerate(np.array_split(np.arange(len(filenames)), count)):
            path = posixpath.join(output_dir, shard_name(split, shard, count))
            jobs.append((path, [filenames[i] for i in rows], [paths[i] for i in rows],
                         labels[rows], rows))
    record = {"index_sha256": _sha256(index_file, "index_file"),
              "synsets_sha256": hashlib.sha256("\n".join(synsets).encode()).hexdigest(),
              "num_train_shards": num_train_shards,
              "num_validation_shards": num_validation_shards,
              "index_label_offset": index_label_offset}
    _io(output_dir, "output_dir", lambda: tf.io.gfile.makedirs(output_dir))
    with _locked(output_dir):
        _check_record(output_dir, record, index_file)
        return _build_shards(output_dir, jobs, synsets, num_threads, progress,
                             on_shard_written, start)


def _build_shards(output_dir: str, jobs: list, synsets: Sequence[str], num_threads: int,
                  progress: bool, on_shard_written: Callable[[str], None] | None,
                  start: float) -> BuildSummary:
    """Writes the shards of `jobs` not yet complete (the folder is locked and checked)."""
    present = {e.rstrip("/") for e in _io(output_dir, "output_dir",
                                          lambda: tf.io.gfile.listdir(output_dir))}
    todo = [job for job in jobs if posixpath.basename(job[0]) not in present]
    skipped = tuple(posixpath.basename(job[0]) for job in jobs
                    if posixpath.basename(job[0]) in present)
    bar = _progress_bar(sum(len(job[1]) for job in todo), progress)
    lock = threading.Lock()
    converted: list[str] = []

    def records(names, files, labels, rows):
        for name, file, label, row in zip(names, files, labels, rows, strict=True):
            record, was_converted = _example(name, file, int(label), int(row), synsets)
            with lock:
                if was_converted:
                    converted.append(posixpath.basename(name))
                if bar is not None:
                    bar.advance(1)
            yield record

    def build(job) -> str:
        path, names, files, labels, rows = job
        _write_shard(path, records(names, files, labels, rows))
        if on_shard_written is not None:
            on_shard_written(path)
        return posixpath.basename(path)

    try:
        with concurrent.futures.ThreadPoolExecutor(num_threads) as pool:
            written = tuple(pool.map(build, todo))
    finally:
        if bar is not None:
            bar.close()
    return BuildSummary(output_dir=output_dir, written=written, skipped=skipped,
                        images=sum(len(job[1]) for job in todo),
                        converted=tuple(sorted(converted)),
                        seconds=time.monotonic() - start)


def encode_rgb_jpeg(data: bytes) -> tuple[bytes, int, int, bool]:
    """The RGB JPEG to store for a file's bytes, its height, width, and whether it changed.

    PNG and CMYK JPEG data are decoded to RGB and re-encoded at quality 100, as the
    published builder did; other JPEGs are kept byte for byte.

    Raises:
        ValueError: the data is not a decodable image.
    """
    is_png = data.startswith(_PNG_SIGNATURE)
    try:
        image = (tf.io.decode_png(data, channels=3) if is_png
                 else tf.io.decode_jpeg(data, channels=3))
    except tf.errors.OpError as e:
        raise ValueError(f"not a decodable JPEG or PNG image ({e.message})") from None
    if is_png or jpeg_components(data) == 4:
        data = tf.io.encode_jpeg(image, format="rgb", quality=_JPEG_QUALITY).numpy()
        return data, int(image.shape[0]), int(image.shape[1]), True
    return data, int(image.shape[0]), int(image.shape[1]), False


def jpeg_components(data: bytes) -> int | None:
    """Colour components in a JPEG's frame header (1 grey, 3 YCbCr/RGB, 4 CMYK/YCCK).

    None when `data` is not a JPEG or has no frame header.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # no length field
            position += 2
            continue
        length = int.from_bytes(data[position + 2:position + 4], "big")
        if marker in _SOF_MARKERS:
            return data[position + 9] if position + 9 < len(data) else None
        if marker == 0xDA:  # start of scan before any frame header
            return None
        position += 2 + length
    return None


def _example(name: str, path: str, label: int, index: int, synsets: Sequence[str]
             ) -> tuple[bytes, bool]:
    """One serialized ``tf.train.Example`` and whether the image was re-encoded."""
    def read() -> bytes:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()

    data = _io(path, "image", read)
    try:
        data, height, width, converted = encode_rgb_jpeg(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None

    def ints(value: int) -> tf.train.Feature:
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    def strings(value: bytes) -> tf.train.Feature:
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    features = {
        "image/height": ints(height),
        "image/width": ints(width),
        "image/colorspace": strings(b"RGB"),
        "image/channels": ints(3),
        imagenet_lib.LABEL_KEY: ints(label + 1),  # 1-based, as published
        "image/class/synset": strings(synsets[label].encode()),
        "image/format": strings(b"JPEG"),
        "image/filename": strings(posixpath.basename(name).encode()),
        imagenet_lib.IMAGE_KEY: strings(data),
        imagenet_lib.INDEX_KEY: ints(index),
    }
    example = tf.train.Example(features=tf.train.Features(feature=features))
    return example.SerializeToString(deterministic=True), converted  # same bytes each run


def _write_shard(path: str, records: Iterable[bytes]) -> None:
    """Writes a TFRecord file under a temporary name and renames it to `path` when whole.

    Records are written as they come, so memory holds one image per thread, not a shard.
    The temporary is a hidden name in the same folder (``.tmp-<uuid>.tfrecord``), which
    no reader pattern matches even if a killed build leaves it behind.
    """
    temporary = posixpath.join(posixpath.dirname(path),
                               f"{_TEMPORARY_PREFIX}{uuid.uuid4().hex}.tfrecord")
    try:
        with tf.io.TFRecordWriter(temporary) as writer:
            for record in records:
                writer.write(record)
        tf.io.gfile.rename(temporary, path, overwrite=False)
    except tf.errors.OpError as e:
        _remove_quietly(temporary)
        raise ValueError(f"{path}: cannot write the shard ({_op_message(e)})") from None
    except BaseException:
        _remove_quietly(temporary)
        raise


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(tf.errors.OpError):
        if tf.io.gfile.exists(path):
            tf.io.gfile.remove(path)


def _op_message(error: Exception) -> str:
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.splitlines()[0]


def _io(path: str, what: str, action: Callable[[], object]):
    """`action()`, with a file system error turned into one line naming `path`."""
    try:
        return action()
    except (tf.errors.OpError, OSError) as e:
        raise ValueError(f"{what}={path}: cannot read or write it ({_op_message(e)})") \
            from None


def _sha256(path: str, what: str) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    def digest() -> str:
        hasher = hashlib.sha256()
        with tf.io.gfile.GFile(path, "rb") as f:
            while chunk := f.read(1 << 22):
                hasher.update(chunk)
        return hasher.hexdigest()

    return _io(path, what, digest)


def _check_record(output_dir: str, record: dict, index_file: str) -> None:
    """Refuses a folder built from something else; records `record` in a new one; and
    deletes the temporaries a killed build left (the folder is locked)."""
    entries = [e.rstrip("/") for e in tf.io.gfile.listdir(output_dir)]
    path = posixpath.join(output_dir, RECORD_FILENAME)
    if RECORD_FILENAME in entries:
        try:
            with tf.io.gfile.GFile(path, "r") as f:
                stored = json.load(f)
        except (tf.errors.OpError, ValueError) as e:
            raise ValueError(f"{path}: not a readable build record ({_op_message(e)})") \
                from None
        differ = [key for key in record if stored.get(key) != record[key]] if isinstance(
            stored, dict) else list(record)
        if differ:
            what = ("another index file" if "index_sha256" in differ
                    else "other settings")
            raise ValueError(f"output_dir={output_dir}: its shards were built from {what} "
                             f"({', '.join(differ)} differ from {path}); resume with the same "
                             f"index file ({index_file} is not it) and settings, or use a new "
                             "output_dir")
    else:
        shards = sorted(e for e in entries if _SHARD.match(e))
        if shards:
            raise ValueError(f"output_dir={output_dir}: holds shards ({shards[0]}, ...) but no "
                             f"{RECORD_FILENAME}, so which index they came from is unknown; "
                             "use a new output_dir (or delete them)")
        temporary = posixpath.join(output_dir, f"{_TEMPORARY_PREFIX}{uuid.uuid4().hex}")
        with tf.io.gfile.GFile(temporary, "w") as f:
            json.dump(record, f, indent=1, sort_keys=True)
        tf.io.gfile.rename(temporary, path, overwrite=True)
    for entry in entries:
        if entry.startswith(_TEMPORARY_PREFIX) or _OLD_TEMPORARY.match(entry):
            _remove_quietly(posixpath.join(output_dir, entry))


@contextlib.contextmanager
def _locked(output_dir: str) -> Iterator[None]:
    """Holds the folder's lock file while the block runs; refuses a folder another live
    builder holds (one line naming it). A lock left by a builder that died on this host
    is taken over."""
    path = posixpath.join(output_dir, LOCK_FILENAME)
    token = uuid.uuid4().hex
    content = json.dumps({"host": socket.gethostname(), "pid": os.getpid(), "token": token})
    for _ in range(2):
        if _try_lock(path, content, token):
            break
        holder = _read_lock(path)
        if not (holder.get("host") == socket.gethostname()
                and not process_alive(holder.get("pid"))):
            raise ValueError(f"output_dir={output_dir}: another build is writing into it "
                             f"({holder.get('host', '?')}, pid {holder.get('pid', '?')}; lock "
                             f"file {path}); wait for it, or delete the lock file if no "
                             "build runs")
        _remove_quietly(path)  # its builder died on this host
    else:
        raise ValueError(f"output_dir={output_dir}: could not take the lock file {path}")
    try:
        yield
    finally:
        if _read_lock(path).get("token") == token:
            _remove_quietly(path)


def _try_lock(path: str, content: str, token: str) -> bool:
    """Creates the lock file if absent (exclusively where the file system can)."""
    try:
        if "://" not in path:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(descriptor, "w") as f:
                f.write(content)
            return True
        if tf.io.gfile.exists(path):
            return False
        with tf.io.gfile.GFile(path, "w") as f:
            f.write(content)
        time.sleep(_LOCK_SETTLE_SECONDS)
        return _read_lock(path).get("token") == token
    except FileExistsError:
        return False
    except (OSError, tf.errors.OpError) as e:
        raise ValueError(f"{path}: cannot create the lock file ({_op_message(e)})") from None


def _read_lock(path: str) -> dict:
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            holder = json.loads(f.read())
    except (tf.errors.OpError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _read_synsets(imagenet_dir: str, synsets_file: str | None) -> list[str]:
    if synsets_file is not None:
        synsets = _read_lines(synsets_file, "synsets_file")
        if not synsets:
            raise ValueError(f"synsets_file={synsets_file}: holds no synsets")
        return synsets
    train = posixpath.join(imagenet_dir, "train")
    if not tf.io.gfile.isdir(train):
        raise ValueError(f"imagenet_dir={imagenet_dir}: no train/ folder to take the synsets "
                         "from (pass synsets_file)")
    return sorted(e.rstrip("/") for e in tf.io.gfile.listdir(train)
                  if tf.io.gfile.isdir(posixpath.join(train, e)))


def _read_lines(path: str, what: str) -> list[str]:
    """The non-empty lines of a text file, stripped."""
    def read() -> list[str]:
        with tf.io.gfile.GFile(path, "r") as f:
            return [line.strip() for line in f if line.strip()]

    return _io(path, what, read)


def _locate(imagenet_dir: str, split: str, filenames: Sequence[str]
            ) -> tuple[list[str], list[str | None]]:
    """Path on disk of each index filename, and its synset folder (None for flat files).

    Raises:
        ValueError: a file is not under the split's folder (names the first such file).
    """
    root = posixpath.join(imagenet_dir, _SPLIT_FOLDERS[split])
    if not tf.io.gfile.isdir(root):
        raise ValueError(f"imagenet_dir={imagenet_dir}: no {_SPLIT_FOLDERS[split]}/ folder")
    found: dict[str, tuple[str, str | None]] = {}
    for folder, _, files in tf.io.gfile.walk(root):
        relative = posixpath.relpath(folder, root) if folder != root else ""
        synset = relative.split("/")[0] if relative else None
        for file in files:
            found[file] = (posixpath.join(folder, file), synset)
    paths, synsets = [], []
    for position, name in enumerate(filenames):
        entry = found.get(posixpath.basename(name))
        if entry is None:
            raise ValueError(f"{name} (index {position} of {split}) is named in the index "
                             f"file but not found under {root}")
        paths.append(entry[0])
        synsets.append(entry[1])
    return paths, synsets


def _validation_synsets(labels_file: str, filenames: Sequence[str]) -> list[str | None]:
    """Synset of each validation filename from a labels file (formats in the caller)."""
    lines = _read_lines(labels_file, "validation_labels_file")
    pairs = [line.replace(",", " ").split() for line in lines]
    if all(len(p) == 1 for p in pairs):  # one synset per file, sorted file names
        ordered = sorted(posixpath.basename(n) for n in filenames)
        if len(ordered) != len(pairs):
            raise ValueError(f"validation_labels_file={labels_file}: {len(pairs)} lines, "
                             f"the index has {len(ordered)} validation files")
        by_name = dict(zip(ordered, (p[0] for p in pairs), strict=True))
    else:
        by_name = {}
        for pair in pairs:
            stem = posixpath.splitext(posixpath.basename(pair[0]))[0]
            if len(pair) >= 2 and pair[1].startswith("n"):
                by_name[stem] = pair[1]
    result = []
    for name in filenames:
        base = posixpath.basename(name)
        synset = by_name.get(base, by_name.get(posixpath.splitext(base)[0]))
        if synset is None:
            raise ValueError(f"validation_labels_file={labels_file}: no synset for {name}")
        result.append(synset)
    return result


def _check_labels(index_file: str, split: str, filenames: Sequence[str], labels: np.ndarray,
                  folder_synsets: Sequence[str | None], synsets: Sequence[str],
                  offset: int) -> None:
    """Raises a one-line ValueError at the first label out of range or disagreeing."""
    key = _SPLIT_KEYS[split][1]
    bad = np.flatnonzero((labels < 0) | (labels >= len(synsets)))
    if len(bad):
        i = bad[0]
        raise ValueError(f"{index_file}: {key}[{i}]={labels[i] + offset} for {filenames[i]} "
                         f"is not a class of the {len(synsets)} synsets "
                         f"(index_label_offset={offset})")
    class_of = {synset: c for c, synset in enumerate(synsets)}
    for i, synset in enumerate(folder_synsets):
        if synset is not None and class_of.get(synset) != labels[i]:
            expected = class_of.get(synset)
            said = "not a known synset" if expected is None else f"class {expected}"
            raise ValueError(f"{index_file}: {key}[{i}]={labels[i] + offset} for "
                             f"{filenames[i]}, but its synset {synset} is {said} "
                             f"(index_label_offset={offset})")


def _progress_bar(total: int, enabled: bool) -> Progress | None:
    return Progress(total, "images", "img") if enabled else None


def main(argv: Sequence[str]) -> None:
    """Command line: flags -> `build_imagenet_tfrecords` -> one summary line.

    Every failure is one line on standard error and exit status 1 (not the flags' help).
    """
    if len(argv) > 1:
        _fail(f"unexpected arguments: {' '.join(argv[1:])}")
    flags = _FLAGS
    for name in ("imagenet_dir", "index_file", "output_dir"):
        if not getattr(flags, name):
            _fail(f"--{name}: required")
    try:
        summary = build_imagenet_tfrecords(
            flags.imagenet_dir, flags.index_file, flags.output_dir,
            num_train_shards=flags.num_shards,
            num_validation_shards=flags.num_validation_shards,
            splits=tuple(flags.splits), synsets_file=flags.synsets_file,
            validation_labels_file=flags.validation_labels_file,
            index_label_offset=flags.index_label_offset, num_threads=flags.num_threads,
            progress=flags.progress)
    except ValueError as e:
        _fail(str(e))
    except (tf.errors.OpError, OSError) as e:
        _fail(_op_message(e))
    except KeyboardInterrupt:
        _fail("interrupted; finished shards are kept, so the command can be rerun")
    print(summary)


def _fail(message: str) -> None:
    """Prints the one line of a failure and exits with status 1."""
    print(f"build_imagenet: {message.splitlines()[0] if message else 'failed'}",
          file=sys.stderr)
    sys.exit(1)


def _define_flags():
    from absl import flags

    # Required, checked in main (absl would print the whole help for a missing flag).
    flags.DEFINE_string("imagenet_dir", None, "Folder with train/<synset>/*.JPEG and val/.")
    flags.DEFINE_string("index_file", None, "The published imagenet_index.npz.")
    flags.DEFINE_string("output_dir", None, "Folder of the TFRecord shards.")
    flags.DEFINE_integer("num_shards", 1024, "Training shards.")
    flags.DEFINE_integer("num_validation_shards", 128, "Validation shards.")
    flags.DEFINE_list("splits", list(SPLITS), "Splits to build: train, validation.")
    flags.DEFINE_string("synsets_file", None,
                        "One synset per line (line c = class c); default: sorted train/ "
                        "folders.")
    flags.DEFINE_string("validation_labels_file", None,
                        "Synsets of flat val/ files (one per line in sorted file order, or "
                        "'<file> <synset>' lines).")
    flags.DEFINE_integer("index_label_offset", 0, "Label of class 0 in the index file.")
    flags.DEFINE_integer("num_threads", os.cpu_count() or 1, "Shards built at once.")
    flags.DEFINE_bool("progress", True, "Show a progress bar.")
    return flags.FLAGS


if __name__ == "__main__":
    from absl import app as _app

    _FLAGS = _define_flags()
    _app.run(main)
