"""msrnn: pretrained decoder-only transformers as finite multi-state RNNs.

The KV cache is capped at C tokens per layer and a compression policy decides what to drop
(Oren et al., 2024, "Transformers are Multi-State RNNs"). The engine is Rust; this package is its
Python face: load a model, run perplexity grids, generate, keep and save states, and write
compression policies in Python.

    >>> import msrnn
    >>> model = msrnn.Model.load()                    # the model in models/, as the CLI finds it
    >>> rows = model.perplexity(text, policies=["tova", "window"], capacities=[64, 128], tokens=512)
    >>> msrnn.to_pandas(rows)
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence

from ._msrnn import (
    Model,
    Observation,
    PolicyError,
    State,
    TextStream,
    __version__,
    load_plugin,
    policies,
    register_policy,
    ruler_tasks,
)

__all__ = [
    "Model",
    "Observation",
    "Policy",
    "PolicyError",
    "State",
    "TextStream",
    "__version__",
    "load_plugin",
    "policies",
    "register_policy",
    "ruler_tasks",
    "to_pandas",
]


class Policy:
    """Base class of a compression policy written in Python.

    Subclass it, set the class attributes and implement :meth:`step`, then
    ``msrnn.register_policy(MyPolicy)``: ``"my-policy:k=v"`` then works wherever a policy name does
    (perplexity grids, generate, states).

    Class attributes:
        name: the registered name (1 to 64 of ``[A-Za-z0-9_+.-]``).
        params: ``{name: default}`` (or ``{name: (default, help)}``); the default's type (int,
            float, bool, str) is the type values arrive in ``self.params``.
        needs: what ``step`` observes, among ``"last_row"`` (the newest query's attention row, as
            TOVA uses), ``"all_rows"`` (every row of the chunk), ``"key_norms"``, ``"keys"`` and
            ``"every_step"`` (be called within budget too), ``"per_head"`` (each KV head keeps its
            own C tokens: ``positions``/``live`` are ``[num_kv_heads, num_slots]``, ``step``
            returns entries ``head * num_slots + slot``, exactly ``obs.excess(budget)`` of them with
            none of a head's left above C; ``obs.kv_head_mean()`` scores per head).
        description: one line for ``msrnn.policies()`` (default: the docstring's first line).

    One instance is created per layer, with ``ctx`` (layer, num_layers, num_heads, num_kv_heads,
    head_dim, capacity) and ``params``; per-layer bookkeeping lives on ``self``.
    """

    name: str = ""
    params: Dict[str, Any] = {}
    needs: Sequence[str] = ()
    description: Optional[str] = None

    def __init__(self, ctx: Dict[str, Any], params: Dict[str, Any]) -> None:
        self.ctx = SimpleNamespace(**ctx)
        self.layer: int = ctx["layer"]
        self.params = params

    def step(self, obs: Observation, budget: int) -> Optional[List[int]]:
        """Called after attention. When more than ``budget`` slots are live, return exactly
        ``obs.excess(budget)`` live slot indices to evict; otherwise return None (or [])."""
        raise NotImplementedError(f"{type(self).__name__}.step")

    def reset(self) -> None:
        """Forget all bookkeeping (a new sequence starts)."""

    def save_state(self) -> List[float]:
        """Bookkeeping as numbers, written into saved states (stateless policies keep [])."""
        return []

    def load_state(self, data: List[float]) -> None:
        """Restores what :meth:`save_state` gave."""
        if data:
            raise ValueError(f"{type(self).__name__} keeps no state, but {len(data)} values were given")


def to_pandas(records: Sequence[Dict[str, Any]]) -> "Any":
    """Result records (``Model.perplexity``'s) as a pandas DataFrame. Needs pandas installed."""
    try:
        import pandas as pd
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("msrnn.to_pandas needs pandas: pip install pandas") from e
    rows = []
    for r in records:
        r = dict(r)
        if isinstance(r.get("spec"), dict):
            r["spec"] = r["policy"]
        rows.append(r)
    return pd.DataFrame(rows)
