"""MAML (second order), first-order MAML and Reptile as :class:`MetaLearner` s (host only).

All three adapt a copy of the meta-parameters ("fast weights") to each task with a few steps of
plain SGD and never touch the Keras variables while doing so: the backbone runs functionally
through ``keras.Model.stateless_call`` with the fast weights as tensors. The inner loop is a
Python loop over ``config.inner_steps``, unrolled once when the trainer traces its step, so a
fixed episode shape compiles once and every later step is one graph call.

The linear head (Dense ``n_way``) exists only in training; the board embeds with the backbone and
compares prototypes. It starts at zero so that a task's first inner step treats the classes
symmetrically (labels are a random permutation per task, so no class slot should be preferred);
Kao et al. 2022 ("MAML is a noisy contrastive learner") call resetting it to zero for every task
the "zeroing trick". With a zero head the backbone gets no gradient in the first inner step
(dL/d embedding = W (p - y) = 0), so ``inner_steps`` should be at least 2.

BatchNorm runs in training mode (batch statistics) in every pass, as in Finn et al. 2017, and the
moving statistics that the exported backbone uses on the board are written back to it after each
task. They lag behind fast-changing weights and average within-task variances: re-estimating them
on training images after meta-training (:func:`edgemeta.meta.adapt.recalibrate_batch_norm`) gave
7-17 points of prototype accuracy in short runs on synthetic glyphs, for every algorithm.

Second-order gradients through Keras' BatchNorm are exact up to one term: ``tf.nn.moments`` puts a
``stop_gradient`` on the mean inside the variance, which is exact to first order only (relative
error ~1e-3 in a finite-difference check; exact without BatchNorm).

References: Finn et al. 2017 (MAML, first-order MAML); Nichol et al. 2018 (Reptile).
"""

from __future__ import annotations

import contextlib
from typing import Any, Sequence

from edgemeta._deps import require
from edgemeta.meta.config import TrainConfig
from edgemeta.meta.learners import MetaLearner, register_learner

__all__ = ["MAMLLearner", "ReptileLearner", "cross_entropy_accuracy", "embedding_dim"]

# Imported once at module level: AutoGraph would try to convert an import inside a traced step.
tf = require("tensorflow", "MAML-family meta-learning")
keras = require("keras", "MAML-family meta-learning")


def embedding_dim(backbone: Any) -> int:
    """Size D of the backbone's (None, D) embedding output.

    Raises:
        ValueError: If the backbone's output is not a flat, statically sized embedding.
    """
    shape = backbone.output_shape
    if len(shape) != 2 or shape[-1] is None:
        raise ValueError(f"the backbone must output (None, D) embeddings, got {shape}")
    return int(shape[-1])


def cross_entropy_accuracy(logits: Any, labels: Any) -> tuple[Any, Any]:
    """Mean sparse softmax cross-entropy and accuracy of ``logits`` (N, n_way), ``labels`` (N,)."""
    labels = tf.cast(labels, tf.int32)
    loss = tf.reduce_mean(
        tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    hits = tf.equal(tf.argmax(logits, axis=1, output_type=tf.int32), labels)
    return loss, tf.reduce_mean(tf.cast(hits, tf.float32))


class _FastWeightLearner(MetaLearner):
    """Shared machinery: a functional forward pass with fast weights and the SGD inner loop.

    Fast weights are a list of tensors: the backbone's trainable variables (in
    ``backbone.trainable_variables`` order), then the head kernel (D, n_way) and bias (n_way,).
    """

    def __init__(self, backbone: Any, config: TrainConfig) -> None:
        super().__init__(backbone, config)
        self.dim = embedding_dim(backbone)
        self._n_backbone = len(backbone.trainable_variables)
        # The head and the inner learning rate follow the backbone's weights (float32 normally).
        self.dtype = tf.as_dtype(backbone.trainable_variables[0].dtype)

    def _forward(self, fast: Sequence[Any], non_trainable: Sequence[Any], x: Any
                 ) -> tuple[Any, list[Any]]:
        """Logits of ``x`` with fast weights, and the BatchNorm state after the pass."""
        emb, new_state = self.backbone.stateless_call(
            list(fast[:self._n_backbone]), list(non_trainable), x, training=True)
        kernel, bias = fast[self._n_backbone], fast[self._n_backbone + 1]
        return tf.matmul(emb, kernel) + bias, new_state

    def _sgd_steps(self, fast: list[Any], non_trainable: list[Any], x: Any, y: Any,
                   steps: int) -> tuple[list[Any], list[Any]]:
        """``steps`` full-batch SGD steps with ``config.inner_lr`` on the cross-entropy of (x, y).

        Unrolled in Python (``steps`` is static), so an enclosing tape records every update and
        can differentiate through it (second-order MAML).

        Returns:
            ``(adapted weights, BatchNorm state after the first pass)``: the first pass runs the
            starting weights.
        """
        lr = tf.constant(self.config.inner_lr, self.dtype)
        first_state = list(non_trainable)
        for i in range(steps):
            with tf.GradientTape() as inner:
                inner.watch(fast)
                logits, state = self._forward(fast, non_trainable, x)
                loss, _ = cross_entropy_accuracy(logits, y)
            grads = inner.gradient(loss, fast)
            if i == 0:
                first_state = state
            fast = [w - lr * g for w, g in zip(fast, grads)]
        return fast, first_state

    def _sgd(self, start: list[Any], non_trainable: list[Any], x: Any, y: Any, steps: int,
             first_order: bool, tape: Any = None) -> tuple[list[Any], list[Any]]:
        """Adapt ``start`` with :meth:`_sgd_steps`, differentiably or first-order.

        Args:
            start: Starting weights (tensors read inside ``tape`` if gradients should reach
                the variables they came from).
            non_trainable: The backbone's BatchNorm state.
            x, y: The data of every step (full batch: episodes are small).
            steps: Number of SGD steps.
            first_order: Treat the inner gradients as constants: phi = start - lr * sum(g_i)
                then has the identity as derivative with respect to ``start``.
            tape: The enclosing (outer) tape, if any. In first-order mode it is paused during
                the loop so that it does not record an inner loop it would never differentiate.

        Returns:
            ``(adapted weights, BatchNorm state after the first pass)``.
        """
        if not first_order:
            return self._sgd_steps(start, non_trainable, x, y, steps)
        with tape.stop_recording() if tape is not None else contextlib.nullcontext():
            detached = [tf.stop_gradient(w) for w in start]
            phi, state = self._sgd_steps(detached, non_trainable, x, y, steps)
            update = [tf.stop_gradient(w - p) for w, p in zip(detached, phi)]
        return [w - u for w, u in zip(start, update)], state

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

    Meta-parameters: the backbone's trainable variables and a linear head (:attr:`head_kernel`
    (D, n_way), :attr:`head_bias` (n_way,)) in :attr:`extra_variables`, zero at the start and
    meta-learned. Per task: ``config.inner_steps`` SGD steps with ``config.inner_lr`` on the
    support cross-entropy, then the query cross-entropy of the adapted weights is differentiated
    with respect to the meta-parameters, through the inner updates (``maml``: nested tapes,
    i.e. Hessian-vector products) or with the inner gradients held constant (``fomaml``).

    The moving statistics come from the query pass (25 images for 5-way 5-query, against 5 in
    a 1-shot support set: the batch variance of 5 images is much noisier).

    Defaults: ``inner_lr=0.4`` (Finn et al., Omniglot) and ``inner_steps=5``. Measured on this
    machine, 5-way 1-shot 5-query, Conv-4 (64 filters), compiled: maml 0.09 s, fomaml 0.043 s
    per task.
    """

    def __init__(self, backbone: Any, config: TrainConfig) -> None:
        super().__init__(backbone, config)
        self.first_order = config.algorithm == "fomaml"
        self.head_kernel = keras.Variable(tf.zeros((self.dim, config.n_way), self.dtype),
                                          name="head_kernel", dtype=self.dtype.name)
        self.head_bias = keras.Variable(tf.zeros((config.n_way,), self.dtype), name="head_bias",
                                        dtype=self.dtype.name)
        self.extra_variables.extend([self.head_kernel, self.head_bias])

    def _meta_parameters(self) -> list[Any]:
        return self._theta() + [tf.convert_to_tensor(self.head_kernel),
                                tf.convert_to_tensor(self.head_bias)]

    def task_grads(self, sx: Any, sy: Any, qx: Any, qy: Any) -> tuple[list[Any], Any, Any]:
        """Meta-gradients for :attr:`variables`, the post-adaptation query loss and accuracy.

        Also writes the query pass's BatchNorm moving statistics to the backbone.
        """
        with tf.GradientTape() as outer:
            # Reading the variables inside the tape makes them the differentiation sources.
            fast, _ = self._sgd(self._meta_parameters(), self._state(), sx, sy,
                                self.config.inner_steps, self.first_order, tape=outer)
            logits, query_state = self._forward(fast, self._state(), qx)
            loss, acc = cross_entropy_accuracy(logits, qy)
        grads = outer.gradient(loss, self.variables)
        self._assign_state(query_state)
        return grads, loss, acc

    def adapt_and_score(self, sx: Any, sy: Any, qx: Any, qy: Any,
                        steps: int | None = None) -> tuple[Any, Any]:
        """Query loss and accuracy after adapting to the support set; changes no variable.

        MAML's own evaluation (Finn et al.); the board uses prototypes instead. ``steps``
        defaults to ``config.inner_steps``.
        """
        fast, _ = self._sgd_steps(self._meta_parameters(), self._state(), sx, sy,
                                  steps or self.config.inner_steps)
        logits, _ = self._forward(fast, self._state(), qx)
        return cross_entropy_accuracy(logits, qy)


@register_learner("reptile")
class ReptileLearner(_FastWeightLearner):
    """Reptile (Nichol et al. 2018) with a plain-SGD inner loop and a per-task zero head.

    Per task: start from the backbone's meta-parameters theta and a zero head, take
    ``config.inner_steps`` SGD steps with ``config.inner_lr`` on the task's support and query
    images together (full batch), reaching phi. :meth:`task_grads` returns ``theta - phi`` for
    the backbone's variables in place of gradients, so an optimiser step ``theta -= eps *
    (theta - phi)`` moves theta toward phi (Adam, as the trainer uses, rescales the direction
    per coordinate, as in Nichol et al.'s Adam outer loop).

    The head is not a meta-parameter: it is zero at the start of every task (a meta-learned head
    would drift toward the mean of heads fitted to random label permutations, i.e. noise around
    zero), so :attr:`variables` is just the backbone's trainable variables. BatchNorm moving
    statistics come from the first inner pass, which runs theta itself on all of the task's images.

    Defaults: use ``inner_lr=0.1`` with ``inner_steps=5`` (not TrainConfig's 0.4, which is for
    MAML): on synthetic glyphs, 5-way 1-shot, inner lr 0.1 / 0.4 / 1.0 reached 0.73 / 0.64 / 0.60
    adapted query accuracy after 200 tasks. Nichol et al. use an Adam inner loop (lr 1e-3), which
    plain SGD does not reproduce. Measured: 0.11 s per 5-way 1-shot 5-query task (Conv-4, 64
    filters, compiled; each inner step sees 30 images).
    """

    def __init__(self, backbone: Any, config: TrainConfig) -> None:
        super().__init__(backbone, config)
        self._head0 = [tf.zeros((self.dim, config.n_way), self.dtype),
                       tf.zeros((config.n_way,), self.dtype)]

    def _adapt(self, x: Any, y: Any, steps: int) -> tuple[list[Any], list[Any], list[Any]]:
        theta = self._theta()
        # No outer tape: Reptile never differentiates through its inner loop.
        fast, state = self._sgd_steps(theta + list(self._head0), self._state(), x, y, steps)
        return theta, fast, state

    def task_grads(self, sx: Any, sy: Any, qx: Any, qy: Any) -> tuple[list[Any], Any, Any]:
        """``theta - phi`` for :attr:`variables`, and phi's query loss and accuracy.

        The query is part of the inner loop's data, so its loss and accuracy measure the fit,
        not generalisation (use :meth:`adapt_and_score` on held-out tasks for that). Also writes
        BatchNorm moving statistics of theta on the task's images to the backbone.
        """
        theta, fast, state = self._adapt(tf.concat([sx, qx], axis=0),
                                         tf.concat([sy, qy], axis=0), self.config.inner_steps)
        directions = [t - p for t, p in zip(theta, fast[:self._n_backbone])]
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
