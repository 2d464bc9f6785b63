"""Capture any ``nn.Module`` as a graph of dyadic neurons and the blocks between them.

A **neuron** is the input (neuron 0), the output of every elementwise activation site of the model's
``forward`` — an activation module, a ``torch.nn.functional`` or ``torch`` call, or a tensor method,
in-place or not —, every **identity neuron** (``f = id``) and the output (neuron ``N``, the logits, with no
activation), in topological order. An identity neuron sits wherever a value that is not an activation
output is read by two or more blocks (the residual stream of a pre-activation ResNet, a ConvNeXt, Mixer
or transformer; a MobileNet's linear bottleneck; DenseNet's features), so that no block recomputes
another's work, and wherever the model calls :func:`neuron`.

The **block** ``B_k`` of neuron ``k`` is everything computed between the neurons ``P(k)`` it reads and
neuron ``k``'s activation site, so that ``s_k = f_k(B_k(s_{P(k)}))``: any function autograd can
differentiate — Linear, Conv, pooling, reshapes, skip additions, concatenation, normalisation, dropout,
softmax and attention, products of signals (squeeze-excitation gates, GLU), embeddings of integer token
ids, layer scale, stochastic depth. An ``nn.Sequential`` becomes a chain: ``P(k) = (k−1,)``. A block
whose operations are all affine in its inputs (``affine``) has a constant Jacobian.

Shapes are not signals: ``x.shape``, ``size()``, ``dim()`` and arithmetic or comparisons on them
(``c // 2``, ``torch._assert(x.shape[1] == 3, …)``), and tensors made from shapes alone (``new_empty``,
``zeros_like``, ``arange``), are constants of the step. Random draws of the model's code (dropout,
stochastic depth) are made once per step (:class:`dualprop.blocks.StepDropout`,
:class:`dualprop.blocks.StepRandom`), as are functional batch-normalisation updates.

The capture uses ``torch.fx`` symbolic tracing: it records the user's own ``forward`` op by op without
running it on data, keeps the user's modules (so their parameters are trained in place and Linear, Conv
and normalisation stay recognisable), and stops at data-dependent control flow by construction. It
records the model as it is in one mode: :func:`mode_key` tells when a model's modes or settings (a
drop probability, ``training`` flags read by ``forward``) have changed so that the graph is captured again.

What each kind of operation is (activation, affine, shape, random draw, not differentiable) is listed in
:mod:`dualprop.operations`; the wrappers a model may come in are handled by :mod:`dualprop.wrappers`.

What is refused, with a ``ValueError`` naming the operation and the line of the model's code: control
flow on tensor values, operations that are not differentiable (``argmax``, rounding, ``.item()``),
several outputs, an activation as the output, and modules declared with :func:`register_activation` that
have parameters or are not elementwise.
"""

from __future__ import annotations

import inspect
import operator
import os
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, fx, nn

from dualprop.blocks import (
    WEIGHTED_TYPES,
    Block,
    BlockLike,
    FunctionalBatchNorm,
    GraphBlock,
    StepDropout,
    StepRandom,
    StepValue,
)
from dualprop.operations import (
    ACTIVATION_FUNCTIONS,
    ACTIVATION_METHODS,
    ACTIVATION_TYPES,
    AFFINE_FUNCTIONS,
    AFFINE_METHODS,
    AFFINE_TYPES,
    BLOCK_TYPES,
    BUILTIN_ACTIVATION_TYPES,
    DIVISIONS,
    DROPOUT_FUNCTIONS,
    DROPOUT_MODULES,
    NOT_DIFFERENTIABLE,
    PRODUCT_FUNCTIONS,
    PRODUCT_METHODS,
    RANDOM_FUNCTIONS,
    RANDOM_METHODS,
    MethodCall,
    neuron,
    reads_metadata_only,
    register_activation,
    register_block_module,
)
from dualprop.wrappers import unwrap

__all__ = [
    "NeuronGraph",
    "capture_graph",
    "is_identity",
    "mode_key",
    "traced_modules",
    "neuron",
    "register_activation",
    "register_block_module",
]


_TORCH_DIR = os.path.dirname(torch.__file__) + os.sep


def traced_modules(model: nn.Module) -> list[nn.Module]:
    """The modules whose ``forward`` the capture records op by op (the others run as one call, reading their
    mode and settings when they run): what a capture depends on besides the model's code."""
    tracer = _Tracer()
    return [m for name, m in model.named_modules() if not tracer.is_leaf_module(m, name)]


def mode_key(modules: Sequence[nn.Module]) -> tuple:
    """The ``training`` flag and plain settings (numbers, strings, flags such as a drop probability) of the
    :func:`traced_modules` of a model: equal keys give the same graph."""
    return tuple(
        tuple((k, v) for k, v in m.__dict__.items() if k[:1] != "_" and type(v) in _SETTING_TYPES) for m in modules
    )


_SETTING_TYPES = (bool, int, float, str, type(None))


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


def is_identity(activation: Callable[[Tensor], Tensor]) -> bool:
    """Whether an activation of a :class:`NeuronGraph` is the identity of an identity neuron."""
    return isinstance(activation, _FunctionalActivation) and activation.function is neuron


@dataclass
class NeuronGraph:
    """Neurons ``0..N`` and their blocks: ``blocks[k−1] = B_k``, ``parents[k−1] = P(k)``,
    ``activations[k−1] = f_k`` (k < N; the identity for an identity neuron), ``levels[k]`` the longest path
    from the input to neuron ``k``."""

    blocks: list[BlockLike]
    activations: list[Callable[[Tensor], Tensor]]
    parents: list[tuple[int, ...]]
    levels: list[int]
    affine: list[bool]
    """Whether each block's Jacobian is constant (it holds only affine operations)."""
    root: fx.GraphModule = field(repr=False)
    activation_nodes: list[fx.Node] = field(repr=False)
    draws: list[nn.Module] = field(repr=False)
    """The per-step random draws (dropout masks, stochastic depth) to forget at each new step."""
    norms: list[nn.Module] = field(repr=False)
    token_inputs: bool = False
    """Whether the input holds integer ids that only embeddings read (a language model's tokens)."""
    declared: list[int] = field(default_factory=list, repr=False)
    """The neurons whose activation is a module type declared with :func:`register_activation`."""
    traced: list[nn.Module] = field(default_factory=list, repr=False)
    """The model's :func:`traced_modules`."""
    mode: tuple = field(default=(), repr=False)
    """Their :func:`mode_key` when the model was captured."""

    def current_mode(self) -> tuple:
        """The :func:`mode_key` of the model now (it differs from :attr:`mode` after ``train()``/``eval()`` or
        a change of a setting its ``forward`` reads)."""
        return mode_key(self.traced)

    def __post_init__(self) -> None:
        self._feed_forward = self._rebuild(None, feed_forward=True)
        self.children: list[list[int]] = [[] for _ in range(self.depth + 1)]
        for k, parents in enumerate(self.parents, start=1):
            for p in parents:
                self.children[p].append(k)
        self._declared_checked = not self.declared

    @property
    def depth(self) -> int:
        """``N``, the number of neurons after the input (the number of blocks)."""
        return len(self.blocks)

    @property
    def is_chain(self) -> bool:
        """Whether every neuron reads exactly the one before it (a layered network)."""
        return all(parents == (k - 1,) for k, parents in enumerate(self.parents, start=1))

    @property
    def identity_neurons(self) -> list[int]:
        """The hidden neurons with ``f = id``."""
        return [k for k, f in enumerate(self.activations, start=1) if is_identity(f)]

    def feed_forward(self, x: Tensor) -> tuple[list[Tensor], list[Tensor | None]]:
        """One pass of the whole model: states ``[x, s_1, …, s_N]`` and drives ``[None, a_1, …, a_N]``.

        This is the step's one ordinary forward: normalisation updates its running statistics here and
        every dropout site and random draw draws its value (after :meth:`new_step`)."""
        drives, states = self._feed_forward(x)
        if not self._declared_checked:
            self._check_declared(drives)
        return [x, *states, drives[-1]], [None, *drives]

    def new_step(self) -> None:
        """Forget the dropout masks and random draws of the previous step."""
        for draw in self.draws:
            draw.reset()

    def with_activations(self, replacements: Sequence[nn.Module]) -> fx.GraphModule:
        """The model's forward ``x ↦ logits`` with activation site ``k`` replaced by ``replacements[k−1]``."""
        return self._rebuild(replacements, feed_forward=False)

    def _check_declared(self, drives: Sequence[Tensor]) -> None:
        """Refuse a declared activation that is not elementwise, found on the first step's drives: an
        elementwise ``f`` gives the same output twice, of its input's shape, and moving one entry of its
        input moves that entry of its output only."""
        with torch.no_grad():
            for k in self.declared:
                drive = drives[k - 1][:1]
                activation = self.activations[k - 1]
                output = activation(drive)
                elementwise = output.shape == drive.shape and torch.equal(output, activation(drive))
                generator = torch.Generator().manual_seed(k)
                for index in torch.randint(drive.numel(), (3,), generator=generator).tolist():
                    if not elementwise:
                        break
                    moved = drive.clone()
                    moved.view(-1)[index] += 1e-2 * (1.0 + moved.view(-1)[index].abs())
                    change = (activation(moved) - output).view(-1).abs()
                    change[index] = 0.0
                    elementwise = bool(change.max() <= 1e-6 * (1.0 + output.abs().max()))
                if not elementwise:
                    node = self.activation_nodes[k - 1]
                    raise ValueError(
                        f"{_describe(node, self.root)} is declared an activation but is not elementwise (or not "
                        f"deterministic): each output entry must depend on its own input entry alone. Do not "
                        f"declare it with register_activation; it is then a part of its block"
                    )
        self._declared_checked = True

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
    """Capture ``model`` (unwrapped from DDP / ``torch.compile``) in its current mode as a
    :class:`NeuronGraph`.

    Optional arguments of ``forward`` (those with defaults) are captured at their defaults. Raises
    ``ValueError`` naming the operation (and the line of the model's code, where known) that the dyadic
    network cannot express.
    """
    model = unwrap(model)
    tracer = _Tracer()
    try:
        graph = tracer.trace(model, concrete_args=_defaults(model))
    except Exception as error:  # fx raises TraceError, TypeError, … for constructs it cannot trace
        if "control flow" in str(error):
            what = "it branches on tensor values (control flow on values cannot be expressed)"
        else:
            what = f"{_first_line(error)} (data-dependent control flow cannot be expressed)"
        raise ValueError(
            f"the model's forward cannot be captured as a graph of neurons{_error_location(error)}: {what}"
        ) from None
    root = fx.GraphModule(tracer.root, graph)
    result = _Capture(root, type(model).forward).neuron_graph()
    result.traced = traced_modules(model)
    result.mode = mode_key(result.traced)
    return result


def _defaults(model: nn.Module) -> dict[str, Any] | None:
    """The optional arguments of ``model.forward`` with their defaults (captured as constants)."""
    try:
        parameters = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    defaults = {p.name: p.default for p in parameters[1:] if p.kind in kinds and p.default is not p.empty}
    return defaults or None


class _Tracer(fx.Tracer):
    """Symbolic tracer whose leaves are the known block and activation modules (and torch's own)."""

    def __init__(self) -> None:
        super().__init__()
        self.record_stack_traces = True
        self.proxy_buffer_attributes = True  # a buffer sliced by a shape (a causal mask) stays in the graph

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return type(m) in ACTIVATION_TYPES or type(m) in BLOCK_TYPES or super().is_leaf_module(m, module_qualified_name)


class _Capture:
    """One capture: classify the nodes of the traced graph, then cut it into neurons and blocks."""

    def __init__(self, root: fx.GraphModule, model_forward: Callable[..., Any] | None = None):
        self.root = root
        self.model_forward = model_forward
        self.graph = root.graph
        self.draws: list[nn.Module] = []
        self.norms: list[nn.Module] = []
        self.recorders: dict[fx.Node, str] = {}
        self._drop_specialised_arguments()
        self.nodes = list(self.graph.nodes)

    def _drop_specialised_arguments(self) -> None:
        """Remove the placeholders of optional arguments captured at their defaults (and fx's checks of them)."""
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        for node in placeholders[1:]:
            if not node.args:  # no default: a second input the batch cannot fill
                continue
            for user in list(node.users):
                if user.op == "call_function" and getattr(user.target, "__name__", "").startswith("_assert_is"):
                    self.graph.erase_node(user)
            if not node.users:
                self.graph.erase_node(node)

    def neuron_graph(self) -> NeuronGraph:
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError(
                f"the model's forward takes {len(placeholders)} inputs without defaults; a Learner needs "
                f"exactly one (the batch)"
            )
        (output,) = [n for n in self.nodes if n.op == "output"]
        if not isinstance(output.args[0], fx.Node):
            raise ValueError(
                f"the model returns several outputs{_location(output) or self._forward_location()}; it must "
                f"return one tensor of logits"
            )
        source = placeholders[0]
        signals = self._signals(source)
        self._make_draws_per_step(signals)
        signals = self._signals(source)
        activation_nodes = [n for n in self.nodes if n in signals and self._classify(n, signals)]
        activation_nodes = self._drop_redundant_markers(activation_nodes)
        logits = output.args[0]
        activation_nodes = self._place_identity_neurons(source, activation_nodes, logits, signals)
        activation_nodes = self._place_join_neurons(source, activation_nodes, logits, signals)
        declared = [
            k
            for k, node in enumerate(activation_nodes, start=1)
            if node.op == "call_module" and type(self.root.get_submodule(node.target)) not in BUILTIN_ACTIVATION_TYPES
        ]
        activations = [self._out_of_place(node, k) for k, node in enumerate(activation_nodes)]
        self.graph.lint()
        self.root.recompile()
        if logits in activation_nodes:
            raise ValueError(
                f"the model ends with activation {_describe(logits, self.root)}; the last block "
                f"must output logits, so remove the final activation"
            )
        neurons = {source: 0, **{node: k for k, node in enumerate(activation_nodes, start=1)}}
        neurons[logits] = len(activation_nodes) + 1 if logits not in neurons else neurons[logits]
        if neurons[logits] == 0:
            raise ValueError("the model returns its input unchanged; it has no block to train")
        blocks, parents, affine = [], [], []
        for node in [*activation_nodes, logits]:
            drive = _drive_of(node) if node is not logits else logits
            if drive in neurons and node is not logits:
                previous = (
                    "at the start" if neurons[drive] == 0 else f"right after activation {_describe(drive, self.root)}"
                )
                raise ValueError(
                    f"{_describe(node, self.root)} is an activation with no block before it "
                    f"({previous}); every activation must follow a block (a Linear or Conv layer, say)"
                )
            block, block_parents, is_affine = self._block(drive, neurons, signals)
            blocks.append(block)
            parents.append(block_parents)
            affine.append(is_affine)
        self._record_reads()
        levels = [0]
        for block_parents in parents:
            levels.append(1 + max(levels[p] for p in block_parents))
        return NeuronGraph(
            blocks,
            activations,
            parents,
            levels,
            affine,
            self.root,
            activation_nodes,
            self.draws,
            self.norms,
            token_inputs=self._reads_token_ids(source),
            declared=declared,
        )

    def _forward_location(self) -> str:
        """`` at FILE:LINE (def forward…)`` of the traced model's ``forward``, where its source can be found."""
        try:
            file = inspect.getsourcefile(self.model_forward)  # type: ignore[arg-type]
            lines, line = inspect.getsourcelines(self.model_forward)  # type: ignore[arg-type]
        except (OSError, TypeError, AttributeError):
            return ""
        return f" at {file}:{line} ({lines[0].strip()})" if file else ""

    def _signals(self, source: fx.Node) -> set[fx.Node]:
        """The nodes whose value depends on the input's values. A tensor's metadata (shape, dtype, device)
        and everything computed from metadata alone are constants of the step, not signals."""
        signals = {source}
        for node in self.nodes:
            if node.op == "output" or not any(a in signals for a in node.all_input_nodes):
                continue
            if not reads_metadata_only(node):
                signals.add(node)
        return signals

    def _reads_token_ids(self, source: fx.Node) -> bool:
        """Whether the input is read by embeddings only (apart from its metadata)."""
        readers = [user for user in source.users if not reads_metadata_only(user)]

        def embeds(node: fx.Node) -> bool:
            if node.op == "call_module":
                return isinstance(self.root.get_submodule(node.target), nn.Embedding)
            return node.op == "call_function" and node.target is F.embedding

        return bool(readers) and all(embeds(user) for user in readers)

    def _classify(self, node: fx.Node, signals: set[fx.Node]) -> bool:
        """True for an activation site; False for a block operation; ``ValueError`` for what is refused."""
        if node.op == "placeholder":
            return False
        if node.op == "call_module":
            module = self.root.get_submodule(node.target)
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, FunctionalBatchNorm)):
                self.norms.append(module)
            if type(module) not in ACTIVATION_TYPES:
                return False
            parameters = [name for name, _ in module.named_parameters()]
            if parameters:
                raise ValueError(
                    f"module {node.target} ({type(module).__name__}){_location(node) or _defined_at(module)} "
                    f"is declared an activation "
                    f"but has parameters ({', '.join(parameters)}); an activation is a fixed elementwise "
                    f"function. Do not declare it with register_activation: its parameters are then "
                    f"trained as part of its block"
                )
            return True
        name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
        if (
            node.op == "call_function"
            and node.target in ACTIVATION_FUNCTIONS
            or node.op == "call_method"
            and node.target in ACTIVATION_METHODS
        ):
            extra = [a for a in list(node.args[1:]) + list(node.kwargs.values()) if isinstance(a, fx.Node)]
            if extra:
                return False  # an elementwise function of two signals: a block operation
            return _drive_of(node) in signals
        if name in NOT_DIFFERENTIABLE:
            raise ValueError(
                f"operation {name}{_location(node)} is not differentiable: a signal passed through it "
                f"cannot carry feedback, so a block must be a differentiable function of its inputs"
            )
        return False

    def _make_draws_per_step(self, signals: set[fx.Node]) -> None:
        """Route every dropout site through a :class:`StepDropout` (one mask per step), every other random
        draw through a :class:`StepRandom` (one draw per step), and every functional batch normalisation
        through a :class:`FunctionalBatchNorm` (running statistics updated once per step)."""
        for node in list(self.graph.nodes):
            replacement_module: nn.Module | None = None
            arguments: tuple = (node.args[0],) if node.args else ()
            kwargs: dict[str, Any] = {}
            if node.op == "call_module" and type(self.root.get_submodule(node.target)) in DROPOUT_MODULES:
                source = self.root.get_submodule(node.target)
                if node not in signals:
                    continue
                replacement_module = StepDropout(source.p, source=source, channelwise=DROPOUT_MODULES[type(source)])
            elif node.op == "call_function" and node.target in DROPOUT_FUNCTIONS:
                if node not in signals:
                    continue
                p = node.kwargs.get("p", node.args[1] if len(node.args) > 1 else 0.5)
                training = node.kwargs.get("training", node.args[2] if len(node.args) > 2 else True)
                replacement_module = StepDropout(p, training=bool(training), channelwise=DROPOUT_FUNCTIONS[node.target])
            elif (node.op == "call_function" and node.target in RANDOM_FUNCTIONS) or (
                node.op == "call_method" and node.target in RANDOM_METHODS
            ):
                if node in signals:
                    continue  # a draw from a signal's values: refused as not differentiable, where it matters
                method = node.target if node.op == "call_method" else None
                draw = node.target if method is None else MethodCall(method)
                replacement_module = StepRandom(draw)
                arguments, kwargs = tuple(node.args), dict(node.kwargs)
            elif node.op == "call_function" and node.target is F.batch_norm:
                replacement_module = FunctionalBatchNorm()
                arguments, kwargs = tuple(node.args), dict(node.kwargs)
            else:
                continue
            name = f"dualprop_step_{sum(1 for n in self.graph.nodes if n.op == 'call_module')}"
            self.root.add_submodule(name, replacement_module)
            if not isinstance(replacement_module, FunctionalBatchNorm):  # a norm is collected with the others
                self.draws.append(replacement_module)
            with self.graph.inserting_before(node):
                replacement = self.graph.call_module(name, arguments, kwargs)
            replacement.meta = node.meta
            node.replace_all_uses_with(replacement)
            if node.op == "call_method" and isinstance(node.args[0], fx.Node):
                _read_after_from(node.args[0], replacement)  # `mask.bernoulli_(p)` drew into `mask`
            self.graph.erase_node(node)
        self.nodes = list(self.graph.nodes)

    def _drop_redundant_markers(self, activation_nodes: list[fx.Node]) -> list[fx.Node]:
        """A :func:`neuron` marker on what already is a neuron (the input, an activation output) marks
        nothing: it is removed."""
        neurons = {n for n in self.nodes if n.op == "placeholder"}
        kept = []
        for node in activation_nodes:
            if node.op == "call_function" and node.target is neuron and _drive_of(node) in neurons:
                node.replace_all_uses_with(_drive_of(node))
                self.graph.erase_node(node)
                continue
            neurons.add(node)
            kept.append(node)
        self.nodes = list(self.graph.nodes)
        return kept

    def _place_identity_neurons(
        self, source: fx.Node, activation_nodes: list[fx.Node], logits: fx.Node, signals: set[fx.Node]
    ) -> list[fx.Node]:
        """Insert an identity neuron after every signal that two or more blocks would otherwise each
        compute: where the paths to the blocks that read it part (no single reader carries it to all of
        them), repeated until no signal belongs to two blocks."""
        neurons = {source, *activation_nodes}
        while True:
            drives = [_drive_of(n) for n in activation_nodes] + [logits]
            membership: dict[fx.Node, set[int]] = {}
            for k, drive in enumerate(drives):
                for node in _block_members(drive, neurons, signals):
                    membership.setdefault(node, set()).add(k)
            shared = [
                node
                for node, blocks in membership.items()
                if len(blocks) > 1
                and node in signals
                and node is not logits
                and not any(membership.get(user, set()) >= blocks for user in node.users if user not in neurons)
            ]
            # a tuple (``chunk``, ``split``) is no tensor to hold in a neuron: its input is marked instead
            shared = list(dict.fromkeys(_tensor_source(node, neurons, signals) for node in shared))
            shared = [node for node in shared if node is not None]
            if not shared:
                break
            for node in shared:
                neurons.add(self._mark_neuron(node, signals))
            self.nodes = list(self.graph.nodes)
            activation_nodes = [n for n in self.nodes if n in neurons and n is not source]
        return activation_nodes

    def _mark_neuron(self, node: fx.Node, signals: set[fx.Node]) -> fx.Node:
        """Insert an identity neuron (a :func:`neuron` marker) after ``node``, read by all of ``node``'s readers."""
        with self.graph.inserting_after(node):
            marker = self.graph.call_function(neuron, (node,))
        marker.meta = dict(node.meta)
        node.replace_all_uses_with(marker, delete_user_cb=lambda user: user is not marker)
        signals.add(marker)
        return marker

    def _place_join_neurons(
        self, source: fx.Node, activation_nodes: list[fx.Node], logits: fx.Node, signals: set[fx.Node]
    ) -> list[fx.Node]:
        """Insert an identity neuron where the inputs of a block with several parents join, if all of the
        block's nonlinear work comes after the join (a pre-LN transformer's residual sum before its
        attention, DenseNet's concatenation before its batch norm): the feedback to every parent then
        differentiates the nonlinear part once, not once per parent."""
        neurons = {source, *activation_nodes}
        for node in [*activation_nodes, logits]:
            drive = node if node is logits else _drive_of(node)
            members = _block_members(drive, neurons, signals)
            parents = {a for n in members for a in n.all_input_nodes if a in neurons}
            if len(parents) < 2 or all(self._is_affine(n, signals) for n in members):
                continue
            reads: dict[fx.Node, set[fx.Node]] = {}
            for member in (n for n in self.nodes if n in members):
                reads[member] = {a for a in member.all_input_nodes if a in parents}
                for a in member.all_input_nodes:
                    reads[member] |= reads.get(a, set())
            joins = [n for n in self.nodes if n in members and n is not drive and reads[n] == parents and n in signals]
            for join in joins:
                if _tensor_source(join, neurons, signals) is not join:
                    continue
                tail = _block_members(drive, neurons | {join}, signals)
                if {a for n in tail for a in n.all_input_nodes if a in neurons or a is join} == {join}:
                    neurons.add(self._mark_neuron(join, signals))
                    self.nodes = list(self.graph.nodes)
                break
        return [n for n in self.nodes if n in neurons and n is not source]

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
            function = ACTIVATION_FUNCTIONS[node.target]
            node.target = function
        else:
            function = ACTIVATION_METHODS[node.target]
            node.op, node.target = "call_function", function
        node.kwargs = {k: v for k, v in node.kwargs.items() if k != "inplace"}
        return _FunctionalActivation(function, tuple(node.args[1:]), dict(node.kwargs))

    def _block(
        self, drive: fx.Node, neurons: dict[fx.Node, int], signals: set[fx.Node]
    ) -> tuple[nn.Module, tuple[int, ...], bool]:
        """The block computing ``drive`` from its parent neurons, its parents and whether it is affine."""
        members = _block_members(drive, neurons.keys() - {drive}, signals)
        parents = {a for n in members for a in _value_inputs(n, signals) if a in neurons and a not in members}
        recorded = {  # shape reads of a signal this block does not hold: values of the feed-forward pass
            node: self._recorder(node)
            for node in members
            if reads_metadata_only(node)
            and node.args
            and node.args[0] in signals
            and node.args[0] not in members
            and node.args[0] not in parents
        }
        ordered_parents = sorted(parents, key=lambda n: neurons[n])
        ordered = [n for n in self.nodes if n in members]
        affine = all(self._is_affine(n, signals) for n in ordered)
        modules = self._chain_modules(ordered, ordered_parents)
        if modules is not None:
            return Block(modules), (neurons[ordered_parents[0]],), affine
        graph = fx.Graph()
        env = {p: graph.placeholder(f"s_{neurons[p]}") for p in ordered_parents}
        for node in ordered:
            if node in recorded:
                env[node] = graph.call_module(recorded[node], ())
            else:
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

    def _recorder(self, node: fx.Node) -> str:
        """The name of the :class:`StepValue` that records the metadata read ``node`` in the step's feed-forward
        pass (made on first use; :meth:`_record_reads` puts it in the graph once every block is built)."""
        if node not in self.recorders:
            read = node.target if node.op == "call_function" else MethodCall(str(node.target))
            self.recorders[node] = f"dualprop_value_{len(self.recorders)}"
            self.root.add_submodule(self.recorders[node], StepValue(read))
        return self.recorders[node]

    def _record_reads(self) -> None:
        """Make each metadata read that some block takes from the feed-forward pass a call of its recorder."""
        for node, name in self.recorders.items():
            node.op, node.target = "call_module", name
        self.graph.lint()

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

    def _is_affine(self, node: fx.Node, signals: set[fx.Node]) -> bool:
        """Whether ``node`` is an affine function of the block's inputs (constants and shapes are)."""
        if node not in signals:
            return True
        if node.op == "call_module":
            return isinstance(self.root.get_submodule(node.target), AFFINE_TYPES)
        target = node.target
        if (
            node.op == "call_function"
            and target in AFFINE_FUNCTIONS
            or node.op == "call_method"
            and target in AFFINE_METHODS
        ):
            return True
        if (
            node.op == "call_function"
            and target in PRODUCT_FUNCTIONS
            or node.op == "call_method"
            and target in PRODUCT_METHODS
        ):
            operands = [a for a in node.args if isinstance(a, fx.Node) and a in signals]
            divisor_is_signal = target in DIVISIONS and len(node.args) > 1 and node.args[1] in signals
            return len(operands) <= 1 and not divisor_is_signal
        return node.op in ("placeholder", "get_attr")


def _tensor_source(node: fx.Node, neurons: set[fx.Node], signals: set[fx.Node]) -> fx.Node | None:
    """``node`` itself if it holds a tensor; for a tuple (all its readers take items of it) the signal it is
    computed from, if that is no neuron yet; else None."""
    while node.users and all(u.op == "call_function" and u.target is operator.getitem for u in node.users):
        sources = [a for a in node.all_input_nodes if a in signals]
        if len(sources) != 1 or sources[0] in neurons:
            return None
        node = sources[0]
    return node


def _read_after_from(mutated: fx.Node, replacement: fx.Node) -> None:
    """Make the readers of ``mutated`` that come after ``replacement`` read ``replacement`` instead: the value
    an in-place method call left in its tensor."""
    order = {node: position for position, node in enumerate(replacement.graph.nodes)}
    for user in list(mutated.users):
        if user is not replacement and order[user] > order[replacement]:
            user.replace_input_with(mutated, replacement)


def _block_members(drive: fx.Node, neurons: Any, signals: set[fx.Node]) -> set[fx.Node]:
    """The nodes computed between ``drive``'s parent neurons and ``drive`` (``drive`` included unless it is
    a neuron itself); placeholders and neurons are where the walk stops, and so is a read of a signal's
    metadata (``x.shape``): a shape is no reason to compute or read that signal (see :func:`_value_inputs`)."""
    members: set[fx.Node] = set()
    if drive in neurons:
        return members
    stack = [drive]
    while stack:
        node = stack.pop()
        if node in members or node in neurons or node.op == "placeholder":
            continue
        members.add(node)
        stack.extend(_value_inputs(node, signals))
    return members


def _value_inputs(node: fx.Node, signals: set[fx.Node]) -> list[fx.Node]:
    """The inputs whose values ``node`` reads: all of them, except the signal whose metadata a metadata read
    (``x.shape``, ``x.size(0)``, ``x.new_zeros(…)``) reads."""
    inputs = node.all_input_nodes
    if reads_metadata_only(node) and node.args and node.args[0] in signals:
        return [a for a in inputs if a is not node.args[0]]
    return inputs


def _drive_of(node: fx.Node) -> fx.Node:
    """The input of an activation site."""
    return node.args[0] if node.args else node.kwargs["input"]


def _describe(node: fx.Node, root: fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"{node.target} ({type(root.get_submodule(node.target)).__name__})"
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", str(node.target))
    return f"{name}{_location(node)}"


def _location(node: fx.Node) -> str:
    """`` at FILE:LINE (code)`` of the model's own line that created ``node``: the innermost frame outside
    torch's own files (code in other installed packages, such as a model zoo, counts as the model's)."""
    frames = []
    lines = (node.stack_trace or "").strip().splitlines()
    for header, code in zip(lines, lines[1:]):
        header = header.strip()
        if header.startswith("File "):
            parts = header.split(", ")
            file = parts[0][len("File ") :].strip('"')
            if not file.startswith(_TORCH_DIR) and not file.endswith(os.path.join("dualprop", "graph.py")):
                frames.append(f" at {file}:{parts[1].replace('line ', '')} ({code.strip()})")
    return frames[-1] if frames else ""


def _defined_at(module: nn.Module) -> str:
    """`` defined at FILE:LINE`` of a module's class, where its source can be found."""
    try:
        file = inspect.getsourcefile(type(module))
        line = inspect.getsourcelines(type(module))[1]
    except (OSError, TypeError):
        return ""
    return f" defined at {file}:{line}" if file else ""


def _error_location(error: BaseException) -> str:
    """`` at FILE:LINE`` of the last frame of a tracing error that lies outside torch."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    user = [f for f in frames if not f.filename.endswith(os.path.join("dualprop", "graph.py"))]
    if not user:
        return ""
    frame = user[-1]
    return f" at {frame.filename}:{frame.lineno} ({(frame.line or '').strip()})"


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]
