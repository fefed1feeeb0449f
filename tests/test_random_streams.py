"""Every random draw of a run is its own: properties over every model and the augmentation.

The counter-based generator (backends/random.py) gives bits[i] = mix64(key + (i+1)·γ), so
two draws with the same key are the same numbers, and a shorter one is a *prefix* of a
longer one; keys that differ by a multiple of γ give *shifted copies*. A model that gave
two Dropout layers the same stream (or an augmentation keyed by batch position alone)
would still train, just worse, and nothing else would notice. These tests look at the
masks and shifts themselves:

* each random layer of every model (models/) draws its own masks: no mask equals, is a
  prefix of, or is a shifted copy of another layer's at any step;
* a layer's masks differ from step to step, and the augmentation's shifts from batch to
  batch and from epoch to epoch;
* a resumed model or loader draws exactly what the uninterrupted one drew.
"""
from __future__ import annotations

import numpy as np
import pytest

from backends import get_backend
from layers import Dropout
from models import MODELS, build_model

STEPS = 3


def random_layers(model) -> list:
    """The layers of ``model`` that draw random numbers: every layer with a seed and a stream."""
    found = []
    for layer in model.layers:
        found.extend(random_layers(layer) if hasattr(layer, "layers") else [])
        if hasattr(layer, "seed") and hasattr(layer, "stream"):
            found.append(layer)
    return found


def masks_of(model, backend, steps: int = STEPS, batch: int = 2) -> list[list[np.ndarray]]:
    """masks[layer][step]: the 0/1 keep mask (flat) each random layer drew in ``steps`` training forwards."""
    layers = random_layers(model)
    masks = [[] for _ in layers]
    x = backend.asarray(np.ones((batch, *model.input_shape), np.float32))
    model.train()
    for _ in range(steps):
        model.forward(x)
        for index, layer in enumerate(layers):
            masks[index].append(backend.to_numpy(layer._saved()).reshape(-1) != 0)  # the mask its backward uses
    return masks


def overlaps(a: np.ndarray, b: np.ndarray) -> str | None:
    """How the shorter of two draws repeats the longer: equal, a prefix, or a shifted copy (None if it does not).

    Only draws of at least 64 elements are compared: a short 0/1 pattern can match by chance."""
    short, long = (a, b) if a.size <= b.size else (b, a)
    assert short.size >= 64, "too short to tell a repeat from chance"
    windows = np.lib.stride_tricks.sliding_window_view(long, short.size)
    matches = np.flatnonzero((windows == short).all(axis=1))
    if not matches.size:
        return None
    if matches[0] == 0:
        return "equal" if a.size == b.size else "a prefix"
    return f"a copy shifted by {matches[0]}"


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_random_layer_of_every_model_draws_its_own_masks(name):
    cpu = get_backend("cpu")
    model = build_model(name, seed=0, backend=cpu)
    layers = random_layers(model)
    if name == "cnn":
        assert len(layers) == 2  # the finder sees the cnn's two Dropout layers
    streams = [(layer.seed, layer.stream) for layer in layers]
    assert len(set(streams)) == len(streams), streams
    masks = masks_of(model, cpu)
    for i in range(len(layers)):
        for j in range(i + 1, len(layers)):
            for step in range(STEPS):
                for other_step in range(STEPS):
                    found = overlaps(masks[i][step], masks[j][other_step])
                    assert found is None, (f"{name}: layer {i}'s mask at step {step} and layer {j}'s at step {other_step}: "
                                           f"{found}")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_each_random_layer_draws_a_new_mask_every_step(name):
    cpu = get_backend("cpu")
    model = build_model(name, seed=0, backend=cpu)
    for index, layer_masks in enumerate(masks_of(model, cpu)):
        for step in range(STEPS):
            for later in range(step + 1, STEPS):
                assert overlaps(layer_masks[step], layer_masks[later]) is None, (name, index, step, later)


def test_models_with_other_seeds_draw_other_masks():
    cpu = get_backend("cpu")
    first, second = (masks_of(build_model("cnn", seed=seed, backend=cpu), cpu, steps=1) for seed in (0, 1))
    for a, b in zip(first, second):
        assert overlaps(a[0], b[0]) is None


def test_two_dropout_layers_sharing_a_stream_are_caught():
    """The check above, on the bug it is for: the second mask is a prefix of the first."""
    cpu = get_backend("cpu")
    a, b = Dropout(0.3, seed=0, stream=1).to(cpu), Dropout(0.3, seed=0, stream=1).to(cpu)
    a.forward(cpu.asarray(np.ones((2, 1024), np.float32)))
    b.forward(cpu.asarray(np.ones((2, 128), np.float32)))
    assert overlaps(cpu.to_numpy(a._saved()).reshape(-1) != 0, cpu.to_numpy(b._saved()).reshape(-1) != 0) == "a prefix"


def test_a_resumed_model_draws_what_the_uninterrupted_one_drew():
    """Layer state after step 2 (what a checkpoint keeps) loaded into a fresh cnn: its steps 3 and 4
    draw the uninterrupted run's masks."""
    cpu = get_backend("cpu")
    uninterrupted = build_model("cnn", seed=5, backend=cpu)
    first = masks_of(uninterrupted, cpu, steps=2)
    state = uninterrupted.layer_state()
    later = masks_of(uninterrupted, cpu, steps=2)
    resumed = build_model("cnn", seed=5, backend=cpu)
    resumed.load_layer_state(state)
    resumed_masks = masks_of(resumed, cpu, steps=2)
    for layer, (expected, got) in enumerate(zip(later, resumed_masks)):
        for step in range(2):
            np.testing.assert_array_equal(got[step], expected[step], err_msg=f"layer {layer}, step {step + 3}")
    fresh = masks_of(build_model("cnn", seed=5, backend=cpu), cpu, steps=1)
    assert overlaps(fresh[0][0], resumed_masks[0][0]) is None  # without the state it would draw step 1's again
    np.testing.assert_array_equal(fresh[0][0], first[0][0])


# -- augmentation -----------------------------------------------------------------------------------
SIZE, BATCH, SHIFT = 8, 32, 3  # 8x8 images, shifts up to 3 pixels: the centre pixel is never padding


def loader_shifts(epochs, start=0, seed=1) -> dict[tuple[int, int], np.ndarray]:
    """{(epoch, batch): (2, B) row and column shifts} of a loader's augmented batches, read off the
    images: every image is the same, its pixel (i, j) holding i·8 + j, so the centre of a shifted
    image says by how much it moved."""
    from training.data import DataLoader
    from training.data.augment import RandomShift

    cpu = get_backend("cpu")
    grid = np.arange(SIZE * SIZE, dtype=np.uint8).reshape(1, 1, SIZE, SIZE)
    images = np.repeat(np.repeat(grid, 3, axis=1), 4 * BATCH, axis=0)
    labels = np.zeros(4 * BATCH, np.int64)
    loader = DataLoader(images, labels, BATCH, cpu, [0.0] * 3, [1.0] * 3, seed=seed,
                        augment=RandomShift(SHIFT, seed=seed))
    loader.set_epoch(start)
    shifts = {}
    for epoch in range(start, start + epochs):
        for number, (x, _) in enumerate(loader):
            centre = np.rint(cpu.to_numpy(x)[:, 0, SIZE // 2, SIZE // 2] * 255).astype(int)  # (i + a)·8 + (j + b)
            shifts[epoch, number] = np.stack([centre // SIZE - SIZE // 2, centre % SIZE - SIZE // 2])
    return shifts


def test_augmentation_draws_differ_across_batches_and_epochs():
    shifts = loader_shifts(epochs=3)
    assert len(shifts) == 12
    assert all(np.abs(s).max() <= SHIFT for s in shifts.values())
    assert {int(v) for s in shifts.values() for v in s.reshape(-1)} == set(range(-SHIFT, SHIFT + 1))
    names = sorted(shifts)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            found = overlaps(shifts[a].reshape(-1), shifts[b].reshape(-1))
            assert found is None, f"epoch {a[0]} batch {a[1]} and epoch {b[0]} batch {b[1]}: {found}"
        rows, columns = shifts[a]
        assert not np.array_equal(rows, columns), a  # rows and columns are separate draws


def test_a_resumed_loader_shifts_as_the_uninterrupted_one():
    uninterrupted = loader_shifts(epochs=3)
    resumed = loader_shifts(epochs=1, start=2)
    for number in range(4):
        np.testing.assert_array_equal(resumed[2, number], uninterrupted[2, number])
    other_seed = loader_shifts(epochs=1, seed=2)
    assert overlaps(other_seed[0, 0].reshape(-1), uninterrupted[0, 0].reshape(-1)) is None
