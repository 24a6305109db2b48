import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="device for tests that honour it (cpu, cuda)")


@pytest.fixture
def device(request):
    dev = request.config.getoption("--device")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA not available")
    return torch.device(dev)


@pytest.fixture(autouse=True)
def _threads():
    # CI machines have 2 cores shared by several processes: with 2 intra-op threads, OpenMP's
    # spin-waiting under load made small-tensor tests up to 100x slower than with 1 thread.
    torch.set_num_threads(1)
    yield
