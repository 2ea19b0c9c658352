"""Knowledge distillation with any ``fit``: ``d = ms.distill(student, teacher); d.compile(...); d.fit(x, y)``.

Why: a small student (a pruned model, say) can learn more from a teacher's softened predictions than from the
labels alone, since they carry how the teacher ranks the wrong classes too (Hinton, Vinyals and Dean 2015,
"Distilling the Knowledge in a Neural Network"). The loss of a batch is

    (1 - weight) * task_loss + weight * T**2 * mean over the batch of KL(softmax(t / T) || softmax(s / T))

with ``t``, ``s`` the teacher's and the student's logits and ``task_loss`` the compiled loss plus the student's
regularisation losses (so those are scaled by 1 - weight too); sample weights weight the task loss only. The
gradient of the soft term scales as 1/T**2, so the T**2 factor keeps its size independent of the temperature and
``weight`` means the same thing at any T.

The teacher runs with ``training=False`` (BatchNorm uses its moving statistics, dropout is off) under
``stop_gradient``, so its moving statistics must be current: after a short training (or with MobileNetV2's
BatchNorm momentum of 0.999) re-estimate them first with ``ms.recalibrate_batchnorm(teacher, x[:2048])``; the Distiller lists only the student's weights as trainable, so the teacher is frozen without
changing the user's teacher object (its ``trainable`` flag is left as it is). ``call`` is the student, so
``predict`` and the compiled metrics of ``evaluate`` score the student (the reported loss is the distillation
loss). The student is trained in place: after ``fit``, ``distiller.student`` is the object passed in. Save that
(``distiller.student.save(...)``): a Distiller has no config and ``distiller.save`` raises NotImplementedError.
"""

import math

import keras
from keras import ops

from morphsparse.morph.alive import real_number


def _check_number(name, value, valid, meaning):
    number = real_number(name, value)   # a TypeError naming the argument for bools, strings, None...
    if not (math.isfinite(number) and valid(number)):
        raise ValueError(f"{name} must be {meaning}, got {value!r}")
    return number


def _logits_shape(model, role):
    """The output shape of a built single-output model, None if not known yet."""
    if not isinstance(model, keras.Model):
        raise TypeError(f"{role} must be a keras.Model, got {type(model).__name__}")
    outputs = getattr(model, "outputs", None) if model.built else None
    if not outputs:
        return None
    if len(outputs) != 1:
        raise ValueError(f"{role} '{model.name}' has {len(outputs)} outputs; distillation needs a model with a "
                         "single output of logits (build one that returns only the logits)")
    return tuple(outputs[0].shape)


def _same_shape(a, b):
    """Shapes equal where both are known (the batch axis is ignored)."""
    return len(a) == len(b) and all(m is None or n is None or m == n for m, n in zip(tuple(a)[1:], tuple(b)[1:]))


def _others(variables, excluded):
    excluded = {id(v) for v in excluded}
    return [v for v in variables if id(v) not in excluded]


class Distiller(keras.Model):
    """``student`` trained to fit the labels and the frozen ``teacher``'s softened logits (see the module)."""

    def __init__(self, student, teacher, temperature=4.0, weight=0.5, **kwargs):
        student_shape, teacher_shape = _logits_shape(student, "student"), _logits_shape(teacher, "teacher")
        if student is teacher:
            raise ValueError("teacher and student are the same model; distill into a separate student (e.g. "
                             "keras.models.clone_model(teacher) or ms.prune(teacher, ...))")
        if None not in (student_shape, teacher_shape) and not _same_shape(student_shape, teacher_shape):
            raise ValueError(f"the outputs of student '{student.name}' {student_shape} and teacher '{teacher.name}' "
                             f"{teacher_shape} differ in shape; both must output logits over the same classes")
        temperature = _check_number("temperature", temperature, lambda t: t > 0, "a finite number > 0 (e.g. 4.0)")
        weight = _check_number("weight", weight, lambda w: 0 <= w <= 1, "a number in [0, 1] (0: labels only)")
        super().__init__(name=kwargs.pop("name", f"distill_{student.name}"), **kwargs)
        self.student, self.teacher, self.temperature, self.weight = student, teacher, temperature, weight
        self.built = student.built

    # The teacher's variables stay trainable on the teacher but are not the Distiller's to train (the optimizer,
    # the gradient tape and the regularisation losses all read these lists).
    @property
    def trainable_weights(self):
        return list(self.student.trainable_weights) if self.trainable else []

    trainable_variables = trainable_weights

    @property
    def non_trainable_weights(self):
        return _others(self.weights, self.trainable_weights)

    @property
    def non_trainable_variables(self):
        return _others(self.variables, self.trainable_weights)

    def build(self, input_shape=None):
        self.built = True   # the student and the teacher build on their first call

    def call(self, x, training=None):
        return self.student(x, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if not hasattr(y_pred, "shape"):
            raise ValueError(f"student '{self.student.name}' returned {type(y_pred).__name__} outputs; distillation "
                             "needs a model with a single output of logits")
        # the task loss first: it reads self.losses, which the teacher's call would add its own to
        task_loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        teacher_logits = ops.stop_gradient(self.teacher(x, training=False))
        soft = self.distillation_loss(teacher_logits, y_pred)
        return (1.0 - self.weight) * ops.cast(task_loss, "float32") + self.weight * soft

    def distillation_loss(self, teacher_logits, student_logits):
        """T**2 * KL(softmax(teacher / T) || softmax(student / T)), averaged over all axes but the classes."""
        if not hasattr(teacher_logits, "shape") or not _same_shape(teacher_logits.shape, student_logits.shape):
            raise ValueError(f"the outputs of student '{self.student.name}' {tuple(student_logits.shape)} and teacher "
                             f"'{self.teacher.name}' {getattr(teacher_logits, 'shape', teacher_logits)} differ")
        t = ops.cast(teacher_logits, "float32") / self.temperature
        s = ops.cast(student_logits, "float32") / self.temperature
        kl = ops.sum(ops.softmax(t, axis=-1) * (ops.log_softmax(t, axis=-1) - ops.log_softmax(s, axis=-1)), axis=-1)
        return self.temperature ** 2 * ops.mean(kl)

    def get_config(self):
        raise NotImplementedError(f"a Distiller is a training wrapper and cannot be serialised; save the trained "
                                  f"student instead: distiller.student.save('{self.student.name}.keras')")


def distill(student, teacher, temperature=4.0, weight=0.5):
    """A :class:`Distiller` training ``student`` (in place) against the frozen ``teacher``: compile it with an
    optimizer and a loss on logits (e.g. ``SparseCategoricalCrossentropy(from_logits=True)``), then ``fit``."""
    return Distiller(student, teacher, temperature=temperature, weight=weight)
