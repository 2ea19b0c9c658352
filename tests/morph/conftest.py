import pytest

import morphsparse as ms


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's bundled digits as (x_train, y_train, x_test, y_test), images with a channel axis."""
    (x, y), (xt, yt) = ms.load_digits()
    return x[..., None], y, xt[..., None], yt
