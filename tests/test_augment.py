"""Random shifts (training/data/augment.py) against their definition on every backend, per image
and seeded, the loader's shifts keyed by epoch and batch, and the sizes they refuse."""
from __future__ import annotations

import numpy as np
import pytest

from training.data.augment import RandomShift, shift_reference
from training.errors import DataError


def test_shifts_match_the_definition_on_every_backend(backend, rng):
    images = rng.integers(0, 256, (6, 3, 9, 8), dtype=np.uint8)
    shift = RandomShift(3, seed=4)
    for x in (images, images.astype(np.float32)):
        out = backend.to_numpy(shift(backend, backend.asarray(x), (2, 5)))
        rows, columns = shift.shifts(backend, 6, (2, 5))
        assert out.dtype == x.dtype
        np.testing.assert_array_equal(out, shift_reference(x, rows, columns))


def test_shifts_are_per_image_seeded_and_cover_the_range(backend):
    from backends import get_backend

    shift = RandomShift(3, seed=0)
    rows, columns = shift.shifts(backend, 2000, (1, 0))
    assert set(np.unique(rows)) == set(range(-3, 4)) and set(np.unique(columns)) == set(range(-3, 4))
    assert abs(np.corrcoef(rows, columns)[0, 1]) < 0.1
    cpu_rows, _ = shift.shifts(get_backend("cpu"), 2000, (1, 0))
    np.testing.assert_array_equal(rows, cpu_rows)  # the same draw on every backend
    assert not np.array_equal(rows, shift.shifts(backend, 2000, (1, 1))[0])  # another batch, other shifts
    assert not np.array_equal(rows, RandomShift(3, seed=1).shifts(backend, 2000, (1, 0))[0])


def test_edge_padding_repeats_the_border():
    from backends import get_backend

    cpu = get_backend("cpu")
    image = np.arange(25, dtype=np.float32).reshape(1, 1, 5, 5)
    np.testing.assert_array_equal(shift_reference(image, [3], [-3])[0, 0],
                                  [[15, 15, 15, 15, 16], [20, 20, 20, 20, 21]] + [[20, 20, 20, 20, 21]] * 3)
    shift = RandomShift(2, seed=0)
    rows, columns = shift.shifts(cpu, 1, (0, 0))
    np.testing.assert_array_equal(shift(cpu, image, (0, 0)), shift_reference(image, rows, columns))


def test_loader_shifts_each_batch_with_its_epoch_and_number(rng):
    """Host-gathered and device-resident loaders give the same shifted batches; the shifts are those
    of (epoch, batch number), so a resumed epoch sees the same images."""
    from backends import get_backend
    from training.data import DataLoader

    cpu = get_backend("cpu")
    images, labels = rng.integers(0, 256, (20, 3, 8, 8), dtype=np.uint8), rng.integers(0, 10, 20)
    shift = RandomShift(3, seed=9)
    batches = {}
    for resident in (False, True):
        loader = DataLoader(images, labels, 8, cpu, [0.5] * 3, [0.25] * 3, seed=1, device_resident=resident, augment=shift)
        loader.set_epoch(3)
        batches[resident] = [(x.copy(), y.copy()) for x, y in loader]
    plain = DataLoader(images, labels, 8, cpu, [0.5] * 3, [0.25] * 3, seed=1)
    plain.set_epoch(3)
    for number, ((x, y), (x_resident, _), (x_plain, y_plain)) in enumerate(zip(batches[False], batches[True], plain)):
        np.testing.assert_array_equal(x, x_resident)
        np.testing.assert_array_equal(y, y_plain)
        rows, columns = shift.shifts(cpu, x.shape[0], (3, number))
        np.testing.assert_array_equal(x, shift_reference(x_plain, rows, columns))


@pytest.mark.parametrize("shape", [(4, 3, 6, 8), (4, 3, 8, 5)])
def test_images_too_small_to_shift_are_a_data_error(rng, shape):
    from training.data import DataLoader

    images = rng.integers(0, 256, shape, dtype=np.uint8)
    with pytest.raises(DataError, match=r"'augment' shifts images by up to 3 pixels, which needs images \(C, H, W\) of "
                                        r"at least 7x7 pixels; these are"):
        DataLoader(images, np.zeros(4, dtype=np.int64), 2, "cpu", [0.5] * 3, [0.2] * 3, augment=RandomShift(3))


def test_bad_shift_sizes_are_refused():
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="max_shift must be a whole number >= 1"):
            RandomShift(bad)
