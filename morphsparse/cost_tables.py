"""The cost model in the form structure learning needs: every costly layer call's MACs and parameters as a
polynomial in the alive channel counts of its axes, and the matrices that sum a per-channel vector over each
call's axes. The coefficients are read off the handlers' own ``macs``/``params`` (the counts
``morphsparse.costs`` reports), so the regulariser, prune and the budget controller price exactly what is
counted. (reference: algorithms.md section 2.2; the regularisation term itself is in
``morphsparse.morph.regularizers``.)"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from morphsparse.handlers.base import positions

COEFFICIENTS = ("c0", "ci", "co", "cio", "cg", "cdw")


def _at_most_one(count):
    """min(count, 1) for numpy arrays and tensors alike: 1 when any output channel is alive."""
    return tf.minimum(count, 1.0) if tf.is_tensor(count) else np.minimum(count, 1.0)


class Bilinear:
    """For each kernel call k:
    value_k = c0 + ci*A_in + co*A_out + cio*A_in*A_out + cg*A_in*min(A_out, 1) + cdw*A_out.

    ``cg`` is a per-input cost paid only while the layer has an output left: a SeparableConv's depthwise half
    (export removes the whole layer when its last output channel dies). ``cdw`` holds a depthwise conv's cost,
    whose regularisation term is cdw * (R_in + R_out) as in MorphNet instead of the plain marginal cdw * R_out.
    """

    def __init__(self, n):
        for name in COEFFICIENTS:
            setattr(self, name, np.zeros(n))

    def per_call(self, a_in, a_out):
        return (self.c0 + self.ci * a_in + (self.co + self.cdw) * a_out + self.cio * a_in * a_out
                + self.cg * a_in * _at_most_one(a_out))

    def per_call_term(self, a_in, a_out, r_in, r_out):
        """The marginal-cost term: each alive count replaced by the sum of R over the same entries, one side
        at a time, the other side's count held constant."""
        return (self.ci * r_in + self.co * r_out + self.cio * (a_in * r_out + a_out * r_in)
                + self.cg * r_in * _at_most_one(a_out) + self.cdw * (r_in + r_out))

    def value(self, a_in, a_out, xp=np):
        return xp.sum(self.per_call(a_in, a_out))

    def term(self, a_in, a_out, r_in, r_out, xp=np):
        return xp.sum(self.per_call_term(a_in, a_out, r_in, r_out))

    def scaled(self, factor):
        out = Bilinear(len(self.c0))
        for name in COEFFICIENTS:
            setattr(out, name, getattr(self, name) * factor)
        return out

    def plus(self, other):
        out = Bilinear(len(self.c0))
        for name in COEFFICIENTS:
            setattr(out, name, getattr(self, name) + getattr(other, name))
        return out


class UnsupportedLayerError(ValueError):
    """A layer whose cost the regulariser cannot express (the message names it and says what to do)."""


def _fit_bilinear(call, count, what, s=None, t=None):
    """Read the coefficients (c0, ci, co, cio, cg) of ``count(a_in, a_out)`` (a handler's macs or params):
    bilinear in the alive input and output channel counts, plus a per-input part ``cg`` paid only while an
    output channel is alive (a SeparableConv's depthwise half). Probes the corners of the alive-count square
    and the first output channel, then checks interior points so that any other handler is refused.
    ``s``/``t``: the full widths of the two axes (default: the call's first input and output)."""
    if s is None:
        s = call.input_channels(0) if call.input_shapes else 0
    if t is None:
        t = call.output_channels(0)
    groups = int(getattr(call.layer, "groups", 1) or 1)
    if s and s % groups:
        groups = 1
    f00, fs0, f0t, fst = count(0, 0), count(s, 0), count(0, t), count(s, t)
    c0 = f00
    ci = (fs0 - f00) / s if s else 0.0
    co = (f0t - f00) / t if t else 0.0
    cio = cg = 0.0
    if s and t > 1:
        f01, fs1 = count(0, 1), count(s, 1)
        cio = (fst - f0t - fs1 + f01) / (s * (t - 1))
        cg = (fs1 - f01) / s - ci - cio
    elif s and t:
        cio = (fst - fs0 - f0t + f00) / (s * t)
    a = max(groups, (s // 2) // groups * groups) if s else 0
    for b in sorted({max(1, t // 2), t - 1} - {0}) if t else [0]:
        expected = c0 + ci * a + co * b + cio * a * b + cg * a * min(b, 1)
        if not np.isclose(count(a, b), expected, rtol=1e-9, atol=1e-6):
            raise UnsupportedLayerError(
                f"layer '{call.path}' ({type(call.layer).__name__}): its handler's {what} are not bilinear: not of the form "
                "c0 + ci*A_in + co*A_out + cio*A_in*A_out (+ a per-input cost while an output lives), so "
                "MorphRegularizer cannot price its channels. Give its handler macs()/params() of that form "
                "(see morphsparse.handlers), or register handlers.Opaque() for the layer class to keep its "
                "channels out of structure learning.")
    return c0, ci, co, cio, cg


def _touches_removable(graph, call):
    """True when a removable channel group sits on one of the call's input or output channel axes."""
    return any(graph.groups[int(g)].removable for g in np.unique(np.concatenate(call.in_groups + call.out_groups)))


def _axis(call, ref):
    """(groups, channels) of a channel axis of ``call`` named by ``("in", i)`` or ``("out", j)`` (j past the
    outputs: an internal axis); empty for None (a constant side of a cost term)."""
    if ref is None:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    side, i = ref
    if side == "in":
        return call.in_groups[i], call.in_channels[i]
    return call.out_groups[i], call.out_channels_idx[i]


def _axis_positions(call, ref):
    if ref is None:
        return 0
    side, i = ref
    shapes = call.input_shapes if side == "in" else call.output_shapes
    return positions(shapes[i]) if i < len(shapes) else 0


def _cost_terms(graph, call):
    """The call's cost as bilinear terms ``(in_ref, out_ref, macs(a, b), params(a, b))``: the handler's own
    ``cost_terms`` (a layer with several channel axes, such as attention), else one term in the alive counts of
    its first input and output with every other axis full."""
    handler = call.handler
    terms = handler.cost_terms(call)
    if terms is not None:
        return terms
    in_full = [call.input_channels(i) for i in range(len(call.input_shapes))]
    out_full = [call.output_channels(i) for i in range(len(call.output_shapes))]

    def macs(a, b):
        return handler.macs(call, [a] + in_full[1:], [b] + out_full[1:])

    def params(a, b):
        return handler.params(call, [a] + in_full[1:], [b] + out_full[1:])

    if (len(call.input_shapes) != 1 or len(call.output_shapes) != 1) and _touches_removable(graph, call):
        raise UnsupportedLayerError(
            f"layer '{call.path}' ({type(call.layer).__name__}) has weights and "
            f"{len(call.input_shapes)} inputs / {len(call.output_shapes)} outputs; MorphRegularizer "
            "prices single-input, single-output kernel layers only. Keep its channels fixed: name it "
            "and the layers feeding it in ignore=[...].")
    return [(("in", 0) if call.input_shapes else None, ("out", 0), macs, params)]


class KernelCalls:
    """The layer calls that cost anything, with their cost polynomials and the sparse matrices that sum a
    per-channel vector (R or alive) over each call's input and output channel-axis entries.

    A call whose handler has ``cost_terms`` (attention: query, key and value widths times heads, heads times
    output width) contributes one row per term; ``calls[k]`` is the call of row k and ``terms[k]`` the term's
    index in it."""

    def __init__(self, graph):
        self.graph = graph
        offsets = graph.offsets
        calls, terms, flops, params, in_pos, out_pos, first, depthwise = [], [], [], [], [], [], [], []
        in_entries, out_entries = [], []
        for call in graph.calls:
            if call.node is None or not call.out_groups:
                continue
            handler = call.handler
            pieces = None
            try:
                pieces = _cost_terms(graph, call)
            except UnsupportedLayerError:
                pass
            full = [self._full(call, in_ref, out_ref, m, p) for in_ref, out_ref, m, p in pieces] if pieces else []
            full_macs = sum(m for m, _ in full) if pieces else float(handler.macs(
                call, [call.input_channels(i) for i in range(len(call.input_shapes))],
                [call.output_channels(i) for i in range(len(call.output_shapes))]))
            full_params = (sum(p for _, p in full) if pieces else float(handler.params(
                call, [call.input_channels(i) for i in range(len(call.input_shapes))],
                [call.output_channels(i) for i in range(len(call.output_shapes))]))) if call.first_call else 0.0
            if not full_macs and not full_params:
                continue
            if not _touches_removable(graph, call):
                # nothing it reads or writes can shrink (ignore=, opaque): a constant cost
                rows = [(None, None, (2 * full_macs,) + (0.0,) * 4, (full_params,) + (0.0,) * 4)]
            else:
                if pieces is None:
                    _cost_terms(graph, call)    # raises the UnsupportedLayerError
                rows = []
                for in_ref, out_ref, m, p in pieces:
                    s, t = len(_axis(call, in_ref)[0]), len(_axis(call, out_ref)[0])
                    fm = _fit_bilinear(call, lambda a, b, m=m: float(m(a if in_ref else 1, b if out_ref else 1)),
                                       "MACs", s, t)
                    fp = (_fit_bilinear(call, lambda a, b, p=p: float(p(a if in_ref else 1, b if out_ref else 1)),
                                        "parameters", s, t) if call.first_call else (0.0,) * 5)
                    rows.append((in_ref, out_ref, [2 * c for c in fm], fp))
            for j, (in_ref, out_ref, f, p) in enumerate(rows):
                calls.append(call)
                terms.append(j)
                flops.append(f)
                params.append(p)
                groups, channels = _axis(call, in_ref)
                in_entries.append(offsets[groups] + channels)
                groups, channels = _axis(call, out_ref)
                out_entries.append(offsets[groups] + channels)
                in_pos.append(_axis_positions(call, in_ref))
                out_pos.append(_axis_positions(call, out_ref))
                first.append(call.first_call)
                depthwise.append(handler.reads_channels_separately(call))
        self.calls = calls
        self.terms = terms
        n = len(calls)
        self.flops, self.params = Bilinear(n), Bilinear(n)
        fitted = COEFFICIENTS[:5]
        for k in range(n):
            for table, values in ((self.flops, flops[k]), (self.params, params[k])):
                for name, value in zip(fitted, values):
                    getattr(table, name)[k] = value
            if depthwise[k]:
                self.flops.cdw[k], self.flops.co[k] = self.flops.co[k], 0.0
        # Layers with MACs (conv, dense, ...) carry FLOPs, latency and activations; the others (BatchNorm)
        # carry parameters only.
        self.has_macs = np.asarray([bool(np.any(f)) for f in flops], dtype=bool).reshape(n)
        self.kernel_mask = self.has_macs.astype(np.float64)
        self.in_positions = np.asarray(in_pos, dtype=np.float64)
        self.out_positions = np.asarray(out_pos, dtype=np.float64)
        self.n_channels = int(offsets[-1])
        self.in_matrix = self._summing_matrix(in_entries)
        self.out_matrix = self._summing_matrix(out_entries)

    @staticmethod
    def _full(call, in_ref, out_ref, macs, params):
        a = len(_axis(call, in_ref)[0]) if in_ref else 1
        b = len(_axis(call, out_ref)[0]) if out_ref else 1
        return float(macs(a, b)), float(params(a, b))

    def _summing_matrix(self, flat_indices):
        """(calls x channels) counts: row k sums a flat per-channel vector over call k's channel-axis entries
        (a Dense after Flatten reads each channel H*W times). Kept as coordinates: large models have tens of
        thousands of channels and only a few hundred entries per row are non-zero."""
        rows, cols = [], []
        for k, idx in enumerate(flat_indices):
            cols.append(np.asarray(idx, dtype=np.int64))
            rows.append(np.full(len(idx), k, dtype=np.int64))
        rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
        pairs, counts = np.unique(np.stack([rows, cols], axis=1), axis=0, return_counts=True)
        return pairs.reshape(-1, 2), counts.astype(np.float64)

    def _apply(self, matrix, vector, xp):
        pairs, counts = matrix
        if xp is np:
            out = np.zeros(len(self.calls))
            np.add.at(out, pairs[:, 0], counts * vector[pairs[:, 1]])
            return out
        # gather + segment sum rather than a sparse matmul: XLA compiles it (fit uses XLA on GPU machines)
        picked = tf.gather(vector, tf.constant(pairs[:, 1], tf.int32)) * tf.constant(counts, vector.dtype)
        return tf.math.unsorted_segment_sum(picked, tf.constant(pairs[:, 0], tf.int32), len(self.calls))

    def sums(self, vector, xp=np):
        """(per-call sum over input entries, per-call sum over output entries) of a flat channel vector."""
        return self._apply(self.in_matrix, vector, xp), self._apply(self.out_matrix, vector, xp)

    def marginal(self, table, alive):
        """What ``table``'s cost (``self.flops`` or ``self.params``) loses per channel if that channel alone is
        removed, at the flat 0/1 ``alive`` vector: the derivative of the table's value in each channel's count.
        (MorphNet's regularisation term has the same gradient except at a depthwise conv, whose channels it
        charges on both sides, ``cdw * (R_in + R_out)``: twice this marginal cost.)"""
        a_in, a_out = self.sums(np.asarray(alive, np.float64))
        d_in = table.ci + table.cio * a_out + table.cg * np.minimum(a_out, 1.0)
        d_out = table.co + table.cdw + table.cio * a_in
        grad = np.zeros(len(alive))
        for (pairs, counts), d in ((self.in_matrix, d_in), (self.out_matrix, d_out)):
            np.add.at(grad, pairs[:, 1], counts * d[pairs[:, 0]])
        return grad


__all__ = ["COEFFICIENTS", "Bilinear", "KernelCalls", "UnsupportedLayerError"]
