"""ZeRO-1: under data parallel, each rank keeps and updates only its slice of the optimizer state.

Lay every param leaf, flattened, end to end: one vector of P numbers. Rank r owns the r-th of N
equal contiguous slices of it (the last one padded). A step reduce-scatters the gradients, so each
rank receives the summed gradient of its slice only; it updates that slice of the params with its
slice of the optimizer state, and an all-gather gives every rank the whole params again. The
traffic equals one all-reduce; the optimizer state per rank falls from (say) 2P to 2P/N for AdamW.

A rank's slice is handed to the optimizer as a params-like tree of views into the param leaves
(`OptimizerShards.own`), named as the leaves they cut, and 2-d for pieces of matrices: per-leaf
rules such as AdamW's weight-decay mask (matrices, not vectors or embeddings) see what they see
on the whole params. An optimizer whose rule needs a leaf's full shape would not fit this layout.

Checkpoints hold the whole state (`full_state` gathers it), so a sharded run resumes on any
number of ranks, sharded or not, and the reverse. An EMA of the params (`TrainState.ema`) is not
sharded: every rank keeps it whole and moves it towards the gathered params, as the params are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from craft import distributed, tree
from craft.errors import ConfigError
from craft.optim import Optimizer, OptState
from craft.train.state import TrainState
from craft.tree import Params


@dataclass(frozen=True)
class Piece:
    """The part of one flattened leaf that lies in a rank's slice."""

    name: str  # the leaf's dotted name
    start: int  # offset into the flattened leaf
    stop: int
    matrix: bool  # the leaf has 2 or more dims

    @property
    def numel(self) -> int:
        return self.stop - self.start


class OptimizerShards:
    """Which slice of the params each rank owns, and the collectives that move slices."""

    def __init__(self, params: Params, rank: int, size: int):
        if size < 1 or not 0 <= rank < size:
            raise ValueError(f"rank {rank} is not in a world of {size}")
        named = tree.to_dotted(params)
        self.names = list(named)
        self.shapes = [tuple(leaf.shape) for leaf in named.values()]
        numels = [leaf.numel() for leaf in named.values()]
        self.total = sum(numels)
        self.rank, self.size = rank, size
        self.chunk = math.ceil(self.total / size)
        if (size - 1) * self.chunk >= self.total:
            raise ConfigError(
                f"{self.total} params are too few to shard over {size} ranks: with "
                f"{self.chunk} per rank, the last would own none"
            )
        crooked = [name for name, leaf in named.items() if not leaf.is_contiguous()]
        if crooked:  # a slice of such a leaf would be a copy, and updates would be lost
            raise ConfigError(f"params must be contiguous to be sharded; these are not: {crooked}")
        low, high = rank * self.chunk, min((rank + 1) * self.chunk, self.total)
        self.pieces: list[Piece] = []
        offset = 0
        for name, shape, numel in zip(self.names, self.shapes, numels, strict=True):
            start, stop = max(low, offset), min(high, offset + numel)
            if start < stop:
                self.pieces.append(Piece(name, start - offset, stop - offset, len(shape) >= 2))
            offset += numel

    @property
    def owned(self) -> int:
        """How many param elements this rank owns."""
        return sum(piece.numel for piece in self.pieces)

    def own(self, tree_like_params: Params) -> Params:
        """This rank's slice of a params-shaped tree, as views (writes go to the leaves)."""
        named = tree.to_dotted(tree_like_params)
        return tree.from_dotted(
            {piece.name: _cut(named[piece.name].reshape(-1), piece) for piece in self.pieces}
        )

    def split(self, local: torch.Tensor) -> Params:
        """A flat slice (this rank's part of the padded vector) as a tree of views like `own`."""
        views, offset = {}, 0
        for piece in self.pieces:
            views[piece.name] = _cut(local[offset : offset + piece.numel], piece, whole=True)
            offset += piece.numel
        return tree.from_dotted(views)

    def scatter_sum(self, leaves: list[torch.Tensor]) -> torch.Tensor:
        """Sum full-size tensors (gradients, in leaf order) across ranks; return this rank's
        slice of the sum, flat (`split` shapes it like `own`)."""
        if distributed.world_size() != self.size:
            raise ConfigError(
                f"the optimizer state is sharded for {self.size} ranks, but "
                f"{distributed.world_size()} take part"
            )
        return distributed.reduce_scatter_sum(_padded_flat(leaves, self.chunk * self.size))

    def global_norm(self, local_norm: torch.Tensor) -> torch.Tensor:
        """The norm of the whole from each rank's norm of its slice."""
        squared = local_norm.square()
        distributed.all_reduce_sum([squared])
        return squared.sqrt()

    def gather(self, owned: Params) -> list[torch.Tensor]:
        """Every rank's slice of a params-shaped quantity, joined: the whole, as one tensor per
        leaf in leaf order (fresh tensors)."""
        whole = distributed.all_gather_flat(_padded_flat(tree.leaves(owned), self.chunk))[
            : self.total
        ]
        sizes = [math.prod(shape) for shape in self.shapes]
        return [
            part.reshape(shape) for part, shape in zip(whole.split(sizes), self.shapes, strict=True)
        ]

    def gather_params(self, params: Params) -> None:
        """After each rank updated its slice in place: copy every rank's slice into `params`."""
        with torch.no_grad():
            gathered = self.gather(self.own(params))
            torch._foreach_copy_(tree.leaves(params), gathered)

    def init(self, optimizer: Optimizer, params: Params) -> OptState:
        """This rank's optimizer state, for its slice only."""
        with torch.no_grad():
            return optimizer.init(tree.tree_map(torch.clone, self.own(params)))

    def shard_state(self, state: TrainState) -> TrainState:
        """A whole state (fresh or loaded) with the optimizer state cut to this rank's slice."""
        return state._replace(opt_state=self._map_sliced(state.opt_state, state.params, "shard"))

    def full_state(self, state: TrainState) -> TrainState:
        """The whole state, as checkpoints hold it (a collective: every rank must call it). The
        gathered optimizer state is moved to the CPU entry by entry, so the device holds one
        whole entry (one params-sized buffer) at a time, never the whole optimizer state."""
        return state._replace(opt_state=self._map_sliced(state.opt_state, state.params, "gather"))

    def _map_sliced(self, opt_state: OptState, params: Params, how: str) -> OptState:
        # Entries shaped like the params (moments, momentum) are sliced; scalars (Adam's step
        # count) are the same on every rank and stay whole.
        params_structure = tree.flatten(params)[1]
        owned_structure = tree.flatten(self.own(params))[1]
        out: dict[str, Any] = {}
        for key, value in opt_state.items():
            structure = tree.flatten(value)[1]
            if how == "shard" and structure == params_structure:
                out[key] = tree.tree_map(torch.clone, self.own(value))
            elif how == "gather" and structure == owned_structure:
                whole = [part.cpu() for part in self.gather(value)]
                out[key] = tree.unflatten(params_structure, whole)
            else:
                out[key] = value
        return out


def _cut(flat: torch.Tensor, piece: Piece, whole: bool = False) -> torch.Tensor:
    """A piece of a flattened leaf (or, `whole`, the piece itself) as a view: 2-d for matrices."""
    part = flat if whole else flat[piece.start : piece.stop]
    return part.view(1, -1) if piece.matrix else part


def _padded_flat(leaves: list[torch.Tensor], size: int) -> torch.Tensor:
    used = sum(leaf.numel() for leaf in leaves)
    return torch.cat([*(leaf.reshape(-1) for leaf in leaves), leaves[0].new_zeros(size - used)])
