"""DomainNorm: the per-stream normalization of TAL (paper Sec. 3.1-3.2, eqs. 3-6, Fig. 3).

Every BatchNorm2d of the backbone and of the necks is a `DomainNorm` holding

* ``experts``: K BatchNorm2d layers, the DSBN of the domain-specific (DS) stream (eqs. 3-4):
  expert i normalizes with its own batch statistics in training and running statistics in eval;
* ``di``: the normalization of the domain-invariant (DI) stream, one of
  ``"dabn"`` (eqs. 5-6), ``"avg"`` (DABN with a_i = 1/K, paper Table 4) or ``"bn"`` (a separate
  BatchNorm2d with its own statistics, Table 4); absent when the model has no DI stream.

**Stream selection.** The stream is module state, set for a whole network at once with
``use_stream(model, stream)`` (a context manager) or ``set_stream``; blocks just call their
norm. A stream is an expert index ``i`` or ``"di"``. A tuple of streams runs them as one batched
pass: the batch is the input tiled ``len(streams)`` times and chunk j is normalized by stream j
(the export folds the network the same way).

**DABN readings** (``dabn_stats``). Eq. 5 mixes K branches
``sum_i a_i(x) (g_i x_hat + b_i)``; the paper leaves open whose statistics x_hat uses:

* ``experts`` (the first implementation): branch i normalizes with DSBN_i's *running* mean and
  variance, so DABN is a learned mixture of the experts' whole eval-form BNs ("predicts the
  statistics of the unseen domain from DSBNs", Fig. 2); the DI stream is an "average expert".
* ``own``: eq. 4 calls mu, sigma "the mean and variance of the input feature" and eq. 5's x_hat
  has no expert index, so every branch shares one x_hat normalized with the DI stream's *own*
  statistics (batch statistics in training, its own running statistics in eval, kept as
  ``running_mean`` / ``running_var`` beside the attention); only the experts' g_i, b_i mix.

In both readings the experts' tensors are used read-only (detached): the DI stream learns how to
mix them, and DABN never changes the experts. Each branch is an eval-form channel affine
(`DABN.branch_affines`: ``scale`` [K, C], ``shift`` [K, C]) and the mix is linear in x, so eval
DABN is the per-sample channel affine ``x * (a @ scale) + (a @ shift)`` in either reading, which
is how the export folds it.

**Attention** (eq. 6): ``a = softmax(W2 relu(W1 GAP(x)))`` on the un-normalized input, without
biases as written in eq. 6, hidden width ``max(C // r, 8)`` (r = 16; the floor keeps narrow
layers of small backbones from a 1-2 unit bottleneck).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Stream = Union[int, str]
DI_NORMS = ("dabn", "avg", "bn")
DABN_STATS = ("experts", "own")
MIN_ATTENTION_HIDDEN = 8


def _expert_affine_params(experts: nn.ModuleList) -> tuple[Tensor, Tensor]:
    """(g [K, C], b [K, C]) of the experts, detached."""
    return (torch.stack([bn.weight for bn in experts]).detach(),
            torch.stack([bn.bias for bn in experts]).detach())


def expert_affines(experts: nn.ModuleList) -> tuple[Tensor, Tensor]:
    """Eval-form (scale, shift) of each expert BN, detached: BN_i(x) = x * scale[i] + shift[i].

    Shapes [K, C]. The DI stream and the export both read the experts through this.
    """
    weight, bias = _expert_affine_params(experts)
    mean = torch.stack([bn.running_mean for bn in experts])
    var = torch.stack([bn.running_var for bn in experts])
    scale = weight / torch.sqrt(var + experts[0].eps)
    return scale, bias - mean * scale


class DABN(nn.Module):
    """Domain-adaptive BN (eqs. 5-6); with ``attention=False`` the `avg` ablation (a_i = 1/K).

    ``stats``: ``"experts"`` or ``"own"`` (module docstring). The ``own`` buffers follow
    BatchNorm2d's names and update rule (momentum 0.1), so ImageNet BN statistics load into them.
    """

    def __init__(self, num_features: int, num_domains: int, reduction: int = 16,
                 attention: bool = True, stats: str = "experts", eps: float = 1e-5,
                 momentum: float = 0.1):
        super().__init__()
        if stats not in DABN_STATS:
            raise ValueError(f"stats must be one of {DABN_STATS}, got {stats!r}")
        self.num_domains, self.stats, self.eps, self.momentum = num_domains, stats, eps, momentum
        self.attention = None
        if attention:
            hidden = max(num_features // reduction, MIN_ATTENTION_HIDDEN)
            self.attention = nn.Sequential(nn.Linear(num_features, hidden, bias=False),
                                           nn.ReLU(inplace=True),
                                           nn.Linear(hidden, num_domains, bias=False))
        if stats == "own":
            self.register_buffer("running_mean", torch.zeros(num_features))
            self.register_buffer("running_var", torch.ones(num_features))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def extra_repr(self) -> str:
        return f"stats={self.stats}"

    def weights(self, x: Tensor) -> Tensor:
        """Mixing weights a [N, K] (fp32); rows sum to 1."""
        if self.attention is None:
            return x.new_full((x.shape[0], self.num_domains), 1.0 / self.num_domains,
                              dtype=torch.float32)
        logits = self.attention(x.mean(dim=(2, 3)))
        return torch.softmax(logits.float(), dim=1)

    def branch_affines(self, experts: nn.ModuleList) -> tuple[Tensor, Tensor]:
        """Eval-form (scale, shift) [K, C] of the K mixed branches, detached: branch i is
        ``x * scale[i] + shift[i]``. The export folds DABN from these."""
        if self.stats == "experts":
            return expert_affines(experts)
        gamma, beta = _expert_affine_params(experts)
        inv_std = torch.rsqrt(self.running_var + self.eps)
        return gamma * inv_std, beta - (self.running_mean * inv_std) * gamma

    def forward(self, x: Tensor, experts: nn.ModuleList) -> Tensor:
        a = self.weights(x)
        if self.stats == "own" and self.training:
            return self._own_batch_statistics(x, a, experts)
        scale, shift = self.branch_affines(experts)
        with torch.autocast(x.device.type, enabled=False):  # statistics stay fp32 under AMP
            s, t = a @ scale.float(), a @ shift.float()
        return x * s.to(x.dtype)[:, :, None, None] + t.to(x.dtype)[:, :, None, None]

    def _own_batch_statistics(self, x: Tensor, a: Tensor, experts: nn.ModuleList) -> Tensor:
        """Training form of ``own``: x_hat from this batch (updating the running statistics),
        then the attention-mixed expert affine."""
        self.num_batches_tracked.add_(1)
        x_hat = F.batch_norm(x, self.running_mean, self.running_var, None, None, True,
                             self.momentum, self.eps)
        gamma, beta = _expert_affine_params(experts)
        with torch.autocast(x.device.type, enabled=False):
            g, b = a @ gamma.float(), a @ beta.float()
        return x_hat * g.to(x.dtype)[:, :, None, None] + b.to(x.dtype)[:, :, None, None]


class DomainNorm(nn.Module):
    """K DSBN experts plus the DI-stream norm; normalizes with the stream selected by `use_stream`.

    ``di_norm=None`` builds no DI part (models without a DI stream); ``dabn_stats`` is the DABN
    reading of the ``dabn`` and ``avg`` DI norms. State-dict layout:
    ``experts.<i>.{weight,bias,running_mean,running_var,num_batches_tracked}``, ``di.*``.
    """

    def __init__(self, num_features: int, num_domains: int, di_norm: str | None = "dabn",
                 reduction: int = 16, dabn_stats: str = "experts"):
        super().__init__()
        if di_norm is not None and di_norm not in DI_NORMS:
            raise ValueError(f"di_norm must be one of {DI_NORMS} or None, got {di_norm!r}")
        self.num_features = num_features
        self.num_domains = num_domains
        self.di_norm = di_norm
        self.experts = nn.ModuleList(nn.BatchNorm2d(num_features) for _ in range(num_domains))
        if di_norm == "bn":
            self.di = nn.BatchNorm2d(num_features)
        elif di_norm is not None:
            self.di = DABN(num_features, num_domains, reduction, attention=di_norm == "dabn",
                           stats=dabn_stats)
        self.stream: Stream | tuple[Stream, ...] | None = None

    def extra_repr(self) -> str:
        return f"{self.num_features}, domains={self.num_domains}, di_norm={self.di_norm}"

    def _normalize(self, x: Tensor, stream: Stream) -> Tensor:
        if stream == "di":
            if self.di_norm is None:
                raise ValueError("this model has no DI stream")
            return self.di(x) if self.di_norm == "bn" else self.di(x, self.experts)
        if isinstance(stream, int) and 0 <= stream < self.num_domains:
            return self.experts[stream](x)
        raise ValueError(f"stream must be an expert index in [0, {self.num_domains}) or 'di', "
                         f"got {stream!r}")

    def forward(self, x: Tensor) -> Tensor:
        if self.stream is None:
            raise RuntimeError("DomainNorm has no stream selected; wrap the call in "
                               "use_stream(model, stream)")
        if not isinstance(self.stream, tuple):
            return self._normalize(x, self.stream)
        n = len(self.stream)
        if x.shape[0] % n:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of the {n} tiled streams")
        chunks = x.split(x.shape[0] // n)
        return torch.cat([self._normalize(c, s) for c, s in zip(chunks, self.stream)])


def set_stream(module: nn.Module, stream: Stream | tuple[Stream, ...] | None) -> None:
    """Select the stream of every DomainNorm inside `module`."""
    for m in module.modules():
        if isinstance(m, DomainNorm):
            m.stream = stream


@contextmanager
def use_stream(module: nn.Module, stream: Stream | tuple[Stream, ...]) -> Iterator[None]:
    """Run the enclosed forward passes of `module` in `stream`; restores the previous selection."""
    norms = [m for m in module.modules() if isinstance(m, DomainNorm)]
    previous = [m.stream for m in norms]
    for m in norms:
        m.stream = stream
    try:
        yield
    finally:
        for m, s in zip(norms, previous):
            m.stream = s
