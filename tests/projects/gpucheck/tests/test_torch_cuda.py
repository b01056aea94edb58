"""torch on the GPU(s) the shard was given: their names, a matrix product and a backward pass on them, and (with
nvidia-smi) that cuda:k is the GPU of the k-th given id. Without torch, or with no CUDA device visible, these
skip and say why."""

import os
import shutil
import subprocess

import pytest

torch = pytest.importorskip("torch", reason="torch is not importable in this environment")

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="no CUDA device: torch %s (CUDA %s) sees none with CUDA_VISIBLE_DEVICES=%r"
    % (torch.__version__, torch.version.cuda, os.environ.get("CUDA_VISIBLE_DEVICES")),
)


def given_ids():
    return [g for g in os.environ.get("MATRIX_RUN_GPU_IDS", "").split(",") if g]


@needs_cuda
def test_each_given_gpu_is_one_cuda_device():
    ids = given_ids()
    assert torch.cuda.device_count() == len(ids)
    for k, host_id in enumerate(ids):
        props = torch.cuda.get_device_properties(k)
        print(
            "gpu-check: cuda:%d = GPU %s: %s, %.1f GiB, %d SMs, compute capability %d.%d, torch %s, CUDA %s"
            % (
                k,
                host_id,
                props.name,
                props.total_memory / 2**30,
                props.multi_processor_count,
                props.major,
                props.minor,
                torch.__version__,
                torch.version.cuda,
            )
        )


@needs_cuda
def test_cuda_k_is_the_gpu_of_the_k_th_given_id():
    smi = shutil.which("nvidia-smi")
    if smi is None:
        pytest.skip("(cross-check only) nvidia-smi not found: the device behind each id is not cross-checked")
    listed = subprocess.run(
        [smi, "--query-gpu=index,pci.bus_id", "--format=csv,noheader"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    buses = dict(tuple(part.strip() for part in line.split(",", 1)) for line in listed.splitlines() if "," in line)
    host = os.environ.get("MATRIX_RUN_EXECUTOR") == "host"  # else a container, where nvidia-smi counts from 0
    for k, host_id in enumerate(given_ids()):
        props = torch.cuda.get_device_properties(k)
        if getattr(props, "pci_bus_id", None) is None:
            pytest.skip("(cross-check only) this torch does not report PCI bus ids")
        domain, bus, device = buses[host_id if host else str(k)].split(":")
        got = (props.pci_domain_id, props.pci_bus_id, props.pci_device_id)
        assert got == (int(domain, 16), int(bus, 16), int(device.split(".")[0], 16)), (k, host_id, buses)
        print("gpu-check: cuda:%d is PCI %s (nvidia-smi index %s)" % (k, buses[host_id if host else str(k)], host_id))


@needs_cuda
def test_matmul_on_cuda_matches_the_cpu():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(256, 256, dtype=torch.float64, generator=gen)
    b = torch.randn(256, 256, dtype=torch.float64, generator=gen)
    got = a.cuda() @ b.cuda()
    assert got.device.type == "cuda"
    assert torch.allclose(got.cpu(), a @ b, rtol=1e-10, atol=1e-10)


@needs_cuda
def test_autograd_on_cuda():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(64, 32, dtype=torch.float64, generator=gen).cuda()
    w = torch.randn(32, 8, dtype=torch.float64, generator=gen).cuda().requires_grad_()
    (x @ w).pow(2).sum().backward()
    assert w.grad is not None and w.grad.device.type == "cuda"
    assert torch.allclose(w.grad, 2 * x.T @ (x @ w.detach()))  # d/dw sum((xw)^2) = 2 x^T (x w)


@needs_cuda
def test_every_given_gpu_runs_a_kernel():
    for k in range(torch.cuda.device_count()):
        t = torch.arange(1024, dtype=torch.float32, device="cuda:%d" % k)
        assert t.sum().item() == 1023 * 1024 / 2
        torch.cuda.synchronize(k)
