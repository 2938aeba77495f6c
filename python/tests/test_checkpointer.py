"""Checkpointer in one process, against real PyTorch: round trips, the files on disk, fallback
past torn and corrupt checkpoints, retention, the save-in-flight rules, stop requests."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torchdata.stateful_dataloader import StatefulDataLoader

from conftest import spotcheck_bin, validate
from spotcheck.torch import Checkpointer, CheckpointError

NS = "algo-1"


def make(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(8, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    # The data is the same for every seed (a restarted job reads the same dataset); the seed
    # only changes the initial weights and the shuffle.
    fixed = torch.Generator().manual_seed(1234)
    data = torch.utils.data.TensorDataset(
        torch.randn(40, 6, generator=fixed), torch.randint(0, 3, (40,), generator=fixed)
    )
    loader = StatefulDataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(seed))
    return model, opt, sched, loader


def train(model, opt, sched, it, steps):
    for _ in range(steps):
        x, y = next(it)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def assert_same_tree(a, b, path="") -> None:
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and a.dtype == b.dtype and a.shape == b.shape, path
        assert torch.equal(a, b), path
    elif isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b), f"{path}: {list(a)} vs {list(b)}"
        for k in a:
            assert_same_tree(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)):
        assert type(a) is type(b) and len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{path}.{i}")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def by_name(tensors):
    return dict(sorted(tensors.items()))


def as_bytes(tensor):
    """A tensor's bytes in row-major order (0-dim tensors too, which ``view`` refuses)."""
    return tensor.reshape(-1).contiguous().view(torch.uint8).tolist()


def checkpoint_dirs(root: Path):
    return sorted(p.name for p in (root / NS).iterdir() if p.name.startswith("step-"))


def test_restore_brings_back_every_object_the_random_states_and_plain_values(clean_env, tmp_path):
    model, opt, sched, loader = make(1)
    it = iter(loader)
    train(model, opt, sched, it, 3)
    random.seed(5)
    np.random.seed(6)
    ckpt = Checkpointer(tmp_path / "ckpt", handle_signals=False)
    extra = {"epoch": 2, "best": (0.5, "x"), "ema": torch.arange(4.0)}
    assert ckpt.save(3, model=model, optimizer=opt, scheduler=sched, loader=loader, **extra)
    ckpt.wait()
    expected = {
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "loader": loader.state_dict(),
    }
    after = (torch.rand(3), random.random(), np.random.rand(), next(it)[1])
    ckpt.close()

    model2, opt2, sched2, loader2 = make(2)
    torch.manual_seed(99)
    random.seed(99)
    np.random.seed(99)
    ckpt2 = Checkpointer(tmp_path / "ckpt", handle_signals=False)
    assert ckpt2.restore(model=model2, optimizer=opt2, scheduler=sched2, loader=loader2) == 3
    for name, obj in [("model", model2), ("optimizer", opt2), ("scheduler", sched2), ("loader", loader2)]:
        assert_same_tree(expected[name], obj.state_dict(), name)
    assert ckpt2.values["epoch"] == 2
    assert ckpt2.values["best"] == (0.5, "x")
    assert torch.equal(ckpt2.values["ema"], torch.arange(4.0))
    again = (torch.rand(3), random.random(), np.random.rand(), next(iter(loader2))[1])
    assert torch.equal(after[0], again[0]) and after[1] == again[1] and after[2] == again[2]
    assert torch.equal(after[3], again[3]), "the loader resumes mid-epoch with the same order"
    assert ckpt2.skipped == []
    ckpt2.close()


@pytest.mark.parametrize("seeded", [True, False], ids=["own generator", "global generator"])
@pytest.mark.parametrize("at", [0, 1, 5, 6])
def test_a_loader_restored_mid_epoch_continues_every_later_epoch_in_order(clean_env, tmp_path, seeded, at):
    """The rest of the epoch and the epochs after it come in the uninterrupted run's order,
    whether the loader shuffles with its own generator or torch's global one (at 6 the first
    epoch has just ended)."""

    def loader():
        generator = torch.Generator().manual_seed(3) if seeded else None
        return StatefulDataLoader(list(range(12)), batch_size=2, shuffle=True, generator=generator)

    def order(batches):
        return [b.tolist() for b in batches]

    torch.manual_seed(1)
    first = loader()
    reference = order(b for _ in range(3) for b in first)
    reference_after = torch.rand(2)  # every iterator draws its base seed from some generator

    torch.manual_seed(1)
    first = loader()
    it = iter(first)
    seen = order(next(it) for _ in range(at))
    with Checkpointer(tmp_path / "ckpt", handle_signals=False) as ckpt:
        ckpt.save(at, loader=first)
    torch.manual_seed(2)  # the restarted process's seed differs; restore must not care
    second = loader()
    with Checkpointer(tmp_path / "ckpt", handle_signals=False) as ckpt:
        assert ckpt.restore(loader=second) == at
    rest = order(b for _ in range(3) for b in second)
    assert seen + rest[: len(reference) - at] == reference
    assert torch.equal(torch.rand(2), reference_after), "the global random state after the same epochs"


def test_the_files_are_format_v1_read_by_safetensors_and_spotcheck_validate(clean_env, tmp_path):
    model, opt, sched, loader = make()
    train(model, opt, sched, iter(loader), 2)
    root = tmp_path / "ckpt"
    with Checkpointer(root, handle_signals=False) as ckpt:
        ckpt.save(2, model=model, optimizer=opt)
    step_dir = root / NS / "step-000000000002"
    manifest = json.loads((step_dir / "manifest.json").read_text())
    assert manifest["format_version"] == 1 and manifest["namespace"] == NS and manifest["step"] == 2
    assert [f["path"] for f in manifest["files"]] == [
        "model.safetensors",
        "optimizer.safetensors",
        "rng-states.safetensors",
        "state.json",
    ]
    # model.safetensors is exactly the state_dict, as safetensors itself would write it.
    # (safetensors lists a file's tensors by name, not in the state_dict's order)
    assert_same_tree(by_name(model.state_dict()), by_name(load_file(step_dir / "model.safetensors")), "model")
    save_file(dict(model.state_dict()), tmp_path / "ref.safetensors", metadata={"format": "pt"})
    assert (step_dir / "model.safetensors").read_bytes() == (tmp_path / "ref.safetensors").read_bytes()
    opt_tensors = load_file(step_dir / "optimizer.safetensors")
    assert torch.equal(opt_tensors["state.0.exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    report = validate(root)
    assert report["latest_valid"] == f"{NS}/step-000000000002"
    assert [c["status"] for c in report["checkpoints"]] == ["valid"]


def test_dtypes_shapes_and_views_round_trip_bit_for_bit(clean_env, tmp_path):
    base = torch.randn(5, 4, dtype=torch.float64)
    values = {
        "f64": base,
        "f32_transposed": base.float().t(),
        "bf16": base.to(torch.bfloat16),
        "f16": base.half()[::2],
        "i8": torch.tensor([-128, 0, 127], dtype=torch.int8),
        "u8": torch.arange(7, dtype=torch.uint8),
        "i64": torch.tensor(2**62),
        "bool": torch.tensor([True, False, True]),
        "c64": torch.complex(base.float(), -base.float()),
        "empty": torch.empty(0, 3),
        "nan": torch.tensor([float("nan"), float("inf"), -0.0]),
    }
    root = tmp_path / "ckpt"
    with Checkpointer(root, handle_signals=False) as ckpt:
        ckpt.save(1, values=values, plain={"x": float("nan"), "k": {1: "one"}})
    with Checkpointer(root, handle_signals=False) as ckpt:
        assert ckpt.restore(values=None, plain=None) == 1
        back = ckpt.values["values"]
        for name, t in values.items():
            assert back[name].dtype == t.dtype and back[name].shape == t.shape, name
            assert as_bytes(back[name]) == as_bytes(t), name
        assert ckpt.values["plain"]["k"] == {1: "one"}
        assert ckpt.values["plain"]["x"] != ckpt.values["plain"]["x"]


def test_unsupported_state_is_refused_before_anything_is_written(clean_env, tmp_path):
    root = tmp_path / "ckpt"
    with Checkpointer(root, handle_signals=False) as ckpt:
        with pytest.raises(TypeError, match=r"cannot checkpoint thing: a: .*object"):
            ckpt.save(1, thing={"a": object()})
        with pytest.raises(ValueError, match="reserved"):
            ckpt.save(1, _private=1)
        with pytest.raises(ValueError, match="non-negative int"):
            ckpt.save(-1, x=1)
    assert not (root / NS).exists() or checkpoint_dirs(root) == []


def break_newest(root: Path, how: str) -> str:
    newest = root / NS / checkpoint_dirs(root)[-1]
    model = newest / "model.safetensors"
    if how == "torn: no manifest":
        (newest / "manifest.json").unlink()
    elif how == "torn: data file missing":
        model.unlink()
    elif how == "truncated":
        with open(model, "r+b") as f:
            f.truncate(model.stat().st_size - 3)
    elif how == "flipped byte":
        raw = bytearray(model.read_bytes())
        raw[-5] ^= 0x40
        model.write_bytes(bytes(raw))
    elif how == "garbage manifest":
        (newest / "manifest.json").write_text("{not json")
    elif how == "state.json replaced":
        (newest / "state.json").write_text(json.dumps({"format": "x"}).ljust((newest / "state.json").stat().st_size))
    return newest.name


@pytest.mark.parametrize(
    "how,reason",
    [
        ("torn: no manifest", "incomplete: no manifest"),
        ("torn: data file missing", "missing file"),
        ("truncated", "bytes, manifest says"),
        ("flipped byte", "crc64nvme"),
        ("garbage manifest", "bad manifest"),
        ("state.json replaced", "crc64nvme"),
    ],
)
def test_torn_and_corrupt_checkpoints_are_refused_and_the_previous_one_used(clean_env, tmp_path, how, reason):
    root = tmp_path / "ckpt"
    model, opt, sched, loader = make()
    it = iter(loader)
    states = {}
    with Checkpointer(root, keep=5, handle_signals=False) as ckpt:
        for step in (1, 2):
            train(model, opt, sched, it, 1)
            ckpt.save(step, model=model, optimizer=opt)
            ckpt.wait()
            states[step] = {k: v.clone() for k, v in model.state_dict().items()}
    broken = break_newest(root, how)
    model2, opt2, _, _ = make(7)
    with Checkpointer(root, handle_signals=False) as ckpt:
        assert ckpt.restore(model=model2, optimizer=opt2) == 1
        assert [name for name, _ in ckpt.skipped] == [f"{NS}/{broken}"]
        assert reason in ckpt.skipped[0][1], ckpt.skipped
    assert_same_tree(states[1], dict(model2.state_dict()))


def test_nothing_valid_means_a_first_start(clean_env, tmp_path):
    with Checkpointer(tmp_path / "none", handle_signals=False) as ckpt:
        assert ckpt.restore(x=None) is None
    root = tmp_path / "ckpt"
    with Checkpointer(root, handle_signals=False) as ckpt:
        ckpt.save(4, x=1)
    (root / NS / "step-000000000004" / "manifest.json").unlink()
    with Checkpointer(root, handle_signals=False) as ckpt:
        assert ckpt.restore(x=None) is None
        assert ckpt.skipped and "no manifest" in ckpt.skipped[0][1]


def test_retention_keeps_the_newest_of_this_host_and_leaves_other_hosts_alone(clean_env, tmp_path):
    root = tmp_path / "ckpt"
    with Checkpointer(root, keep=2, namespace="algo-2", handle_signals=False) as other:
        other.save(1, x=1)
    with Checkpointer(root, keep=2, handle_signals=False) as ckpt:
        for step in range(1, 6):
            ckpt.save(step, x=step)
        ckpt.wait()
        assert ckpt.last_saved["deleted"] == [f"{NS}/step-000000000003"]
    assert checkpoint_dirs(root) == ["step-000000000004", "step-000000000005"]
    assert (root / "algo-2" / "step-000000000001" / "manifest.json").exists()


def test_save_returns_before_the_checkpoint_is_durable_and_due_waits_for_it(clean_env, tmp_path):
    gate = tmp_path / "gate"
    clean_env.setenv("SPOTCHECK_FAULT_PERSIST_GATE", str(gate))
    root = tmp_path / "ckpt"
    model, opt, _, _ = make()
    ckpt = Checkpointer(root, every_steps=1, handle_signals=False)
    assert ckpt.due(1), "the first check is due: it measures the cost"
    assert ckpt.save(1, model=model, optimizer=opt)
    step_dir = root / NS / "step-000000000001"
    assert not (step_dir / "manifest.json").exists(), "save() did not wait for durability"
    assert not ckpt.due(2), "no periodic save while one is in flight"
    gate.touch()
    outcome = ckpt.wait()
    assert outcome["ok"] and outcome["name"] == f"{NS}/step-000000000001"
    assert (step_dir / "manifest.json").exists()
    assert ckpt.due(2)
    assert not ckpt.save(1, model=model), "the newest durable step is not saved twice"
    ckpt.close()


def test_the_interval_is_paced_by_the_upload_markers_it_observes(clean_env, tmp_path, monkeypatch):
    import spotcheck.torch

    monkeypatch.setattr(spotcheck.torch, "UPLOAD_CHECK_SECONDS", 0.0)
    root = tmp_path / "ckpt"
    ckpt = Checkpointer(root, synced=True, handle_signals=False)
    ckpt.save(1, x=torch.ones(3))
    ckpt.wait()
    step_dir = root / NS / "step-000000000001"
    files = sorted(p for p in step_dir.rglob("*") if p.is_file())
    ckpt.due(2)
    # No marker seen yet: the oldest pending checkpoint's wait (a fraction of a second here)
    # floors the interval, as far as _interval.NO_MARKERS_SECONDS.
    assert 0.0 < ckpt._schedule.upload_floor < 60.0
    for f in files:
        if f.name != "manifest.json":
            Path(f"{f}.sagemaker-uploaded").touch()
    ckpt.due(2)
    assert ckpt._uploads.pending, "a checkpoint is uploaded only once its manifest is"
    Path(f"{step_dir / 'manifest.json'}.sagemaker-uploaded").touch()
    ckpt.due(2)
    assert not ckpt._uploads.pending
    assert ckpt._schedule.upload_floor > 0.0
    ckpt.close()


def test_an_uploader_that_shows_no_marker_is_warned_about_once(clean_env, tmp_path, monkeypatch, caplog):
    import time

    import spotcheck.torch

    monkeypatch.setattr(spotcheck.torch, "UPLOAD_CHECK_SECONDS", 0.0)
    root = tmp_path / "ckpt"
    ckpt = Checkpointer(root, synced=True, handle_signals=False)
    ckpt.save(1, x=torch.ones(3))
    ckpt.wait()
    warning = "no checkpoint has been seen fully uploaded"
    ckpt.due(2)
    assert warning not in caplog.text, "a checkpoint only just written is no sign of a silent uploader"
    later = time.monotonic() + 700.0  # past NO_MARKERS_SECONDS, and still no marker anywhere
    monkeypatch.setattr(spotcheck.torch.time, "monotonic", lambda: later)
    ckpt.due(3)
    ckpt.due(4)
    assert caplog.text.count(warning) == 1, caplog.text
    # The pace it stops counting: the oldest wait no longer floors the interval.
    assert ckpt._uploads.check(later, lambda _: "waiting") is None
    monkeypatch.undo()
    ckpt.close()


def test_a_failed_save_is_raised_by_wait_and_keeps_the_previous_checkpoint(clean_env, tmp_path):
    root = tmp_path / "ckpt"
    with Checkpointer(root, handle_signals=False) as ckpt:
        ckpt.save(1, x=1)
        ckpt.wait()
        (root / NS / "step-000000000002").write_text("a file where the step directory goes")
        ckpt.save(2, x=2)
        with pytest.raises(CheckpointError, match="not a directory"):
            ckpt.wait()
        assert ckpt.stats["failures"] == 1
    with Checkpointer(root, handle_signals=False) as ckpt:
        assert ckpt.restore(x=None) == 1


def test_sigterm_and_sigint_make_should_stop_true_and_handlers_are_restored(clean_env, tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    ckpt = Checkpointer(tmp_path / "ckpt")
    assert not ckpt.should_stop()
    os.kill(os.getpid(), signal.SIGTERM)
    assert ckpt.should_stop() and ckpt.stop_reason == "signal"
    ckpt.close()
    assert signal.getsignal(signal.SIGTERM) is before
    ckpt = Checkpointer(tmp_path / "ckpt")
    os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: a stop request instead
    assert ckpt.should_stop()
    ckpt.close()


def test_the_notice_file_carries_spot_notices_and_rebalances(clean_env, tmp_path):
    notices = tmp_path / "notices.json"
    notices.write_text(json.dumps({"seq": 0, "stop": None, "rebalance": 0}))
    clean_env.setenv("SPOTCHECK_NOTICE_FILE", str(notices))
    ckpt = Checkpointer(tmp_path / "ckpt", every_steps=1000, adaptive=False, handle_signals=False)
    ckpt.save(1, x=1)
    ckpt.wait()
    assert not ckpt.due(2) and not ckpt.should_stop()
    notices.write_text(json.dumps({"seq": 1, "stop": None, "rebalance": 1}))
    assert ckpt.due(2), "a rebalance recommendation asks for one extra save"
    ckpt.save(2, x=2)
    ckpt.wait()
    assert not ckpt.due(3), "only one"
    notices.write_text(json.dumps({"seq": 2, "stop": "spot-notice", "rebalance": 1, "spot_notice": "{}"}))
    assert ckpt.should_stop() and ckpt.stop_reason == "spot-notice"
    ckpt.close()


def test_spotcheck_validate_exit_code_for_a_python_written_root(clean_env, tmp_path):
    root = tmp_path / "ckpt"
    with Checkpointer(root, handle_signals=False) as ckpt:
        ckpt.save(7, x=torch.ones(3))
    out = subprocess.run([str(spotcheck_bin()), "validate", str(root)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
