"""The GPU ids the shard was given reach CUDA as the executor numbers them (no torch needed)."""

import os


def given_ids():
    return [g for g in os.environ.get("MATRIX_RUN_GPU_IDS", "").split(",") if g]


def test_cuda_visible_devices_numbers_the_given_gpus():
    ids = given_ids()
    assert ids, "the shard was given no GPU id (MATRIX_RUN_GPU_IDS is empty)"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if os.environ.get("MATRIX_RUN_EXECUTOR") == "host":
        assert visible == ",".join(ids)  # on the host every device is there: the ids are the devices' own
    else:
        assert visible == ",".join(str(i) for i in range(len(ids)))  # a container sees its devices from 0
    assert os.environ.get("CUDA_DEVICE_ORDER") == "PCI_BUS_ID"  # numbered as nvidia-smi and Docker number them
    print("gpu-check: given GPU ids %s; CUDA_VISIBLE_DEVICES=%s" % (",".join(ids), visible))
