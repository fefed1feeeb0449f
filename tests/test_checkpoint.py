"""Checkpoints (training/checkpoint.py): a round trip restores the weights and every optimizer
state, another model's or optimizer's checkpoint is refused, a damaged or pickled file is a clear
error, a failed save keeps the previous file, a checkpoint may hold no optimizer state, and the
reader, fuzzed with random bytes, mutated files and odd archives, raises only CheckpointError."""
from __future__ import annotations

import io
import json
import re
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers import EDITS, call_cli, evaluated, mutate, reference_channel_stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import cli
from backends import get_backend
from layers import CrossEntropyLoss
from models import MLP, build_model
from training.errors import CheckpointError
from training.optim import SGD, Adam
from training.saving.checkpoint import (
    MAX_ITEMSIZE,
    MAX_NUMBERS,
    entry_limits,
    load_checkpoint,
    model_size,
    read_header,
    save_checkpoint,
)


def trained_pair(backend, steps=3):
    model = build_model("lnet", seed=1).to(backend)
    optimizer = Adam(model.parameters(), lr=1e-3, amsgrad=True)
    rng = np.random.default_rng(0)
    loss = CrossEntropyLoss()
    for _ in range(steps):
        x = backend.asarray(rng.standard_normal((4, 3, 32, 32)), dtype="float32")
        loss.forward(model.forward(x), backend.asarray(rng.integers(0, 10, 4)))
        model.backward(loss.backward(), input_grad=False)
        optimizer.step()
    return model, optimizer


def test_checkpoint_round_trip(backend, tmp_path):
    model, optimizer = trained_pair(backend)
    history = [{"epoch": 1, "test_acc": 0.5}]
    save_checkpoint(tmp_path / "c.npz", model, optimizer, epoch=1, backend=backend, config={"lr": 1e-3}, history=history)
    checkpoint = load_checkpoint(tmp_path / "c.npz")
    assert checkpoint.epoch == 1 and checkpoint.config == {"lr": 1e-3} and checkpoint.history == history
    fresh = build_model("lnet", seed=9).to(backend)
    fresh_optimizer = Adam(fresh.parameters(), lr=0.5)
    checkpoint.restore_model(fresh, backend)
    checkpoint.restore_optimizer(fresh_optimizer)
    for a, b in zip(model.parameters(), fresh.parameters(), strict=True):
        np.testing.assert_array_equal(backend.to_numpy(a.data), backend.to_numpy(b.data))
    assert fresh_optimizer.lr == 1e-3 and fresh_optimizer.amsgrad
    assert fresh_optimizer.state[0]["step"] == 3
    # Every moment array (exp_avg, exp_avg_sq, max_exp_avg_sq) of every parameter came back.
    saved, restored = optimizer.state_dict()["state"], fresh_optimizer.state_dict()["state"]
    assert sorted(saved) == sorted(restored) == list(range(len(model.parameters())))
    for index, entries in saved.items():
        assert set(restored[index]) == set(entries) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
        for key, value in entries.items():
            got, want = restored[index][key], value
            if key != "step":
                got, want = backend.to_numpy(got), backend.to_numpy(want)
                assert np.any(want != 0), f"{key} of parameter {index} is all zero: the test would not see a lost state"
            np.testing.assert_array_equal(np.asarray(got), np.asarray(want), err_msg=f"{key} of parameter {index}")


def test_checkpoint_of_another_model_is_refused(tmp_path):
    cpu = get_backend("cpu")
    model, optimizer = trained_pair(cpu, steps=1)
    save_checkpoint(tmp_path / "lnet.npz", model, optimizer, epoch=1, backend=cpu)
    with pytest.raises(CheckpointError, match="checkpoint of model 'lnet', not 'mlp'; use 'model' lnet"):
        load_checkpoint(tmp_path / "lnet.npz").restore_model(build_model("mlp"), cpu)
    checkpoint = load_checkpoint(tmp_path / "lnet.npz")
    checkpoint.params["9.weight"] = np.zeros((12, 256), dtype=np.float32)
    with pytest.raises(CheckpointError, match=r"9.weight: saved \(12, 256\), model has \(10, 256\)"):
        checkpoint.restore_model(build_model("lnet"), cpu)


def test_checkpoint_with_another_optimizer_is_refused(tmp_path):
    path, model, _ = saved_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: .*saved by Adam, expected SGD.*; "
                                              "resume with the same 'optimizer'$"):
        load_checkpoint(path).restore_optimizer(SGD(model.parameters(), lr=0.1))


def saved_checkpoint(folder):
    """(path, model, optimizer) of a one-step LNet checkpoint written to ``folder``/c.npz."""
    cpu = get_backend("cpu")
    model, optimizer = trained_pair(cpu, steps=1)
    path = folder / "c.npz"
    save_checkpoint(path, model, optimizer, epoch=1, backend=cpu)
    return path, model, optimizer


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "missing"])
def test_damaged_checkpoints_are_clear_errors(tmp_path, damage):
    path, _, _ = saved_checkpoint(tmp_path)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.unlink()
    with pytest.raises(CheckpointError, match="corrupt|truncated|does not exist|not a readable"):
        load_checkpoint(path)


def test_pickled_checkpoint_is_refused_not_unpickled(tmp_path):
    path = tmp_path / "evil.npz"
    np.savez(path, meta=np.array("{}"), payload=np.array([{"a": 1}], dtype=object))
    message = f"{path} contains pickled objects; xpnet never unpickles files, so it refuses this one"
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$"):
        load_checkpoint(path)


class _OpensAFile:
    """Unpickling this creates ``path``: proof that a file was unpickled."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_a_pickle_file_is_refused_and_never_unpickled(tmp_path):
    import pickle

    marker, path = tmp_path / "unpickled", tmp_path / "evil.npz"
    path.write_bytes(pickle.dumps(_OpensAFile(marker)))
    message = f"{path} is not a readable xpnet checkpoint (not an .npz archive); it may be corrupt or truncated"
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$"):
        load_checkpoint(path)
    assert not marker.exists()


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    cpu = get_backend("cpu")
    path, model, optimizer = saved_checkpoint(tmp_path)
    before = path.read_bytes()

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    message = (f"cannot write checkpoint {path}: No space left on device; the previous checkpoint (if any) is unchanged; "
               "free some disk space or choose a writable 'out' folder")
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$"):
        save_checkpoint(path, model, optimizer, epoch=2, backend=cpu)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]  # no temporary file left behind


def test_a_checkpoint_is_saved_into_folders_that_do_not_exist_yet(tmp_path):
    model = build_model("mlp", seed=3)
    path = save_checkpoint(tmp_path / "runs" / "a" / "checkpoint.npz", model, epoch=0, backend=get_backend("cpu"))
    assert path.is_file() and load_checkpoint(path).epoch == 0


def test_the_header_holds_what_the_module_documents(tmp_path):
    """The layout in checkpoint.py's docstring, pinned: a model with buffers and layer state (the
    cnn), a step, a schedule and extras; and a model with none of them."""
    cpu = get_backend("cpu")
    model = build_model("cnn", seed=1).to(cpu, "float32")
    schedule = {"name": "onecycle", "total_steps": 10}
    path = save_checkpoint(tmp_path / "c.npz", model, Adam(model.parameters(), lr=1e-3), epoch=1, backend=cpu,
                           config={"model": "cnn"}, history=[], extra={"note": 1}, step=3, schedule=schedule)
    with np.load(path, allow_pickle=False) as stored:
        meta, files = json.loads(str(stored["meta"])), {name: stored[name] for name in stored.files}
    buffers = dict(model.named_buffers())
    assert meta == {
        "format": 1, "model": "cnn", "parameters": {p.name: list(p.shape) for p in model.parameters()},
        "dtype": "float32", "epoch": 1, "config": {"model": "cnn"}, "history": [], "extra": {"note": 1},
        "buffers": {name: list(array.shape) for name, array in buffers.items()},
        "layer_state": {"22": {"step": 0}, "25": {"step": 0}}, "step": 3, "schedule": schedule,
        "optimizer": {"name": "Adam", "hyper": {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-08, "weight_decay": 0.0,
                                                "amsgrad": False}, "num_params": len(model.parameters())},
    }
    for name, array in buffers.items():
        np.testing.assert_array_equal(files[f"buffer/{name}"], cpu.to_numpy(array))
        np.testing.assert_array_equal(load_checkpoint(path).buffers[name], cpu.to_numpy(array))

    mlp = build_model("mlp", seed=1).to(cpu, "float64")
    path = save_checkpoint(tmp_path / "m.npz", mlp, epoch=0, backend=cpu)
    with np.load(path, allow_pickle=False) as stored:
        assert json.loads(str(stored["meta"])) == {
            "format": 1, "model": "mlp", "parameters": {p.name: list(p.shape) for p in mlp.parameters()},
            "dtype": "float64", "epoch": 0, "config": {}, "history": [], "extra": {}}


def test_a_model_needs_only_a_name_and_parameters_to_be_saved(tmp_path):
    """A model of the user's own (not a Sequential): no buffers or layer state asked of it."""
    cpu = get_backend("cpu")
    inner = build_model("mlp", seed=1).to(cpu, "float64")

    class Bare:
        name = "mlp"

        def parameters(self):
            return inner.parameters()

    path = save_checkpoint(tmp_path / "bare.npz", Bare(), epoch=0, backend=cpu)
    assert load_checkpoint(path).params.keys() == {p.name for p in inner.parameters()}


@pytest.mark.parametrize("backend_name", ["cpu", "strict"])
def test_restore_model_copies_weights_and_buffers_in_the_models_dtype(tmp_path, backend_name):
    """Saved in float64, restored into a float32 cnn: weights and BatchNorm statistics are the
    saved values, in float32, on the model's backend."""
    backend = get_backend(backend_name)
    saved = build_model("cnn", seed=1).to(backend, "float64")
    rng = np.random.default_rng(0)
    for _, array in saved.named_buffers():
        array[...] = backend.asarray(rng.uniform(0.5, 2.0, array.shape), dtype="float64")
    path = save_checkpoint(tmp_path / "c.npz", saved, epoch=0, backend=backend)
    model = build_model("cnn", seed=2).to(backend, "float32")
    load_checkpoint(path).restore_model(model, backend)
    for original, restored in zip(saved.parameters(), model.parameters()):
        assert restored.data.dtype == backend.dtype("float32") and restored.grad is None
        np.testing.assert_array_equal(backend.to_numpy(restored.data), backend.to_numpy(original.data).astype(np.float32))
    for (name, original), (_, restored) in zip(saved.named_buffers(), model.named_buffers()):
        assert restored.dtype == backend.dtype("float32"), name
        np.testing.assert_array_equal(backend.to_numpy(restored), backend.to_numpy(original).astype(np.float32))


def test_restore_model_restores_each_dropouts_step(tmp_path):
    cpu = get_backend("cpu")
    saved = build_model("cnn", seed=1).to(cpu, "float32")
    saved.load_layer_state({"22": {"step": 7}, "25": {"step": 9}})
    path = save_checkpoint(tmp_path / "c.npz", saved, epoch=0, backend=cpu)
    model = build_model("cnn", seed=1).to(cpu, "float32")
    load_checkpoint(path).restore_model(model, cpu)
    assert model.layer_state() == {"22": {"step": 7}, "25": {"step": 9}}
    checkpoint = load_checkpoint(path)
    checkpoint.meta["layer_state"]["25"] = {"step": "x"}
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: its layer state does not fit this cnn \("):
        checkpoint.restore_model(model, cpu)


def _spoil(entries: dict, shapes: dict, stranger: str) -> tuple[str, str]:
    """Of a checkpoint's ``entries`` (the model's ``shapes``), drop the first by name, give the
    second shape (1,), and add ``stranger`` of shape (2,); returns the first two names."""
    first, second = sorted(shapes)[:2]
    del entries[first]                      # missing from the file
    entries[second] = np.zeros((1,))        # another shape
    entries[stranger] = np.zeros((2,))      # a layer this model does not have
    return first, second


def test_restore_model_names_every_parameter_that_does_not_fit(tmp_path):
    cpu = get_backend("cpu")
    model = build_model("mlp", seed=1).to(cpu, "float64")
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "m.npz", model, epoch=0, backend=cpu))
    shapes = {p.name: p.shape for p in model.parameters()}
    first, second = _spoil(checkpoint.params, shapes, "9.weight")
    message = (f"{checkpoint.path} does not fit this mlp: {first}: saved missing, model has {shapes[first]}; "
               f"{second}: saved (1,), model has {shapes[second]}; 9.weight: saved (2,), model has none")
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$"):
        checkpoint.restore_model(model, cpu)


def test_restore_model_names_the_buffers_and_layer_state_that_do_not_fit(tmp_path):
    from layers import Dropout, Linear
    from models.base import Model

    cpu = get_backend("cpu")
    model = build_model("cnn", seed=1).to(cpu, "float32")
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "c.npz", model, epoch=0, backend=cpu))
    shapes = {name: tuple(array.shape) for name, array in model.named_buffers()}
    first, second = _spoil(checkpoint.buffers, shapes, "99.running_mean")
    message = (f"{checkpoint.path} lacks layers of this cnn: its running statistics do not match ({first}: saved missing, "
               f"model has {shapes[first]}; {second}: saved (1,), model has {shapes[second]}; 99.running_mean: saved (2,), "
               "model has none); it was written by another version or edited")
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$"):
        checkpoint.restore_model(model, cpu)

    drops = Model(Linear(2, 2), *[Dropout(0.5) for _ in range(10)]).to(cpu, "float64")  # Dropouts 1 to 10
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "d.npz", drops, epoch=0, backend=cpu))
    del checkpoint.meta["layer_state"]["2"], checkpoint.meta["layer_state"]["10"]
    message = (f"{checkpoint.path} lacks layers of this model: no saved state for layer(s) 2, 10 (Dropout(p=0.5), "
               "Dropout(p=0.5)); it was written by another version or edited")
    with pytest.raises(CheckpointError, match=f"^{re.escape(message)}$"):
        checkpoint.restore_model(drops, cpu)


# -- a checkpoint without optimizer state ----------------------------------------------------------
@pytest.fixture
def weights_only(svhn_patches, tmp_path):
    """A checkpoint of an untrained MLP written without an optimizer (as a user's script may)."""
    root, arrays = svhn_patches
    cpu = get_backend("cpu")
    model = build_model("mlp", seed=3)
    mean, std = reference_channel_stats(arrays["train"][0])
    config = {"model": "mlp", "dataset": "svhn", "data_dir": str(root), "mean": mean.tolist(), "std": std.tolist()}
    history = [{"epoch": e, "train_loss": 2.0, "train_acc": 0.1, "test_loss": 2.0, "test_acc": 0.1,
                "examples_per_sec": 1.0, "seconds": 1.0} for e in range(1, 5)]  # a well-formed record of 4 epochs
    path = save_checkpoint(tmp_path / "weights.npz", model, epoch=4, backend=cpu, config=config, history=history)
    return path, {p.name: cpu.to_numpy(p.data).copy() for p in model.parameters()}, mean, std


def test_checkpoint_without_optimizer_round_trips_its_weights(weights_only):
    path, params, _, _ = weights_only
    checkpoint = load_checkpoint(path)
    assert "optimizer" not in checkpoint.meta and checkpoint.optim == {} and checkpoint.epoch == 4
    assert sorted(checkpoint.params) == sorted(params)
    for name, array in params.items():
        np.testing.assert_array_equal(checkpoint.params[name], array)


def test_checkpoint_without_optimizer_cannot_be_resumed_but_can_be_evaluated(weights_only, svhn_patches, capsys):
    path, params, mean, std = weights_only
    before = path.read_bytes()
    code = cli.main(["--resume", str(path), "--epochs", "6", "--device", "cpu", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err == f"error: {path} holds no optimizer state; it cannot be resumed, only evaluated\n"
    assert path.read_bytes() == before

    result = call_cli(["--evaluate", str(path), "--device", "cpu"])
    assert result.code == 0, result.err
    reported = json.loads(result.out.strip().splitlines()[-1])
    loss, accuracy, unsure = evaluated(params, svhn_patches[1], mean, std)
    assert reported["loss"] == pytest.approx(loss, rel=1e-5)
    assert abs(reported["accuracy"] - accuracy) <= unsure / 40 + 1e-12
    assert "(mlp, epoch 4) on svhn-test" in result.out


# -- the reader, fuzzed ----------------------------------------------------------------------------
def tiny_model(seed=0):
    return MLP(hidden=4, num_classes=3, input_shape=(1, 2, 2), seed=seed).to(get_backend("cpu"), "float32")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> bytes:
    cpu = get_backend("cpu")
    model = tiny_model()
    optimizer = Adam(model.parameters())
    loss = CrossEntropyLoss()
    loss.forward(model.forward(np.ones((2, 1, 2, 2), dtype=np.float32)), np.array([0, 2], dtype=np.int64))
    model.backward(loss.backward(), input_grad=False)
    optimizer.step()
    path = tmp_path_factory.mktemp("tiny") / "checkpoint.npz"
    save_checkpoint(path, model, optimizer, epoch=1, backend=cpu, config={"model": "mlp"}, history=[{"epoch": 1, "test_acc": 0.5}])
    return path.read_bytes()


def _only_checkpoint_errors(data: bytes) -> None:
    """Loading ``data`` (and restoring it into a fresh model) raises CheckpointError or nothing."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "checkpoint.npz"
        path.write_bytes(data)
        try:
            checkpoint = load_checkpoint(path)
            model = tiny_model(seed=1)
            checkpoint.restore_model(model, get_backend("cpu"))
            checkpoint.restore_optimizer(Adam(model.parameters()))
            checkpoint.epoch, checkpoint.config, checkpoint.history  # noqa: B018
        except CheckpointError as exc:
            assert str(path) in str(exc), exc  # every refusal names the file


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=600) | st.binary(max_size=600).map(lambda b: b"PK\x03\x04" + b))
def test_checkpoint_reader_on_random_bytes(data):
    _only_checkpoint_errors(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=EDITS)
def test_checkpoint_reader_on_mutated_checkpoints(tiny_checkpoint, edits):
    _only_checkpoint_errors(mutate(tiny_checkpoint, edits))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)


META_KEYS = ["format", "model", "parameters", "epoch", "config", "history", "optimizer", "extra"]


def _npy(array) -> bytes:
    stream = io.BytesIO()
    np.save(stream, array, allow_pickle=False)
    return stream.getvalue()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    changes=st.dictionaries(st.sampled_from(META_KEYS), JSON, max_size=3),
    dropped=st.lists(st.sampled_from(META_KEYS), max_size=2),
    odd_member=st.sampled_from([None, "raw", "meta-array", "int-param", "bad-shape", "odd-optim"]),
)
def test_checkpoint_reader_on_well_formed_archives_with_odd_contents(tiny_checkpoint, changes, dropped, odd_member):
    """A valid .npz whose header or entries are wrong in type or shape: still only CheckpointError."""
    with zipfile.ZipFile(io.BytesIO(tiny_checkpoint)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    meta = json.loads(str(np.load(io.BytesIO(members["meta.npy"]))))
    meta.update(changes)
    for key in dropped:
        meta.pop(key, None)
    members["meta.npy"] = _npy(np.array(json.dumps(meta)))
    if odd_member == "raw":
        members["param/3.weight"] = b"\x00" * 20  # no .npy suffix: NpzFile returns bytes
        if isinstance(meta.get("parameters"), dict):
            meta["parameters"]["3.weight"] = [3, 4]
        members["meta.npy"] = _npy(np.array(json.dumps(meta)))
    elif odd_member == "meta-array":
        members["meta.npy"] = _npy(np.array([json.dumps(meta)] * 2))
    elif odd_member == "int-param":
        members["param/1.weight.npy"] = _npy(np.zeros((4, 4), dtype=np.int32))
    elif odd_member == "bad-shape":
        members["param/1.weight.npy"] = _npy(np.zeros((5, 4), dtype=np.float32))
    elif odd_member == "odd-optim":
        members["optim/0/step.npy"] = _npy(np.zeros(3))
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    _only_checkpoint_errors(stream.getvalue())


# -- found by mutmut (issue 20): what the reader's error lines name, what read_header reads, model bounds --
def test_an_npz_without_a_header_is_refused_naming_the_file(tmp_path):
    """load_checkpoint and read_header both say which file lacks its 'meta' entry."""
    path = tmp_path / "weights.npz"
    np.savez(path, w=np.zeros(2))
    for read in (load_checkpoint, read_header):
        with pytest.raises(CheckpointError) as caught:
            read(path)
        assert str(caught.value) == f"{path} is an .npz file but not an xpnet checkpoint (no 'meta' entry)"


def test_read_header_reads_only_the_header(tiny_checkpoint, tmp_path):
    """An entry that disagrees with the header stops load_checkpoint, not read_header: the
    header alone is read (cheap for a large checkpoint, as best.npz's epoch is read)."""
    with zipfile.ZipFile(io.BytesIO(tiny_checkpoint)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members["param/1.weight.npy"] = _npy(np.zeros((5, 4), dtype=np.float32))  # the header lists (4, 4)
    path = tmp_path / "checkpoint.npz"
    with zipfile.ZipFile(path, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    with pytest.raises(CheckpointError, match=r"entry 'param/1.weight' holds float32 of shape \(5, 4\)"):
        load_checkpoint(path)
    assert read_header(path)["epoch"] == 1


def test_a_registered_models_header_may_list_at_most_its_own_numbers():
    """The bound on the shapes a header lists is the named model's size (not MAX_NUMBERS, which is
    only for a model xpnet does not register): exactly its size is accepted, one number more refused."""
    size = model_size("mlp")
    assert size < MAX_NUMBERS
    assert entry_limits({"model": "mlp", "parameters": {"w": [size]}})("param/w") == ((size,), size * MAX_ITEMSIZE)
    with pytest.raises(ValueError, match=f"hold {size + 1} numbers, more than a model 'mlp' has \\({size}\\)"):
        entry_limits({"model": "mlp", "parameters": {"w": [size + 1]}})


def _rezipped(data: bytes, change) -> bytes:
    """The archive ``data`` with its members (a dict name → bytes) changed by ``change``."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    change(members)
    stream = io.BytesIO()
    with zipfile.ZipFile(stream, "w") as archive:
        for name, payload in members.items():
            archive.writestr(name, payload)
    return stream.getvalue()


def _npy_version_3(array) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, array, version=(3, 0))
    return stream.getvalue()


EDITED = "the file was edited or damaged: use another checkpoint (best.npz or checkpoint.npz of a run)"
ENTRY_REFUSALS = {
    "not an array": (lambda members: members.__setitem__("param/3.weight", b"\0" * 20),
                     "{path} has an entry 'param/3.weight' that is not a NumPy array; it is not an xpnet checkpoint"),
    "not in the header": (lambda members: members.__setitem__("param/9.weight.npy", _npy(np.zeros(2, np.float32))),
                          "{path} has an entry 'param/9.weight' that its header does not list; " + EDITED),
    "npy version 3": (lambda members: members.__setitem__("param/9.weight.npy", _npy_version_3(np.zeros(2, np.float32))),
                      "{path}: entry 'param/9.weight.npy' is a .npy file of version (3, 0), which numpy.savez does not "
                      "write; " + EDITED),
}


@pytest.mark.parametrize("change, message", ENTRY_REFUSALS.values(), ids=list(ENTRY_REFUSALS))
def test_the_readers_refusals_name_the_file_and_the_entry(tiny_checkpoint, tmp_path, change, message):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(_rezipped(tiny_checkpoint, change))
    with pytest.raises(CheckpointError, match=f"^{re.escape(message.format(path=path))}$"):
        load_checkpoint(path)


def _npy_version_2(array) -> bytes:
    stream = io.BytesIO()
    np.lib.format.write_array(stream, array, version=(2, 0))
    return stream.getvalue()


def _refused(data: bytes, tmp_path, message: str) -> None:
    """Loading ``data`` raises CheckpointError with exactly ``message`` ({path}: the file's path)."""
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match=f"^{re.escape(message.format(path=path))}$"):
        load_checkpoint(path)


def test_the_reader_accepts_npy_entries_of_version_2(tiny_checkpoint, tmp_path):
    """np.save writes version 2.0 when an entry's .npy header outgrows 64 KiB; both versions load."""
    weight = np.arange(16, dtype=np.float32).reshape(4, 4)
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(_rezipped(tiny_checkpoint, lambda members: members.__setitem__("param/1.weight.npy",
                                                                                   _npy_version_2(weight))))
    np.testing.assert_array_equal(load_checkpoint(path).params["1.weight"], weight)


def test_entries_the_header_does_not_allow(tiny_checkpoint, tmp_path):
    """Optimizer state only for a saved optimizer and its parameters 0..n-1; no other prefixes."""
    unlisted = "{path} has an entry {name!r} that its header does not list; " + EDITED
    step = _npy(np.array(1))
    for name in ("optim/4/step", "other/0/step", "optim/x/step"):  # 4 parameters: indices 0 to 3
        _refused(_rezipped(tiny_checkpoint, lambda members: members.__setitem__(name + ".npy", step)), tmp_path,
                 unlisted.replace("{name!r}", repr(name)))

    def weights_only(members):  # the header without its optimizer, the optimizer's entries kept
        meta = json.loads(str(np.load(io.BytesIO(members["meta.npy"]))))
        del meta["optimizer"]
        members["meta.npy"] = _npy(np.array(json.dumps(meta)))
    with zipfile.ZipFile(io.BytesIO(tiny_checkpoint)) as archive:
        first_optim = sorted(name for name in archive.namelist() if name.startswith("optim/"))[0][:-len(".npy")]
    _refused(_rezipped(tiny_checkpoint, weights_only), tmp_path, unlisted.replace("{name!r}", repr(first_optim)))


def test_entries_larger_than_the_header_allows(tmp_path):
    """A parameter's entry in 16-byte floats, and optimizer state larger than its parameter
    (of one number): refused with both sizes, before they are unpacked."""
    from layers import Linear
    from models.base import Model

    cpu = get_backend("cpu")
    model = Model(Linear(1, 1)).to(cpu, "float64")
    optimizer = Adam(model.parameters())
    model.parameters()[0].grad = np.ones((1, 1))
    model.parameters()[1].grad = np.ones((1,))
    optimizer.step()
    data = save_checkpoint(tmp_path / "one.npz", model, optimizer, epoch=0, backend=cpu).read_bytes()
    wide = np.ones((1, 1), dtype=np.longdouble)
    if wide.itemsize > 8:
        _refused(_rezipped(data, lambda members: members.__setitem__("param/0.weight.npy", _npy(wide))), tmp_path,
                 "{path}: entry 'param/0.weight' would unpack to %d bytes (%s of shape (1, 1)), more than the 8 bytes "
                 "allowed; " % (wide.itemsize, wide.dtype) + EDITED)
    _refused(_rezipped(data, lambda members: members.__setitem__("optim/1/exp_avg.npy", _npy(np.ones(2)))), tmp_path,
             "{path}: entry 'optim/1/exp_avg' would unpack to 16 bytes (float64 of shape (2,)), more than the 8 bytes "
             "allowed; " + EDITED)


def test_entries_the_header_lists_but_the_file_lacks(tmp_path):
    cpu = get_backend("cpu")
    model = build_model("cnn", seed=1).to(cpu, "float32")
    data = save_checkpoint(tmp_path / "c.npz", model, epoch=0, backend=cpu).read_bytes()
    _refused(_rezipped(data, lambda members: members.pop("param/0.weight.npy")), tmp_path,
             "{path} is inconsistent: its parameters do not match its header; it may be corrupt")
    _refused(_rezipped(data, lambda members: members.pop("buffer/1.running_mean.npy")), tmp_path,
             "{path} is inconsistent: its buffers do not match its header; it may be corrupt")
    _refused(_rezipped(data, lambda members: members.__setitem__("buffer/1.running_mean.npy",
                                                                 _npy(np.zeros(32, np.int32)))), tmp_path,
             "{path}: buffer 1.running_mean has dtype int32, expected a float array")
    _refused(_rezipped(data, lambda members: members.__setitem__("param/1.bias.npy", _npy(np.zeros(32, np.int32)))),
             tmp_path, "{path}: parameter 1.bias has dtype int32, expected a float array")


@pytest.mark.parametrize("nbytes, text", [
    (0, "0 bytes"), (1023, "1023 bytes"), (1024, "1.0 KiB"), (1536, "1.5 KiB"), (2**20 - 1, "1024.0 KiB"),
    (2**20, "1.0 MiB"), (5 * 2**20 // 2, "2.5 MiB"), (2**30, "1.0 GiB"), (3 * 2**30, "3.0 GiB"),
])
def test_sizes_in_messages(nbytes, text):
    from training.saving.checkpoint import _size

    assert _size(nbytes) == text


HEADER = "{path} has an unreadable header (%s); it is not an xpnet checkpoint of this version"
BAD_HEADERS = {  # a change to the header → what the message says
    "format": ({"format": 2}, "unsupported format 2"),
    "parameters not a map": ({"parameters": [[4, 4]]}, "'parameters' must map names to shapes"),
    "negative size": ({"parameters": {"1.weight": [4, -4]}}, "'parameters' must map names to shapes"),
    "fractional size": ({"parameters": {"1.weight": [4.0, 4]}}, "'parameters' must map names to shapes"),
    "size true": ({"parameters": {"1.weight": [True, 4]}}, "'parameters' must map names to shapes"),
    "shape text": ({"parameters": {"1.weight": "4x4"}}, "'parameters' must map names to shapes"),
    "model": ({"model": 3}, "'model' must be a name"),
    "epoch negative": ({"epoch": -1}, "'epoch' must be a whole number"),
    "epoch float": ({"epoch": 1.0}, "'epoch' must be a whole number"),
    "epoch true": ({"epoch": True}, "'epoch' must be a whole number"),
    "config": ({"config": []}, "'config' must be an object"),
    "history": ({"history": {}}, "'history' must be a list of objects"),
    "history rows": ({"history": [1]}, "'history' must be a list of objects"),
    "buffers": ({"buffers": []}, "'buffers' must map names to shapes"),
    "buffer shape": ({"buffers": {"1.running_mean": [-1]}}, "'buffers' must map names to shapes"),
    "buffer text": ({"buffers": {"1.running_mean": "4"}}, "'buffers' must map names to shapes"),
    "layer state": ({"layer_state": []}, "'layer_state' must map layer indices to objects"),
    "layer state values": ({"layer_state": {"1": 3}}, "'layer_state' must map layer indices to objects"),
    "step negative": ({"step": -1}, "'step' must be a whole number"),
    "step null": ({"step": None}, "'step' must be a whole number"),
    "step fraction": ({"step": 0.5}, "'step' must be a whole number"),
    "schedule": ({"schedule": "onecycle"}, "'schedule' must be an object"),
    "optimizer text": ({"optimizer": "Adam"}, "'optimizer' must hold name, hyper and num_params"),
    "optimizer name": ({"optimizer": {"name": 1, "hyper": {}, "num_params": 4}},
                       "'optimizer' must hold name, hyper and num_params"),
    "optimizer hyper": ({"optimizer": {"name": "Adam", "hyper": [], "num_params": 4}},
                        "'optimizer' must hold name, hyper and num_params"),
    "optimizer count": ({"optimizer": {"name": "Adam", "hyper": {}, "num_params": -1}},
                        "'optimizer' must hold name, hyper and num_params"),
    "no model": ({"model": None}, "'model'"),  # None: the key removed (a KeyError names it)
}


@pytest.mark.parametrize("change, what", BAD_HEADERS.values(), ids=list(BAD_HEADERS))
def test_each_header_field_of_the_wrong_type_is_named(tiny_checkpoint, tmp_path, change, what):
    def edit(members):
        meta = json.loads(str(np.load(io.BytesIO(members["meta.npy"]))))
        for key, value in change.items():
            if value is None and key == "model":
                del meta[key]
            else:
                meta[key] = value
        members["meta.npy"] = _npy(np.array(json.dumps(meta)))
    _refused(_rezipped(tiny_checkpoint, edit), tmp_path, HEADER % what)


def test_header_fields_at_their_simplest_are_accepted(tiny_checkpoint, tmp_path):
    """Zero sizes and counts, empty maps, no schedule: all well-formed."""
    def edit(members):
        meta = json.loads(str(np.load(io.BytesIO(members["meta.npy"]))))
        meta.update(epoch=0, history=[], step=0, schedule=None, buffers={}, layer_state={"1": {}}, config={})
        meta["optimizer"]["num_params"] = 4
        members["meta.npy"] = _npy(np.array(json.dumps(meta)))
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(_rezipped(tiny_checkpoint, edit))
    checkpoint = load_checkpoint(path)
    assert (checkpoint.epoch, checkpoint.step, checkpoint.schedule, checkpoint.buffers) == (0, 0, None, {})

    def drop_optional(members):  # what only later versions wrote: none of it required
        meta = json.loads(str(np.load(io.BytesIO(members["meta.npy"]))))
        for key in ("history", "config", "extra", "step", "schedule", "buffers", "layer_state"):
            meta.pop(key, None)
        meta["epoch"] = 0
        members["meta.npy"] = _npy(np.array(json.dumps(meta)))
    path.write_bytes(_rezipped(tiny_checkpoint, drop_optional))
    checkpoint = load_checkpoint(path)
    assert (checkpoint.history, checkpoint.config, checkpoint.step, checkpoint.schedule) == ([], {}, 0, None)


def test_a_meta_entry_that_is_not_one_text(tiny_checkpoint, tmp_path):
    number = _npy(np.array(1.0))
    _refused(_rezipped(tiny_checkpoint, lambda members: members.__setitem__("meta.npy", number)), tmp_path,
             HEADER % "'meta' must be a text scalar, got a float64 array of shape ()")
    _refused(_rezipped(tiny_checkpoint, lambda members: members.__setitem__("meta.npy", _npy(np.array("[1]")))), tmp_path,
             HEADER % "unsupported format [1]")


def test_a_model_whose_parameters_have_no_names_is_not_saved(tmp_path):
    """A plain Sequential does not name its parameters: saving it would write one entry for
    all of them. It is refused, and nothing is written."""
    from layers import Linear, Sequential

    model = Sequential(Linear(2, 2)).to(get_backend("cpu"), "float64")
    model.name = "plain"
    with pytest.raises(CheckpointError, match=r"the model's parameters are not named one by one \(\['', ''\]\); build it as a models.Model"):
        save_checkpoint(tmp_path / "plain.npz", model, epoch=0, backend=get_backend("cpu"))
    single = Sequential(Linear(2, 2, bias=False)).to(get_backend("cpu"), "float64")  # one parameter, no name
    single.name = "plain"
    with pytest.raises(CheckpointError, match=r"not named one by one \(\[''\]\)"):
        save_checkpoint(tmp_path / "plain.npz", single, epoch=0, backend=get_backend("cpu"))
    for parameter in model.parameters():
        parameter.name = "w"  # named, but twice the same
    with pytest.raises(CheckpointError, match=r"not named one by one \(\['w', 'w'\]\)"):
        save_checkpoint(tmp_path / "plain.npz", model, epoch=0, backend=get_backend("cpu"))
    assert list(tmp_path.iterdir()) == []


def test_what_goes_wrong_inside_the_archive_is_one_line_naming_the_file(tiny_checkpoint, tmp_path, monkeypatch):
    """A truncated archive, an entry name that only looks like a number, and an I/O error
    with or without an errno: each a CheckpointError naming the file, with the cause."""
    unreadable = "{path} is not a readable xpnet checkpoint (%s); it may be corrupt or truncated"
    _refused(tiny_checkpoint[:len(tiny_checkpoint) // 2], tmp_path, unreadable % "BadZipFile: File is not a zip file")
    odd_digit = _rezipped(tiny_checkpoint, lambda members: members.__setitem__("optim/²/step.npy", _npy(np.array(1))))
    _refused(odd_digit, tmp_path, unreadable % "invalid literal for int() with base 10: '²'")

    import errno

    def failing(error):
        def load(*args, **kwargs):
            raise error
        return load

    monkeypatch.setattr(np, "load", failing(OSError(errno.EIO, "Input/output error")))
    _refused(tiny_checkpoint, tmp_path, "cannot read checkpoint {path}: Input/output error")
    monkeypatch.setattr(np, "load", failing(OSError("no errno")))
    _refused(tiny_checkpoint, tmp_path, unreadable % "OSError: no errno")


def test_a_model_of_one_parameter_round_trips(tmp_path):
    from layers import Linear
    from models.base import Model

    cpu = get_backend("cpu")
    model = Model(Linear(3, 2, bias=False, rng=np.random.default_rng(0))).to(cpu, "float64")
    checkpoint = load_checkpoint(save_checkpoint(tmp_path / "one.npz", model, epoch=0, backend=cpu))
    assert checkpoint.meta["dtype"] == "float64"
    np.testing.assert_array_equal(checkpoint.params["0.weight"], cpu.to_numpy(model.parameters()[0].data))
