"""Per-example gradients of a Sonnet model's Linear and Conv2D layers, for a whole batch at once.

The gradient of a per-example cost with respect to a dense layer's weights is an outer
product, ``dcost_n/dW = a_n s_n^T``: ``a_n`` is the layer's input (with a trailing 1
when the layer has a bias, so the bias is the last row of the layer's gradient matrix)
and ``s_n = dcost_n/dz_n`` is the gradient of the cost at the layer's pre-activation
output ``z_n``. A convolution is the same dense map applied to the image patch at every
output position (im2col), so its gradient sums the outer products over positions,
``sum_t a_{n,t} s_{n,t}^T`` (KFC, Grosse & Martens 2016). One forward and one backward
pass of a batch give every ``a`` and ``s``: in inference mode (BatchNorm on its moving
statistics) examples do not interact, so the gradient of the batch's summed cost at
``z_n`` is example n's own ``s_n``. No Python loop runs over examples.

The chosen layers are observed during a forward pass by giving each, for the duration
of the pass, a subclass of its own class whose ``__call__`` records the input and
output (this Sonnet version has no method interceptors); the class is restored after.
Only Python tracing runs that pass: the compiled functions keep what it recorded.

Swapping classes is not thread-safe: trace one model's functions from one thread at a
time. Models are called as ``model(inputs, is_training=False)`` and return logits
``[batch, num_classes]``, the signature of every model in `heldout.models`. Layers are
named by their attribute path in the model (``_layers/0``, ``_hidden``), the names a
checkpoint of the model uses.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import sonnet as snt
import tensorflow as tf

from heldout.attribution.config import (
    DEFAULT_BATCH_SIZE,
    MEASUREMENTS,
)
from heldout.progress import Progress

# Costs whose gradients the engine takes: a measurement, or the labels of a Fisher
# (sampled from the model's predictive distribution, or all classes weighted by
# the square roots of their probabilities, whose outer products average to the
# expectation over that distribution).
TARGETS = MEASUREMENTS + ("sampled", "expected")
_SUPPORTED_LAYERS = (snt.Linear, snt.Conv2D)


def measure(logits: tf.Tensor, labels: tf.Tensor, measurement: str) -> tf.Tensor:
    """Per-example measurement ``[batch]`` of logits ``[batch, num_classes]``.

    ``loss``: softmax cross-entropy with `labels`. ``margin``: the label's logit minus
    the largest other logit (positive exactly when the prediction is right).
    ``logodds``: the label's logit minus the logsumexp of the other logits, which is
    ``log(p / (1 - p))`` for the label's probability p (TRAK's output function, and the
    output LDS judges by).
    """
    if measurement == "loss":
        return tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
    if measurement in ("margin", "logodds"):
        is_label = tf.one_hot(labels, tf.shape(logits)[-1], on_value=True, off_value=False)
        correct = tf.reduce_sum(tf.where(is_label, logits, tf.zeros_like(logits)), axis=-1)
        others = tf.where(is_label, tf.fill(tf.shape(logits), logits.dtype.min), logits)
        if measurement == "margin":
            return correct - tf.reduce_max(others, axis=-1)
        return correct - tf.reduce_logsumexp(others, axis=-1)
    raise ValueError(f"measurement={measurement!r}: expected one of {', '.join(MEASUREMENTS)}")


@dataclasses.dataclass(frozen=True)
class LayerSpec:
    """One layer's gradient matrix: ``[rows, columns]`` per example.

    Attributes:
        name: attribute path of the layer in the model (``_layers/0``).
        kind: ``linear`` or ``conv2d``.
        rows: fan-in (``kernel_h * kernel_w * in_channels`` for a convolution), plus one
            for the bias.
        columns: fan-out (output size or output channels).
        has_bias: whether the last row is the bias.
    """

    name: str
    kind: str
    rows: int
    columns: int
    has_bias: bool

    @property
    def size(self) -> int:
        """Number of parameters of the layer."""
        return self.rows * self.columns


def find_layers(model: snt.Module, names: Sequence[str] | None = None) -> dict[str, snt.Module]:
    """The model's ``snt.Linear`` and ``snt.Conv2D`` layers by attribute path.

    Order: tf.Module's traversal (attributes sorted by name, lists in order), which
    fixes the order of the layers in every result of this package.

    Args:
        model: a built Sonnet model (variables created).
        names: paths of the layers wanted; all supported layers when None.

    Raises:
        ValueError: the model has no supported layer, or a name is not one of its layers.
    """
    found: dict[str, snt.Module] = {}
    if isinstance(model, _SUPPORTED_LAYERS):
        found[model.name] = model
    for path, layer in model._flatten(predicate=lambda m: isinstance(m, _SUPPORTED_LAYERS),
                                      with_path=True):
        found["/".join(str(p) for p in path)] = layer
    if not found:
        raise ValueError(f"model {model.name!r} has no snt.Linear or snt.Conv2D layer")
    if names is None:
        return found
    unknown = [n for n in names if n not in found]
    if unknown:
        raise ValueError(f"layers={','.join(names)}: no layer {', '.join(unknown)} in model "
                         f"{model.name!r}; its layers are {', '.join(found)}")
    return {name: found[name] for name in names}


def layer_spec(name: str, layer: snt.Module) -> LayerSpec:
    """The gradient-matrix shape of a built layer.

    Raises:
        ValueError: the layer is a convolution this module cannot unfold (padding given
            as a function, or channels-first data).
    """
    bias = int(bool(layer.with_bias))
    if isinstance(layer, snt.Linear):
        return LayerSpec(name, "linear", int(layer.w.shape[0]) + bias, int(layer.w.shape[1]),
                         bool(bias))
    if layer.padding_func is not None or layer.conv_padding not in ("SAME", "VALID"):
        raise ValueError(f"layer {name}: only 'SAME' and 'VALID' padding are supported")
    if layer.data_format != "NHWC":
        raise ValueError(f"layer {name}: only NHWC convolutions are supported, got "
                         f"{layer.data_format}")
    kernel_h, kernel_w, channels, filters = (int(d) for d in layer.w.shape)
    return LayerSpec(name, "conv2d", kernel_h * kernel_w * channels + bias, filters,
                     bool(bias))


class _Recorder:
    """Inputs and (watched) outputs of the chosen layers during one forward pass."""

    def __init__(self, layers: dict[str, snt.Module], tape: tf.GradientTape):
        self._names = {id(layer): name for name, layer in layers.items()}
        self._tape = tape
        self.inputs: dict[str, tf.Tensor] = {}
        self.outputs: dict[str, tf.Tensor] = {}

    def record(self, layer: snt.Module, inputs: tf.Tensor, outputs: tf.Tensor) -> tf.Tensor:
        name = self._names.get(id(layer))
        if name is None:
            return outputs
        if name in self.inputs:
            raise ValueError(f"layer {name} is called more than once in a forward pass; "
                             "per-example gradients of shared layers are not supported")
        self._tape.watch(outputs)
        self.inputs[name] = inputs
        self.outputs[name] = outputs
        return outputs


_ACTIVE_RECORDERS: list[_Recorder] = []
_RECORDING_CLASSES: dict[type, type] = {}


def _recording_class(cls: type) -> type:
    """A subclass of `cls` whose calls report their input and output to the active recorder."""
    if cls not in _RECORDING_CLASSES:
        def __call__(self, inputs, *args, **kwargs):
            outputs = cls.__call__(self, inputs, *args, **kwargs)
            if _ACTIVE_RECORDERS:
                outputs = _ACTIVE_RECORDERS[-1].record(self, inputs, outputs)
            return outputs

        _RECORDING_CLASSES[cls] = type(f"Recording{cls.__name__}", (cls,), {
            "__call__": snt.no_name_scope(__call__), "__module__": __name__})
    return _RECORDING_CLASSES[cls]


@contextlib.contextmanager
def _recording(layers: dict[str, snt.Module], tape: tf.GradientTape) -> Iterator[_Recorder]:
    recorder = _Recorder(layers, tape)
    classes = {name: type(layer) for name, layer in layers.items()}
    try:
        for layer in layers.values():
            object.__setattr__(layer, "__class__", _recording_class(type(layer)))
        _ACTIVE_RECORDERS.append(recorder)
        yield recorder
    finally:
        if _ACTIVE_RECORDERS and _ACTIVE_RECORDERS[-1] is recorder:
            _ACTIVE_RECORDERS.pop()
        for name, layer in layers.items():
            object.__setattr__(layer, "__class__", classes[name])


def _as_pair(value) -> list[int]:
    return [int(value)] * 2 if np.ndim(value) == 0 else [int(v) for v in value]


def _layer_inputs(spec: LayerSpec, layer: snt.Module, inputs: tf.Tensor) -> tf.Tensor:
    """The rows ``a[batch, positions, rows]`` a layer multiplies by its weights (im2col)."""
    if spec.kind == "linear":
        a = inputs[:, None, :]
    else:
        kernel, stride, rate = (_as_pair(v) for v in (layer.kernel_shape, layer.stride,
                                                      layer.rate))
        patches = tf.image.extract_patches(inputs, [1, *kernel, 1], [1, *stride, 1],
                                           [1, *rate, 1], layer.conv_padding)
        a = tf.reshape(patches, [patches.shape[0], -1, patches.shape[-1]])
    if spec.has_bias:
        a = tf.concat([a, tf.ones_like(a[..., :1])], axis=-1)
    return a


def outer_gradients(a: tf.Tensor, s: tf.Tensor) -> tf.Tensor:
    """Per-example gradient matrices ``[K, batch, rows, columns]`` from layer records.

    Args:
        a: ``[batch, positions, rows]`` layer inputs.
        s: ``[K, batch, positions, columns]`` cost gradients at the layer's outputs.
    """
    return tf.einsum("bti,kbto->kbio", a, s)


class LayerGradients:
    """Compiled per-example quantities of the Linear/Conv2D layers of one Sonnet model.

    Everything runs in fixed-size batches (the last one padded and masked), so each
    compiled function is traced once. The model's variables are read when a function
    runs, so assigning new weights (another checkpoint) needs no retracing.

    Args:
        model: Sonnet model called as ``model(inputs, is_training=False)`` -> logits.
        input_shape: shape of one example, without the batch axis.
        layers: attribute paths of the layers to differentiate; all by default.
        batch_size: examples per compiled call.
        jit_compile: compile with XLA.
        progress: a bar advanced by the examples of every batch run (`map_batches`).
    """

    def __init__(self, model: snt.Module, input_shape: Sequence[int],
                 layers: Sequence[str] | None = None, batch_size: int = DEFAULT_BATCH_SIZE,
                 jit_compile: bool = False, progress: Progress | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: expected a positive number")
        self.model = model
        self.input_shape = tuple(int(d) for d in input_shape)
        self.batch_size = batch_size
        self.jit_compile = jit_compile
        self.progress = progress
        model(tf.zeros([1, *self.input_shape]), is_training=False)  # creates the variables
        self.layers = find_layers(model, layers)
        self.specs = tuple(layer_spec(name, layer) for name, layer in self.layers.items())
        self._functions: dict[tuple, Callable] = {}

    @property
    def num_parameters(self) -> int:
        return sum(spec.size for spec in self.specs)

    def records(self, x: tf.Tensor, labels: tf.Tensor, mask: tf.Tensor, target: str,
                seed: tf.Tensor) -> tuple[list[tf.Tensor], list[tf.Tensor]]:
        """Layer inputs and cost gradients of one batch (to be called while tracing).

        Args:
            x: ``[batch, *input_shape]`` inputs.
            labels: int ``[batch]`` labels (ignored by the ``sampled`` and ``expected`` targets).
            mask: float ``[batch]``, 1 for real examples, 0 for padding.
            target: one of `TARGETS`: the per-example cost to differentiate.
            seed: int ``[2]`` stateless seed of the sampled labels.

        Returns:
            ``(a, s)``, one entry per layer: ``a[batch, positions, rows]`` (zero for
            padding) and ``s[K, batch, positions, columns]`` with K = 1, or K = number of
            classes for the ``expected`` target.
        """
        if target not in TARGETS:
            raise ValueError(f"target {target!r}: expected one of {', '.join(TARGETS)}")
        with tf.GradientTape(persistent=target == "expected",
                             watch_accessed_variables=False) as tape:
            with _recording(self.layers, tape) as recorder:
                logits = tf.cast(self.model(x, is_training=False), tf.float32)
            if target in MEASUREMENTS:
                costs = [measure(logits, labels, target)]
            elif target == "sampled":
                sampled = tf.random.stateless_categorical(tf.stop_gradient(logits), 1, seed)
                costs = [measure(logits, sampled[:, 0], "loss")]
            else:
                probabilities = tf.stop_gradient(tf.nn.softmax(logits))
                costs = [tf.sqrt(probabilities[:, c])
                         * measure(logits, tf.fill(tf.shape(labels), c), "loss")
                         for c in range(logits.shape[-1])]
            costs = [tf.reduce_sum(cost * mask) for cost in costs]
        missing = [name for name in self.layers if name not in recorder.outputs]
        if missing:
            raise ValueError(f"layer(s) {', '.join(missing)} took no part in the forward pass")
        outputs = [recorder.outputs[spec.name] for spec in self.specs]
        grads = [tape.gradient(cost, outputs) for cost in costs]
        a_all, s_all = [], []
        for i, spec in enumerate(self.specs):
            a = _layer_inputs(spec, self.layers[spec.name], recorder.inputs[spec.name])
            a_all.append(a * mask[:, None, None])
            s = tf.stack([g[i] for g in grads])
            s_all.append(tf.reshape(s, [len(grads), s.shape[1], -1, spec.columns]))
        return a_all, s_all

    def map_batches(self, x: np.ndarray, labels: np.ndarray | None, fn: Callable, key: str,
                    target: str, seed: int = 0, constants: Sequence[tf.Tensor] = (),
                    per_example: bool = True) -> Iterator[tuple[slice, list[tf.Tensor]]]:
        """Runs ``fn(a, s, *constants)`` compiled on every batch and yields its outputs.

        Args:
            x: ``[n, *input_shape]`` inputs.
            labels: ``[n]`` labels, or None for targets that do not use them.
            fn: maps the `records` of a batch (and `constants`) to a list of tensors.
            key: names `fn` in the cache of compiled functions (one trace per key/target).
            target: the cost, see `records`.
            seed: seed of sampled labels; batch b uses the stateless seed ``(seed, b)``.
            constants: extra tensor arguments of `fn`.
            per_example: outputs have a leading batch axis, trimmed to the real rows;
                otherwise they are sums over the batch (padding contributes nothing).

        Yields:
            ``(rows, outputs)`` per batch.
        """
        function = self._compiled(key, target, fn)
        x = np.asarray(x, np.float32)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"inputs have shape {x.shape[1:]} per example, expected "
                             f"{self.input_shape}")
        labels = np.zeros(len(x), np.int64) if labels is None else np.asarray(labels, np.int64)
        size = self.batch_size
        for batch, start in enumerate(range(0, len(x), size)):
            rows = slice(start, min(start + size, len(x)))
            count = rows.stop - rows.start
            x_batch = np.zeros((size, *self.input_shape), np.float32)
            x_batch[:count] = x[rows]
            y_batch = np.zeros(size, np.int64)
            y_batch[:count] = labels[rows]
            mask = (np.arange(size) < count).astype(np.float32)
            outputs = function(tf.constant(x_batch), tf.constant(y_batch), tf.constant(mask),
                               tf.constant([seed, batch], tf.int64), list(constants))
            if per_example:
                outputs = [o[:count] for o in outputs]
            if self.progress is not None:
                self.progress.advance(count)
            yield rows, outputs

    def accumulate(self, x: np.ndarray, labels: np.ndarray | None, fn: Callable, key: str,
                   target: str, seed: int = 0, constants: Sequence[tf.Tensor] = ()
                   ) -> list[np.ndarray]:
        """Sums over all batches of ``fn(a, s, *constants)`` (batch sums), in float64."""
        totals = None
        for _, outputs in self.map_batches(x, labels, fn, key, target, seed, constants,
                                           per_example=False):
            values = [o.numpy().astype(np.float64) for o in outputs]
            totals = values if totals is None else [t + v for t, v in
                                                    zip(totals, values, strict=True)]
        return totals

    def gradients(self, x: np.ndarray, labels: np.ndarray, measurement: str = "loss"
                  ) -> list[np.ndarray]:
        """Per-example gradient matrices of a measurement, one ``[n, rows, columns]`` per layer."""
        _check_measurement(measurement)
        parts = [[] for _ in self.specs]
        for _, outputs in self.map_batches(x, labels, _gradient_matrices, "gradients",
                                           measurement):
            for part, output in zip(parts, outputs, strict=True):
                part.append(output.numpy())
        return [np.concatenate(part) for part in parts]

    def _compiled(self, key: str, target: str, fn: Callable) -> Callable:
        if (key, target) not in self._functions:
            def batch_function(x, labels, mask, seed, constants):
                a, s = self.records(x, labels, mask, target, seed)
                return fn(a, s, *constants)

            self._functions[key, target] = tf.function(
                batch_function, jit_compile=self.jit_compile, autograph=False)
        return self._functions[key, target]


def _gradient_matrices(a: list[tf.Tensor], s: list[tf.Tensor]) -> list[tf.Tensor]:
    """Per layer ``[batch, rows, columns]`` gradients of a single-cost target."""
    return [outer_gradients(a_l, s_l)[0] for a_l, s_l in zip(a, s, strict=True)]


def flatten(grads: Sequence[tf.Tensor | np.ndarray]) -> tf.Tensor:
    """Per-layer gradients ``[n, rows, columns]`` as vectors ``[n, num_parameters]``."""
    return tf.concat([tf.reshape(g, [tf.shape(g)[0], -1]) for g in grads], axis=1)


def per_example_gradients(model: snt.Module, x: np.ndarray, labels: np.ndarray,
                          measurement: str = "loss", layers: Sequence[str] | None = None,
                          batch_size: int = DEFAULT_BATCH_SIZE, method: str = "outer_product"
                          ) -> dict[str, np.ndarray]:
    """Gradient of each example's measurement with respect to each layer variable.

    Args:
        model: Sonnet model called as ``model(inputs, is_training=False)`` -> logits.
        x: ``[n, *input_shape]`` inputs.
        labels: int ``[n]`` labels.
        measurement: ``loss`` or ``margin`` (see `measure`).
        layers: attribute paths of the layers; all Linear/Conv2D layers by default.
        batch_size: examples per compiled call.
        method: ``outer_product`` (layer inputs x output gradients, the fast path) or
            ``jacobian`` (``tf.GradientTape.jacobian`` vectorized with pfor, the reference).

    Returns:
        ``{variable name: [n, *variable.shape]}`` for the weights and biases of the layers.
    """
    _check_measurement(measurement)
    engine = LayerGradients(model, np.shape(x)[1:], layers, batch_size)
    if method == "outer_product":
        result = {}
        for spec, grads in zip(engine.specs, engine.gradients(x, labels, measurement),
                               strict=True):
            layer = engine.layers[spec.name]
            weights = grads[:, :spec.rows - spec.has_bias]
            result[layer.w.name] = weights.reshape((len(grads), *layer.w.shape))
            if spec.has_bias:
                result[layer.b.name] = grads[:, -1]
        return result
    if method == "jacobian":
        variables = [v for layer in engine.layers.values() for v in layer.trainable_variables]

        @tf.function(autograph=False)
        def jacobian(x_batch, y_batch):
            with tf.GradientTape() as tape:
                logits = tf.cast(model(x_batch, is_training=False), tf.float32)
                values = measure(logits, y_batch, measurement)
            return tape.jacobian(values, variables, experimental_use_pfor=True)

        parts = [[] for _ in variables]
        for start in range(0, len(x), batch_size):
            rows = slice(start, start + batch_size)
            for part, grads in zip(parts, jacobian(tf.constant(x[rows], tf.float32),
                                                   tf.constant(labels[rows], tf.int64)),
                                   strict=True):
                part.append(grads.numpy())
        return {v.name: np.concatenate(p) for v, p in zip(variables, parts, strict=True)}
    raise ValueError(f"method={method!r}: expected 'outer_product' or 'jacobian'")


def _check_measurement(measurement: str) -> None:
    if measurement not in MEASUREMENTS:
        raise ValueError(f"measurement={measurement!r}: expected one of "
                         f"{', '.join(MEASUREMENTS)}")


def copy_weights(source: snt.Module, target: snt.Module, input_shape: Sequence[int],
                 name: str = "model") -> None:
    """Assigns the variables of `source` to those of `target` (one architecture).

    Lets one model's compiled gradient functions serve other checkpoints or models.

    Raises:
        ValueError: the two models' variables differ in number or shape (`name` says
            which source).
    """
    if source is target:
        return
    source(tf.zeros([1, *input_shape]), is_training=False)  # creates lazy variables
    sources, targets = source.variables, target.variables
    shapes = [tuple(v.shape) for v in sources]
    if shapes != [tuple(v.shape) for v in targets]:
        raise ValueError(f"{name}: its variables {shapes} differ from those of the first "
                         "model; one architecture is needed")
    for s, t in zip(sources, targets, strict=True):
        t.assign(s)
