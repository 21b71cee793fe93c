"""A recurrent layer as one ``tf.while_loop`` that TFLite runs natively (its builtin WHILE op), for the
SavedModel and the TFLite targets made from it.

Keras' own LSTM/GRU/SimpleRNN either unroll (the graph, and its conversion time, grow with the number of
steps) or keep a loop over TensorArrays, whose TensorList ops TFLite's builtins cannot run with a dynamic
batch. This loop carries only the state and the outputs so far (grown by a concat along time), so it
takes any number of steps, a free time axis included, and converts in the same time for 16 steps or 512.
The input projection of every step is one matrix product before the loop. Weights are in Keras' layout
(``recurrent._weights``: gates ``i, f, c, o`` for LSTM, ``z, r, h`` for GRU); ``go_backwards`` returns the
outputs in processing order, as Keras does. A custom layer: only the SavedModel holds it, never
model.keras (whose Keras layers load with ``safe_mode``).
"""
import keras


class LoopRecurrence(keras.layers.Layer):
    def __init__(self, kind: str, units: int, activation: str = "tanh", recurrent_activation: str = "sigmoid",
                 reset_after: bool = False, go_backwards: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.kind, self.units, self.reset_after, self.go_backwards = kind, int(units), bool(reset_after), go_backwards
        self.activation = keras.activations.get(activation)
        self.recurrent_activation = keras.activations.get(recurrent_activation)
        self.gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[kind]

    def build(self, input_shape, *_, **__):
        features, width = int(input_shape[-1]), self.gates * self.units
        self.kernel = self.add_weight(shape=(features, width), name="kernel", trainable=False)
        self.recurrent_kernel = self.add_weight(shape=(self.units, width), name="recurrent_kernel", trainable=False)
        bias_shape = (2, width) if self.kind == "GRU" and self.reset_after else (width,)
        self.bias = self.add_weight(shape=bias_shape, name="bias", trainable=False)

    def call(self, sequence, initial_state=None):
        import tensorflow as tf
        from tensorflow.compiler.tf2xla.python import xla  # XlaDynamicUpdateSlice: TFLite's DYNAMIC_UPDATE_SLICE

        sequence = tf.reverse(sequence, [1]) if self.go_backwards else sequence
        input_bias = self.bias[0] if self.kind == "GRU" and self.reset_after else self.bias
        projected = tf.einsum("ntf,fg->ntg", sequence, self.kernel) + input_bias  # every step's input term
        batch, steps = tf.shape(sequence)[0], tf.shape(sequence)[1]
        zeros = tf.zeros([batch, self.units], sequence.dtype)
        states = list(initial_state) if initial_state else [zeros] * (2 if self.kind == "LSTM" else 1)

        def body(t, outputs, *carried):
            new = self._step(projected[:, t], list(carried))
            # Written in place into a buffer of every step (time-major): the loop's tensors keep their shapes
            # from step to step, so TFLite prepares its body once (a growing concat: 1.7x slower).
            return (t + 1, xla.dynamic_update_slice(outputs, new[0][None], tf.stack([t, 0, 0])), *new)

        invariants = [tf.TensorShape([]), tf.TensorShape([None, None, self.units]),
                      *[tf.TensorShape([None, self.units])] * len(states)]
        buffer = tf.zeros([steps, batch, self.units], sequence.dtype)
        _, outputs, *final = tf.while_loop(lambda t, *_: t < steps, body, [tf.constant(0), buffer, *states],
                                           shape_invariants=invariants)
        return [tf.transpose(outputs, [1, 0, 2]), *final]

    def _step(self, x, states):
        """One step from the projected input ``x``: the new state(s), the output (h) first."""
        h = states[0]
        inner = h @ self.recurrent_kernel
        if self.kind == "RNN":
            return [self.activation(x + inner)]
        if self.kind == "LSTM":
            z = x + inner
            i, f, c, o = (z[:, k * self.units:(k + 1) * self.units] for k in range(4))
            cell = self.recurrent_activation(f) * states[1] + self.recurrent_activation(i) * self.activation(c)
            return [self.recurrent_activation(o) * self.activation(cell), cell]
        u = self.units
        if self.reset_after:
            inner = inner + self.bias[1]
        z = self.recurrent_activation(x[:, :u] + inner[:, :u])
        r = self.recurrent_activation(x[:, u:2 * u] + inner[:, u:2 * u])
        if self.reset_after:
            candidate = self.activation(x[:, 2 * u:] + r * inner[:, 2 * u:])
        else:
            candidate = self.activation(x[:, 2 * u:] + (r * h) @ self.recurrent_kernel[:, 2 * u:])
        return [z * h + (1 - z) * candidate]

    def compute_output_shape(self, input_shape, *_, **__):
        states = [(input_shape[0], self.units)] * (2 if self.kind == "LSTM" else 1)
        return [(input_shape[0], input_shape[1], self.units), *states]
