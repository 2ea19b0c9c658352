"""Mixture-of-experts feed-forward blocks (keras_hub's Mixtral, Qwen-MoE, Qwen3-MoE and GPT-OSS): the width
inside the experts is removable.

keras_hub computes these blocks densely: a router (``Dense`` to one logit per expert) picks the top-k experts
of each token, every expert's gated feed-forward (gate and up projections to ``I`` neurons, a down projection
back) runs on every token as three batched einsums over weights of shape (experts, width, I) and
(experts, I, width), and the outputs are summed with the routing weights. Qwen-MoE adds a shared expert (a
gated feed-forward of its own width ``I_s``, scaled by a sigmoid gate).

**What is removable, and why.** Neuron ``i`` of the expert width, *in every expert at once*, is one channel of
a removable group (internal axis ``"ffn"``; ``graph.internal_group(path, "ffn")``): the experts' weights are
one batched tensor, so every expert must keep the same width, and removing a neuron whose gate, up and down
weights are zero in every expert changes nothing the block computes. Its gate and up projections stay tied
(one neuron is one column of each, and of Qwen's fused gate-up kernel both halves). The shared expert's width
is a second removable axis (``"shared_ffn"``). Experts themselves are not removed: the router's softmax and
top-k run over all experts, so dropping one changes which experts every token uses and their weights, even
when the dropped expert's weights are zero; the router logits (an output of the block) stay whole.

The block is one call of the channel graph: it reads the hidden channels (router, experts and shared expert)
and writes new output channels (the residual stream, through the residual add); export and expand rebuild it
with its own class at the new widths. The keras_hub attributes read are named in :data:`HUB_MOE` only.
"""

from __future__ import annotations

import functools

import numpy as np

from morphsparse.handlers import layers as _h
from morphsparse.handlers.base import constructor_config, positions, register_handler
from morphsparse.trace import symbolic_kwargs

_HUB = "keras_hub.src"

_MOE = dict(router="_sparse_feedforward_gate_dense", experts="expert_bank", gate="_expert_feedforward_gate_dense",
            up=None, down="_expert_feedforward_output_dense", shared=None, shared_gate=None,
            # constructor argument -> attribute holding its value, where the names differ
            renames={"moe_intermediate_dim": "intermediate_dim"}, width_arg="moe_intermediate_dim",
            shared_arg=None, layout="halves", gate_bias=None, down_bias=None)
#: keras_hub mixture-of-experts blocks (by class path under keras_hub.src) and where they keep their parts:
#: the router Dense, the expert bank and its gate, up (None: fused with the gate on the last axis, in halves
#: or interleaved) and down weights and biases, the shared expert (a gated MLP with Dense layers) and its
#: sigmoid gate, the constructor argument that sets the expert width (and the shared expert's).
HUB_MOE = {
    "models.mixtral.mixtral_decoder.MixtralSparseMoeBlock": dict(
        _MOE, up="_expert_feedforward_intermediate_dense", renames={}, width_arg="intermediate_dim"),
    "models.qwen3_moe.qwen3_moe_decoder.Qwen3SparseMoeBlock": _MOE,
    # GPT-OSS: the router Dense (with a bias) inside a router layer; gate and up interleaved (gate at 2i, up at
    # 2i + 1) with biases; a down bias per expert
    "models.gpt_oss.gpt_oss_decoder.GptOssSparseMoeBlock": dict(
        _MOE, router="router.router_dense", experts="experts", gate="gate_up_proj", down="down_proj",
        gate_bias="gate_up_proj_bias", down_bias="down_proj_bias", layout="interleaved", renames={},
        width_arg="intermediate_dim"),
    "models.qwen_moe.qwen_moe_decoder.QwenSparseMoeBlock": dict(
        _MOE, shared="shared_expert_dense", shared_gate="shared_expert_gate_dense",
        renames={"moe_intermediate_dim": "intermediate_dim",
                 "shared_expert_intermediate_dim": "intermediate_dim_shared"},
        shared_arg="shared_expert_intermediate_dim"),
}
#: the Dense layers of a shared expert (keras_hub's QwenMoeMLP): gate, up, down
_SHARED = ("_feedforward_gate_dense", "_feedforward_intermediate_dense", "_feedforward_output_dense")


class ExpertsBlock(_h.MultiAxis):
    """Handler of a dense mixture-of-experts block: internal axis ``"ffn"`` (the expert width, tied across
    experts; a bank of width zero cannot be rebuilt) and, with a shared expert, ``"shared_ffn"``; costs exact;
    rebuilt with its own class."""

    def __init__(self, names):
        self.names = dict(names)

    # --- parts --------------------------------------------------------------------------------------------
    def _get(self, layer, key):
        name = self.names.get(key)
        if name is None:
            return None
        for part in name.split("."):       # "router.router_dense": a layer inside a layer
            layer = getattr(layer, part)
        return layer

    def _bank(self, layer):
        """(gate, up or None, down) expert weights: (E, width, I) [fused: (E, width, 2I)], (E, I, width)."""
        bank = self._get(layer, "experts")
        up = self.names.get("up")
        return (getattr(bank, self.names["gate"]), None if up is None else getattr(bank, up),
                getattr(bank, self.names["down"]))

    def _biases(self, layer):
        """(gate(-up) bias (E, I or 2I) or None, down bias (E, width) or None)."""
        bank = self._get(layer, "experts")
        return tuple(None if self.names.get(k) is None else getattr(bank, self.names[k])
                     for k in ("gate_bias", "down_bias"))

    def _fused(self, mask):
        """A neuron mask over the fused gate-up axis: halves (gate i, up I + i) or interleaved (2i, 2i + 1)."""
        if self.names.get("layout") == "interleaved":
            return np.repeat(mask, 2)
        return np.concatenate([mask, mask])

    def _shared(self, layer):
        shared = self._get(layer, "shared")
        return None if shared is None else tuple(getattr(shared, name) for name in _SHARED)

    def _sizes(self, layer):
        """(experts, expert width)."""
        down = self._bank(layer)[2]
        return int(down.shape[0]), int(down.shape[1])

    # --- structure ----------------------------------------------------------------------------------------
    def propagate(self, call, graph):
        hidden = call.in_maps[0]
        for slot in ("router", "experts", "shared"):
            graph.consume(call, hidden, slot=slot)
        experts, width = self._sizes(call.layer)
        graph.internal(call, "ffn", graph.new_channels(call, width, output="ffn"))
        shared = self._shared(call.layer)
        if shared is not None:
            graph.internal(call, "shared_ffn", graph.new_channels(call, int(shared[2].kernel.shape[0]),
                                                                  output="shared_ffn"))
        return [graph.new_channels(call, call.output_channels(0))] + _h.pinned_outputs(
            call, graph, f"{call.path}: router logits (the router reads every expert)", first=1)

    # --- costs --------------------------------------------------------------------------------------------
    def cost_terms(self, call):
        """Router (and shared gate) in the hidden width; gate and up projections in (width, experts' neurons);
        down projection in (neurons, output width); the shared expert likewise in its own width. Per token,
        every expert runs (keras_hub computes them all and weights them by the routing)."""
        layer = call.layer
        t = positions(call.input_shapes[0], "the hidden states")
        experts, _ = self._sizes(layer)
        ffn = ("out", call.internal_index("ffn"))
        units = experts + (1 if self._shared(layer) is not None else 0)     # router logits, shared gate
        router_bias = experts if getattr(self._get(layer, "router"), "bias", None) is not None else 0
        gate_bias, down_bias = (0 if b is None else 1 for b in self._biases(layer))
        terms = [
            (("in", 0), None, lambda a, b: t * units * a, lambda a, b: units * a + router_bias),
            (("in", 0), ffn, lambda a, b: 2 * experts * t * a * b,
             lambda a, b: 2 * experts * a * b + gate_bias * 2 * experts * b),
            (ffn, ("out", 0), lambda a, b: experts * t * a * b,
             lambda a, b: experts * a * b + down_bias * experts * b),
        ]
        if self._shared(layer) is not None:
            shared = ("out", call.internal_index("shared_ffn"))
            terms += [(("in", 0), shared, lambda a, b: 2 * t * a * b, lambda a, b: 2 * a * b),
                      (shared, ("out", 0), lambda a, b: t * a * b, lambda a, b: a * b)]
        return terms

    # --- group lasso --------------------------------------------------------------------------------------
    def axis_columns(self, call, axis, xp):
        """The (fan-in, neurons) pieces of an internal axis."""
        layer, value = call.layer, functools.partial(_h.value_of, xp=xp)
        if call.internal_names[axis - call.n_outputs] == "ffn":
            gate, up, down = self._bank(layer)
            width = int(down.shape[1])
            g = value(gate)
            if up is not None:
                pieces = [g, value(up)]
            elif self.names.get("layout") == "interleaved":
                pieces = [g[..., 0::2], g[..., 1::2]]
            else:
                pieces = [g[..., :width], g[..., width:]]
            pieces.append(xp.transpose(value(down), (0, 2, 1)))
            return [xp.reshape(p, (-1, width)) for p in pieces]
        gate, up, down = self._shared(layer)
        return [value(gate.kernel), value(up.kernel), xp.transpose(value(down.kernel), (1, 0))]

    def kernel_matrix(self, call, xp=np):
        down = self._bank(call.layer)[2]
        pieces = [xp.reshape(_h.value_of(down, xp), (-1, int(down.shape[-1])))]
        shared = self._shared(call.layer)
        if shared is not None:
            pieces.append(_h.value_of(shared[2].kernel, xp))
        return _h.concatenate(pieces, xp)

    def axis_weights(self, call, axis):
        """(variable, axis, entries(mask)) of every weight an internal axis slices: a fused gate-up kernel
        holds neuron i at i and at I + i."""
        layer = call.layer
        if call.internal_names[axis - call.n_outputs] == "ffn":
            gate, up, down = self._bank(layer)
            gate_bias, _ = self._biases(layer)
            bias = [] if gate_bias is None else [(gate_bias, 1, self._fused if up is None else (lambda m: m))]
            if up is None:
                return [(gate, 2, self._fused), (down, 1, lambda m: m)] + bias
            return [(gate, 2, lambda m: m), (up, 2, lambda m: m), (down, 1, lambda m: m)] + bias
        gate, up, down = self._shared(layer)
        return [(gate.kernel, 1, lambda m: m), (up.kernel, 1, lambda m: m), (down.kernel, 0, lambda m: m)]

    # --- export and expand --------------------------------------------------------------------------------
    def live_outputs(self, call, in_live, out_alive):
        if not in_live[0].any() or not out_alive[0].any():
            return None
        return [out_alive[0]] + _h.all_alive(call, first=1)

    def rebuild_config(self, call, keep_in, keep_out):
        """The block's constructor arguments read off its attributes (these classes define no get_config),
        with the expert width (and the shared expert's) and the hidden width set to the kept counts."""
        layer = call.layer
        config, missing = constructor_config(layer, self.names["renames"])
        if missing:
            raise ValueError(f"layer '{call.path}' ({type(layer).__name__}): its constructor argument "
                             f"'{missing[0]}' is not an attribute; register a handler naming it")
        config["hidden_dim"] = int(np.sum(keep_out[0]))
        config[self.names["width_arg"]] = int(self.internal_mask(call, keep_out, "ffn").sum())
        if self.names.get("shared_arg"):
            config[self.names["shared_arg"]] = int(self.internal_mask(call, keep_out, "shared_ffn").sum())
        if int(np.sum(keep_in[0])) != config["hidden_dim"]:
            raise ValueError(f"layer '{call.path}' ({type(layer).__name__}) must keep as many input as output "
                             "channels (it reshapes its output to its input's width)")
        return config

    def _variables(self, layer):
        """Its weights by role, in a fixed order: router kernel, expert gate (, up), down, shared gate, up,
        down, shared gate-Dense kernel."""
        router = self._get(layer, "router")
        out = [router.kernel] + ([router.bias] if getattr(router, "bias", None) is not None else [])
        out += [w for w in self._bank(layer) + self._biases(layer) if w is not None]
        shared = self._shared(layer)
        if shared is not None:
            out += [d.kernel for d in shared] + [self._get(layer, "shared_gate").kernel]
        return out

    def slice_weights(self, call, keep_in, keep_out, weights):
        """The kept slices in the order of ``_variables``."""
        layer = call.layer
        rows, cols = keep_in[0], keep_out[0]
        ffn = self.internal_mask(call, keep_out, "ffn")
        gate, up, down = self._bank(layer)
        gate_bias, down_bias = self._biases(layer)
        columns = self._fused(ffn) if up is None else ffn       # of the gate (and up) weights
        pieces = [(self._get(layer, "router").kernel, lambda w: w[rows]), (gate, lambda w: w[:, rows][..., columns]),
                  (up, lambda w: w[:, rows][..., columns]), (down, lambda w: w[:, ffn][..., cols]),
                  (gate_bias, lambda w: w[:, columns]), (down_bias, lambda w: w[:, cols])]
        shared = self._shared(layer)
        if shared is not None:
            keep = self.internal_mask(call, keep_out, "shared_ffn")
            pieces += [(shared[0].kernel, lambda w: w[rows][:, keep]), (shared[1].kernel, lambda w: w[rows][:, keep]),
                       (shared[2].kernel, lambda w: w[keep][:, cols]),
                       (self._get(layer, "shared_gate").kernel, lambda w: w[rows])]
        cuts = {id(v): cut for v, cut in pieces if v is not None}
        return _h.sliced_by_role(layer, weights, self._variables(layer), cuts)

    def rebuild(self, call, step):
        _h.refuse_constant(step, 0, "this mixture-of-experts block cannot fold")
        keep_out = list(step.keep_out) + step.keep_internal
        config = self.rebuild_config(call, step.keep_in, keep_out)
        arrays = self.slice_weights(call, step.keep_in, keep_out, step.old_weights())
        layer = step.new_layer(config)
        args, kwargs = step.arguments()
        outputs = layer(*args, **symbolic_kwargs(layer, kwargs))
        _h.set_weights_by_role(step, layer, self._variables(layer), arrays)
        return outputs


def register_defaults():
    """Register the mixture-of-experts handlers (called once by ``morphsparse.handlers``)."""
    for name, names in HUB_MOE.items():
        register_handler(f"{_HUB}.{name}", ExpertsBlock(names))


__all__ = ["ExpertsBlock", "HUB_MOE", "register_defaults"]
