"""Row-sparse optimizers for the expert bank: only the experts a step routed to are read, updated and given state.

Parameters are bank tensors shaped (E, L, m, n) (one (m, n) matrix per expert and layer). A step passes the rows
it touched and their gradients; state tensors exist only for rows that have been stepped at least once, and each
row keeps its own step count, so bias correction / decay follow how often *that expert* was trained.

- adamw: Adam with decoupled weight decay (decay 0 by default: an unused expert should not drift).
- adafactor: Shazeer & Stern 2018 with a fixed learning rate (Lamini passes one), factored second moments
  (row and column means of g² per matrix), no first moment, update clipping at RMS 1, decay 1 - t^-0.8.
"""

from __future__ import annotations

import abc

import torch

from memtune.spec import Optimizer


class SparseOptimizer(abc.ABC):
    def __init__(self, params: dict[str, torch.Tensor], lr: float):
        self.params = params
        self.lr = lr
        first = next(iter(params.values()))
        self.steps = torch.zeros(first.shape[0], dtype=torch.long, device=first.device)  # (E,)
        self.state: dict[str, dict[str, torch.Tensor]] = {name: {} for name in params}

    @torch.no_grad()
    def step(self, rows: torch.Tensor, grads: dict[str, torch.Tensor]) -> None:
        """rows (R,) unique expert ids; grads[name] (R, L, m, n) for those rows."""
        self.steps[rows] += 1
        t = self.steps[rows].to(torch.float32)[:, None, None, None]  # (R, 1, 1, 1)
        for name, grad in grads.items():
            param = self.params[name]
            param[rows] = param[rows] - self.lr * self._direction(name, rows, grad, t)

    def _state(self, name: str, key: str, shape: tuple[int, ...]) -> torch.Tensor:
        """Lazily allocated (E, ...) state; rows never stepped stay zero and cost nothing to compute."""
        table = self.state[name]
        if key not in table:
            param = self.params[name]
            table[key] = torch.zeros(param.shape[0], *shape, device=param.device)
        return table[key]

    @abc.abstractmethod
    def _direction(self, name: str, rows: torch.Tensor, grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """The step direction for `rows` (before the learning rate), updating their state; t (R, 1, 1, 1)."""


class SparseAdamW(SparseOptimizer):
    betas = (0.9, 0.999)
    eps = 1e-8

    def _direction(self, name: str, rows: torch.Tensor, grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        beta1, beta2 = self.betas
        m = self._state(name, "m", tuple(grad.shape[1:]))
        v = self._state(name, "v", tuple(grad.shape[1:]))
        m[rows] = beta1 * m[rows] + (1 - beta1) * grad
        v[rows] = beta2 * v[rows] + (1 - beta2) * grad**2
        m_hat = m[rows] / (1 - beta1**t)
        v_hat = v[rows] / (1 - beta2**t)
        return m_hat / (v_hat.sqrt() + self.eps)


class SparseAdafactor(SparseOptimizer):
    eps = 1e-30
    clip = 1.0

    def _direction(self, name: str, rows: torch.Tensor, grad: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        _, layers, m_dim, n_dim = grad.shape
        row_var = self._state(name, "row", (layers, m_dim))  # (E, L, m)
        col_var = self._state(name, "col", (layers, n_dim))  # (E, L, n)
        decay = 1.0 - t[:, :, 0] ** -0.8  # (R, 1, 1); 0 on a row's first step, so state starts at its g²
        g2 = grad**2 + self.eps  # (R, L, m, n)
        row_var[rows] = decay * row_var[rows] + (1 - decay) * g2.mean(-1)
        col_var[rows] = decay * col_var[rows] + (1 - decay) * g2.mean(-2)
        r, c = row_var[rows], col_var[rows]
        v_hat = (r / r.mean(-1, keepdim=True))[..., None] * c[..., None, :]  # (R, L, m, n)
        update = grad / v_hat.sqrt()
        rms = update.pow(2).mean(dim=(-2, -1), keepdim=True).sqrt()  # (R, L, 1, 1)
        return update / (rms / self.clip).clamp(min=1.0)


def make_optimizer(kind: Optimizer, params: dict[str, torch.Tensor], lr: float) -> SparseOptimizer:
    return {"adamw": SparseAdamW, "adafactor": SparseAdafactor}[kind](params, lr)
