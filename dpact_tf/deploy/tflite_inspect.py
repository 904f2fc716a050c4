"""What a written ``.tflite`` really contains: its operators, random ops, signatures and stored conv weights.

The privacy and trust properties of the phone head are properties of the *flatbuffer*, not of the Python object
that was converted: the converter may silently keep a Select-TF op (the Flex delegate), a random op would be a
source of noise the app does not control (seeded by the runtime, or replayed in every interpreter if its seeds
are fixed; SECURITY.md), and the weights a phone runs are those stored in the file, whatever its JSON sidecar
says.  This module reads them back
from the bytes with the TFLite schema (``ai_edge_litert.schema_py_generated``), without TensorFlow, so the
converter, the tests and ``HeadRunner`` on the phone side all look at the same thing:

* :func:`check_builtin_only` -- no custom (Flex) op;
* :func:`check_grid_release` -- no random op anywhere, and a ``release`` signature with the grid release's inputs
  and outputs (int64 entropy in, int32 levels out: the release is integers, not floats);
* :func:`stored_conv_weights` and :func:`weights_sha256` -- the 3x3 conv weights a signature computes with, read
  from the constants (or the initial values of the variables) that feed its ``CONV_2D`` ops, and their hash.
"""
from __future__ import annotations

import dataclasses
import hashlib
from typing import Dict, List, Sequence, Tuple, Union

import numpy as np

__all__ = ["RandomOp", "random_ops", "operator_names", "signature_io", "analyzer_report", "check_builtin_only",
           "check_grid_release", "GRID_RELEASE_IO", "stored_conv_weights", "weights_sha256"]

_RANDOM_OPS = ("RANDOM_STANDARD_NORMAL", "RANDOM_UNIFORM", "MULTINOMIAL")

# The inputs and outputs (name: dtype) of a grid release signature (dpact_tf.deploy.convert.ClientHead.release).
GRID_RELEASE_IO = {"inputs": {"image": "uint8", "epsilon": "float32", "entropy": "int64"},
                   "outputs": {"levels": "int32", "scale": "float32", "valid": "int32"}}


@dataclasses.dataclass(frozen=True)
class RandomOp:
    """One random operator of a .tflite model and its seed options (0, 0 = seeded from the OS per process)."""

    subgraph: str   # the subgraph (signature) name, e.g. "release"
    op: str         # the builtin operator, e.g. "RANDOM_UNIFORM"
    seed: int       # RandomOptions.seed
    seed2: int      # RandomOptions.seed2


def _model(model: Union[bytes, str]):
    from ai_edge_litert import schema_py_generated as schema

    if isinstance(model, str):
        with open(model, "rb") as fh:
            model = fh.read()
    return schema, schema.ModelT.InitFromPackedBuf(bytearray(model), 0)


def _op_names(schema) -> Dict[int, str]:
    return {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}


def _op_name(schema, m, op, names: Dict[int, str]) -> str:
    code = m.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    if builtin == schema.BuiltinOperator.CUSTOM:
        return "CUSTOM:" + (code.customCode or b"").decode()
    return names.get(builtin, str(builtin))


def _ops(model: Union[bytes, str]):
    schema, m = _model(model)
    names = _op_names(schema)
    for g in m.subgraphs or []:
        for op in g.operators or []:
            yield (g.name or b"").decode(), _op_name(schema, m, op, names), op


def operator_names(model: Union[bytes, str]) -> Dict[str, List[str]]:
    """Operator names per subgraph, in execution order (custom/Flex ops as ``CUSTOM:<name>``)."""
    out: Dict[str, List[str]] = {}
    for graph, name, _ in _ops(model):
        out.setdefault(graph, []).append(name)
    return out


def random_ops(model: Union[bytes, str]) -> List[RandomOp]:
    """Every random operator of the model with the seeds written in its options."""
    out = []
    for graph, name, op in _ops(model):
        if name in _RANDOM_OPS:
            opts = op.builtinOptions
            out.append(RandomOp(graph, name, int(getattr(opts, "seed", 0) or 0), int(getattr(opts, "seed2", 0) or 0)))
    return out


def _dtype_names(schema) -> Dict[int, str]:
    return {v: k.lower() for k, v in vars(schema.TensorType).items() if not k.startswith("_")}


def signature_io(model: Union[bytes, str]) -> Dict[str, Dict[str, Dict[str, str]]]:
    """``{signature: {"inputs": {name: dtype}, "outputs": {name: dtype}}}`` as written in the flatbuffer."""
    schema, m = _model(model)
    dtypes = _dtype_names(schema)
    out = {}
    for sig in m.signatureDefs or []:
        g = m.subgraphs[sig.subgraphIndex]
        out[sig.signatureKey.decode()] = {
            side: {t.name.decode(): dtypes.get(g.tensors[t.tensorIndex].type, "?") for t in getattr(sig, side) or []}
            for side in ("inputs", "outputs")}
    return out


def check_builtin_only(model: Union[bytes, str]) -> None:
    """Raise ``ValueError`` if the model has a custom op (Flex/Select-TF ops are custom ops named ``Flex...``)."""
    custom = sorted({name for names in operator_names(model).values() for name in names if name.startswith("CUSTOM:")})
    if custom:
        raise ValueError(f"the model needs ops outside the TFLite builtins (the Flex delegate): {custom}")


def check_grid_release(model: Union[bytes, str]) -> None:
    """Raise ``ValueError`` unless the model has no random op and a ``release`` signature with exactly the grid
    release's inputs and outputs (:data:`GRID_RELEASE_IO`): its noise comes from the app's int64 entropy alone
    and it releases integers."""
    rand = random_ops(model)
    if rand:
        raise ValueError(f"the model has random ops {rand}: their noise is not the app's to keep secret (and a "
                         "model exported before the grid release); export the head again")
    io = signature_io(model)
    if "release" not in io:
        raise ValueError(f"the model has no 'release' signature (signatures: {sorted(io)}); export the head again")
    if io["release"] != GRID_RELEASE_IO:
        raise ValueError(f"the model's 'release' is not the grid release: {io['release']} instead of "
                         f"{GRID_RELEASE_IO} (a head exported before the release was on the grid); export it again")


def _constant(schema, m, g, index: int, producers: Dict[int, object], names: Dict[int, str]) -> np.ndarray:
    """The value of tensor ``index`` of subgraph ``g`` if it is a constant, or computed from constants by the few ops
    a converted head puts before a conv (DEQUANTIZE of float16 weights, TRANSPOSE, READ_VARIABLE of a variable's
    initial value); ``ValueError`` otherwise."""
    t = g.tensors[index]
    data = m.buffers[t.buffer].data if t.buffer < len(m.buffers) else None
    if data is not None and len(data):
        dtype = {schema.TensorType.FLOAT32: np.float32, schema.TensorType.FLOAT16: np.float16,
                 schema.TensorType.INT32: np.int32, schema.TensorType.INT64: np.int64}.get(t.type)
        if dtype is None:
            raise ValueError(f"tensor {t.name!r} has a type ({t.type}) conv weights never have")
        return np.frombuffer(bytes(bytearray(data)), dtype=np.dtype(dtype).newbyteorder("<")).reshape(
            [int(s) for s in t.shape])
    op = producers.get(index)
    name = _op_name(schema, m, op, names) if op is not None else None
    if name == "DEQUANTIZE":
        return _constant(schema, m, g, op.inputs[0], producers, names).astype(np.float32)
    if name == "TRANSPOSE":
        perm = _constant(schema, m, g, op.inputs[1], producers, names)
        return np.transpose(_constant(schema, m, g, op.inputs[0], producers, names), perm)
    if name == "READ_VARIABLE":
        return _variable_initial_value(schema, m, g, op.inputs[0], producers, names)
    raise ValueError(f"conv weight tensor {t.name!r} is computed by {name or 'nothing'} (not a constant, a float16 "
                     "constant or a variable's initial value): cannot read the stored weights")


def _handle_name(schema, m, g, index: int, producers: Dict[int, object], names: Dict[int, str]) -> Tuple[bytes, bytes]:
    op = producers.get(index)
    if op is None or _op_name(schema, m, op, names) != "VAR_HANDLE":
        raise ValueError("a variable read from something other than VAR_HANDLE: cannot read the stored weights")
    return op.builtinOptions.container or b"", op.builtinOptions.sharedName or b""


def _variable_initial_value(schema, m, g, handle: int, producers, names) -> np.ndarray:
    """The constant that the model's initializer subgraph assigns to the variable behind ``handle``."""
    key = _handle_name(schema, m, g, handle, producers, names)
    found = []
    for sub in m.subgraphs:
        prods = _producers(sub)
        for op in sub.operators or []:
            if _op_name(schema, m, op, names) == "ASSIGN_VARIABLE" and \
                    _handle_name(schema, m, sub, op.inputs[0], prods, names) == key:
                found.append((sub, op, prods))
    constant = [(sub, op, prods) for sub, op, prods in found if sub.tensors[op.inputs[1]].buffer and
                m.buffers[sub.tensors[op.inputs[1]].buffer].data is not None]
    if len(constant) != 1:
        raise ValueError(f"variable {key[1]!r} is assigned {len(constant)} constants: cannot tell its initial value")
    sub, op, prods = constant[0]
    return _constant(schema, m, sub, op.inputs[1], prods, names)


def _producers(g) -> Dict[int, object]:
    return {out: op for op in g.operators or [] for out in op.outputs}


def stored_conv_weights(model: Union[bytes, str], signature: str = "release") -> List[Tuple[np.ndarray, np.ndarray]]:
    """(kernel [kh, kw, in, out] float32, bias [out] float32) of every 3x3 ``CONV_2D`` of ``signature``, in execution
    order, as stored in the file: constants (float16 ones converted), or the initial values of the variables a
    trainable head updates.  (VGG-Face's conv layers are 3x3; the head's other CONV_2D, Eq. (1)'s window sum, is
    1x1.)  ``ValueError`` if a weight is computed by anything else."""
    schema, m = _model(model)
    names = _op_names(schema)
    sigs = {s.signatureKey.decode(): s.subgraphIndex for s in m.signatureDefs or []}
    if signature not in sigs:
        raise ValueError(f"the model has no {signature!r} signature (signatures: {sorted(sigs)})")
    g = m.subgraphs[sigs[signature]]
    producers = _producers(g)
    out = []
    for op in g.operators or []:
        if _op_name(schema, m, op, names) != "CONV_2D":
            continue
        kernel = _constant(schema, m, g, op.inputs[1], producers, names).astype(np.float32)  # [out, kh, kw, in]
        if kernel.shape[1:3] != (3, 3):
            continue
        bias = (_constant(schema, m, g, op.inputs[2], producers, names).astype(np.float32)
                if len(op.inputs) > 2 and op.inputs[2] >= 0 else np.zeros(kernel.shape[0], np.float32))
        out.append((np.ascontiguousarray(np.transpose(kernel, (1, 2, 3, 0))), bias))
    if not out:
        raise ValueError(f"the {signature!r} signature has no 3x3 CONV_2D")
    return out


def weights_sha256(weights: Sequence[Tuple[np.ndarray, np.ndarray]]) -> str:
    """SHA-256 of conv weights: for each layer in order, its kernel's shape (4 little-endian int64), the kernel
    [kh, kw, in, out] and the bias as little-endian float32 bytes."""
    h = hashlib.sha256()
    for kernel, bias in weights:
        kernel = np.asarray(kernel, np.float32)
        if kernel.ndim != 4:
            raise ValueError(f"a conv kernel must have 4 dimensions [kh, kw, in, out] (got shape {kernel.shape})")
        h.update(np.asarray(kernel.shape, "<i8").tobytes())
        h.update(np.ascontiguousarray(kernel, "<f4").tobytes())
        h.update(np.ascontiguousarray(np.asarray(bias, np.float32), "<f4").tobytes())
    return h.hexdigest()


def analyzer_report(path: str) -> str:
    """LiteRT's model analyzer (the text ``tf.lite.experimental.Analyzer.analyze`` prints), without TensorFlow.

    It lists every subgraph (one per signature), operator and tensor; it flags ops a runtime lacks.
    """
    from ai_edge_litert import _pywrap_analyzer_wrapper as analyzer

    return analyzer.ModelAnalyzer(path, True, False)
