"""LSTM, GRU and RNN as Keras recurrent layers, one per direction, weights remapped gate by gate.

ONNX holds sequences time-major ([T, N, F], layout 0); Keras' layers want [N, T, F]. When PyTorch's
batch_first Transpose sits before the node, the layout bookkeeping already stores it that way.
"""
import numpy as np

from pipeline.converters.keras3.layout import Tensor
from pipeline.converters.keras3.ops import op
from pipeline.converters.keras3.ops.common import materialize

DEFAULT_ACTIVATIONS = {"LSTM": ["sigmoid", "tanh", "tanh"], "GRU": ["sigmoid", "tanh"], "RNN": ["tanh"]}
# ONNX recurrent activations (f, g, h) that are exactly a Keras activation; the parametrised ones
# (Affine, LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu) are refused by name.
KERAS_ACTIVATIONS = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "relu", "softsign": "softsign",
                     "softplus": "softplus"}
# Longer sequences (and a free time axis) keep a loop; shorter ones are unrolled, which every TFLite runtime
# runs natively. For the SavedModel and TFLite the loop is ``loop_rnn.LoopRecurrence`` (TFLite's WHILE op),
# for model.keras Keras' own layer (it loads with safe_mode).
UNROLL_MAX_STEPS = 128


@op("LSTM", "GRU", "RNN")
def recurrent(ctx):
    from keras import ops

    kind = ctx.op_type
    x = ctx.tensor(0)
    _refuse_variants(ctx, kind)
    time_major = int(ctx.attr("layout", 0)) == 0
    sequence = ctx.to_perm(x, (1, 0, 2) if time_major else (0, 1, 2))  # [N, T, F]
    steps = sequence.shape[1]
    directions = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}[
        ctx.attr("direction", "forward")]
    state_inputs = (5, 6) if kind == "LSTM" else (5,)
    initial = [_initial_state(ctx, index, len(directions), time_major) for index in state_inputs]
    if any(s is not None for s in initial):  # Keras takes all states or none: a missing one is zeros
        given = next(s for s in initial if s is not None)
        initial = [s if s is not None else [ops.zeros_like(g) for g in given] for s in initial]
    activations = _activations(ctx, kind, len(directions))
    outputs, finals = [], []
    for d, backwards in enumerate(directions):
        layer = _layer(ctx, kind, backwards, d, steps, activations[d])
        states = [state[d] for state in initial] if initial[0] is not None else None
        result = layer(sequence, initial_state=states) if states else layer(sequence)
        layer.set_weights(_weights(ctx, kind, d))
        seq, *final = result
        outputs.append(ops.flip(seq, axis=1) if backwards else seq)  # Keras returns it reversed
        finals.append(final)
    if ctx.output_used(0):  # Y: [T, D, N, H] (layout 0) or [N, T, D, H]; Keras: [N, T, D, H]
        ctx.set(ops.stack(outputs, axis=2), (2, 0, 1, 3) if time_major else (0, 1, 2, 3), 0)
    for index in range(1, len(ctx.node.output)):  # Y_h, Y_c: [D, N, H] (layout 0) or [N, D, H]
        if ctx.output_used(index):
            ctx.set(ops.stack([f[index - 1] for f in finals], axis=1), (1, 0, 2) if time_major else (0, 1, 2), index)


def _activations(ctx, kind: str, directions: int) -> list[dict]:
    """Per direction, the Keras layer's activation arguments for the node's ``activations``."""
    names = [a.lower() for a in ctx.attr("activations", [])] or DEFAULT_ACTIVATIONS[kind] * directions
    per = len(DEFAULT_ACTIVATIONS[kind])
    if len(names) != per * directions:
        raise ctx.fail(f"activations {names}: expected {per} per direction.")
    if ctx.attr("activation_alpha") is not None or ctx.attr("activation_beta") is not None or \
            any(name not in KERAS_ACTIVATIONS for name in names):
        raise ctx.fail(f"activations {names}: only {sorted(KERAS_ACTIVATIONS)} without parameters are supported.")
    result = []
    for d in range(directions):
        f, *rest = (KERAS_ACTIVATIONS[name] for name in names[d * per:(d + 1) * per])
        if kind == "RNN":
            result.append({"activation": f})
            continue
        if kind == "LSTM" and rest[0] != rest[1]:  # Keras uses one activation for the cell input and output
            raise ctx.fail(f"LSTM activations {names[d * per:(d + 1) * per]}: the cell-input and output "
                           "activations (g, h) must be the same.")
        result.append({"recurrent_activation": f, "activation": rest[0]})
    return result


def _refuse_variants(ctx, kind: str) -> None:
    if ctx.attr("clip") is not None or ctx.attr("input_forget", 0):
        raise ctx.fail("clip and input_forget are not supported.")
    if kind == "LSTM" and ctx.has(7):
        raise ctx.fail("peephole weights (P) are not supported.")
    if ctx.has(4):
        lengths = ctx.value(4)
        steps = ctx.c.probe.shape(ctx.input_names[0])[0 if int(ctx.attr("layout", 0)) == 0 else 1]
        if not (isinstance(lengths, np.ndarray) and np.all(lengths == steps)):
            raise ctx.fail("variable sequence_lens are not supported.")


def _initial_state(ctx, index: int, directions: int, time_major: bool):
    """Per direction, the initial state as a Keras [N, H] tensor; None when it is all zeros."""
    value = ctx.value(index)
    if value is None or (isinstance(value, np.ndarray) and not np.any(value)):
        return None
    if not isinstance(value, Tensor):
        if isinstance(value, np.ndarray):
            raise ctx.fail("a constant non-zero initial state is not supported.")
        if not any(np.any(v) for v in value.probe):
            return None  # zeros sized by the batch, as PyTorch exports its default state
        value = materialize(ctx, index)
    stored = ctx.to_perm(value, (1, 0, 2) if time_major else (0, 1, 2))  # [N, D, H]
    return [stored[:, d, :] for d in range(directions)]


def _layer(ctx, kind: str, backwards: bool, direction: int, steps, activations: dict):
    import keras

    hidden = int(ctx.attr("hidden_size"))
    unroll = steps is not None and steps <= UNROLL_MAX_STEPS
    if ctx.c.loops and not unroll:  # SavedModel/TFLite: one while loop TFLite runs, for any number of steps
        from pipeline.converters.keras3.loop_rnn import LoopRecurrence

        return LoopRecurrence(kind, hidden, reset_after=kind == "GRU" and bool(ctx.attr("linear_before_reset", 0)),
                              go_backwards=backwards, name=ctx.name(f"d{direction}_loop"), **activations)
    options = {**activations, "return_sequences": True, "return_state": True, "go_backwards": backwards,
               "unroll": unroll, "name": ctx.name(f"d{direction}")}
    if kind == "LSTM":
        return keras.layers.LSTM(hidden, **options)
    if kind == "GRU":
        return keras.layers.GRU(hidden, reset_after=bool(ctx.attr("linear_before_reset", 0)), **options)
    return keras.layers.SimpleRNN(hidden, **options)


def _weights(ctx, kind: str, d: int) -> list[np.ndarray]:
    w, r = ctx.const(1)[d], ctx.const(2)[d]
    hidden = r.shape[1]
    gates = w.shape[0] // hidden
    bias = ctx.const(3)[d] if ctx.has(3) else np.zeros(2 * gates * hidden, w.dtype)
    w_bias, r_bias = bias[:gates * hidden], bias[gates * hidden:]
    if kind == "LSTM":  # ONNX gates i, o, f, c -> Keras i, f, c, o
        def order(m):
            i, o, f, c = np.split(m, 4)
            return np.concatenate([i, f, c, o])
        weights = [order(w).T, order(r).T, order(w_bias + r_bias)]
    elif kind == "GRU" and ctx.attr("linear_before_reset", 0):  # z, r, h in both; two biases
        weights = [w.T, r.T, np.stack([w_bias, r_bias])]
    else:
        weights = [w.T, r.T, w_bias + r_bias]
    return [np.ascontiguousarray(v, dtype=np.float32) for v in weights]
