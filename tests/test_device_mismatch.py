"""device-mismatch: accelerate's real dispatch hooks over two devices, with and without skip_keys."""

import re

import pytest

from labkit import BadInput, WrongResult, get, run
from labkit.scenarios import device_mismatch

QUICK = {"tokens": 3}


def test_broken_fails_on_the_second_step_every_trial():
    trials = run("device-mismatch", "broken", repeats=2, knobs=QUICK, monitor=False).trials
    for t in trials:
        assert t.outcome == "raised" and t.metrics["steps_completed"] == 1, t.error
        # cpu + meta: the hook's copy of the meta layers' cache fails; on GPUs, the cache's torch.cat
        assert "Cannot copy out of meta tensor" in t.error or "Expected all tensors to be on the same device" in t.error
        assert "send_to_device" in t.traceback or "torch.cat" in t.traceback
        assert t.notes["devices"].startswith(("cpu + meta", "cpu + cuda:0", "cuda:0 + cuda:1"))


def test_skip_keys_generates_every_step():
    (t,) = run("device-mismatch", "skip-keys", knobs=QUICK, monitor=False).trials
    assert (t.outcome, t.error, t.metrics["steps_completed"]) == ("ok", None, 3)
    assert "placement" in t.notes["check"]


def test_an_edited_map_runs_and_is_reported():
    (t,) = run("device-mismatch", "skip-keys", knobs={**QUICK, "device_map": "cpu,cpu,cpu,cpu,meta,meta,meta"},
               monitor=False).trials
    assert t.outcome == "ok", t.error
    assert t.notes["map"] == "embeddings, layer 0, layer 1, layer 2: cpu; layer 3, norm, head: meta"


@pytest.mark.parametrize("spec, message", [
    ("cpu,cpu", "device_map needs 7 devices, one per row"),
    ("cpu,meta,cpu,meta,meta,meta,meta", "layer 1 is on cpu after layer 0 on meta"),
    ("cpu,cuda:7,cpu,cpu,cpu,cpu,cpu", "device 'cuda:7' does not exist on this machine"),
])
def test_bad_maps_are_refused_before_anything_runs(spec, message):
    with pytest.raises(BadInput, match=message):
        get("device-mismatch").knob_values({"device_map": spec})


def test_bad_devices_and_models_are_refused():
    scen = get("device-mismatch")
    with pytest.raises(BadInput, match="meta cannot be the first"):
        scen.knob_values({"devices": "meta,cpu"})
    with pytest.raises(BadInput, match="does not exist"):
        scen.knob_values({"model": "/no/such/folder"})


def test_which_cache_forms_accelerate_moves():
    """Why the trials pass the cache as tuples: on the versions we install, accelerate moves
    tuples of tensors but leaves transformers' DynamicCache (no ``.to()``) where it is."""
    import torch
    from accelerate.utils import send_to_device
    from transformers import DynamicCache

    from labkit.llm import upstream
    from labkit.llm.models import tiny_model

    model = tiny_model()
    name, skip = upstream.cache_argument(model), upstream.skip_keys(model)
    legacy = ((torch.zeros(1, 1, 2, 4), torch.zeros(1, 1, 2, 4)),)
    assert send_to_device({name: legacy}, "meta")[name][0][0].device.type == "meta"
    assert send_to_device({name: legacy}, "meta", skip_keys=skip)[name][0][0].device.type == "cpu"
    cache = send_to_device({name: DynamicCache(legacy)}, "meta")[name]
    assert not hasattr(cache, "to") and upstream.cache_tensors(cache)[0][0].device.type == "cpu"


def test_the_placement_check_catches_a_cache_in_the_wrong_place():
    import torch

    device_map = {"model.layers.0": "cpu", "model.layers.1": "meta"}
    right = ((torch.zeros(1), torch.zeros(1)), (torch.zeros(1, device="meta"), torch.zeros(1, device="meta")))
    device_mismatch.check_cache_placement(right, device_map, main="cpu")
    wrong = (right[0], (torch.zeros(1), torch.zeros(1)))
    with pytest.raises(WrongResult, match="layer 1's cache is on cpu, but the map runs layer 1 on meta"):
        device_mismatch.check_cache_placement(wrong, device_map, main="cpu")
    # CPU rows behind a GPU main device are offloaded: they run (and cache) on the main device
    device_mismatch.check_cache_placement(right[:1], {"model.layers.0": "cpu"}, main="cpu")
    assert device_mismatch._execution_device("cpu", "cuda:0") == "cuda:0"


def test_a_run_that_completes_with_a_misplaced_cache_is_wrong(monkeypatch):
    """The trial's own code, in this process, with one misplacement planted after step 1."""
    calls = []

    def misplaced_once(past, device_map, main):
        calls.append(1)
        if len(calls) == 1:
            raise WrongResult("layer 1's cache is on cpu, but the map runs layer 1 on meta (planted)")

    monkeypatch.setattr(device_mismatch, "check_cache_placement", misplaced_once)
    knobs = get("device-mismatch").knob_values(QUICK)
    with pytest.raises(WrongResult, match=r"^after step 1, layer 1's cache .* \(planted\)") as caught:
        device_mismatch.skip_keys(**knobs)
    assert caught.value.metrics["steps_completed"] == 3  # every step ran: only the watch saw it


def test_on_four_virtual_gpus_broken_fails_in_the_cache_update_and_skip_keys_holds(side_by_side):
    trials = side_by_side("device-mismatch", ["broken", "skip-keys"], knobs={**QUICK, "gpus": 4})
    broken, fixed = trials["broken"], trials["skip-keys"]
    assert broken.outcome == "raised" and broken.metrics["steps_completed"] == 1, broken.error
    assert re.search(r"found at least two devices, cuda:\d and cuda:\d! \(labkit's virtual GPUs, a stand-in", broken.error)
    assert "torch.cat" in broken.traceback and broken.notes["misplaced"].startswith("after step 1, layer ")
    assert (fixed.outcome, fixed.error, fixed.metrics["steps_completed"]) == ("ok", None, 3)  # tokens = a CPU run's
    assert "stand-in for CUDA's own device check" in fixed.notes["check"]
    for t in trials.values():  # memory per device, no time from a virtual GPU
        assert "ms_per_step" not in t.metrics and t.metrics["peak_gpu_mib"] > 0
        assert {f"peak_mib_cuda{i}" for i in range(4)} <= set(t.metrics) and "accelerate's size" in t.notes["memory"]


@pytest.mark.parametrize("memory, device_map, gpu, step", [
    ("512KiB", "cuda:0,cuda:0,cuda:0,cuda:0,cuda:0,cuda:0,cuda:1", 0, None),  # 0.8 MiB of weights on cuda:0
    ("700KiB", "cuda:0,cuda:0,cuda:1,cuda:1,cuda:1,cuda:1,cuda:1", 1, 0),  # cuda:1's weights fit, not the prefill
])
def test_a_map_that_overflows_a_virtual_gpu_raises_cudas_out_of_memory_there(memory, device_map, gpu, step):
    import torch

    knobs = get("device-mismatch").knob_values({**QUICK, "gpus": 2, "gpu_memory": memory, "device_map": device_map})
    with pytest.raises(torch.OutOfMemoryError, match=f"GPU {gpu} has a total capacity of {memory[:3]}.00 KiB") as caught:
        device_mismatch.skip_keys(**knobs)
    assert caught.value.metrics.get("steps_completed") == step  # None: while loading the checkpoint
    assert caught.value.metrics[f"peak_mib_cuda{1 - gpu}"] * 2**20 < int(memory[:3]) * 1024


def test_virtual_gpu_settings_are_checked_before_anything_runs():
    scen = get("device-mismatch")
    with pytest.raises(BadInput, match="gpus=9 is out of range"):
        scen.knob_values({"gpus": 9})
    with pytest.raises(BadInput, match="'lots' is not a size"):
        scen.knob_values({"gpus": 2, "gpu_memory": "lots"})
    with pytest.raises(BadInput, match="device 'cuda:3' does not exist with 2 virtual GPUs"):
        scen.knob_values({"gpus": 2, "device_map": "cuda:0,cuda:0,cuda:1,cuda:1,cuda:1,cuda:1,cuda:3"})
    assert scen.knob_values({"gpus": 4, "device_map": "cuda:0,cuda:0,cuda:1,cuda:1,cuda:2,cuda:3,cuda:3"})["gpus"] == 4


@pytest.mark.gpu
def test_on_gpus_broken_raises_torchs_own_mismatch_and_skip_keys_matches_one_device():
    broken = run("device-mismatch", "broken", knobs=QUICK, monitor=False).trials[0]
    assert "Expected all tensors to be on the same device" in broken.error, broken.error
    # the top hook brought the whole cache back to the main device with step 1's outputs
    assert broken.notes["misplaced"].startswith("after step 1, layer "), broken.notes
    fixed = run("device-mismatch", "skip-keys", knobs={"tokens": 8}, monitor=False).trials[0]
    assert fixed.outcome == "ok", fixed.error  # tokens equal to a one-device CPU run
