"""Virtual GPUs: torch's device error and CUDA's out-of-memory on any machine, torch as it was afterwards,
and accelerate's and transformers' own code running on them."""

import threading

import pytest
import torch

from labkit import BadInput, virtual_gpus
from labkit.llm.virtual_gpus import VirtualDeviceMismatch, VirtualOutOfMemory


def _torch_state():
    from torch.overrides import _get_current_function_mode_stack

    return (torch.device, torch.cuda.is_available(), torch.cuda.device_count(), threading.Thread._bootstrap_inner,
            len(_get_current_function_mode_stack()), torch.get_default_device())


def test_two_devices_in_one_op_raise_torchs_message_and_say_whose_check_it_is():
    with virtual_gpus(2):
        a, b = torch.arange(6.0, device="cuda:0").reshape(2, 3), torch.ones(2, 3).to("cuda:1")
        with pytest.raises(RuntimeError, match=r"found at least two devices, cuda:0 and cuda:1! \(labkit's virtual GPUs"):
            torch.cat([a, b])
        with pytest.raises(VirtualDeviceMismatch, match="cuda:1 and cpu"):
            b + torch.ones(3)
        # what CUDA lets through: a CPU scalar, indexing (before torch's C++ device guard), copies across
        assert (a * torch.tensor(2.0))[1, 2].item() == 10.0 and a[..., None].shape == (2, 3, 1)
        assert torch.cat([a, b.to("cuda:0")]).device == torch.device("cuda:0")
        assert a.copy_(b).device.index == 0 and a.sum().item() == 6.0
        host = torch.zeros(2, 3)
        assert host.copy_(a) is host and host.sum().item() == 6.0  # a copy to the host stays on the host
        with pytest.raises(IndexError, match=r"indices should be either on cpu or on the same device"):
            host[torch.tensor([0], device="cuda:0")]
        with pytest.raises(TypeError, match="can't convert cuda:0 device type tensor to numpy"):
            a.numpy()
        assert str(a.cpu().device) == "cpu" and repr(b).endswith("device='cuda:1')")


def test_torch_is_as_it_was_after_the_block_even_after_a_failure():
    before = _torch_state()
    with pytest.raises(VirtualDeviceMismatch), virtual_gpus(2):
        torch.set_default_device("cuda:1")
        assert torch.empty(1).device == torch.device("cuda:1") and torch.device(0) == torch.device("cuda:0")
        torch.empty(1, device="cuda:0") + torch.empty(1)
    assert _torch_state() == before
    with virtual_gpus(1):  # a second block opens after the first closed
        pass


def test_one_block_at_a_time_and_sizes_in_range():
    with virtual_gpus(1), pytest.raises(BadInput, match="already open"):
        with virtual_gpus(1):
            pass
    with pytest.raises(BadInput, match="allowed: 1 <= n <= 8"):
        virtual_gpus(9).__enter__()
    with pytest.raises(BadInput, match="is not a size"):
        virtual_gpus(2, memory="lots").__enter__()


def test_the_current_device_is_per_thread_as_on_cuda():
    seen = []
    with virtual_gpus(2):
        torch.cuda.set_device(1)
        worker = threading.Thread(target=lambda: seen.append((torch.cuda.current_device(), torch.zeros(1, device="cuda").device)))
        worker.start()
        worker.join()
        assert torch.zeros(1, device="cuda").device == torch.device("cuda:1")
        with torch.cuda.device(0):
            assert torch.cuda.current_device() == 0
        assert torch.cuda.current_device() == 1
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.zeros(1, device="cuda:2")
    assert seen == [(0, torch.device("cuda:0"))]


def test_memory_counts_live_tensors_per_device_and_overflow_is_cudas_out_of_memory():
    with virtual_gpus(2, memory="1MiB") as gpus:
        x = torch.zeros(1000, device="cuda:1")  # 4000 bytes, a block of 4096 as CUDA's allocator rounds it
        view = x[:10]
        assert torch.cuda.memory_allocated(1) == 4096 and torch.cuda.memory_allocated(0) == 0
        del x, view
        assert torch.cuda.memory_allocated(1) == 0 and torch.cuda.max_memory_allocated(1) == 4096
        assert torch.cuda.mem_get_info(1) == (2**20, 2**20)
        keep = torch.zeros(200_000, device="cuda:1")
        with pytest.raises(torch.OutOfMemoryError, match=r"Tried to allocate 781.50 KiB. GPU 1 has a total capacity "
                                                         r"of 1.00 MiB of which 242.50 KiB is free") as caught:
            keep.clone()
        assert isinstance(caught.value, VirtualOutOfMemory) and "standing in for CUDA's allocator" in str(caught.value)
        assert [m.peak for m in gpus.memory()] == [0, 800_256]
        del keep


def test_modules_move_with_to_and_compute_what_the_cpu_computes():
    layer = torch.nn.Linear(3, 4)
    x = torch.randn(2, 3)
    with virtual_gpus(2), torch.no_grad():
        moved = torch.nn.Linear(3, 4).to("cuda:1")
        moved.load_state_dict(layer.state_dict())
        assert isinstance(moved.weight, torch.nn.Parameter) and moved.weight.device == torch.device("cuda:1")
        out = moved(x.to("cuda:1"))
    assert out.device == torch.device("cuda:1") and torch.equal(out.cpu(), layer(x).detach())  # tensors outlive the block


def test_from_pretrained_with_device_map_auto_generates_the_cpu_tokens(tmp_path):
    """The user's own code, unchanged: transformers plans with accelerate, dispatches, generates."""
    from transformers import AutoModelForCausalLM

    from labkit import save_tiny

    checkpoint = save_tiny(tmp_path)
    prompt = torch.tensor([[5, 6, 7, 8]])
    alone = AutoModelForCausalLM.from_pretrained(checkpoint).generate(prompt, max_new_tokens=4, do_sample=False)
    with virtual_gpus(4) as gpus, torch.no_grad():
        model = AutoModelForCausalLM.from_pretrained(checkpoint, device_map="auto")
        out = model.generate(prompt.to("cuda:0"), max_new_tokens=4, do_sample=False)
        used = {str(p.device) for p in model.parameters()}
    assert len(used) > 1 and all(d.startswith("cuda:") for d in used), used
    assert torch.equal(out.cpu(), alone)
    assert sum(m.peak > 0 for m in gpus.memory()) >= len(used)


def test_map_memory_against_accelerates_own_sizes(tmp_path):
    """Per GPU: the weights accelerate planned there, what the GPU held once loaded (each tensor rounded
    up to 512 bytes), the KV cache of its layers, and the peak while generating, above both."""
    from accelerate.utils import calculate_maximum_sizes

    from labkit import save_tiny
    from labkit.llm.device_maps import empty_model, map_memory
    from labkit.llm.memory import kv_cache_bytes
    from labkit.llm.models import tiny_config

    checkpoint = save_tiny(tmp_path)
    rows = map_memory(str(checkpoint), "cuda:0,cuda:0,cuda:1,cuda:1,cuda:2,cuda:3,cuda:3", gpus=4, new_tokens=8)
    total, _ = calculate_maximum_sizes(empty_model(checkpoint))  # what `accelerate estimate-memory` reports
    assert sum(r.planned for r in rows) == total
    tensors = {"cuda:0": 1 + 11, "cuda:1": 11 * 2, "cuda:2": 11, "cuda:3": 11 + 1 + 1}  # embeddings, layers, norm, head
    for r in rows:
        assert 0 <= r.loaded - r.planned < 512 * tensors[r.device], r
        assert r.peak >= r.loaded + r.kv_cache, r
    layers = {"cuda:0": 1, "cuda:1": 2, "cuda:2": 1, "cuda:3": 0}
    cached_tokens = 12 + 8 - 1  # the last new token is never fed back
    assert [r.kv_cache for r in rows] == [kv_cache_bytes(tiny_config(), 1, cached_tokens, torch.float32) // 4 * layers[r.device]
                                          for r in rows]


@pytest.mark.gpu
def test_virtual_memory_against_the_real_gpu(tmp_path):
    """The same load, dispatch and generate on one virtual GPU and on the real one, read through
    torch.cuda's statistics: the weights held must agree to the byte; the peaks are printed, for the note."""
    from labkit import save_tiny
    from labkit.llm.device_maps import map_memory

    checkpoint = str(save_tiny(tmp_path))
    one_gpu = ",".join(["cuda:0"] * 7)
    (virtual,) = map_memory(checkpoint, one_gpu, gpus=1, new_tokens=64)
    real = map_memory(checkpoint, one_gpu, real=True, new_tokens=64)[0]
    print(f"\nvirtual {virtual}\nreal    {real}")
    assert (virtual.planned, virtual.loaded, virtual.kv_cache) == (real.planned, real.loaded, real.kv_cache)
    assert real.peak >= real.loaded + real.kv_cache
