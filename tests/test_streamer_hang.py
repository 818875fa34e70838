"""streamer-hang: transformers' TextIteratorStreamer, a real ValueError inside generate, a caller that waits."""

from labkit import run
from labkit.machine.system_linux import group_members


def test_broken_hangs_with_the_caller_in_the_streamer_s_queue_and_the_worker_gone():
    trial = run("streamer-hang", "broken", monitor=False).trials[0]
    assert trial.outcome == "hung" and trial.notes["hung"].startswith("no progress")
    frames = trial.stack_frames()
    caller = frames[frames.main].sort_values("depth")
    assert caller.function.tolist()[:3] == ["wait", "get", "__next__"]  # Queue.get in the streamer's iterator
    assert caller.file.iloc[2].endswith("streamers.py")
    assert frames.thread.nunique() == 1  # the generate thread is gone: it raised and ended
    assert "ValueError: `temperature` (=0.0)" in trial.output  # only its thread's traceback says why
    assert all(group_members(pid) == [] for pid in trial.stacks)


def test_the_fixes_fail_fast_and_only_propagate_raises_the_real_error():
    timeout = run("streamer-hang", "timeout", knobs={"timeout_s": 1.0}, monitor=False).trials[0]
    assert timeout.outcome == "raised" and timeout.error.startswith("TimeoutError: no text from generate within 1 s")
    propagated = run("streamer-hang", "propagate", monitor=False).trials[0]
    assert propagated.outcome == "raised" and propagated.error.startswith("ValueError: `temperature` (=0.0)")


def test_with_valid_settings_every_variant_streams_the_whole_answer():
    for variant in ("broken", "timeout", "propagate"):
        trial = run("streamer-hang", variant, knobs={"temperature": 0.7}, monitor=False).trials[0]
        assert trial.outcome == "ok" and trial.metrics["chars"] > 0, (variant, trial.error)
