"""Tests of heldout/models/small_inception.py and the one checkpoint factory
(`checkpoints.run_checkpoint`): the object graph and shapes of the released CIFAR
checkpoints, restoring a checkpoint written by an independent object graph, failures on
other architectures, Sonnet's ResNet-50 through the same checkpoint layout, and
BatchNorm statistics updated only in training."""

import numpy as np
import pytest
import sonnet as snt
import tensorflow as tf

from heldout.models import checkpoints, small_inception

# Keys and shapes of a released 10-class checkpoint (/.ATTRIBUTES/VARIABLE_VALUE dropped),
# copied from the published object graph so the test needs no file outside the repository.
PUBLISHED_KEYS = """
epoch []
global_step []
model/_pred/b [10]
model/_pred/w [336, 10]
model/conv1/bn/moving_mean/_counter []
model/conv1/bn/moving_mean/_hidden [1, 1, 1, 96]
model/conv1/bn/moving_mean/average [1, 1, 1, 96]
model/conv1/bn/moving_variance/_counter []
model/conv1/bn/moving_variance/_hidden [1, 1, 1, 96]
model/conv1/bn/moving_variance/average [1, 1, 1, 96]
model/conv1/bn/offset [96]
model/conv1/bn/scale [96]
model/conv1/conv/w [3, 3, 3, 96]
model/stage1/_body/0/conv1x1/bn/moving_mean/_counter []
model/stage1/_body/0/conv1x1/bn/moving_mean/_hidden [1, 1, 1, 32]
model/stage1/_body/0/conv1x1/bn/moving_mean/average [1, 1, 1, 32]
model/stage1/_body/0/conv1x1/bn/moving_variance/_counter []
model/stage1/_body/0/conv1x1/bn/moving_variance/_hidden [1, 1, 1, 32]
model/stage1/_body/0/conv1x1/bn/moving_variance/average [1, 1, 1, 32]
model/stage1/_body/0/conv1x1/bn/offset [32]
model/stage1/_body/0/conv1x1/bn/scale [32]
model/stage1/_body/0/conv1x1/conv/w [1, 1, 96, 32]
model/stage1/_body/0/conv3x3/bn/moving_mean/_counter []
model/stage1/_body/0/conv3x3/bn/moving_mean/_hidden [1, 1, 1, 32]
model/stage1/_body/0/conv3x3/bn/moving_mean/average [1, 1, 1, 32]
model/stage1/_body/0/conv3x3/bn/moving_variance/_counter []
model/stage1/_body/0/conv3x3/bn/moving_variance/_hidden [1, 1, 1, 32]
model/stage1/_body/0/conv3x3/bn/moving_variance/average [1, 1, 1, 32]
model/stage1/_body/0/conv3x3/bn/offset [32]
model/stage1/_body/0/conv3x3/bn/scale [32]
model/stage1/_body/0/conv3x3/conv/w [3, 3, 96, 32]
model/stage1/_body/1/conv1x1/bn/moving_mean/_counter []
model/stage1/_body/1/conv1x1/bn/moving_mean/_hidden [1, 1, 1, 32]
model/stage1/_body/1/conv1x1/bn/moving_mean/average [1, 1, 1, 32]
model/stage1/_body/1/conv1x1/bn/moving_variance/_counter []
model/stage1/_body/1/conv1x1/bn/moving_variance/_hidden [1, 1, 1, 32]
model/stage1/_body/1/conv1x1/bn/moving_variance/average [1, 1, 1, 32]
model/stage1/_body/1/conv1x1/bn/offset [32]
model/stage1/_body/1/conv1x1/bn/scale [32]
model/stage1/_body/1/conv1x1/conv/w [1, 1, 64, 32]
model/stage1/_body/1/conv3x3/bn/moving_mean/_counter []
model/stage1/_body/1/conv3x3/bn/moving_mean/_hidden [1, 1, 1, 48]
model/stage1/_body/1/conv3x3/bn/moving_mean/average [1, 1, 1, 48]
model/stage1/_body/1/conv3x3/bn/moving_variance/_counter []
model/stage1/_body/1/conv3x3/bn/moving_variance/_hidden [1, 1, 1, 48]
model/stage1/_body/1/conv3x3/bn/moving_variance/average [1, 1, 1, 48]
model/stage1/_body/1/conv3x3/bn/offset [48]
model/stage1/_body/1/conv3x3/bn/scale [48]
model/stage1/_body/1/conv3x3/conv/w [3, 3, 64, 48]
model/stage1/_downsample/bn/moving_mean/_counter []
model/stage1/_downsample/bn/moving_mean/_hidden [1, 1, 1, 160]
model/stage1/_downsample/bn/moving_mean/average [1, 1, 1, 160]
model/stage1/_downsample/bn/moving_variance/_counter []
model/stage1/_downsample/bn/moving_variance/_hidden [1, 1, 1, 160]
model/stage1/_downsample/bn/moving_variance/average [1, 1, 1, 160]
model/stage1/_downsample/bn/offset [160]
model/stage1/_downsample/bn/scale [160]
model/stage1/_downsample/conv/w [3, 3, 80, 160]
model/stage2/_body/0/conv1x1/bn/moving_mean/_counter []
model/stage2/_body/0/conv1x1/bn/moving_mean/_hidden [1, 1, 1, 112]
model/stage2/_body/0/conv1x1/bn/moving_mean/average [1, 1, 1, 112]
model/stage2/_body/0/conv1x1/bn/moving_variance/_counter []
model/stage2/_body/0/conv1x1/bn/moving_variance/_hidden [1, 1, 1, 112]
model/stage2/_body/0/conv1x1/bn/moving_variance/average [1, 1, 1, 112]
model/stage2/_body/0/conv1x1/bn/offset [112]
model/stage2/_body/0/conv1x1/bn/scale [112]
model/stage2/_body/0/conv1x1/conv/w [1, 1, 160, 112]
model/stage2/_body/0/conv3x3/bn/moving_mean/_counter []
model/stage2/_body/0/conv3x3/bn/moving_mean/_hidden [1, 1, 1, 48]
model/stage2/_body/0/conv3x3/bn/moving_mean/average [1, 1, 1, 48]
model/stage2/_body/0/conv3x3/bn/moving_variance/_counter []
model/stage2/_body/0/conv3x3/bn/moving_variance/_hidden [1, 1, 1, 48]
model/stage2/_body/0/conv3x3/bn/moving_variance/average [1, 1, 1, 48]
model/stage2/_body/0/conv3x3/bn/offset [48]
model/stage2/_body/0/conv3x3/bn/scale [48]
model/stage2/_body/0/conv3x3/conv/w [3, 3, 160, 48]
model/stage2/_body/1/conv1x1/bn/moving_mean/_counter []
model/stage2/_body/1/conv1x1/bn/moving_mean/_hidden [1, 1, 1, 96]
model/stage2/_body/1/conv1x1/bn/moving_mean/average [1, 1, 1, 96]
model/stage2/_body/1/conv1x1/bn/moving_variance/_counter []
model/stage2/_body/1/conv1x1/bn/moving_variance/_hidden [1, 1, 1, 96]
model/stage2/_body/1/conv1x1/bn/moving_variance/average [1, 1, 1, 96]
model/stage2/_body/1/conv1x1/bn/offset [96]
model/stage2/_body/1/conv1x1/bn/scale [96]
model/stage2/_body/1/conv1x1/conv/w [1, 1, 160, 96]
model/stage2/_body/1/conv3x3/bn/moving_mean/_counter []
model/stage2/_body/1/conv3x3/bn/moving_mean/_hidden [1, 1, 1, 64]
model/stage2/_body/1/conv3x3/bn/moving_mean/average [1, 1, 1, 64]
model/stage2/_body/1/conv3x3/bn/moving_variance/_counter []
model/stage2/_body/1/conv3x3/bn/moving_variance/_hidden [1, 1, 1, 64]
model/stage2/_body/1/conv3x3/bn/moving_variance/average [1, 1, 1, 64]
model/stage2/_body/1/conv3x3/bn/offset [64]
model/stage2/_body/1/conv3x3/bn/scale [64]
model/stage2/_body/1/conv3x3/conv/w [3, 3, 160, 64]
model/stage2/_body/2/conv1x1/bn/moving_mean/_counter []
model/stage2/_body/2/conv1x1/bn/moving_mean/_hidden [1, 1, 1, 80]
model/stage2/_body/2/conv1x1/bn/moving_mean/average [1, 1, 1, 80]
model/stage2/_body/2/conv1x1/bn/moving_variance/_counter []
model/stage2/_body/2/conv1x1/bn/moving_variance/_hidden [1, 1, 1, 80]
model/stage2/_body/2/conv1x1/bn/moving_variance/average [1, 1, 1, 80]
model/stage2/_body/2/conv1x1/bn/offset [80]
model/stage2/_body/2/conv1x1/bn/scale [80]
model/stage2/_body/2/conv1x1/conv/w [1, 1, 160, 80]
model/stage2/_body/2/conv3x3/bn/moving_mean/_counter []
model/stage2/_body/2/conv3x3/bn/moving_mean/_hidden [1, 1, 1, 80]
model/stage2/_body/2/conv3x3/bn/moving_mean/average [1, 1, 1, 80]
model/stage2/_body/2/conv3x3/bn/moving_variance/_counter []
model/stage2/_body/2/conv3x3/bn/moving_variance/_hidden [1, 1, 1, 80]
model/stage2/_body/2/conv3x3/bn/moving_variance/average [1, 1, 1, 80]
model/stage2/_body/2/conv3x3/bn/offset [80]
model/stage2/_body/2/conv3x3/bn/scale [80]
model/stage2/_body/2/conv3x3/conv/w [3, 3, 160, 80]
model/stage2/_body/3/conv1x1/bn/moving_mean/_counter []
model/stage2/_body/3/conv1x1/bn/moving_mean/_hidden [1, 1, 1, 48]
model/stage2/_body/3/conv1x1/bn/moving_mean/average [1, 1, 1, 48]
model/stage2/_body/3/conv1x1/bn/moving_variance/_counter []
model/stage2/_body/3/conv1x1/bn/moving_variance/_hidden [1, 1, 1, 48]
model/stage2/_body/3/conv1x1/bn/moving_variance/average [1, 1, 1, 48]
model/stage2/_body/3/conv1x1/bn/offset [48]
model/stage2/_body/3/conv1x1/bn/scale [48]
model/stage2/_body/3/conv1x1/conv/w [1, 1, 160, 48]
model/stage2/_body/3/conv3x3/bn/moving_mean/_counter []
model/stage2/_body/3/conv3x3/bn/moving_mean/_hidden [1, 1, 1, 96]
model/stage2/_body/3/conv3x3/bn/moving_mean/average [1, 1, 1, 96]
model/stage2/_body/3/conv3x3/bn/moving_variance/_counter []
model/stage2/_body/3/conv3x3/bn/moving_variance/_hidden [1, 1, 1, 96]
model/stage2/_body/3/conv3x3/bn/moving_variance/average [1, 1, 1, 96]
model/stage2/_body/3/conv3x3/bn/offset [96]
model/stage2/_body/3/conv3x3/bn/scale [96]
model/stage2/_body/3/conv3x3/conv/w [3, 3, 160, 96]
model/stage2/_downsample/bn/moving_mean/_counter []
model/stage2/_downsample/bn/moving_mean/_hidden [1, 1, 1, 240]
model/stage2/_downsample/bn/moving_mean/average [1, 1, 1, 240]
model/stage2/_downsample/bn/moving_variance/_counter []
model/stage2/_downsample/bn/moving_variance/_hidden [1, 1, 1, 240]
model/stage2/_downsample/bn/moving_variance/average [1, 1, 1, 240]
model/stage2/_downsample/bn/offset [240]
model/stage2/_downsample/bn/scale [240]
model/stage2/_downsample/conv/w [3, 3, 144, 240]
model/stage3/_body/0/conv1x1/bn/moving_mean/_counter []
model/stage3/_body/0/conv1x1/bn/moving_mean/_hidden [1, 1, 1, 176]
model/stage3/_body/0/conv1x1/bn/moving_mean/average [1, 1, 1, 176]
model/stage3/_body/0/conv1x1/bn/moving_variance/_counter []
model/stage3/_body/0/conv1x1/bn/moving_variance/_hidden [1, 1, 1, 176]
model/stage3/_body/0/conv1x1/bn/moving_variance/average [1, 1, 1, 176]
model/stage3/_body/0/conv1x1/bn/offset [176]
model/stage3/_body/0/conv1x1/bn/scale [176]
model/stage3/_body/0/conv1x1/conv/w [1, 1, 240, 176]
model/stage3/_body/0/conv3x3/bn/moving_mean/_counter []
model/stage3/_body/0/conv3x3/bn/moving_mean/_hidden [1, 1, 1, 160]
model/stage3/_body/0/conv3x3/bn/moving_mean/average [1, 1, 1, 160]
model/stage3/_body/0/conv3x3/bn/moving_variance/_counter []
model/stage3/_body/0/conv3x3/bn/moving_variance/_hidden [1, 1, 1, 160]
model/stage3/_body/0/conv3x3/bn/moving_variance/average [1, 1, 1, 160]
model/stage3/_body/0/conv3x3/bn/offset [160]
model/stage3/_body/0/conv3x3/bn/scale [160]
model/stage3/_body/0/conv3x3/conv/w [3, 3, 240, 160]
model/stage3/_body/1/conv1x1/bn/moving_mean/_counter []
model/stage3/_body/1/conv1x1/bn/moving_mean/_hidden [1, 1, 1, 176]
model/stage3/_body/1/conv1x1/bn/moving_mean/average [1, 1, 1, 176]
model/stage3/_body/1/conv1x1/bn/moving_variance/_counter []
model/stage3/_body/1/conv1x1/bn/moving_variance/_hidden [1, 1, 1, 176]
model/stage3/_body/1/conv1x1/bn/moving_variance/average [1, 1, 1, 176]
model/stage3/_body/1/conv1x1/bn/offset [176]
model/stage3/_body/1/conv1x1/bn/scale [176]
model/stage3/_body/1/conv1x1/conv/w [1, 1, 336, 176]
model/stage3/_body/1/conv3x3/bn/moving_mean/_counter []
model/stage3/_body/1/conv3x3/bn/moving_mean/_hidden [1, 1, 1, 160]
model/stage3/_body/1/conv3x3/bn/moving_mean/average [1, 1, 1, 160]
model/stage3/_body/1/conv3x3/bn/moving_variance/_counter []
model/stage3/_body/1/conv3x3/bn/moving_variance/_hidden [1, 1, 1, 160]
model/stage3/_body/1/conv3x3/bn/moving_variance/average [1, 1, 1, 160]
model/stage3/_body/1/conv3x3/bn/offset [160]
model/stage3/_body/1/conv3x3/bn/scale [160]
model/stage3/_body/1/conv3x3/conv/w [3, 3, 336, 160]
save_counter []
"""

# Trainable parameters of the 10-class model (convolutions without bias, BatchNorm scale
# and offset, the linear head): "about 1.9 M".
PUBLISHED_NUM_PARAMETERS = 1_895_786


def _published_shapes():
    shapes = {}
    for line in PUBLISHED_KEYS.strip().splitlines():
        key, shape = line.split(" ", 1)
        shapes[key] = tuple(int(d) for d in shape.strip("[]").split(",") if d.strip())
    return shapes


def _lookup(root, path):
    """The object at an object-graph path (``stage1/_body/0/conv1x1``): attributes, and
    list positions for numeric parts."""
    node = root
    for part in path.split("/"):
        node = node[int(part)] if part.isdigit() else getattr(node, part)
    return node


def _checkpoint(model, epoch=0, global_step=0):
    return tf.train.Checkpoint(model=model, epoch=tf.Variable(epoch, dtype=tf.int64),
                               global_step=tf.Variable(global_step, dtype=tf.int64))


@pytest.fixture(scope="module")
def model_10():
    """The published 10-class model after one training-mode call on CIFAR-sized images."""
    model = small_inception.SmallInception(10)
    model(tf.random.stateless_uniform([2, 32, 32, 3], seed=(0, 1)), is_training=True)
    return model


# --- (a) object graph and shapes of the released checkpoints ----------------------------


def test_checkpoint_keys_and_shapes_equal_published(model_10, tmp_path):
    # The one factory of run checkpoints (training writes it, restoring reads it).
    path = checkpoints.run_checkpoint(model_10, epoch=7, global_step=1400).save(
        str(tmp_path / "ckpt"))
    shapes = checkpoints.checkpoint_shapes(path)
    published = _published_shapes()
    assert len(published) == 176
    assert checkpoints.describe_shape_mismatch(published, shapes) == []
    assert shapes == published
    reader = tf.train.load_checkpoint(path)
    for key, value in (("epoch", 7), ("global_step", 1400)):
        stored = reader.get_tensor(f"{key}/.ATTRIBUTES/VARIABLE_VALUE")
        assert stored == value and stored.dtype == np.int64
    # The same object graph as a hand-built tf.train.Checkpoint of the released layout.
    hand = _checkpoint(model_10).save(str(tmp_path / "hand"))
    assert sorted(tf.train.list_variables(hand)) == sorted(tf.train.list_variables(path))
    # The helper writes the same layout.
    assert checkpoints.checkpoint_variable_shapes(model_10) == published


def test_parameter_count_and_head(model_10):
    num_parameters = sum(v.shape.num_elements() for v in model_10.trainable_variables)
    assert num_parameters == PUBLISHED_NUM_PARAMETERS
    assert model_10.large_inputs is False
    assert model_10._pred.w.shape == (336, 10)
    assert model_10.stage3._downsample is None
    # Sonnet's BatchNorm defaults, as in the published code.
    assert model_10.conv1.bn._eps == 1e-5
    assert model_10.conv1.bn.moving_mean._decay == 0.999


# --- (b) restoring a checkpoint written by an independent object graph -----------------


def _unit(rng, kernel, in_channels, out_channels):
    """A conv/bn unit with the published attribute names, from plain tf.Module/Variable."""
    unit = tf.Module()
    unit.conv = tf.Module()
    unit.conv.w = tf.Variable(rng.normal(size=(kernel, kernel, in_channels, out_channels))
                              .astype(np.float32))
    unit.bn = tf.Module()
    unit.bn.scale = tf.Variable(rng.uniform(0.5, 1.5, out_channels).astype(np.float32))
    unit.bn.offset = tf.Variable(rng.normal(size=out_channels).astype(np.float32))
    for name in ("moving_mean", "moving_variance"):
        average = tf.Module()
        average._counter = tf.Variable(int(rng.integers(1, 100)), dtype=tf.int64)
        average._hidden = tf.Variable(rng.uniform(0.1, 1, (1, 1, 1, out_channels))
                                      .astype(np.float32))
        average.average = tf.Variable(rng.uniform(0.1, 1, (1, 1, 1, out_channels))
                                      .astype(np.float32))
        setattr(unit.bn, name, average)
    return unit


def _hand_built_model(rng, num_classes):
    """The published object graph written out from its description, without Sonnet."""
    model = tf.Module()
    model.conv1 = _unit(rng, 3, 3, 96)
    channels = 96
    stages = [([(32, 32), (32, 48)], 160),
              ([(112, 48), (96, 64), (80, 80), (48, 96)], 240),
              ([(176, 160), (176, 160)], 0)]
    for i, (blocks, downsample) in enumerate(stages):
        stage = tf.Module()
        body = []
        for c1, c3 in blocks:
            block = tf.Module()
            block.conv1x1 = _unit(rng, 1, channels, c1)
            block.conv3x3 = _unit(rng, 3, channels, c3)
            body.append(block)
            channels = c1 + c3
        stage._body = body
        if downsample:
            stage._downsample = _unit(rng, 3, channels, downsample)
            channels = downsample
        setattr(model, f"stage{i + 1}", stage)
    model._pred = tf.Module()
    model._pred.w = tf.Variable(rng.normal(size=(channels, num_classes)).astype(np.float32))
    model._pred.b = tf.Variable(rng.normal(size=num_classes).astype(np.float32))
    return model


def test_restores_checkpoint_of_independent_object_graph(tmp_path):
    hand = _hand_built_model(np.random.default_rng(0), 10)
    path = _checkpoint(hand, epoch=17, global_step=3400).save(str(tmp_path / "ckpt"))
    assert checkpoints.checkpoint_shapes(path) == _published_shapes()
    written = {key: tf.train.load_checkpoint(path).get_tensor(
                   key + "/.ATTRIBUTES/VARIABLE_VALUE")
               for key in _published_shapes() if key.startswith("model/")}

    images = tf.random.stateless_uniform([2, 32, 32, 3], seed=(1, 2))
    model = small_inception.SmallInception(10)
    model(images, is_training=False)
    epoch, global_step = tf.Variable(0, dtype=tf.int64), tf.Variable(0, dtype=tf.int64)
    status = tf.train.Checkpoint(model=model, epoch=epoch, global_step=global_step).restore(path)
    status.assert_existing_objects_matched()
    status.assert_consumed()
    assert (int(epoch.numpy()), int(global_step.numpy())) == (17, 3400)
    assert len(model.variables) == len(written)
    for key, value in written.items():
        np.testing.assert_array_equal(_lookup(model, key[len("model/"):]).numpy(), value,
                                      err_msg=key)

    # Restoring before the first call (as a demo script does) gives the same model: the
    # lazily built stem and all variables are restored when they are created.
    lazy = small_inception.SmallInception(10)
    status = _checkpoint(lazy).restore(path)
    np.testing.assert_array_equal(lazy(images, is_training=False).numpy(),
                                  model(images, is_training=False).numpy())
    status.assert_consumed()


# --- (c) checkpoints of another architecture --------------------------------------------


def test_restoring_other_width_raises_naming_the_variable(model_10, tmp_path):
    half = small_inception.SmallInception(10, width_multiplier=0.5)
    half(tf.zeros([1, 32, 32, 3]), is_training=False)
    path = _checkpoint(half).save(str(tmp_path / "half"))
    # TF raises ValueError for the first variable whose shape differs ("Received
    # incompatible tensor with shape (168, 10) when attempting to restore variable with
    # shape (336, 10) and name small_inception/pred/w:0"): at restore() when the model is
    # built, else at the first call, when the variable is created.
    model = small_inception.SmallInception(10)
    model(tf.zeros([1, 32, 32, 3]), is_training=False)
    with pytest.raises(ValueError, match=r"incompatible tensor with shape .* and name "
                                         r"small_inception/\S+"):
        _checkpoint(model).restore(path)
    unbuilt = small_inception.SmallInception(10)
    _checkpoint(unbuilt).restore(path)
    with pytest.raises(ValueError, match=r"incompatible tensor with shape \(3, 3, 3, 48\) "
                                         r".* name small_inception/conv1/conv/w"):
        unbuilt(tf.zeros([1, 32, 32, 3]), is_training=False)
    # describe_shape_mismatch names every differing variable, for error messages.
    lines = checkpoints.describe_shape_mismatch(
        checkpoints.checkpoint_variable_shapes(model_10),
        checkpoints.checkpoint_shapes(path))
    assert "shape differs: model/conv1/conv/w model [3, 3, 3, 96], checkpoint [3, 3, 3, 48]" \
        in lines
    assert "shape differs: model/_pred/w model [336, 10], checkpoint [168, 10]" in lines
    assert not any(line.startswith(("missing", "not in model")) for line in lines)


@pytest.fixture(scope="module")
def resnet_checkpoint(tmp_path_factory):
    """Sonnet's ResNet-50 for ImageNet, built on small images, and its checkpoint."""
    model = snt.nets.ResNet50(num_classes=1000)
    images = tf.random.stateless_uniform([1, 64, 64, 3], seed=(3, 4))
    model(images, is_training=False)
    path = _checkpoint(model, epoch=90, global_step=450_000).save(
        str(tmp_path_factory.mktemp("resnet") / "ckpt"))
    return model, images, path


@pytest.mark.slow  # builds Sonnet's ResNet-50 (25.6M parameters)
def test_restoring_resnet_into_small_inception_fails_the_assertions(resnet_checkpoint):
    _, _, path = resnet_checkpoint
    model = small_inception.SmallInception(10)
    model(tf.zeros([1, 32, 32, 3]), is_training=False)
    # No shared variable paths (only epoch/global_step/save_counter): restore() itself
    # succeeds, and the assertions raise AssertionError naming unbound variables.
    status = _checkpoint(model).restore(path)
    with pytest.raises(AssertionError, match=r"not bound to checkpointed values.*"
                                             r"small_inception/"):
        status.assert_existing_objects_matched()
    with pytest.raises(AssertionError):
        status.assert_consumed()
    lines = checkpoints.describe_shape_mismatch(
        checkpoints.checkpoint_variable_shapes(model),
        checkpoints.checkpoint_shapes(path))
    assert "missing from checkpoint: model/conv1/conv/w [3, 3, 3, 96]" in lines
    assert "not in model: model/_logits/w [2048, 1000]" in lines


# --- (d) Sonnet's ResNet-50 through the same checkpoint layout -------------------------


@pytest.mark.slow  # builds Sonnet's ResNet-50 (25.6M parameters)
def test_resnet50_saves_and_restores_by_name(resnet_checkpoint):
    written, images, path = resnet_checkpoint
    num_parameters = sum(v.shape.num_elements() for v in written.trainable_variables)
    assert 25_000_000 < num_parameters < 26_000_000
    shapes = checkpoints.checkpoint_shapes(path)
    assert shapes["model/_logits/w"] == (2048, 1000)
    assert shapes["model/_initial_conv/w"] == (7, 7, 3, 64)
    assert {"epoch", "global_step", "save_counter"} <= set(shapes)

    model = snt.nets.ResNet50(num_classes=1000)
    model(images, is_training=False)
    epoch = tf.Variable(0, dtype=tf.int64)
    status = tf.train.Checkpoint(model=model, epoch=epoch,
                                 global_step=tf.Variable(0, dtype=tf.int64)).restore(path)
    status.assert_existing_objects_matched()
    status.assert_consumed()
    assert int(epoch.numpy()) == 90
    for restored, original in zip(model.variables, written.variables, strict=True):
        np.testing.assert_array_equal(restored.numpy(), original.numpy(), err_msg=restored.name)
    np.testing.assert_array_equal(model(images, is_training=False).numpy(),
                                  written(images, is_training=False).numpy())


# --- (e) small models, stems, BatchNorm statistics ---------------------------------------


def test_narrow_model_logits_and_batchnorm_updates_only_in_training():
    model = small_inception.SmallInception(7, width_multiplier=0.25)
    images = tf.random.stateless_uniform([3, 32, 32, 3], seed=(5, 6))
    logits = model(images, is_training=False)
    assert logits.shape == (3, 7)
    assert model.conv1.conv.w.shape == (3, 3, 3, 24)
    assert model._pred.w.shape == (84, 7)  # round(336 / 4)

    batch_norms = [m for m in model.submodules if isinstance(m, snt.BatchNorm)]
    assert len(batch_norms) == 1 + 2 * 8 + 2  # stem, 8 blocks of two units, 2 downsamples

    def statistics():
        return [(bn.moving_mean._counter.numpy(), bn.moving_mean.average.numpy().copy(),
                 bn.moving_variance.average.numpy().copy()) for bn in batch_norms]

    before = statistics()
    model(images, is_training=False)
    for (counter, mean, variance), (counter_0, mean_0, variance_0) in zip(
            statistics(), before, strict=True):
        assert counter == counter_0 == 0
        np.testing.assert_array_equal(mean, mean_0)
        np.testing.assert_array_equal(variance, variance_0)
    model(images, is_training=True)
    for (counter, mean, variance), (_, mean_0, variance_0) in zip(
            statistics(), before, strict=True):
        assert counter == 1
        assert not np.array_equal(mean, mean_0)
        assert not np.array_equal(variance, variance_0)
    # In evaluation the output depends on the moving statistics only, not on the batch.
    np.testing.assert_allclose(model(images[:1], is_training=False).numpy(),
                               model(images, is_training=False).numpy()[:1], rtol=1e-5,
                               atol=1e-5)


@pytest.mark.parametrize(("size", "large_inputs", "stem_kernel"),
                         [(64, None, 3), (72, None, 7), (72, False, 3), (32, True, 7)])
def test_stem_for_large_inputs(size, large_inputs, stem_kernel):
    model = small_inception.SmallInception(5, width_multiplier=0.125, large_inputs=large_inputs)
    assert model(tf.zeros([2, size, size, 3]), is_training=True).shape == (2, 5)
    assert model.large_inputs is (stem_kernel == 7)
    assert model.conv1.conv.w.shape[:2] == (stem_kernel, stem_kernel)


def test_width_multiplier_rounds_every_channel_count():
    model = small_inception.SmallInception(3, width_multiplier=0.01)
    model(tf.zeros([1, 16, 16, 1]), is_training=False)
    shapes = checkpoints.checkpoint_variable_shapes(model)
    assert shapes["model/conv1/conv/w"] == (3, 3, 1, 1)
    assert shapes["model/stage2/_downsample/conv/w"] == (3, 3, 2, 2)
    assert shapes["model/_pred/w"] == (4, 3)
    assert small_inception.scale_channels(96, 1.0) == 96
    assert small_inception.scale_channels(96, 0.5) == 48


def test_invalid_configuration_raises():
    with pytest.raises(ValueError, match="width_multiplier"):
        small_inception.SmallInception(10, width_multiplier=0)
    with pytest.raises(ValueError, match="num_classes"):
        small_inception.SmallInception(0)
    with pytest.raises(ValueError, match="not built yet"):
        checkpoints.checkpoint_variable_shapes(small_inception.SmallInception(10))
    stage = small_inception.SmallInceptionStage([(2, 2)], 0, with_residual=True)
    with pytest.raises(ValueError, match="with_residual"):
        stage(tf.zeros([1, 4, 4, 3]), is_training=False)
