"""The pure parts: state-tree encoding, the checkpoint interval, SageMaker paths."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from spotcheck import _interval, _paths, _tree


def enc(tree):
    return _tree.encode(tree, torch.is_tensor, lambda a: torch.frombuffer(bytearray(a.tobytes()), dtype=torch.uint8))


def dec(data, tensors):
    return _tree.decode(
        json.loads(json.dumps(data, allow_nan=False)),
        tensors,
        lambda t, dtype, shape: np.frombuffer(t.numpy().tobytes(), dtype=dtype).reshape(shape),
    )


def test_an_optimizer_like_tree_round_trips_with_tuples_int_keys_and_tensor_names():
    tree = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(2)}, 1: {"momentum_buffer": None}},
        "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1], "name": "x", "nan": math.nan}],
        "__dunder": 1,
    }
    data, tensors = enc(tree)
    assert sorted(tensors) == ["state.0.exp_avg", "state.0.step"]
    back = dec(data, tensors)
    assert back["param_groups"][0]["betas"] == (0.9, 0.999)
    assert isinstance(back["param_groups"][0]["betas"], tuple)
    assert math.isnan(back["param_groups"][0]["nan"])
    assert set(back["state"]) == {0, 1}
    assert back["state"][0]["exp_avg"] is tensors["state.0.exp_avg"]
    assert back["__dunder"] == 1


def test_module_keys_are_the_tensor_names_as_they_are():
    data, tensors = enc({"fc1.weight": torch.zeros(1), "fc1.bias": torch.zeros(1)})
    assert sorted(tensors) == ["fc1.bias", "fc1.weight"]


def test_numpy_arrays_and_scalars_survive():
    arr = np.arange(6, dtype=np.uint32).reshape(2, 3)
    data, tensors = enc({"key": arr, "pos": np.int64(7), "f": np.float32(0.5)})
    back = dec(data, tensors)
    assert back["key"].dtype == np.uint32 and (back["key"] == arr).all()
    assert back["pos"] == 7 and back["f"] == 0.5


def test_objects_that_would_need_pickle_are_refused_with_their_path():
    with pytest.raises(_tree.Unsupported, match=r"a\.b: .*object"):
        enc({"a": {"b": object()}})
    with pytest.raises(_tree.Unsupported, match="share this name"):
        enc({"a.b": torch.zeros(1), "a": {"b": torch.zeros(1)}})


def test_daly_matches_the_trainers_numbers():
    # Same cases as trainer/src/interval.rs.
    assert abs(_interval.daly_interval(1.0, 3600.0) - 84.85) < 1.5
    assert _interval.daly_interval(30.0, 10.0) == 10.0
    assert _interval.mtbf(1.0, 0, 0.0) == 3600.0
    assert _interval.mtbf(1.0, 1, 7200.0) == 3600.0
    assert _interval.mtbf(1.0, 4, 3600.0) == 900.0
    assert _interval.mtbf(0.0, 0, 0.0) is None


def test_the_schedule_saves_first_then_by_interval_and_never_while_busy():
    s = _interval.Schedule(interruptions_per_hour=1.0, every_steps=10)
    assert s.due(0.0, 1, busy=False)
    assert not s.due(0.0, 1, busy=True)
    s.saved(0.0, stall=1.0)
    s.persisted(2.0, restarts=0, run_seconds=10.0)
    assert s.interval is not None and 80 < s.interval < 90
    assert not s.due(5.0, 5, busy=False)
    assert s.due(5.0, 10, busy=False)
    assert not s.due(5.0, 10, busy=True)
    assert s.due(90.0, 11, busy=False)
    s.persisted(120.0, restarts=0, run_seconds=10.0)
    assert s.interval == 120.0, "never shorter than a save takes to be durable"


def test_the_uploaders_pace_floors_the_adaptive_interval():
    s = _interval.Schedule(interruptions_per_hour=1.0)
    s.saved(0.0, stall=1.0)
    s.persisted(2.0, restarts=0, run_seconds=10.0)
    assert s.due(90.0, None, busy=False)
    s.upload_pace(300.0)
    assert not s.due(90.0, None, busy=False), "faster than the uploader ships only grows its backlog"
    assert s.due(300.0, None, busy=False)
    s.upload_pace(0.0)
    assert s.due(90.0, None, busy=False)


def test_a_saves_cost_includes_the_slowdown_of_the_steps_it_overlapped():
    s = _interval.Schedule(interruptions_per_hour=1.0)
    t = 0.0
    for _ in range(20):  # steps of 0.1 s with no save in flight
        t += 0.1
        s.tick(t, busy=False)
    assert s.idle_step is not None and abs(s.idle_step - 0.1) < 1e-9
    s.saved(t + 0.05, stall=0.05)  # blocked 0.05 s: not a slow step
    t += 0.05
    for _ in range(10):  # the save is written meanwhile: steps take 0.15 s
        t += 0.15
        s.tick(t, busy=True)
    s.persisted(1.5, restarts=0, run_seconds=100.0)
    assert abs(s.last_cost - (0.05 + 10 * 0.05)) < 1e-9
    plain = _interval.Schedule(interruptions_per_hour=1.0)
    plain.saved(0.0, stall=0.05)
    plain.persisted(1.5, restarts=0, run_seconds=100.0)
    assert plain.last_cost == 0.05
    assert s.interval > plain.interval, "a costlier save is taken less often"
    # The next save starts from nothing.
    s.saved(t, stall=0.01)
    s.persisted(0.1, restarts=0, run_seconds=100.0)
    assert s.last_cost == 0.01


def test_one_outlying_saves_cost_does_not_move_the_interval():
    s = _interval.Schedule(interruptions_per_hour=1.0)
    for stall in (2.0, 2.1, 1.9):
        s.saved(0.0, stall=stall)
        s.persisted(6.0, restarts=0, run_seconds=100.0)
    steady = s.interval
    s.saved(0.0, stall=5.0)  # one save on a host that descheduled the loop
    s.persisted(6.0, restarts=0, run_seconds=100.0)
    assert s.interval == steady
    for _ in range(2):  # a lasting change is followed once it is most of the window
        s.saved(0.0, stall=8.0)
        s.persisted(6.0, restarts=0, run_seconds=100.0)
    # Young with C = 5 s (the median of 2.1, 1.9, 5, 8, 8), M = 1 h: about 186 s after Daly.
    assert 185.0 < s.interval < 200.0 and s.interval > steady
    assert _interval.lower_median([3.0, 1.0]) == 1.0


def test_the_upload_watch_measures_shipping_and_waits_without_markers_only_so_long():
    w = _interval.UploadWatch()
    state = {"a": _interval.WAITING, "b": _interval.WAITING}
    w.written("a", 0.0)
    w.written("b", 10.0)
    # No marker seen yet: the oldest wait still floors the pace (a slow uploader's first
    # seconds), up to a limit: an uploader without markers must not slow checkpointing for ever.
    assert w.check(500.0, state.get) == 500.0
    assert not w.silent(500.0)
    limit = _interval.NO_MARKERS_SECONDS
    assert w.check(limit + 1.0, state.get) is None
    assert w.silent(limit + 1.0), "no marker in all that time: the sync may not be running"
    state["a"] = _interval.UPLOADED
    assert w.check(800.0, state.get) == 800.0, "a waited longest and just landed"
    assert w.pending == [("b", 10.0)]
    # Once markers are known to come, the oldest wait counts however long it is.
    assert w.check(900.0, state.get) == 890.0
    assert not w.silent(900.0)
    state["b"] = _interval.GONE  # retention deleted it
    assert w.check(1000.0, state.get) is None and w.pending == []


def test_a_marker_on_any_file_shows_the_uploader_is_there():
    w = _interval.UploadWatch()
    w.written("a", 0.0)
    w.written("b", 5.0)
    state = {"a": _interval.WAITING, "b": _interval.UPLOADING}
    assert w.check(100.0, state.get) == 100.0, "a backlog shipped in any order still paces"


def test_sagemaker_paths_and_namespace(tmp_path: Path):
    files = {
        tmp_path / "input/config/checkpointconfig.json": b'{"LocalPath": "/ckpt", "S3Uri": "s3://b/p"}',
        tmp_path / "input/config/resourceconfig.json": b'{"current_host": "algo-3"}',
    }
    env = {"SPOTCHECK_OPT_ML": str(tmp_path)}
    assert _paths.checkpoint_root(env, files.get) == Path("/ckpt")
    assert _paths.namespace(env, files.get) == "algo-3"
    assert _paths.namespace({**env, "SM_CURRENT_HOST": "algo-2"}, files.get) == "algo-2"
    assert _paths.checkpoint_synced(Path("/ckpt"), env, files.get)
    assert not _paths.checkpoint_synced(Path("/elsewhere"), env, files.get)
    assert not _paths.checkpoint_synced(Path("/opt/ml/checkpoints"), {}, lambda p: None), "no S3Uri: no sync"
    default_local = {tmp_path / "input/config/checkpointconfig.json": b'{"S3Uri": "s3://b/p"}'}
    assert _paths.checkpoint_synced(tmp_path / "checkpoints", env, default_local.get)
    assert _paths.checkpoint_root({}, lambda p: None) == Path("/opt/ml/checkpoints")
    assert _paths.namespace({}, lambda p: b"not json") == "algo-1"


def test_multi_process_jobs_get_one_namespace_per_rank():
    two = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "SM_CURRENT_HOST": "algo-1"}
    assert _paths.ranks(two) == (1, 2, 1)
    assert _paths.namespace(two, lambda p: None) == "rank-00001"
    # A world of one is a single process: the host's namespace, as before.
    one = {"RANK": "0", "WORLD_SIZE": "1", "SM_CURRENT_HOST": "algo-2"}
    assert _paths.namespace(one, lambda p: None) == "algo-2"
    assert _paths.ranks({}) == (0, 1, 0)
    assert _paths.ranks({"WORLD_SIZE": "x", "RANK": "7"}) == (0, 1, 0)


def test_the_ranks_agree_often_enough_to_stop_within_a_second_and_cheaply_enough():
    gap = _interval.agreement_gap
    assert gap(0.0, 0.005) == 0 and gap(0.001, 0.0) == 0, "nothing measured yet: every boundary"
    # A 1.2 ms agreement over 5 ms steps: every 24th boundary keeps it at 1% of the time.
    assert gap(0.0012, 0.005) == 23
    # Over 1 ms steps the one-second bound wins.
    assert gap(0.0012, 0.001) == 119
    assert gap(0.002, 0.001) == 199
    # Steps of a second or more: every boundary.
    assert gap(0.0012, 1.0) == 0 and gap(0.0012, 3.0) == 0
