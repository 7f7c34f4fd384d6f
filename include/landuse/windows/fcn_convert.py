"""Graph surgery that makes a per-window ONNX classifier fully convolutional.

With 32 px windows every 16 px each pixel lies in four windows, and scoring every window on
its own repeats the convolutions four times over. A network that is a convolutional trunk,
a global pooling and a dense head gives exactly the same per-window output when its trunk
runs once over a whole band of window rows (OverFeat), provided that

* the trunk has no padding (a window's zero border would otherwise differ from the
  neighbouring pixels the band supplies, and nothing could be shared exactly);
* the window stride is a multiple of every trunk tensor's stride, so each window's feature
  map is a crop of the band's;
* the window needs no resizing (window size = the model's input size).

Then the global pooling becomes a pooling of the window's feature-map size with the window
stride in feature cells, and the head runs on every pooled cell: a ``MatMul`` over the
channel axis of the channel-last pooled map, which is a 1 × 1 convolution (``Gemm`` and
1 × 1 ``Conv`` heads are rewritten so; ``Flatten`` / ``Reshape`` / ``Squeeze`` become
identities). :func:`convert` gives an ONNX model with dynamic input height and width whose
output is the window grid, (N, rows, cols, classes); :func:`take_pixels` makes its input
the pixels as GDAL reads them, the bundle's preprocessing inside. Only ``onnx`` is needed,
no framework, so imported ONNX models qualify too. Deriving, checking and keeping the
model for a bundle is :mod:`landuse.windows.fcn_model`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from landuse.models.preprocessing import PreprocessSpec

PIXELS = "landuse_pixels"  # the fully convolutional model's input

_UNARY = {"Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Clip", "Elu", "Selu", "Celu",
          "HardSigmoid", "HardSwish", "Softplus", "Softsign", "Mish", "Gelu", "Erf", "Exp",
          "Log", "Sqrt", "Neg", "Abs", "Reciprocal", "Identity", "Cast", "Dropout"}
_BINARY = {"Add", "Sub", "Mul", "Div", "Max", "Min", "Pow"}
_FLATTEN = {"Flatten", "Reshape", "Squeeze"}


class NotConvertible(ValueError):
    """The network cannot be made fully convolutional exactly; the message says why."""



@dataclass(frozen=True)
class _Spatial:
    layout: str  # "NCHW" or "NHWC"
    step: int  # image pixels per cell
    cells: int  # feature-map side for one window


@dataclass(frozen=True)
class _Pooled:
    """One feature vector per window on the last axis: (N, rows, cols, features)."""


@dataclass(frozen=True)
class _Meta:
    """Shapes and other values computed on the side (dead once the head is rewritten)."""


_POOLED, _META = _Pooled(), _Meta()


def _attrs(node: Any) -> dict[str, Any]:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


class _Converter:
    """One pass over the graph in its (topological) order, tracking each tensor's kind."""

    def __init__(self, model: Any, input_name: str, output_name: str, layout: str,
                 size: int, stride: int) -> None:
        from onnx import numpy_helper

        self.model, self.size, self.stride = model, size, stride
        self.output_name = output_name
        self.consts: dict[str, np.ndarray] = {
            t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.state: dict[str, Any] = {input_name: _Spatial(layout, 1, size)}
        self.nodes: list[Any] = []
        self.new_inits: list[Any] = []

    def fail(self, node: Any, why: str) -> NotConvertible:
        return NotConvertible(f"{node.op_type} node {node.name or node.output[0]!r}: {why}")

    def const(self, name: str, value: np.ndarray) -> str:
        from onnx import numpy_helper

        name = f"fcn_{name}"
        self.new_inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        self.consts[name] = value
        return name

    def emit(self, op: str, inputs: list[str], outputs: list[str], **attrs: Any) -> None:
        from onnx import helper

        self.nodes.append(helper.make_node(op, inputs, outputs, **attrs))

    def run(self) -> None:
        from onnx import numpy_helper

        for node in self.model.graph.node:
            if node.op_type == "Constant":
                value = _attrs(node).get("value")
                if value is not None:
                    self.consts[node.output[0]] = numpy_helper.to_array(value)
                self.nodes.append(node)
                continue
            kinds = [self.state[i] for i in node.input if i in self.state]
            if not kinds:  # constants and shapes only
                for out in node.output:
                    self.state[out] = _META
                self.nodes.append(node)
            elif any(isinstance(k, _Spatial) for k in kinds):
                self.spatial(node, kinds)
            elif node.op_type == "Shape" or all(k is _META for k in kinds):
                self.state[node.output[0]] = _META
                self.nodes.append(node)
            else:
                self.pooled(node, kinds)

    # -- the trunk ---------------------------------------------------------------------
    def spatial(self, node: Any, kinds: list[Any]) -> None:
        op, attrs, x = node.op_type, _attrs(node), kinds[0]
        if op == "Shape":
            self.state[node.output[0]] = _META
            self.nodes.append(node)
            return
        if any(not isinstance(k, _Spatial) for k in kinds) and op not in _BINARY:
            raise self.fail(node, "mixes window features with other tensors")
        if op in ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"):
            self.pool(node, x, attrs)
            return
        out = x
        if op == "Transpose":
            perm = list(attrs.get("perm", []))
            if x.layout == "NHWC" and perm == [0, 3, 1, 2]:
                out = _Spatial("NCHW", x.step, x.cells)
            elif x.layout == "NCHW" and perm == [0, 2, 3, 1]:
                out = _Spatial("NHWC", x.step, x.cells)
            else:
                raise self.fail(node, f"permutation {perm} of a {x.layout} tensor")
        elif op in ("Conv", "MaxPool", "AveragePool"):
            out = self.window_op(node, x, attrs)
        elif op in _UNARY or op in ("BatchNormalization", "LRN"):
            if op in ("BatchNormalization", "LRN", "PRelu") and x.layout != "NCHW":
                raise self.fail(node, "on a channel-last tensor")
            if op == "PRelu" and node.input[1] in self.consts:
                self.check_broadcast(node, x, self.consts[node.input[1]])
        elif op in _BINARY:
            out = self.binary(node, kinds)
        elif op == "Concat":
            axis = int(attrs.get("axis", 1)) % 4
            if axis != (1 if x.layout == "NCHW" else 3) or len(set(kinds)) != 1:
                raise self.fail(node, "concatenates along a spatial axis or unequal maps")
        elif op in ("Pad", "Resize", "Upsample"):
            raise self.fail(node, "pads or resizes the window")
        else:
            raise self.fail(node, "an operation on feature maps that cannot be shared")
        self.state[node.output[0]] = out
        if op == "Dropout":
            self.emit("Identity", [node.input[0]], [node.output[0]])
        else:
            self.nodes.append(node)

    def window_op(self, node: Any, x: _Spatial, attrs: dict[str, Any]) -> _Spatial:
        op = node.op_type
        if x.layout != "NCHW":
            raise self.fail(node, "on a channel-last tensor")
        pads = list(attrs.get("pads", []))
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
        if any(pads) or auto_pad not in ("NOTSET", "VALID"):
            raise self.fail(node, f"zero padding (pads {pads}, auto_pad {auto_pad}): a "
                            "window's padded border differs from its neighbours' pixels")
        if attrs.get("ceil_mode", 0):
            raise self.fail(node, "ceil_mode rounds up at the window's edge")
        if op == "MaxPool" and len(node.output) > 1 and node.output[1]:
            raise self.fail(node, "returns indices")
        kernel = list(attrs.get("kernel_shape", []))
        if not kernel and op == "Conv" and node.input[1] in self.consts:
            kernel = list(self.consts[node.input[1]].shape[2:])
        strides = list(attrs.get("strides", [1, 1]))
        dilations = list(attrs.get("dilations", [1, 1]))
        if len(kernel) != 2 or len(set(kernel)) != 1 or len(set(strides)) != 1 \
                or len(set(dilations)) != 1:
            raise self.fail(node, f"non-square kernel {kernel}, strides or dilations")
        reach = dilations[0] * (kernel[0] - 1) + 1
        cells = (x.cells - reach) // strides[0] + 1
        if cells < 1:
            raise self.fail(node, f"a {self.size} px window is too small for the network")
        out = _Spatial("NCHW", x.step * strides[0], cells)
        if self.stride % out.step:
            raise self.fail(node, f"the window stride {self.stride} px is not a multiple of "
                            f"the network's stride here ({out.step} px)")
        return out

    def check_broadcast(self, node: Any, x: _Spatial, value: np.ndarray) -> None:
        """A constant operand must be the same at every pixel of a window."""
        shape = value.shape
        spatial = (-1, -2) if x.layout == "NCHW" else (-2, -3)
        if any(len(shape) >= -axis and shape[axis] != 1 for axis in spatial):
            raise self.fail(node, f"a constant of shape {list(shape)} varies across the "
                            "window")

    def binary(self, node: Any, kinds: list[Any]) -> _Spatial:
        spatial = [k for k in kinds if isinstance(k, _Spatial)]
        if len(spatial) == len(kinds) == 2:
            if spatial[0] != spatial[1]:
                raise self.fail(node, "joins feature maps of different geometry")
            return spatial[0]
        others = [i for i in node.input if i not in self.state]
        if len(spatial) != 1 or len(others) != 1 or others[0] not in self.consts:
            raise self.fail(node, "joins window features with a computed tensor")
        self.check_broadcast(node, spatial[0], self.consts[others[0]])
        return spatial[0]

    def pool(self, node: Any, x: _Spatial, attrs: dict[str, Any]) -> None:
        op = node.op_type
        if op.startswith("Reduce"):
            axes = attrs.get("axes")
            if axes is None and len(node.input) > 1 and node.input[1] in self.consts:
                axes = self.consts[node.input[1]].tolist()
            want = {2, 3} if x.layout == "NCHW" else {1, 2}
            if axes is None or {int(a) % 4 for a in axes} != want:
                raise self.fail(node, f"reduces axes {axes}, not the window's height and "
                                "width")
        elif x.layout != "NCHW":
            raise self.fail(node, "on a channel-last tensor")
        source = node.input[0]
        if x.layout == "NHWC":
            self.emit("Transpose", [source], [f"{node.output[0]}_fcn_nchw"], perm=[0, 3, 1, 2])
            source = f"{node.output[0]}_fcn_nchw"
        step = self.stride // x.step
        kind = "MaxPool" if op.endswith("MaxPool") or op == "ReduceMax" else "AveragePool"
        self.emit(kind, [source], [f"{node.output[0]}_fcn_grid"],
                  kernel_shape=[x.cells, x.cells], strides=[step, step])
        self.emit("Transpose", [f"{node.output[0]}_fcn_grid"], [node.output[0]],
                  perm=[0, 2, 3, 1])
        self.state[node.output[0]] = _POOLED

    # -- the head, on every window's pooled features -------------------------------------
    def pooled(self, node: Any, kinds: list[Any]) -> None:
        op, attrs = node.op_type, _attrs(node)
        x, out = node.input[0], node.output[0]
        if op in _FLATTEN or op == "Dropout" or op == "Identity":
            self.emit("Identity", [x], [out])
        elif op in _UNARY:
            self.nodes.append(node)
        elif op in ("Softmax", "LogSoftmax"):
            self.emit(op, [x], [out], axis=3)  # the class axis of (N, rows, cols, classes)
        elif op == "MatMul":
            if node.input[1] not in self.consts or self.consts[node.input[1]].ndim != 2:
                raise self.fail(node, "a head whose weights are not a constant matrix")
            self.nodes.append(node)
        elif op == "Gemm":
            self.gemm(node, attrs)
        elif op == "Conv":  # a 1 x 1 convolution on (N, C, 1, 1) pooled features
            w = self.consts.get(node.input[1])
            if w is None or w.shape[2:] != (1, 1) or attrs.get("group", 1) != 1:
                raise self.fail(node, "a head convolution that is not a constant 1 x 1")
            weights = self.const(f"{out}_w", w.reshape(w.shape[0], -1).T.copy())
            bias = node.input[2] if len(node.input) > 2 and node.input[2] else None
            self.emit("MatMul", [x, weights], [out if bias is None else f"{out}_fcn_xw"])
            if bias is not None:
                self.emit("Add", [f"{out}_fcn_xw", bias], [out])
        elif op in _BINARY:
            for name in node.input:
                if name not in self.state and (name not in self.consts
                                               or self.consts[name].ndim > 2):
                    raise self.fail(node, "a head term that is not a per-class constant")
            self.nodes.append(node)
        elif op == "Concat" and int(attrs.get("axis", 1)) in (1, -1):
            self.emit("Concat", list(node.input), [out], axis=3)
        else:
            raise self.fail(node, "an operation in the head that cannot run per window")
        for name in node.output:
            self.state[name] = _POOLED

    def gemm(self, node: Any, attrs: dict[str, Any]) -> None:
        out = node.output[0]
        b = self.consts.get(node.input[1])
        if attrs.get("transA", 0) or b is None:
            raise self.fail(node, "a head whose weights are not a constant matrix")
        b = b.T if attrs.get("transB", 0) else b
        weights = self.const(f"{out}_w", b.astype(np.float32) * np.float32(attrs.get("alpha", 1.0)))
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        self.emit("MatMul", [node.input[0], weights], [out if c is None else f"{out}_fcn_xw"])
        if c is not None:
            if c not in self.consts:
                raise self.fail(node, "a bias that is not a constant")
            bias = self.const(f"{out}_c", self.consts[c] * np.float32(attrs.get("beta", 1.0)))
            self.emit("Add", [f"{out}_fcn_xw", bias], [out])


def convert(model: Any, *, input_name: str, output_name: str, layout: str, size: int,
            stride: int) -> Any:
    """The fully convolutional form of an ONNX classifier of ``size`` px windows.

    Args:
        model: the per-window ``onnx.ModelProto`` (input (N, size, size, 3) or NCHW).
        input_name, output_name: the graph's input and its class-score output.
        layout: the input layout, ``NHWC`` or ``NCHW``.
        size: window side (the model's input side), px.
        stride: window stride, px.

    Returns:
        An ``onnx.ModelProto`` taking (N, H, W, 3) (or NCHW) of any H and W and returning
        (N, rows, cols, classes) with rows = (H - size) // stride + 1 (likewise cols).

    Raises:
        NotConvertible: naming the first node that prevents it.
    """
    import onnx
    from onnx import helper

    graph = model.graph
    init_names = {t.name for t in graph.initializer}
    extra = [i.name for i in graph.input if i.name not in init_names and i.name != input_name]
    if extra:
        raise NotConvertible(f"the model has other inputs besides {input_name!r}: {extra}")
    converter = _Converter(model, input_name, output_name, layout, size, stride)
    converter.run()
    if converter.state.get(output_name) is not _POOLED:
        raise NotConvertible(f"output {output_name!r} does not come from a global pooling of "
                             "the convolutional trunk followed by a per-window head")
    # Keep only what the class scores need (shape side-computations become dead).
    needed, nodes = {output_name}, []
    for node in reversed(converter.nodes):
        if any(o in needed for o in node.output):
            nodes.append(node)
            needed.update(i for i in node.input if i)
    nodes.reverse()
    inits = [t for t in [*graph.initializer, *converter.new_inits] if t.name in needed]
    source_input = next(i for i in graph.input if i.name == input_name)
    elem = source_input.type.tensor_type.elem_type
    dims: list[Any] = ["batch", "height", "width", 3] if layout == "NHWC" else \
        ["batch", 3, "height", "width"]
    source_output = next((o for o in graph.output if o.name == output_name), None)
    out_elem = source_output.type.tensor_type.elem_type if source_output is not None \
        else onnx.TensorProto.FLOAT
    new_graph = helper.make_graph(
        nodes, f"{graph.name or 'model'}_fcn",
        [helper.make_tensor_value_info(input_name, elem, dims)],
        [helper.make_tensor_value_info(output_name, out_elem,
                                       ["batch", "rows", "cols", "classes"])],
        initializer=inits)
    fcn = helper.make_model(new_graph, opset_imports=list(model.opset_import),
                            producer_name="landuse.windows.fcn")
    fcn.ir_version = max(int(model.ir_version), 4)  # initializers need not be inputs
    helper.set_model_props(fcn, {"landuse:window_size": str(size),
                                 "landuse:stride": str(stride)})
    onnx.checker.check_model(fcn)
    return fcn


def _first_conv(graph: Any, input_name: str, layout: str) -> Any | None:
    """The convolution that reads the model's input directly (through the layout's transpose
    to NCHW at most), or None."""
    def only_reader(name: str) -> Any | None:
        readers = [n for n in graph.node if name in n.input]
        return readers[0] if len(readers) == 1 else None

    node = only_reader(input_name)
    if node is not None and layout == "NHWC":
        if node.op_type != "Transpose" or list(_attrs(node).get("perm", [])) != [0, 3, 1, 2]:
            return None
        node = only_reader(node.output[0])
    return node if node is not None and node.op_type == "Conv" else None


def _fold_preprocessing(graph: Any, pre: PreprocessSpec, input_name: str) -> bool:
    """Fold the channel order and the affine scaling of ``pre`` into the weights and bias
    of the first convolution; False (nothing changed) when the network does not start with
    one it can be folded into. Exact because the trunk has no padding: every input the
    convolution sees is a pixel, never a zero."""
    from onnx import numpy_helper

    conv = _first_conv(graph, input_name, pre.layout)
    consts = {t.name: t for t in graph.initializer}
    if conv is None or _attrs(conv).get("group", 1) != 1 or conv.input[1] not in consts:
        return False
    bias_name = conv.input[2] if len(conv.input) > 2 and conv.input[2] else None
    if bias_name is not None and bias_name not in consts:
        return False
    w = numpy_helper.to_array(consts[conv.input[1]]).astype(np.float64)
    if w.ndim != 4 or w.shape[1] != 3:
        return False
    std = np.asarray(pre.std, dtype=np.float64)
    # x_i = (pixel_i * scale - mean_i) / std_i, so W.x + b = (W * scale / std).pixel + b'
    pixel_w = w * (pre.scale / std)[None, :, None, None]
    bias = np.zeros(w.shape[0]) if bias_name is None else \
        numpy_helper.to_array(consts[bias_name]).astype(np.float64)
    bias = bias - (w * (np.asarray(pre.mean) / std)[None, :, None, None]).sum(axis=(1, 2, 3))
    if pre.channel_order == "BGR":  # the model's channel i is the pixels' channel 2 - i
        pixel_w = pixel_w[:, ::-1]
    graph.initializer.extend([
        numpy_helper.from_array(pixel_w.astype(np.float32), "fcn_pixels_w"),
        numpy_helper.from_array(bias.astype(np.float32), "fcn_pixels_b")])
    inputs = [conv.input[0], "fcn_pixels_w", "fcn_pixels_b"]
    del conv.input[:]
    conv.input.extend(inputs)
    used = {name for node in graph.node for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return True


def take_pixels(fcn: Any, pre: PreprocessSpec, input_name: str) -> Any:
    """``fcn`` (taking the preprocessed tensor ``input_name``) made to take the pixels as
    GDAL reads them, (N, 3, H, W) uint8 red, green, blue, as its input :data:`PIXELS`: the
    bundle's preprocessing (channel order, scale, mean, std, layout) runs inside the model,
    so a band is never copied to float or to channel-last in Python (a quarter of the
    route's time on the bench's small CNN). The channel order and scaling are folded into
    the first convolution where it reads the input (only a cast is left), else they are
    nodes of their own."""
    import onnx
    from onnx import helper, numpy_helper

    graph = fcn.graph
    elem = graph.input[0].type.tensor_type.elem_type
    nodes: list[Any] = []
    x = PIXELS

    def step(op: str, *inputs: str, **attrs: Any) -> None:
        nonlocal x
        out = f"fcn_pixels_{len(nodes)}"
        nodes.append(helper.make_node(op, [x, *inputs], [out], **attrs))
        x = out

    def const(name: str, value: Any) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(value), f"fcn_pixels_{name}"))
        return f"fcn_pixels_{name}"

    if pre.dtype != "uint8":
        step("Cast", to=elem)
    folded = elem == onnx.TensorProto.FLOAT and pre.dtype != "uint8" and \
        _fold_preprocessing(graph, pre, input_name)
    if not folded:
        if pre.channel_order == "BGR":
            step("Gather", const("bgr", np.array([2, 1, 0], np.int64)), axis=1)
        if pre.dtype != "uint8":
            dtype = helper.tensor_dtype_to_np_dtype(elem)
            per_channel = (1, 3, 1, 1)
            if pre.scale != 1:
                step("Mul", const("scale", np.array(pre.scale, dtype)))
            if any(pre.mean):
                step("Sub", const("mean", np.array(pre.mean, dtype).reshape(per_channel)))
            if any(v != 1 for v in pre.std):
                step("Div", const("std", np.array(pre.std, dtype).reshape(per_channel)))
    if pre.layout == "NHWC":
        step("Transpose", perm=[0, 2, 3, 1])
    if not nodes:
        step("Identity")
    nodes[-1].output[0] = input_name
    body = list(graph.node)
    del graph.node[:]
    graph.node.extend([*nodes, *body])
    del graph.input[:]
    graph.input.append(helper.make_tensor_value_info(
        PIXELS, onnx.TensorProto.UINT8, ["batch", 3, "height", "width"]))
    onnx.checker.check_model(fcn)
    return fcn
