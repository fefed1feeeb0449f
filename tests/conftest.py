"""The fixtures that more than one test file uses; pytest finds them here. Helpers are in helpers.py.

Every test that computes runs on each backend this machine has (the ``backend`` fixture).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from engine_check import POLICIES, policy_backend
from helpers import ALL_BACKENDS, ENGINE_BACKENDS, TINY, backend_or_skip, patch_images, run_quietly

from training.data import write_svhn_mat


@pytest.fixture(params=ALL_BACKENDS)
def backend(request):
    """Each backend in turn; cuda is skipped, with the reason, where there is no GPU."""
    return backend_or_skip(request.param)


@pytest.fixture(params=ENGINE_BACKENDS)
def any_engine(request):
    """Each backend in turn, and cpu and strict running the reference engines (the per-op tests)."""
    return backend_or_skip(request.param)


@pytest.fixture(params=list(POLICIES))
def policy(request):
    """A backend with a device policy imposed (engine_check.POLICIES): each engine under each policy."""
    return policy_backend(request.param)


@pytest.fixture(params=("float32", "float64"))
def dtype(request) -> str:
    return request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """Synthetic data cached in this test's own folder, never in ~/.cache."""
    monkeypatch.setenv("XPNET_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> Path:
    """A finished 2-epoch TINY run's folder (never modify it: copy it with copy_run)."""
    folder = tmp_path_factory.mktemp("finished") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XPNET_CACHE", str(tmp_path_factory.mktemp("cache")))
        code, _, err = run_quietly(TINY + ["--epochs", "2", "--out", str(folder)])
    assert code == 0, err
    return folder


@pytest.fixture(scope="module")
def svhn_patches(tmp_path_factory):
    """SVHN-format files: 96 training images, 40 test images of other patches (helpers.patch_images).

    Returns (the folder, {"train": (images, labels), "test": (images, labels)}).
    """
    root = tmp_path_factory.mktemp("svhn")
    rng = np.random.default_rng(11)
    arrays = {}
    for split, n in (("train", 96), ("test", 40)):
        labels = rng.integers(0, 10, n)
        images = patch_images(labels, rng)
        write_svhn_mat(root / f"{split}_32x32.mat", images, labels)
        arrays[split] = (images, labels)
    return root, arrays
