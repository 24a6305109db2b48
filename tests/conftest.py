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
    # CI machines have 2 cores; keep each test from oversubscribing them.
    torch.set_num_threads(2)
    yield
