import pytest

from labkit import BadInput
from labkit.llm.devices import available, check_device


def test_devices_that_exist_everywhere():
    assert check_device("cpu") == "cpu" and check_device("meta") == "meta"
    assert "cpu" in available()


def test_a_device_that_does_not_exist_is_refused():
    with pytest.raises(BadInput, match="device 'cuda:7' does not exist on this machine; allowed here: cpu"):
        check_device("cuda:7")
    with pytest.raises(BadInput, match="'gpu0' is not a device name"):
        check_device("gpu0")


@pytest.mark.gpu
def test_cuda_zero_exists_on_a_gpu_machine():
    assert check_device("cuda") == "cuda:0"


def test_device_pair_parses_and_refuses():
    from labkit.llm.devices import device_pair

    pair = device_pair("cpu, meta")
    assert (pair.first, pair.second, pair.placement_only) == ("cpu", "meta", True)
    assert device_pair().first == "cpu"  # auto: the CPU is in every pair but the two-GPU one
    with pytest.raises(BadInput, match="two different devices"):
        device_pair("cpu,cpu")
    with pytest.raises(BadInput, match="devices must be 'auto' or two devices 'A,B'"):
        device_pair("cpu")


def test_with_virtual_gpus_the_pair_is_what_that_many_gpus_give():
    from labkit.llm.devices import device_pair

    assert str(device_pair(gpus=2)) == "cuda:0 + cuda:1" and "2 virtual GPUs" in device_pair(gpus=2).why
    assert str(device_pair(gpus=1)) == "cpu + cuda:0"
    assert str(device_pair("cuda:0,cuda:3", gpus=4)) == "cuda:0 + cuda:3"
    with pytest.raises(BadInput, match="device 'cuda:3' does not exist with 2 virtual GPUs"):
        device_pair("cuda:0,cuda:3", gpus=2)


def test_check_same_device_names_the_culprits():
    import torch

    from labkit.llm.devices import DeviceMismatch, check_same_device

    assert check_same_device(a=torch.zeros(1), b=torch.ones(2), c=None) == "cpu"
    with pytest.raises(DeviceMismatch, match="found ids on cpu; weight, bias on meta"):
        check_same_device(ids=torch.zeros(1), weight=torch.zeros(1, device="meta"), bias=torch.zeros(1, device="meta"))


def test_placement_check_stops_what_meta_kernels_let_through():
    import torch

    from labkit.llm.devices import DeviceMismatch, placement_check

    embed, ids = torch.nn.Embedding(10, 3, device="meta"), torch.tensor([1, 2])
    assert embed(ids).device.type == "meta"  # the embedding's meta kernel checks no devices
    handles = placement_check(torch.nn.Sequential(embed))
    with pytest.raises(DeviceMismatch, match=r"0.weight on meta; 0 input 0 on cpu"):
        embed(ids)
    for h in handles:
        h.remove()
    embed(ids)
