"""Cost: an image's share of measured generation time times its device's hourly rate."""

from __future__ import annotations

from ldm_batch.policies import CostRates


def image_cost(seconds: float, device: str, rates: CostRates) -> float:
    """`device` is 'cpu' or 'cuda:<GPU model>'; an unknown GPU model falls back to 'cuda'."""
    rate = rates.device_hour.get(device, rates.device_hour.get(device.split(":")[0]))
    if rate is None:
        raise ValueError(f"no cost rate for device {device!r} in costs.yaml; known: {', '.join(rates.device_hour)}")
    return round(seconds / 3600.0 * rate, 8)
