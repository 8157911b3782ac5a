"""What the hardware can do: dense bf16 peak FLOP/s by device name, for MFU."""

from __future__ import annotations

import torch

PEAK_BF16_FLOPS = {  # dense tensor-core peaks; none is known for CPUs
    "H100 SXM": 989e12, "H100 80GB HBM3": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12,
    "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 70e12, "RTX 4090": 165e12,
}  # fmt: skip


def peak_flops(device: torch.device) -> float | None:
    """The device's bf16 peak, looked up from its name; None when unknown (CPUs included)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)
