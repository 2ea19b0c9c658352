"""What setup.cfg declares: one TensorFlow distribution across the package and every extra."""

import configparser
import re
from pathlib import Path

SETUP = Path(__file__).resolve().parents[1] / "setup.cfg"


def _requirements():
    config = configparser.ConfigParser()
    config.read(SETUP)
    lines = config["options"]["install_requires"].splitlines()
    for extra in config["options.extras_require"].values():
        lines += extra.splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def test_one_tensorflow_distribution_everywhere():
    # keras-hub pulls tensorflow-text, which requires `tensorflow`: a `tensorflow-cpu` anywhere else would install
    # a second copy of TensorFlow into the same site-packages directory
    names = {re.match(r"[A-Za-z0-9_.-]+", line).group(0).lower().replace("_", "-") for line in _requirements()}
    tensorflows = {n for n in names if n in ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tf-nightly")}
    assert tensorflows == {"tensorflow"}, tensorflows
