import pytest

from labkit import BadInput
from labkit.devices import available, check_device


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
