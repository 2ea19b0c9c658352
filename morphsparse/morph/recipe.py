"""How the structural tools compile the models they build (``cycle``, ``prune``): like the user's own.

A tool that trains a model it made (a widened network, a pruned one) compiles it with the user's callable, or
with the seed's own compile configuration, so every new model gets a fresh optimizer of the same kind.
"""

from __future__ import annotations


def compiler_like(model, compile=None, caller="this function", required=True):
    """A function compiling a new model: ``compile`` (the user's callable) or the configuration ``model`` was
    compiled with. When neither exists: a ValueError naming ``caller`` if ``required``, else None."""
    if compile is not None:
        if not callable(compile):
            raise TypeError(f"compile= must be a callable taking a model (and compiling it), got {compile!r}")
        return compile
    config = model.get_compile_config() if model.compiled else None
    if not config:
        if required:
            raise ValueError(f"{caller} needs to compile the models it builds: compile the seed model '{model.name}' "
                             "first, or pass compile=lambda m: m.compile(...)")
        return None

    def compile_like_seed(new_model):
        new_model.compile_from_config(config)

    return compile_like_seed


__all__ = ["compiler_like"]
