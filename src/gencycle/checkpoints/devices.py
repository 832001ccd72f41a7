"""Which device a model runs on: the user's choice checked before anything is loaded.

    resolve_device(None)      cuda when this torch sees a GPU, else cpu
    resolve_device("cuda:1")  refused with a clear message where torch has no CUDA, or no GPU 1

A bad device used to fail only after the weights were read (torch's "Torch not compiled with
CUDA enabled" from deep inside `.to()`); checking the name first costs nothing.
"""

from __future__ import annotations

import torch

from ..errors import OptionError

USABLE = ("cpu", "cuda", "mps", "xpu")


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _available(kind: str) -> tuple[bool, int | None, str]:
    """(usable, number of devices or None, why not) for a device type of this torch."""
    if kind == "cpu":
        return True, None, ""
    if kind == "cuda":
        if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
            return False, 0, "this torch was built without CUDA (a CPU-only build)"
        count = torch.cuda.device_count()
        return count > 0, count, "no CUDA GPU is visible (CUDA_VISIBLE_DEVICES, driver?)"
    if kind == "mps":
        ok = torch.backends.mps.is_available()
        return ok, None, "MPS (Apple GPU) is not available on this machine"
    if kind == "xpu":
        xpu = getattr(torch, "xpu", None)
        count = xpu.device_count() if xpu is not None and xpu.is_available() else 0
        return count > 0, count, "no Intel XPU is available"
    return False, None, f"gencycle runs models on {', '.join(USABLE)}"


def resolve_device(device: str | torch.device | None = None, option: str = "device") -> torch.device:
    """The torch.device for `device` (None: the default), if this machine can run on it."""
    if device is None:
        return default_device()
    if isinstance(device, torch.device):
        parsed = device
    else:
        try:
            parsed = torch.device(str(device).strip())
        except RuntimeError:
            raise OptionError(option, f"must be a device such as {', '.join(USABLE)} or cuda:1",
                              device) from None
    usable, count, why = _available(parsed.type)
    if not usable:
        raise OptionError(option, f"{str(device)!r} cannot be used: {why}")
    if parsed.index is not None and count is not None and parsed.index >= count:
        raise OptionError(option, f"{str(device)!r} cannot be used: this machine has {count} {parsed.type} "
                          f"device(s), numbered from 0")
    return parsed
