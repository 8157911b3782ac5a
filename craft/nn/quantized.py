"""`QuantizedWeight`: a weight held as int8 or packed int4, used where its float matrix was.

A params tree may hold one in place of a 2-D weight. The layers need no change: `F.linear`
multiplies through PyTorch's int8 weight-only CPU kernel (`_weight_int8pack_mm`) and, for
int4 or elsewhere, through the matrix dequantized for that one call; `F.embedding` and row
indexing dequantize only the rows they read; `.to(device)` moves the integers. Any other use
sees the dequantized float matrix. So a quantized model keeps its weights in about a quarter
(int8) or a sixth (int4) of the memory.
Inference only: it carries no gradient. Files never hold it; they hold its integers and scales.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils._pytree import tree_map

from craft.nn.quant import dequantize_int4, dequantize_int8, unpack_int4


class QuantizedWeight(torch.Tensor):
    """An `[out, in]` float32 weight stored as integers plus scales (`bits` 8 or 4)."""

    ints: torch.Tensor
    scales: torch.Tensor
    lows: torch.Tensor | None
    bits: int

    @staticmethod
    def __new__(
        cls, values: torch.Tensor, scales: torch.Tensor, lows: torch.Tensor | None = None
    ) -> QuantizedWeight:
        packed = values.dtype == torch.uint8
        shape = (values.shape[0], values.shape[1] * (2 if packed else 1))
        return torch.Tensor._make_wrapper_subclass(
            cls, shape, dtype=torch.float32, device=values.device, requires_grad=False
        )

    def __init__(
        self, values: torch.Tensor, scales: torch.Tensor, lows: torch.Tensor | None = None
    ) -> None:
        self.ints, self.scales, self.lows = values, scales, lows  # (`values` is Tensor's)
        self.bits = 4 if values.dtype == torch.uint8 else 8
        if self.bits == 4 and lows is None:
            raise ValueError("an int4 weight needs its group lows")

    def __repr__(self) -> str:  # type: ignore[override]
        return f"QuantizedWeight(int{self.bits}, shape={list(self.shape)})"

    @property
    def group_size(self) -> int | None:
        return None if self.bits == 8 else self.shape[1] // self.scales.shape[1]

    def stored_bytes(self) -> int:
        """Bytes held: the integers and the scales."""
        parts = [self.ints, self.scales, *([self.lows] if self.lows is not None else [])]
        return sum(t.numel() * t.element_size() for t in parts)

    def dequantize(self) -> torch.Tensor:
        with torch._C.DisableTorchFunctionSubclass():
            if self.bits == 8:
                return dequantize_int8(self.ints, self.scales)
            assert self.lows is not None
            return dequantize_int4(self.ints, self.scales, self.lows)

    def rows(self, index: Any) -> torch.Tensor:
        """`weight[index]` along dim 0, dequantizing only those rows."""
        with torch._C.DisableTorchFunctionSubclass():
            values, scales = self.ints[index], self.scales[index]
            if self.bits == 8:
                return values.float() * scales.unsqueeze(-1)
            assert self.lows is not None
            lows = self.lows[index]
            grouped = unpack_int4(values).float().unflatten(-1, (scales.shape[-1], -1))
            return (grouped * scales.float().unsqueeze(-1) + lows.float().unsqueeze(-1)).flatten(-2)

    def matmul_t(self, x: torch.Tensor) -> torch.Tensor:
        """`x @ weight.T` (what `F.linear` computes). int8 on a CPU: torch's weight-only
        kernel, reading the integers. Otherwise the matrix is dequantized for this call only:
        int4's CPU kernel wants its own copy of the weight (0.19x fp32 more memory, which is
        what int4 is for), so int4 trades speed for memory; `dequantized` gives fp32 speed."""
        with torch._C.DisableTorchFunctionSubclass():
            if self.bits == 8 and x.device.type == "cpu" and x.dtype == torch.float32:
                flat = x.reshape(-1, x.shape[-1]).contiguous()
                out = torch._weight_int8pack_mm(flat, self.ints, self.scales)
                return out.reshape(*x.shape[:-1], self.shape[0])
            return F.linear(x, self.dequantize().to(x.dtype))

    def moved(self, device: torch.device | str) -> QuantizedWeight:
        """The same weight on another device."""
        with torch._C.DisableTorchFunctionSubclass():
            return QuantizedWeight(
                self.ints.to(device),
                self.scales.to(device),
                None if self.lows is None else self.lows.to(device),
            )

    @classmethod
    def __torch_function__(
        cls,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _METADATA:
            with torch._C.DisableTorchFunctionSubclass():
                return func(*args, **kwargs)
        weight = args[1] if len(args) > 1 else kwargs.get("weight")
        if func is F.linear and isinstance(weight, QuantizedWeight):
            out = weight.matmul_t(args[0])
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            return out if bias is None else out + bias
        # (max_norm would rescale the table's rows in place: the float path refuses that)
        if (
            func is F.embedding
            and isinstance(weight, QuantizedWeight)
            and not kwargs.get("max_norm")
        ):
            return weight.rows(args[0])
        if func is torch.Tensor.__getitem__ and isinstance(args[0], QuantizedWeight):
            index = args[1]
            if not isinstance(index, tuple):
                return args[0].rows(index)
        if func in (torch.Tensor.detach, torch.Tensor.requires_grad_):
            return args[0]
        if func in (torch.Tensor.cpu, torch.Tensor.cuda):
            return args[0].moved(func.__name__)
        if func is torch.Tensor.to and _keeps_dtype(args, kwargs):
            return args[0].moved(_target_device(args, kwargs) or args[0].device)
        args, kwargs = tree_map(_as_float, (args, kwargs))
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(  # type: ignore[override]
        cls,
        func: Callable[..., Any],
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        # Reached only by ops that bypass __torch_function__ (inside autograd, say).
        args, kwargs = tree_map(_as_float, (args, kwargs or {}))
        return func(*args, **kwargs)


def _as_float(value: Any) -> Any:
    return value.dequantize() if isinstance(value, QuantizedWeight) else value


def _target_device(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.device | None:
    """The device `.to(...)` names, if any (as a device, a string or a tensor's)."""
    for arg in (*args[1:], kwargs.get("device")):
        if isinstance(arg, (str, torch.device)):
            return torch.device(arg)
        if isinstance(arg, torch.Tensor):
            return arg.device
    return None


def _keeps_dtype(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
    """`.to(...)` that names no dtype other than float32."""
    wanted = [a for a in (*args[1:], kwargs.get("dtype")) if isinstance(a, torch.dtype)]
    return all(dtype == torch.float32 for dtype in wanted)


_METADATA = {
    getter
    for name in ("shape", "dtype", "device", "ndim", "requires_grad", "is_leaf", "layout")
    for getter in (getattr(torch.Tensor, name).__get__,)
} | {torch.Tensor.size, torch.Tensor.dim, torch.Tensor.numel, torch.Tensor.element_size}
