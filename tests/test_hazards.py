"""doctor's hazards: each rule against facts it is handed (doctor reads the real ones; test_cli runs it)."""

from labkit.ui.hazards import hazards

FACTS = {"version:tokenizers": "0.23.3", "start_method": "fork", "TOKENIZERS_PARALLELISM": "(unset)",
         "torch_intra_op_threads": 2, "usable_cores": 2, "native_pools": [{"prefix": "libgomp"}],
         "OMP_WAIT_POLICY": "(unset)", "cuda_devices": [], "CUDA_VISIBLE_DEVICES": "(unset)",
         "dispatch_moves_cache": False, "distributed_default_timeout": "0:30:00", "dynamo_config_per_thread": False}


def verdicts(workers=1, **facts):
    return {h.failure: h.verdict for h in hazards({**FACTS, **facts}, workers)}


def test_the_tokenizer_deadlock_needs_fork_and_the_variable_set_to_true():
    assert verdicts()["tokenizer-deadlock"] == "not exposed"  # unset: the library's own guard
    assert verdicts(TOKENIZERS_PARALLELISM="true")["tokenizer-deadlock"] == "exposed"
    assert verdicts(TOKENIZERS_PARALLELISM="true", start_method="spawn")["tokenizer-deadlock"] == "not exposed"
    assert verdicts(**{"version:tokenizers": "not installed", "TOKENIZERS_PARALLELISM": "true"})["tokenizer-deadlock"] == "not exposed"


def test_the_storm_is_the_pool_times_the_workers_against_the_cores():
    assert verdicts()["thread-storm"] == "not exposed"
    assert verdicts(workers=2)["thread-storm"] == "exposed"
    assert verdicts(workers=2, torch_intra_op_threads=1)["thread-storm"] == "not exposed"
    assert verdicts(OMP_WAIT_POLICY="PASSIVE")["thread-storm (waiting)"] == "not exposed"


def test_two_gpus_without_a_visible_list_expose_the_per_thread_device():
    assert verdicts(cuda_devices=["H100", "H100"])["thread-device"] == "exposed"
    assert verdicts(cuda_devices=["H100", "H100"], CUDA_VISIBLE_DEVICES="1")["thread-device"] == "not exposed"


def test_what_labkit_cannot_see_is_unknown_not_safe():
    unknown = {f for f, v in verdicts().items() if v == "unknown"}
    assert unknown == {"thread-race", "oom-hang", "streamer-hang"}
    assert verdicts(dispatch_moves_cache=True)["device-mismatch"] == "exposed"
    assert verdicts(dispatch_moves_cache=None)["device-mismatch"] == "unknown"


def test_a_per_thread_dynamo_config_exposes_a_compiled_step_served_from_threads():
    assert verdicts()["compile-threads"] == "not exposed"
    assert verdicts(dynamo_config_per_thread=True)["compile-threads"] == "exposed"
    assert verdicts(dynamo_config_per_thread=None)["compile-threads"] == "unknown"
