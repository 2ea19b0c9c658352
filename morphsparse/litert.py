"""LiteRT (TFLite) export of a sparse model: zeros stored in the format the runtime runs faster.

A mask turns into speed in LiteRT in two ways (docs/sparse_inference.md):

* the fully-connected kernel has a sparse path for weights stored with 1x4 blocks (float) or 1x16 blocks
  (int8) along the input axis: the converter stores such a kernel sparse and the FULLY_CONNECTED op reads it
  as it is. A kernel with scattered zeros is stored sparse too (a smaller file), but a DENSIFY op expands it
  when the model loads, so it runs at dense speed;
* XNNPACK's sparse inference runs 1x1 convolutions with at least 2/3 zeros in a MobileNet-shaped subgraph
  (stem 3x3 stride-2 conv, depthwise and 1x1 convs, global mean) without densifying them; it decides when the
  delegate is created, so only a timing shows it (``benchmarks/sparse_inference.py``).

:func:`to_litert` converts with ``tf.lite.Optimize.EXPERIMENTAL_SPARSITY``, writes the file, runs it in the
LiteRT interpreter against the Keras model on random inputs, and reports per weight-bearing layer how its
kernel was stored and which kernel the runtime got.
"""

from __future__ import annotations

import contextlib
import io
import math
import numbers
import platform
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import keras
import numpy as np

from morphsparse import keras_internals as _keras
from morphsparse.checks import flag
from morphsparse.graph import random_inputs

QUANTIZATIONS = (None, "float16", "dynamic", "int8")
#: to_litert(rtol=None): how far (a fraction of the output scale) LiteRT's outputs may be from Keras's, per
#: quantization: float32 agrees to rounding; float16 weights move outputs by ~1e-4 of their scale, int8 weights
#: (and activations) by a few percent. Beyond that the file is broken, not just quantised.
RTOL = {None: 1e-5, "float16": 1e-2, "dynamic": 0.1, "int8": 0.25}


class LiteRTError(RuntimeError):
    """The model could not be converted or does not run the same in LiteRT; the message says why."""


def _interpreter_class():
    """The LiteRT interpreter (``ai-edge-litert``, the ``[litert]`` extra), else TensorFlow's own."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        import tensorflow as tf
        Interpreter = tf.lite.Interpreter
    return Interpreter


def interpreter(model_content, threads=1, delegates=True):
    """A LiteRT interpreter for a flatbuffer, tensors allocated. ``delegates``: let the default XNNPACK
    delegate take the ops it supports (LiteRT's default); False runs LiteRT's built-in kernels only."""
    Interpreter = _interpreter_class()
    options = {}
    if not delegates:
        import importlib
        module = importlib.import_module(Interpreter.__module__)
        options["experimental_op_resolver_type"] = module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    runner = Interpreter(model_content=model_content, num_threads=threads, **options)
    runner.allocate_tensors()
    return runner


def in_interpreter_order(runner, model, arrays):
    """``arrays`` (one per input of ``model``, in ``model.inputs`` order) in the order of the interpreter's
    inputs: matched by name where the converter kept every input's name (it may sort them), else as given."""
    tensors = getattr(model, "inputs", None) or []      # a subclassed model's inputs have no names
    names = [t.name.split(":")[0] for t in tensors]
    found = []
    for detail in runner.get_input_details():
        hits = [i for i, name in enumerate(names)
                if detail["name"] in (name, f"{name}:0", f"serving_default_{name}:0")]
        found.append(hits[0] if len(hits) == 1 else None)
    if None in found or sorted(found) != list(range(len(arrays))):
        return list(arrays)
    return [arrays[i] for i in found]


def run(runner, arrays):
    """Outputs of a LiteRT interpreter for one input array per interpreter input (in its order, see
    :func:`in_interpreter_order`), one example at a time."""
    inputs, outputs = runner.get_input_details(), runner.get_output_details()
    results = [[] for _ in outputs]
    for row in range(len(arrays[0])):
        for detail, array in zip(inputs, arrays):
            runner.set_tensor(detail["index"], array[row:row + 1].astype(detail["dtype"]))
        runner.invoke()
        for bucket, detail in zip(results, outputs):
            bucket.append(runner.get_tensor(detail["index"]))
    return [np.concatenate(bucket) for bucket in results]


@dataclass
class LayerStorage:
    """How one weight-bearing layer's kernel reached the runtime."""

    layer: str
    class_name: str
    zeros: float             # fraction of exact zeros in the Keras kernel
    stored: str              # "sparse" or "dense" in the .tflite file
    kernel: str              # what the runtime runs: see LiteRTReport.table()


@dataclass
class LiteRTReport:
    """What :func:`to_litert` wrote and checked."""

    path: str | None
    bytes: int
    quantize: str | None
    sparse: bool
    max_difference: float          # largest |LiteRT - Keras| output difference on the check inputs
    output_scale: float
    layers: list = field(default_factory=list)
    runtime: str = "XNNPACK delegate and built-in kernels"

    @property
    def sparse_kernels(self):
        return [row.layer for row in self.layers if row.kernel.startswith("sparse")]

    def summary(self):
        stored = sum(row.stored == "sparse" for row in self.layers)
        return (f"LiteRT model of {self.bytes:,d} bytes{f' at {self.path}' if self.path else ''}"
                f"{f', quantize={self.quantize}' if self.quantize else ''}: {stored}/{len(self.layers)} kernels "
                f"stored sparse, {len(self.sparse_kernels)} run by a sparse kernel; outputs match Keras to "
                f"{self.max_difference:.1e} (output scale {self.output_scale:.3g}); runtime: {self.runtime}")

    def table(self):
        lines = [f"{'layer':32s} {'class':18s} {'zeros':>6s} {'stored':>7s}  runtime kernel"]
        for row in self.layers:
            lines.append(f"{row.layer[:32]:32s} {row.class_name[:18]:18s} {row.zeros:6.1%} {row.stored:>7s}  "
                         f"{row.kernel}")
        return "\n".join(lines)

    def __str__(self):
        return self.summary()


def _check_arguments(model, sparse, quantize, representative_data, rtol, threads):

    if not isinstance(model, keras.Model):
        raise TypeError(f"to_litert() takes a keras.Model, got {type(model).__name__}")
    flag(sparse, "sparse")
    if quantize not in QUANTIZATIONS:
        raise ValueError(f"quantize must be one of {QUANTIZATIONS}, got {quantize!r}")
    if quantize == "int8" and representative_data is None:
        raise ValueError("quantize='int8' needs representative_data: a few batches of typical inputs that set "
                         "the activation ranges")
    if rtol is not None and (isinstance(rtol, bool) or not isinstance(rtol, numbers.Real)
                             or not math.isfinite(rtol) or rtol <= 0):
        raise ValueError(f"rtol must be a finite number > 0 (a fraction of the output scale, e.g. 1e-5), or None "
                         f"for the default of the quantization {RTOL}; got {rtol!r}")
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be a positive integer, got {threads!r}")


def convert(model, sparse=True, quantize=None, representative_data=None):
    """The model as a LiteRT flatbuffer (bytes); ``sparse`` stores zero-rich kernels in sparse format."""
    import tensorflow as tf

    failures = []
    # the converter's Keras path fails on some models Keras 3 runs well (a keras_hub backbone taking a dict:
    # it calls into tf_keras); exported as a SavedModel first, they convert. A model taking a dict goes that
    # way first: the Keras path would spend a minute failing on it
    with tempfile.TemporaryDirectory(prefix="morphsparse-litert-") as folder:
        ways = [tf.lite.TFLiteConverter.from_keras_model, lambda m: _from_saved_model(m, folder)]
        for make in ways[::-1] if _takes_a_dict(model) else ways:
            try:
                converter = _configured(make(model), sparse, quantize, representative_data)
                # the converter saves a temporary SavedModel and prints its endpoints (about 20 lines)
                with contextlib.redirect_stdout(io.StringIO()):
                    flatbuffer = converter.convert()
                break
            except Exception as err:  # noqa: BLE001 - the converter's errors are long MLIR dumps: keep a line
                failures.append(err)
        else:
            err = failures[0]
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LiteRTError(f"LiteRT conversion of '{model.name}' failed: {first}") from err
    if sparse and quantize is not None:
        flatbuffer = densify_before_dequantize(flatbuffer)
    return flatbuffer


def _takes_a_dict(model):
    """Whether a built functional model is called on a dict of inputs (keras_hub backbones are)."""
    try:
        return isinstance(model.input, dict)
    except (AttributeError, ValueError):     # a subclassed model has no symbolic input
        return False


def _configured(converter, sparse, quantize, representative_data):
    import tensorflow as tf

    converter.optimizations = []
    if sparse:
        converter.optimizations.append(tf.lite.Optimize.EXPERIMENTAL_SPARSITY)
    if quantize in ("dynamic", "int8", "float16"):
        converter.optimizations.append(tf.lite.Optimize.DEFAULT)
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        def batches():
            for batch in representative_data:
                batch = batch[0] if isinstance(batch, tuple) else batch
                yield [np.asarray(b, dtype="float32") for b in (batch if isinstance(batch, list) else [batch])]
        converter.representative_dataset = batches
    return converter


def _from_saved_model(model, folder):
    """A converter of the model exported as a SavedModel into ``folder`` (``model.export``, Keras 3's own way
    to LiteRT), its weights frozen by the converter."""
    import tensorflow as tf

    with contextlib.redirect_stdout(io.StringIO()):     # export prints the endpoints too
        model.export(folder, format="tf_saved_model", verbose=False)
    return tf.lite.TFLiteConverter.from_saved_model(folder)


def densify_before_dequantize(flatbuffer):
    """Repair a converter output in which a sparse kernel feeds a DEQUANTIZE op directly.

    With ``quantize="float16"`` the converter stores a kernel with 1x4 zero blocks sparse in float16 and, as
    the float FULLY_CONNECTED op reads 1x4-block kernels sparse, leaves out the DENSIFY op; but it is a
    DEQUANTIZE (float16 -> float32) that reads the kernel, and DEQUANTIZE takes the compressed values as a
    dense array: every output of the model is NaN or garbage. This inserts the missing DENSIFY (as the
    converter does for scattered zeros), so the file keeps its sparse storage and computes the right thing.
    Returns the flatbuffer unchanged when no sparse tensor feeds a DEQUANTIZE.
    """
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.python.schema_util import get_builtin_code_from_operator_code
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(flatbuffer))
    codes = [get_builtin_code_from_operator_code(code) for code in model.operatorCodes]
    dequantize, densify = schema.BuiltinOperator.DEQUANTIZE, schema.BuiltinOperator.DENSIFY
    repaired = 0
    for subgraph in model.subgraphs:
        operators = []
        for op in subgraph.operators or []:
            source = subgraph.tensors[op.inputs[0]] if op.inputs is not None and len(op.inputs) else None
            if codes[op.opcodeIndex] == dequantize and source is not None and source.sparsity is not None:
                if densify not in codes:
                    code = schema.OperatorCodeT()
                    code.builtinCode = code.deprecatedBuiltinCode = densify
                    code.version = 1
                    model.operatorCodes.append(code)
                    codes.append(densify)
                dense = schema.TensorT()
                dense.shape, dense.type = np.array(source.shape, np.int32), source.type
                dense.name = (source.name or b"") + b"/densified"
                model.buffers.append(schema.BufferT())        # an empty buffer: computed at load
                dense.buffer = len(model.buffers) - 1
                subgraph.tensors.append(dense)
                densify_op = schema.OperatorT()
                densify_op.opcodeIndex = codes.index(densify)
                densify_op.inputs = np.array([op.inputs[0]], np.int32)
                densify_op.outputs = np.array([len(subgraph.tensors) - 1], np.int32)
                op.inputs = np.array([len(subgraph.tensors) - 1] + list(op.inputs[1:]), np.int32)
                operators.append(densify_op)
                repaired += 1
            operators.append(op)
        subgraph.operators = operators
    return flatbuffer_utils.convert_object_to_bytearray(model) if repaired else flatbuffer


def _kernel_layers(model):
    """(layer, kernel array) of every layer whose weights include a matrix-like kernel, nested models too."""
    found = []

    def walk(layers):
        for layer in layers:
            if isinstance(layer, keras.Model):
                walk(layer.layers)
                continue
            kernel = next((w for w in layer.weights if len(w.shape) >= 2), None)
            if kernel is not None:
                found.append((layer, keras.ops.convert_to_numpy(kernel)))

    walk(model.layers)
    return found


def _xnnpack_may_run_sparse():
    """False on x86 processors with AVX: XNNPACK never takes its sparse (NCHW) path there, by design (its
    ``xnn_is_chw_compatible_config``: dense kernels are expected to be faster), so sparse 1x1 convolutions run
    at dense speed. True elsewhere (ARM), and where the processor cannot be read."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True
    try:
        with open("/proc/cpuinfo") as info:
            flags = next((line for line in info if line.startswith("flags")), "")
    except OSError:
        return True
    return " avx" not in flags


def _xnnpack_sparse_layer(layer):
    """True for the layers XNNPACK's sparse inference can run with a sparse kernel: 1x1 convolutions of stride
    1 (a Dense, a 3x3 or a depthwise convolution always runs dense there)."""
    return (isinstance(layer, keras.layers.Conv2D) and tuple(layer.kernel_size) == (1, 1)
            and tuple(layer.strides) == (1, 1) and int(getattr(layer, "groups", 1) or 1) == 1)


def _storage_by_layer(model, runner):
    """Per kernel layer: (stored, runtime kernel), matching LiteRT tensor names to Keras layer names."""
    tensors = runner.get_tensor_details()
    ops = _keras.interpreter_ops(runner)
    readers = {}
    for op in ops:
        for position, index in enumerate(np.asarray(op["inputs"]).tolist()):
            readers.setdefault(index, []).append((op["op_name"], position))
    rows = {}
    for layer, kernel in _kernel_layers(model):
        pattern = re.compile(rf"(^|/){re.escape(layer.name)}(_\d+)?/")
        candidates = [t for t in tensors if pattern.search(t["name"]) and len(t["shape"]) >= 2
                      and int(np.prod(t["shape"])) == kernel.size]
        sparse = [t for t in candidates if t.get("sparsity_parameters")]
        if sparse:
            consumers = {name for name, _ in readers.get(sparse[0]["index"], [])}
            if "DELEGATE" in consumers:
                if not _xnnpack_sparse_layer(layer):
                    kernel_used = "XNNPACK delegate: dense speed (XNNPACK runs only 1x1 convolutions sparse)"
                elif _xnnpack_may_run_sparse():
                    kernel_used = ("XNNPACK delegate: a sparse 1x1 kernel when the subgraph around it qualifies "
                                   "for XNNPACK's sparse (NCHW) path; time it")
                else:
                    kernel_used = ("XNNPACK delegate: dense speed on this x86 CPU with AVX (XNNPACK runs sparse "
                                   "1x1 convolutions on ARM and pre-AVX x86 only)")
            elif consumers == {"DENSIFY"}:
                kernel_used = ("densified at load: dense speed (LiteRT's sparse FC kernel takes float32 1x4 or "
                               "int8 1x16 blocks)")
            elif consumers:
                kernel_used = f"sparse {'/'.join(sorted(consumers))}"
            else:
                kernel_used = "stored sparse (reader unknown)"
            rows[layer.name] = ("sparse", kernel_used)
        else:
            rows[layer.name] = ("dense", "dense")
    return rows


def to_litert(model, path=None, sparse=True, quantize=None, representative_data=None, check_inputs=None,
              rtol=None, threads=1):
    """Convert ``model`` to a LiteRT (``.tflite``) file and check it against Keras.

    ``sparse=True`` stores kernels with enough zeros in LiteRT's sparse format (dense elsewhere);
    ``quantize``: None (float32), "float16", "dynamic" (int8 weights) or "int8" (needs ``representative_data``,
    an iterable of input batches). The LiteRT interpreter's outputs are compared with ``model``'s on
    ``check_inputs`` (default: 4 random examples) and must match to ``rtol`` of the output scale, or
    :class:`LiteRTError` is raised; ``rtol=None`` takes the quantization's default (:data:`RTOL`: 1e-5 for
    float32, 1e-2 for float16, 0.1 for dynamic, 0.25 for int8, loose enough for rounding, not for a broken
    file). A NaN or infinite output where Keras's is finite is always an error. ``path``: where to write the file
    (None: not written). Returns a :class:`LiteRTReport` with, per weight-bearing layer, the
    fraction of zeros, how the kernel was stored and which kernel the runtime runs.
    """
    _check_arguments(model, sparse, quantize, representative_data, rtol, threads)
    rtol = RTOL[quantize] if rtol is None else float(rtol)
    flatbuffer = convert(model, sparse=sparse, quantize=quantize, representative_data=representative_data)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(flatbuffer)
    runtime = "XNNPACK delegate and built-in kernels"
    try:
        runner = interpreter(flatbuffer, threads=threads)
    except RuntimeError as err:   # XNNPACK refuses some sparse quantised kernels when it prepares them
        runner = interpreter(flatbuffer, threads=threads, delegates=False)
        runtime = f"built-in kernels only (XNNPACK refused the model: {str(err).splitlines()[0][:120]})"
    if check_inputs is None:
        check_inputs = random_inputs(model, batch=4, seed=0)
    # one array, a list in model.inputs order, or a dict by input name (flattened as Keras flattens it)
    arrays = [np.asarray(a) for a in keras.tree.flatten(check_inputs)]
    # in the structure the model was built on (a dict for keras_hub backbones), flattened as model.inputs
    structure = arrays[0] if len(arrays) == 1 else (
        keras.tree.pack_sequence_as(model.input, arrays) if getattr(model, "inputs", None) else arrays)
    want = [keras.ops.convert_to_numpy(w) for w in keras.tree.flatten(model(structure, training=False))]
    got = run(runner, in_interpreter_order(runner, model, arrays))
    scale = max(float(np.abs(w).max()) for w in want) or 1.0
    difference = max(float(np.abs(w.astype(np.float64) - g.reshape(w.shape)).max()) for w, g in zip(want, got))
    settings = f"sparse={sparse}, quantize={quantize!r}"
    if any(not np.isfinite(g).all() for g in got) and all(np.isfinite(w).all() for w in want):
        bad = sum(int(np.size(g) - np.isfinite(g).sum()) for g in got)
        raise LiteRTError(f"the LiteRT model of '{model.name}' ({settings}) outputs NaN or inf ({bad} of "
                          f"{sum(np.size(g) for g in got)} values) where Keras's outputs are finite: the file is "
                          f"broken{f' (written to {path})' if path is not None else ''}. Try sparse=False or "
                          "another quantize=, and please report the model")
    report = LiteRTReport(str(path) if path is not None else None, len(flatbuffer), quantize, sparse, difference,
                          scale, runtime=runtime)
    storage = _storage_by_layer(model, runner)
    for layer, kernel in _kernel_layers(model):
        stored, kernel_used = storage[layer.name]
        report.layers.append(LayerStorage(layer.name, type(layer).__name__, float(np.mean(kernel == 0)), stored,
                                          kernel_used))
    if not difference <= rtol * scale:     # "not <=": a NaN difference fails too
        raise LiteRTError(f"LiteRT outputs of '{model.name}' ({settings}) differ from Keras by {difference:.3g} "
                          f"(output scale {scale:.3g}, allowed rtol={rtol:g} of it); pass a larger rtol= if this "
                          "much is expected (quantization of a deep network)")
    return report


__all__ = ["to_litert", "convert", "densify_before_dequantize", "interpreter", "run", "in_interpreter_order", "LiteRTReport", "LayerStorage",
           "LiteRTError", "RTOL", "QUANTIZATIONS"]
