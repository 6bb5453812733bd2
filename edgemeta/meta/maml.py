"""MAML (second order), first-order MAML and Reptile as :class:`MetaLearner` s (host only).

All three adapt a copy of the meta-parameters ("fast weights") to each task with a few steps of
plain SGD and never touch the Keras variables while doing so: the backbone runs functionally
through ``keras.Model.stateless_call`` with the fast weights as tensors. The inner loop is a
Python loop over ``config.inner_steps``, unrolled once when the trainer traces its step, so a
fixed episode shape compiles once and every step after that is one graph call.

The linear head (Dense ``n_way``) exists only in training; the board embeds with the backbone and
compares prototypes. It starts at zero so that a task's first inner step is symmetric in the
classes (labels are a random permutation per task, so no class slot should be preferred); this
is the "zeroing trick" of Kao et al. 2022 ("MAML is a noisy contrastive learner"). With a zero
head the backbone gets no gradient in the first inner step, so use ``inner_steps >= 2``.

BatchNorm runs in training mode (batch statistics) in every pass, as in Finn et al. 2017. The
moving statistics, which the exported backbone uses in inference mode on the board, are taken from
the pass that runs the *meta-parameters* themselves (the first inner step) and assigned back to
the backbone: the board runs theta, not a task's adapted weights.

References: Finn et al. 2017 (MAML, FOMAML); Nichol et al. 2018 (Reptile).
"""

from __future__ import annotations

from typing import Any, Sequence

from edgemeta._deps import require
from edgemeta.meta.config import TrainConfig
from edgemeta.meta.learners import MetaLearner, register_learner

__all__ = ["MAMLLearner", "ReptileLearner", "cross_entropy_accuracy", "embedding_dim"]

# Imported once at module level: AutoGraph would try to convert an import inside a traced step.
tf = require("tensorflow", "MAML-family meta-learning")
keras = require("keras", "MAML-family meta-learning")


def embedding_dim(backbone: Any) -> int:
    """Size of the backbone's (None, D) embedding output."""
    shape = backbone.output_shape
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(f"the backbone must output (None, D) embeddings, got {shape}")
    return int(shape[-1])


def cross_entropy_accuracy(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Mean sparse softmax cross-entropy and accuracy of ``logits`` (N, n_way) vs ``labels`` (N,)."""
    labels = tf.cast(labels, tf.int32)
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    hits = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)
    return loss, tf.reduce_mean(tf.cast(hits, tf.float32))


class _FastWeightLearner(MetaLearner):
    """Shared machinery: a linear head and a functional forward pass with fast weights.

    Fast weights are a list of tensors laid out like :attr:`variables` plus, for learners whose
    head is not a meta-parameter, the head kernel and bias at the end: backbone trainable
    variables first, then ``[head_kernel, head_bias]``.
    """

    def __init__(self, backbone: Any, config: TrainConfig) -> None:
        super().__init__(backbone, config)
        self.dim = embedding_dim(backbone)
        self._n_backbone = len(backbone.trainable_variables)
        # The head and the inner learning rate follow the backbone's weights (float32 normally).
        self.dtype = tf.as_dtype(backbone.trainable_variables[0].dtype)

    def _forward(self, fast: Sequence[Any], non_trainable: Sequence[Any], x: Any
                 ) -> tuple[Any, list[Any]]:
        """Logits of ``x`` with fast weights; also the BatchNorm state after the pass."""
        emb, new_state = self.backbone.stateless_call(
            list(fast[:self._n_backbone]), list(non_trainable), x, training=True)
        kernel, bias = fast[self._n_backbone], fast[self._n_backbone + 1]
        return tf.matmul(emb, kernel) + bias, new_state

    def _sgd(self, fast: list[Any], non_trainable: list[Any], x: Any, y: Any, steps: int,
             first_order: bool, tape: Any = None) -> tuple[list[Any], list[Any], Any]:
        """``steps`` steps of plain SGD with ``config.inner_lr`` on the cross-entropy of (x, y).

        Args:
            fast: Starting weights (tensors).
            non_trainable: BatchNorm state to run with (moving statistics are not used in
                training mode, so it only matters for what the first pass returns).
            x, y: The data of every step (full batch: episodes are small).
            steps: Number of SGD steps (unrolled in the graph).
            first_order: Treat inner gradients as constants (``tf.stop_gradient``).
            tape: An enclosing tape to pause while computing first-order updates, so that it
                does not record an inner loop it will never differentiate.

        Returns:
            ``(adapted weights, BatchNorm state from the first pass (the starting weights'),
            loss of the first pass)``.
        """
        lr = tf.constant(self.config.inner_lr, self.dtype)
        first_state, first_loss = None, None
        deltas = None
        if first_order:
            # phi = theta - lr * sum(g_i) with every g_i constant: run the loop off the outer
            # tape on detached copies, then add the summed update back on it.
            start = fast
            fast = [tf.stop_gradient(w) for w in fast]
            deltas = [tf.zeros_like(w) for w in fast]
        pause = tape.stop_recording() if (tape is not None and first_order) else None
        if pause is not None:
            pause.__enter__()
        try:
            for _ in range(steps):
                with tf.GradientTape() as inner:
                    inner.watch(fast)
                    logits, state = self._forward(fast, non_trainable, x)
                    loss, _ = cross_entropy_accuracy(logits, y)
                grads = inner.gradient(loss, fast)
                if first_state is None:
                    first_state, first_loss = state, loss
                if first_order:
                    grads = [tf.stop_gradient(g) for g in grads]
                    deltas = [d + lr * g for d, g in zip(deltas, grads)]
                fast = [w - lr * g for w, g in zip(fast, grads)]
        finally:
            if pause is not None:
                pause.__exit__(None, None, None)
        if first_order:
            fast = [w - d for w, d in zip(start, deltas)]
        return fast, first_state, first_loss

    def _assign_state(self, state: Sequence[Any]) -> None:
        """Write BatchNorm moving statistics back to the backbone (what the board runs)."""
        for var, value in zip(self.backbone.non_trainable_variables, state):
            var.assign(value)

    def _theta(self) -> list[Any]:
        return [tf.convert_to_tensor(v) for v in self.backbone.trainable_variables]

    def _state(self) -> list[Any]:
        return [tf.convert_to_tensor(v) for v in self.backbone.non_trainable_variables]


@register_learner("maml", "fomaml")
class MAMLLearner(_FastWeightLearner):
    """MAML (``maml``, second order) and first-order MAML (``fomaml``).

    Meta-parameters: the backbone's trainable variables and a linear head (``head_kernel``
    (D, n_way), ``head_bias`` (n_way,)), zero-initialised, in :attr:`extra_variables`. Per task:
    ``config.inner_steps`` SGD steps with ``config.inner_lr`` on the support cross-entropy, then
    the query cross-entropy of the adapted weights is differentiated with respect to the
    meta-parameters, through the inner updates (``maml``: nested tapes, Hessian-vector products)
    or treating the inner gradients as constants (``fomaml``).

    Defaults: ``inner_lr=0.4``, ``inner_steps=5`` (Finn et al., Omniglot 5-way; they use 1 step
    for training there, but the zero head needs a second step to move the backbone).
    """

    def __init__(self, backbone: Any, config: TrainConfig) -> None:
        super().__init__(backbone, config)
        self.first_order = config.algorithm == "fomaml"
        self.head_kernel = keras.Variable(tf.zeros((self.dim, config.n_way), self.dtype),
                                          name="head_kernel", dtype=self.dtype.name)
        self.head_bias = keras.Variable(tf.zeros((config.n_way,), self.dtype), name="head_bias",
                                        dtype=self.dtype.name)
        self.extra_variables.extend([self.head_kernel, self.head_bias])

    def task_grads(self, sx: Any, sy: Any, qx: Any, qy: Any) -> tuple[list[Any], Any, Any]:
        with tf.GradientTape() as outer:
            # Reading the variables inside the tape makes theta the differentiation sources.
            theta = self._theta() + [tf.convert_to_tensor(self.head_kernel),
                                     tf.convert_to_tensor(self.head_bias)]
            fast, state, _ = self._sgd(theta, self._state(), sx, sy, self.config.inner_steps,
                                       self.first_order, tape=outer)
            logits, state = self._forward(fast, state, qx)
            loss, acc = cross_entropy_accuracy(logits, qy)
        grads = outer.gradient(loss, self.variables)
        self._assign_state(state)
        return grads, loss, acc

    def adapt_and_score(self, sx: Any, sy: Any, qx: Any, qy: Any,
                        steps: int | None = None) -> tuple[Any, Any]:
        """Query loss and accuracy after adapting to the support set; changes no variable.

        This is MAML's own evaluation (Finn et al.); the board uses prototypes instead.
        """
        theta = self._theta() + [tf.convert_to_tensor(self.head_kernel),
                                 tf.convert_to_tensor(self.head_bias)]
        fast, state, _ = self._sgd(theta, self._state(), sx, sy,
                                   steps or self.config.inner_steps, first_order=True)
        logits, _ = self._forward(fast, state, qx)
        return cross_entropy_accuracy(logits, qy)


@register_learner("reptile")
class ReptileLearner(_FastWeightLearner):
    """Reptile (Nichol et al. 2018) with plain-SGD inner loop and a per-task zero head.

    Per task: start from the backbone's meta-parameters theta and a zero head, take
    ``config.inner_steps`` SGD steps with ``config.inner_lr`` on the task's support and query
    images together (full batch), reaching phi. :meth:`task_grads` returns ``theta - phi`` for
    the backbone variables in place of gradients, so an optimiser step ``theta -= eps * (theta -
    phi)`` moves theta toward phi (with Adam, as the trainer uses, the direction is rescaled per
    coordinate, as in Nichol et al.'s Adam outer loop).

    The head is not a meta-parameter: it is reset to zero for every task (a meta-learned head
    would be pulled toward the average of heads for random label permutations, i.e. noise around
    zero), so :attr:`variables` is just the backbone's trainable variables.

    Defaults: the SGD inner loop works with ``inner_lr=0.4`` and ``inner_steps=5`` (the
    TrainConfig defaults) on Conv-4; Nichol et al. use an Adam inner loop (lr 1e-3), which a
    plain-SGD loop cannot reproduce step for step.
    """

    def __init__(self, backbone: Any, config: TrainConfig) -> None:
        super().__init__(backbone, config)
        self._head0 = [tf.zeros((self.dim, config.n_way), self.dtype),
                      tf.zeros((config.n_way,), self.dtype)]

    def _adapt(self, x: Any, y: Any, steps: int) -> tuple[list[Any], list[Any], list[Any]]:
        theta = self._theta()
        fast, state, _ = self._sgd(theta + list(self._head0), self._state(), x, y, steps,
                                   first_order=True)
        return theta, fast, state

    def task_grads(self, sx: Any, sy: Any, qx: Any, qy: Any) -> tuple[list[Any], Any, Any]:
        theta, fast, state = self._adapt(tf.concat([sx, qx], axis=0),
                                         tf.concat([sy, qy], axis=0), self.config.inner_steps)
        directions = [t - p for t, p in zip(theta, fast[:self._n_backbone])]
        # Query loss and accuracy of phi; the query was part of the inner data, so this is a
        # training-fit figure, not a held-out one (use adapt_and_score for that).
        logits, _ = self._forward(fast, state, qx)
        loss, acc = cross_entropy_accuracy(logits, qy)
        self._assign_state(state)
        return directions, loss, acc

    def adapt_and_score(self, sx: Any, sy: Any, qx: Any, qy: Any,
                        steps: int | None = None) -> tuple[Any, Any]:
        """Query loss and accuracy after adapting to the support set only; changes no variable."""
        _, fast, state = self._adapt(sx, sy, steps or self.config.inner_steps)
        logits, _ = self._forward(fast, state, qx)
        return cross_entropy_accuracy(logits, qy)
