import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _fresh_keras_session():
    """Layer names restart for every test, so tests can refer to auto-generated names reliably."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(0)
    yield


def _restoring(*registries, saving=False):
    """Snapshot dict registries and put them back after the test, so that what one test registers (a handler,
    an updater, a sparsity type) cannot change what later tests see. ``saving``: also take the classes the test
    registered out of Keras' saving registry (only those: modules imported during the test keep theirs)."""
    saved = [dict(registry) for registry in registries]
    custom = keras.saving.get_custom_objects()
    custom_before = dict(custom)
    yield
    added = set()
    for registry, before in zip(registries, saved):
        added |= {id(value) for key, value in registry.items() if before.get(key) is not value}
        registry.clear()
        registry.update(before)
    for name, value in list(custom.items()) if saving else ():
        if id(value) in added:
            if name in custom_before:
                custom[name] = custom_before[name]
            else:
                del custom[name]


@pytest.fixture
def handler_registry():
    """For tests that call ``ms.register_handler``: both handler tables (by class and by class name)."""
    import sys

    import morphsparse as ms

    module = sys.modules[ms.register_handler.__module__]     # wherever the handler tables live
    yield from _restoring(module._REGISTRY, module._NAME_REGISTRY)


@pytest.fixture
def updater_registry():
    """For tests that call ``register_updater`` (which also registers the class with Keras' saving)."""
    from morphsparse.sparse import UPDATERS

    yield from _restoring(UPDATERS, saving=True)


@pytest.fixture
def sparsity_type_registry():
    """For tests that call ``register_sparsity_type`` (which also registers the class with Keras' saving)."""
    from morphsparse.sparse import SPARSITY_TYPES

    yield from _restoring(SPARSITY_TYPES, saving=True)
