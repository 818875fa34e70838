"""thread-device: a device context is per thread; a worker does not inherit it."""

import pytest

from labkit import BadInput, get, run

QUICK = {"tokens": 3}


@pytest.mark.parametrize("context", ["set_default_device", "torch.device"])
def test_broken_fails_every_trial(context):
    trials = run("thread-device", "broken", repeats=2 if context == "set_default_device" else 1,
                 knobs={**QUICK, "context": context}, monitor=False).trials
    for t in trials:
        assert t.outcome == "raised" and t.metrics["steps_completed"] == 0, t.error
        # no GPU: labkit's check names the tensors; with GPUs, torch's own error
        assert ("model.embed_tokens input 0 on cpu" in t.error) or ("Expected all tensors" in t.error), t.error
        assert t.notes["context"] == context


def test_both_fixes_decode_every_step(side_by_side):
    for variant, t in side_by_side("thread-device", ["explicit-device", "same-thread"], knobs=QUICK).items():
        assert (t.outcome, t.error, t.metrics["steps_completed"]) == ("ok", None, 3), variant


def test_bad_settings_are_refused():
    scen = get("thread-device")
    with pytest.raises(BadInput, match="context cuda.set_device needs devices cuda:0,cuda:1"):
        scen.knob_values({"context": "cuda.set_device", "devices": "cpu,meta"})
    with pytest.raises(BadInput, match="where a new thread's tensors land"):
        scen.knob_values({"devices": "meta,cpu"})
    with pytest.raises(BadInput, match="tokens=0 is out of range"):
        scen.knob_values({"tokens": 0})


def test_on_two_virtual_gpus_broken_raises_the_reports_own_error_and_the_fix_holds(side_by_side):
    trials = side_by_side("thread-device", ["broken", "explicit-device"], knobs={**QUICK, "gpus": 2})
    broken, fixed = trials["broken"], trials["explicit-device"]
    assert broken.outcome == "raised" and broken.metrics["steps_completed"] == 0, broken.error
    assert "found at least two devices, cuda:0 and cuda:1! (labkit's virtual GPUs" in broken.error
    assert broken.notes["context"] == "cuda.set_device"  # "cuda" is cuda:1 in the main thread, cuda:0 in the worker
    assert (fixed.outcome, fixed.error, fixed.metrics["steps_completed"]) == ("ok", None, 3)  # tokens = a CPU run's
    assert "ms_per_step" not in fixed.metrics and fixed.metrics["peak_mib_cuda1"] > 0


@pytest.mark.gpu
def test_on_gpus_broken_raises_torchs_own_mismatch_and_fixes_match_one_thread():
    t = run("thread-device", "broken", knobs=QUICK, monitor=False).trials[0]
    assert "Expected all tensors to be on the same device" in t.error, t.error
    for variant in ("explicit-device", "same-thread"):
        t = run("thread-device", variant, knobs={"tokens": 8}, monitor=False).trials[0]
        assert t.outcome == "ok", t.error  # tokens equal to a one-thread CPU run
