"""Capture any ``nn.Module`` as a graph of dyadic neurons and the blocks between them (DESIGN §1b).

A **neuron** is the input (neuron 0), the output of every elementwise activation site of the model's
``forward`` — an activation module, a ``torch.nn.functional`` or ``torch`` call, or a tensor method,
in-place or not — in topological order (neurons ``1..N−1``), and the output (neuron ``N``, the logits,
with no activation). The **block** ``B_k`` of neuron ``k`` is everything computed between the neurons
``P(k)`` it reads and neuron ``k``'s activation site, so that ``s_k = f_k(B_k(s_{P(k)}))``. An
``nn.Sequential`` becomes a chain: ``P(k) = (k−1,)``.

The capture uses ``torch.fx`` symbolic tracing: it records the user's own ``forward`` op by op without
running it on data, keeps the user's modules (so their parameters are trained in place and Linear, Conv
and normalisation stay recognisable), and stops at data-dependent control flow by construction.
``torch.export`` would decompose modules into ATen operations and lose exactly that structure.

Anything the mathematics cannot express is refused with a ``ValueError`` naming the operation and the
line of the model's code: data-dependent control flow, a nonlinearity that is not elementwise (softmax,
attention, a product of two signals), several outputs, an activation as the output.
"""

from __future__ import annotations

import operator
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn
from torch.nn.parallel import DistributedDataParallel

from dualprop.network import WEIGHTED_TYPES, Block, BlockLike, GraphBlock, StepDropout

_ACTIVATION_TYPES: set[type[nn.Module]] = {
    nn.ReLU,
    nn.ReLU6,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Hardsigmoid,
    nn.Hardtanh,
    nn.GELU,
    nn.SiLU,
    nn.ELU,
    nn.CELU,
    nn.SELU,
    nn.Softplus,
    nn.Mish,
    nn.Hardswish,
    nn.Softsign,
}
_BLOCK_TYPES: set[type[nn.Module]] = {
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.MaxPool1d,
    nn.MaxPool2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool1d,
    nn.AdaptiveMaxPool2d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Dropout,
}
# Block modules with a constant Jacobian (an affine map of their input, whatever the point).
_AFFINE_TYPES = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.AvgPool1d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d,
    nn.Flatten,
    nn.Unflatten,
    nn.Identity,
    StepDropout,
)

# Elementwise activation functions, each with its out-of-place form.
_ACTIVATION_FUNCTIONS: dict[Callable[..., Tensor], Callable[..., Tensor]] = {
    F.relu: F.relu,
    torch.relu: torch.relu,
    F.relu_: F.relu,
    torch.relu_: torch.relu,
    F.relu6: F.relu6,
    F.leaky_relu: F.leaky_relu,
    F.leaky_relu_: F.leaky_relu,
    torch.sigmoid: torch.sigmoid,
    F.sigmoid: torch.sigmoid,
    torch.sigmoid_: torch.sigmoid,
    torch.tanh: torch.tanh,
    F.tanh: torch.tanh,
    torch.tanh_: torch.tanh,
    F.hardsigmoid: F.hardsigmoid,
    F.hardtanh: F.hardtanh,
    F.hardtanh_: F.hardtanh,
    F.gelu: F.gelu,
    F.silu: F.silu,
    F.elu: F.elu,
    F.elu_: F.elu,
    F.celu: F.celu,
    F.selu: F.selu,
    torch.selu: torch.selu,
    F.softplus: F.softplus,
    F.mish: F.mish,
    F.hardswish: F.hardswish,
    F.softsign: F.softsign,
}
_ACTIVATION_METHODS = {
    "relu": torch.relu,
    "relu_": torch.relu,
    "sigmoid": torch.sigmoid,
    "sigmoid_": torch.sigmoid,
    "tanh": torch.tanh,
    "tanh_": torch.tanh,
}

# Affine (linear plus constant) operations of signals.
_AFFINE_FUNCTIONS = {
    operator.add,
    operator.sub,
    operator.neg,
    operator.pos,
    operator.getitem,
    torch.add,
    torch.sub,
    torch.neg,
    torch.cat,
    torch.concat,
    torch.stack,
    torch.flatten,
    torch.reshape,
    torch.squeeze,
    torch.unsqueeze,
    torch.transpose,
    torch.permute,
    torch.mean,
    torch.sum,
    F.linear,
    F.conv1d,
    F.conv2d,
    F.avg_pool1d,
    F.avg_pool2d,
    F.adaptive_avg_pool1d,
    F.adaptive_avg_pool2d,
    F.pad,
    getattr,
}
# Products: affine as long as at most one factor is a signal (and a divisor is never one).
_PRODUCT_FUNCTIONS = {operator.mul, operator.truediv, operator.matmul, torch.mul, torch.div, torch.matmul, torch.mm}
# Piecewise-linear or normalising operations: allowed, with a Jacobian that depends on the point.
_POINT_DEPENDENT_FUNCTIONS = {
    F.max_pool1d,
    F.max_pool2d,
    F.adaptive_max_pool1d,
    F.adaptive_max_pool2d,
    torch.max_pool1d,
    torch.max_pool2d,
    F.layer_norm,
    F.group_norm,
}
_AFFINE_METHODS = {
    "view",
    "reshape",
    "flatten",
    "permute",
    "transpose",
    "contiguous",
    "size",
    "dim",
    "unsqueeze",
    "squeeze",
    "mean",
    "sum",
    "add",
    "sub",
    "neg",
    "expand",
    "expand_as",
    "t",
    "view_as",
    "reshape_as",
}
_PRODUCT_METHODS = {"mul", "div", "matmul", "__mul__", "__truediv__"}
_DIVISIONS = {operator.truediv, torch.div, "div", "__truediv__"}
_TORCH_DIR = torch.__file__.rsplit("/", 1)[0]
_NON_ELEMENTWISE = {
    "softmax",
    "log_softmax",
    "softmin",
    "scaled_dot_product_attention",
    "normalize",
    "multi_head_attention_forward",
    "bmm",
    "einsum",
    "baddbmm",
}


def register_activation(module_type: type[nn.Module]) -> type[nn.Module]:
    """Declare a module type elementwise, so that its call sites are neurons. Usable as a decorator."""
    _ACTIVATION_TYPES.add(module_type)
    return module_type


def register_block_module(module_type: type[nn.Module]) -> type[nn.Module]:
    """Declare a module type an affine or piecewise-linear block part (its VJP comes from autograd)."""
    _BLOCK_TYPES.add(module_type)
    return module_type


def _wrapper_chain(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` and each module it wraps in turn (DDP's ``module``, ``torch.compile``'s ``_orig_mod``)."""
    while True:
        yield model
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
            model = model._orig_mod
        else:
            return


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module inside ``DistributedDataParallel`` and ``torch.compile`` wrappers (in any nesting),
    or the model itself. Other wrappers that hide the module (``nn.DataParallel``, FSDP) are refused."""
    *_, model = _wrapper_chain(model)
    if isinstance(model, nn.DataParallel) or type(model).__name__ == "FullyShardedDataParallel":
        raise ValueError(
            f"a model wrapped in {type(model).__name__} cannot be trained by a Learner; "
            f"pass the module itself, or wrap it in DistributedDataParallel"
        )
    return model


def find_ddp(model: nn.Module) -> DistributedDataParallel | None:
    """The ``DistributedDataParallel`` wrapper in a chain of wrappers (DDP, ``torch.compile``), if any."""
    return next((m for m in _wrapper_chain(model) if isinstance(m, DistributedDataParallel)), None)


def forward_module(model: nn.Module) -> nn.Module:
    """The module whose forward a rebuilt graph runs as (see :func:`run_as_forward`): the DDP wrapper if
    there is one, else the plain module (a compiled wrapper's code would not be the rebuilt graph)."""
    return find_ddp(model) or unwrap(model)


def run_as_forward(module: nn.Module, compute: Callable[..., Tensor], *args: Tensor) -> Tensor:
    """Evaluate ``compute(*args)`` as the forward of ``module`` (a plain module or a DDP wrapper).

    The module's (for DDP: its inner module's) ``forward`` is swapped for ``compute`` during the call, so
    forward hooks see a normal forward and a ``DistributedDataParallel`` wrapper prepares its bucketed
    all-reduce for the following ``backward()`` exactly as for a loss.
    """
    inner = module.module if isinstance(module, DistributedDataParallel) else module
    inner.__dict__["forward"] = compute  # an instance attribute, never a registered submodule
    try:
        return module(*args)
    finally:
        del inner.__dict__["forward"]


class _OutOfPlace(nn.Module):
    """An in-place activation module applied to a copy, so the drive it reads stays intact."""

    def __init__(self, activation: nn.Module):
        super().__init__()
        self.activation = activation

    def forward(self, drive: Tensor) -> Tensor:
        return self.activation(drive.clone())


class _FunctionalActivation:
    """``f(a)`` for an activation given as a function or tensor method with its extra arguments."""

    def __init__(self, function: Callable[..., Tensor], args: tuple, kwargs: dict[str, Any]):
        self.function, self.args = function, args
        self.kwargs = {k: v for k, v in kwargs.items() if k != "inplace"}

    def __call__(self, drive: Tensor) -> Tensor:
        return self.function(drive, *self.args, **self.kwargs)


@dataclass
class NeuronGraph:
    """Neurons ``0..N`` and their blocks: ``blocks[k−1] = B_k``, ``parents[k−1] = P(k)``,
    ``activations[k−1] = f_k`` (k < N), ``levels[k]`` the longest path from the input to neuron ``k``."""

    blocks: list[BlockLike]
    activations: list[Callable[[Tensor], Tensor]]
    parents: list[tuple[int, ...]]
    levels: list[int]
    affine: list[bool]
    """Whether each block's Jacobian is constant (it holds only affine operations)."""
    root: fx.GraphModule = field(repr=False)
    activation_nodes: list[fx.Node] = field(repr=False)
    dropouts: list[StepDropout] = field(repr=False)
    norms: list[nn.Module] = field(repr=False)

    def __post_init__(self) -> None:
        self._feed_forward = self._rebuild(None, feed_forward=True)
        self.children: list[list[int]] = [[] for _ in range(self.depth + 1)]
        for k, parents in enumerate(self.parents, start=1):
            for p in parents:
                self.children[p].append(k)

    @property
    def depth(self) -> int:
        """``N``, the number of neurons after the input (the number of blocks)."""
        return len(self.blocks)

    @property
    def is_chain(self) -> bool:
        """Whether every neuron reads exactly the one before it (a layered network)."""
        return all(parents == (k - 1,) for k, parents in enumerate(self.parents, start=1))

    def feed_forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
        """One pass of the whole model: states ``[x, s_1, …, s_N]`` and drives ``[None, a_1, …, a_N]``.

        This is the step's one ordinary forward: normalisation updates its running statistics here and
        every dropout site draws its mask (after :meth:`new_step`)."""
        drives, states = self._feed_forward(x)
        return [x, *states, drives[-1]], [None, *drives]

    def new_step(self) -> None:
        """Forget the dropout masks of the previous step."""
        for dropout in self.dropouts:
            dropout.reset()

    def with_activations(self, replacements: Sequence[nn.Module]) -> fx.GraphModule:
        """The model's forward ``x ↦ logits`` with activation site ``k`` replaced by ``replacements[k−1]``."""
        return self._rebuild(replacements, feed_forward=False)

    def _rebuild(self, replacements: Sequence[nn.Module] | None, feed_forward: bool) -> fx.GraphModule:
        graph = fx.Graph()
        env: dict[fx.Node, fx.Node] = {}
        sites = {node: k for k, node in enumerate(self.activation_nodes)}
        output_value = None
        for node in self.root.graph.nodes:
            if node.op == "output":
                output_value = env[node.args[0]]
                continue
            if node in sites and replacements is not None:
                name = f"dualprop_site_{sites[node]}"
                self.root.add_submodule(name, replacements[sites[node]])
                env[node] = graph.call_module(name, (env[_drive_of(node)],))
            else:
                env[node] = graph.node_copy(node, lambda n: env[n])
        if feed_forward:
            drives = [env[_drive_of(node)] for node in self.activation_nodes] + [output_value]
            graph.output((tuple(drives), tuple(env[node] for node in self.activation_nodes)))
        else:
            graph.output(output_value)
        return fx.GraphModule(self.root, graph)


def capture_graph(model: nn.Module) -> NeuronGraph:
    """Capture ``model`` (unwrapped from DDP / ``torch.compile``) as a :class:`NeuronGraph`.

    Raises ``ValueError`` naming the operation (and the line of the model's code, where known) that the
    dyadic network cannot express.
    """
    model = unwrap(model)
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:  # fx raises TraceError, TypeError, … for constructs it cannot trace
        raise ValueError(
            f"the model's forward cannot be captured as a graph of neurons"
            f"{_error_location(error)}: {_first_line(error)} (data-dependent control flow "
            f"cannot be expressed)"
        ) from None
    root = fx.GraphModule(tracer.root, graph)
    return _Capture(root).neuron_graph()


class _Tracer(fx.Tracer):
    """Symbolic tracer whose leaves are the known block and activation modules."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return (
            type(m) in _ACTIVATION_TYPES or type(m) in _BLOCK_TYPES or super().is_leaf_module(m, module_qualified_name)
        )


class _Capture:
    """One capture: classify the nodes of the traced graph, then cut it into neurons and blocks."""

    def __init__(self, root: fx.GraphModule):
        self.root = root
        self.graph = root.graph
        self.nodes = list(self.graph.nodes)
        self.dropouts: list[StepDropout] = []
        self.norms: list[nn.Module] = []

    def neuron_graph(self) -> NeuronGraph:
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError(
                f"the model's forward takes {len(placeholders)} inputs; a Learner needs exactly one (the batch)"
            )
        (output,) = [n for n in self.nodes if n.op == "output"]
        if not isinstance(output.args[0], fx.Node):
            raise ValueError(
                f"the model returns several outputs{_location(output)}; it must return one tensor of logits"
            )
        signals = self._signals(placeholders[0])
        activation_nodes = [n for n in self.nodes if n in signals and self._classify(n, signals)]
        self._make_dropouts_per_step(signals)
        activations = [self._out_of_place(node, k) for k, node in enumerate(activation_nodes)]
        self.graph.lint()
        self.root.recompile()
        logits = output.args[0]
        if logits in activation_nodes:
            raise ValueError(
                f"the model ends with activation {_describe(logits, self.root)}; the last block "
                f"must output logits, so remove the final activation"
            )
        neurons = {placeholders[0]: 0, **{node: k for k, node in enumerate(activation_nodes, start=1)}}
        neurons[logits] = len(activation_nodes) + 1 if logits not in neurons else neurons[logits]
        if neurons[logits] == 0:
            raise ValueError("the model returns its input unchanged; it has no block to train")
        blocks, parents, affine = [], [], []
        for node in activation_nodes + [logits]:
            drive = _drive_of(node) if node is not logits else logits
            if drive in neurons and node is not logits:
                previous = (
                    "at the start" if neurons[drive] == 0 else f"right after activation {_describe(drive, self.root)}"
                )
                raise ValueError(
                    f"{_describe(node, self.root)} is an activation with no block before it "
                    f"({previous}); every activation must follow a Linear/Conv block"
                )
            block, block_parents, is_affine = self._block(drive, neurons)
            blocks.append(block)
            parents.append(block_parents)
            affine.append(is_affine)
        levels = [0]
        for block_parents in parents:
            levels.append(1 + max(levels[p] for p in block_parents))
        return NeuronGraph(
            blocks, activations, parents, levels, affine, self.root, activation_nodes, self.dropouts, self.norms
        )

    def _signals(self, source: fx.Node) -> set[fx.Node]:
        """The nodes whose value depends on the input."""
        signals = {source}
        for node in self.nodes:
            if node.op != "output" and any(a in signals for a in node.all_input_nodes):
                signals.add(node)
        return signals

    def _classify(self, node: fx.Node, signals: set[fx.Node]) -> bool:
        """True for an activation site; False for a supported block operation; ``ValueError`` otherwise."""
        if node.op == "placeholder":
            return False
        if node.op == "call_module":
            module = self.root.get_submodule(node.target)
            if type(module) in _ACTIVATION_TYPES:
                return True
            if type(module) in _BLOCK_TYPES:
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    self.norms.append(module)
                return False
            kind = type(module).__name__
            raise ValueError(
                f"module {node.target} ({kind}){_location(node)} is neither a supported block "
                f"part (Linear, Conv, pooling, Flatten, normalisation, Dropout) nor an "
                f"elementwise activation; if it acts elementwise, declare it with "
                f"dualprop.register_activation({kind})"
            )
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        if (
            node.op == "call_function"
            and node.target in _ACTIVATION_FUNCTIONS
            or node.op == "call_method"
            and node.target in _ACTIVATION_METHODS
        ):
            extra = [a for a in list(node.args[1:]) + list(node.kwargs.values()) if isinstance(a, fx.Node)]
            if extra:
                raise ValueError(
                    f"activation {name}{_location(node)} takes a tensor argument besides its "
                    f"input; only elementwise functions of one signal are neurons"
                )
            return False if _drive_of(node) not in signals else True
        if name in _NON_ELEMENTWISE:
            raise ValueError(
                f"operation {name}{_location(node)} is a nonlinearity that is not elementwise; "
                f"a dyadic network can only express elementwise activations between blocks"
            )
        known = (
            node.target in _AFFINE_FUNCTIONS | _PRODUCT_FUNCTIONS | _POINT_DEPENDENT_FUNCTIONS
            if node.op == "call_function"
            else node.target in _AFFINE_METHODS | _PRODUCT_METHODS
        )
        if node.op == "call_function" and node.target is F.dropout:
            return False
        if not known:
            raise ValueError(
                f"operation {name}{_location(node)} is not an elementwise activation nor an "
                f"affine or piecewise-linear block operation that dualprop can express"
            )
        if node.target in _PRODUCT_FUNCTIONS or node.target in _PRODUCT_METHODS:
            operands = [a for a in node.args if isinstance(a, fx.Node) and a in signals]
            divisor_is_signal = node.target in _DIVISIONS and len(node.args) > 1 and node.args[1] in signals
            if len(operands) > 1 or divisor_is_signal:
                raise ValueError(
                    f"operation {name}{_location(node)} multiplies or divides two signals; a "
                    f"block must be affine or piecewise linear in its inputs"
                )
        return False

    def _make_dropouts_per_step(self, signals: set[fx.Node]) -> None:
        """Route every dropout site through a :class:`StepDropout` (one mask per step)."""
        for node in self.nodes:
            if node not in signals:
                continue
            if node.op == "call_module" and type(self.root.get_submodule(node.target)) is nn.Dropout:
                source = self.root.get_submodule(node.target)
                dropout = StepDropout(source.p, source=source)
            elif node.op == "call_function" and node.target is F.dropout:
                p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
                training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
                dropout = StepDropout(p, training=bool(training))
            else:
                continue
            name = f"dualprop_dropout_{len(self.dropouts)}"
            self.root.add_submodule(name, dropout)
            self.dropouts.append(dropout)
            with self.graph.inserting_before(node):
                replacement = self.graph.call_module(name, (node.args[0],))
            replacement.meta = node.meta
            node.replace_all_uses_with(replacement)
            self.graph.erase_node(node)
        self.nodes = list(self.graph.nodes)

    def _out_of_place(self, node: fx.Node, k: int) -> Callable[[Tensor], Tensor]:
        """Neuron ``k+1``'s activation as an out-of-place callable; the site itself made out-of-place."""
        if node.op == "call_module":
            module = self.root.get_submodule(node.target)
            if not getattr(module, "inplace", False):
                return module
            name = f"dualprop_activation_{k}"
            self.root.add_submodule(name, _OutOfPlace(module))
            node.target = name
            return self.root.get_submodule(name)
        if node.op == "call_function":
            function = _ACTIVATION_FUNCTIONS[node.target]
            node.target = function
        else:
            function = _ACTIVATION_METHODS[node.target]
            node.op, node.target = "call_function", function
        node.kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
        return _FunctionalActivation(function, tuple(node.args[1:]), dict(node.kwargs))

    def _block(self, drive: fx.Node, neurons: dict[fx.Node, int]) -> tuple[nn.Module, tuple[int, ...], bool]:
        """The block computing ``drive`` from its parent neurons, its parents and whether it is affine."""
        members: set[fx.Node] = set()
        parents: set[fx.Node] = set()
        stack = [drive]
        while stack:
            node = stack.pop()
            if node in neurons and node is not drive or node.op == "placeholder":
                parents.add(node)
                continue
            if node not in members:
                members.add(node)
                stack.extend(node.all_input_nodes)
        ordered_parents = sorted(parents, key=lambda n: neurons[n])
        ordered = [n for n in self.nodes if n in members]
        affine = all(self._is_affine(n) for n in ordered)
        modules = self._chain_modules(ordered, ordered_parents)
        if modules is not None:
            return Block(modules), (neurons[ordered_parents[0]],), affine
        graph = fx.Graph()
        env = {p: graph.placeholder(f"s_{neurons[p]}") for p in ordered_parents}
        for node in ordered:
            env[node] = graph.node_copy(node, lambda n: env[n])
        graph.output(env[drive])
        weighted: list[nn.Module] = []
        for node in ordered:
            if node.op == "call_module":
                module = self.root.get_submodule(node.target)
                if isinstance(module, WEIGHTED_TYPES) and all(module is not w for w in weighted):
                    weighted.append(module)
        return (
            GraphBlock(fx.GraphModule(self.root, graph), weighted),
            tuple(neurons[p] for p in ordered_parents),
            affine,
        )

    def _chain_modules(self, ordered: list[fx.Node], parents: list[fx.Node]) -> list[nn.Module] | None:
        """The modules of a block that is a plain chain of one-input module calls, else None."""
        if len(parents) != 1:
            return None
        previous = parents[0]
        for node in ordered:
            if node.op != "call_module" or node.args != (previous,) or node.kwargs:
                return None
            previous = node
        return [self.root.get_submodule(node.target) for node in ordered]

    def _is_affine(self, node: fx.Node) -> bool:
        if node.op == "call_module":
            return isinstance(self.root.get_submodule(node.target), _AFFINE_TYPES)
        if node.op == "call_function":
            return node.target in _AFFINE_FUNCTIONS or node.target in _PRODUCT_FUNCTIONS
        if node.op == "call_method":
            return node.target in _AFFINE_METHODS or node.target in _PRODUCT_METHODS
        return True


def _drive_of(node: fx.Node) -> fx.Node:
    """The input of an activation site."""
    return node.args[0] if node.args else node.kwargs["input"]


def _describe(node: fx.Node, root: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(root.get_submodule(node.target)).__name__})"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{name}{_location(node)}"


def _location(node: fx.Node) -> str:
    """`` at FILE:LINE (code)`` of the model's own line that created ``node`` (the innermost frame outside
    torch), and the user's module it lies in with a hint to declare that module elementwise."""
    frames = []
    lines = (node.stack_trace or "").strip().splitlines()
    for header, code in zip(lines, lines[1:]):
        header = header.strip()
        if header.startswith("File "):
            parts = header.split(", ")
            file = parts[0][len("File ") :].strip('"')
            if not file.startswith(_TORCH_DIR):
                frames.append(f" at {file}:{parts[1].replace('line ', '')} ({code.strip()})")
    where = frames[-1] if frames else ""
    stack = node.meta.get("nn_module_stack") or {}
    if stack:
        path, kind = list(stack.values())[-1]
        kind = kind if isinstance(kind, type) else None
        if kind is not None and not kind.__module__.startswith("torch."):
            where += (
                f" inside module {path} ({kind.__name__}; if it acts elementwise, declare it with "
                f"dualprop.register_activation({kind.__name__}))"
            )
    return where


def _error_location(error: BaseException) -> str:
    """`` at FILE:LINE`` of the last frame of a tracing error that lies outside torch."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    user = [f for f in frames if not f.filename.endswith("dualprop/graph.py")]
    if not user:
        return ""
    frame = user[-1]
    return f" at {frame.filename}:{frame.lineno} ({(frame.line or '').strip()})"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
