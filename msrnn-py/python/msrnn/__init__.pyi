"""Type stubs of msrnn (the extension module msrnn._msrnn and the pure-Python parts)."""

from os import PathLike
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import numpy as np
import numpy.typing as npt

__version__: str

StrPath = Union[str, PathLike]
Ids = Sequence[int]

class PolicyError(RuntimeError):
    """A policy failed or gave an invalid decision; names the policy and layer (state untouched)."""

class Observation:
    """One layer's view of its state, as ``Policy.step`` receives it (NumPy copies)."""

    layer: int
    tokens_seen: int
    num_slots: int
    head_capacity: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rows: int
    positions: npt.NDArray[np.uint64]
    live: npt.NDArray[np.bool_]
    new_slots: npt.NDArray[np.int64]
    probs: npt.NDArray[np.float32]
    key_norms: npt.NDArray[np.float32]
    keys: npt.NDArray[np.float32]
    def live_count(self) -> int: ...
    def excess(self, budget: int) -> int: ...
    def head_mean(self, row: int = -1) -> npt.NDArray[np.float64]: ...
    def kv_head_mean(self, row: int = -1) -> npt.NDArray[np.float64]: ...
    def head_live_count(self, head: int) -> int: ...

class Policy:
    name: str
    params: Dict[str, Any]
    needs: Sequence[str]
    description: Optional[str]
    ctx: Any
    layer: int
    def __init__(self, ctx: Dict[str, Any], params: Dict[str, Any]) -> None: ...
    def step(self, obs: Observation, budget: int) -> Optional[List[int]]: ...
    def reset(self) -> None: ...
    def save_state(self) -> List[float]: ...
    def load_state(self, data: List[float]) -> None: ...

class TextStream(Iterator[str]):
    def __iter__(self) -> "TextStream": ...
    def __next__(self) -> str: ...
    def close(self) -> None: ...

class State:
    policy: str
    tokens_seen: int
    def feed(self, ids: Ids, all_logits: bool = False) -> npt.NDArray[np.float32]: ...
    def stats(self) -> Dict[str, Any]: ...
    def kept_positions(self, layer: int) -> List[int]: ...
    def save(self, path: StrPath) -> None: ...

class Model:
    path: str
    id: str
    info: Dict[str, Any]
    @staticmethod
    def load(path: Optional[StrPath] = None, weights: str = "auto", threads: Optional[int] = None) -> "Model": ...
    def tokenize(self, text: str, bos: bool = False) -> List[int]: ...
    def detokenize(self, ids: Ids) -> str: ...
    def chat_prompt(self, message: str, system: Optional[str] = None) -> str: ...
    def perplexity(
        self,
        text: Union[str, Ids],
        policies: Optional[Union[str, Sequence[str]]] = None,
        capacities: Optional[Sequence[int]] = None,
        tokens: int = 2048,
        mode: str = "decode",
        positions: str = "absolute",
        chunk: int = 16,
        segment: Optional[int] = None,
        batch: Optional[int] = None,
        ratios: Optional[Sequence[float]] = None,
        kv: str = "f32",
    ) -> List[Dict[str, Any]]: ...
    def passkey(
        self,
        policies: Optional[Union[str, Sequence[str]]] = None,
        capacities: Optional[Sequence[int]] = None,
        lengths: Optional[Sequence[int]] = None,
        depths: Optional[Sequence[float]] = None,
        trials: int = 5,
        seed: int = 0,
        haystack: str = "filler",
        plays: Optional[StrPath] = None,
        mode: str = "chunked",
        chunk: int = 64,
        answer_tokens: int = 8,
        positions: str = "absolute",
        batch: Optional[int] = None,
        ratios: Optional[Sequence[float]] = None,
        kv: str = "f32",
    ) -> List[Dict[str, Any]]: ...
    def ruler(
        self,
        tasks: Optional[Sequence[str]] = None,
        policies: Optional[Union[str, Sequence[str]]] = None,
        capacities: Optional[Sequence[int]] = None,
        lengths: Optional[Sequence[int]] = None,
        depths: Optional[Sequence[float]] = None,
        trials: int = 2,
        seed: int = 0,
        text: Optional[Sequence[StrPath]] = None,
        chat: bool = True,
        mode: str = "chunked",
        chunk: int = 64,
        positions: str = "absolute",
        batch: Optional[int] = None,
        ratios: Optional[Sequence[float]] = None,
        kv: str = "f32",
    ) -> List[Dict[str, Any]]: ...
    def new_state(
        self,
        policy: str = "tova",
        capacity: Optional[int] = None,
        positions: str = "absolute",
        chunk: int = 64,
        kv: str = "f32",
    ) -> State: ...
    def load_state(self, path: StrPath, chunk: int = 64) -> State: ...
    def generate(
        self,
        prompt: Optional[str] = None,
        policy: Optional[str] = None,
        capacity: Optional[int] = None,
        max_tokens: int = 256,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        stream: bool = False,
        raw: bool = False,
        positions: Optional[str] = None,
        prefill_chunk: int = 64,
        stop: Optional[Sequence[str]] = None,
        state: Optional[State] = None,
        kv: Optional[str] = None,
    ) -> Union[str, TextStream]: ...
    def chat(
        self,
        messages: Sequence[Dict[str, str]],
        policy: Optional[str] = None,
        capacity: Optional[int] = None,
        max_tokens: int = 256,
        temperature: Optional[float] = None,
        top_p: Optional[float] = None,
        seed: Optional[int] = None,
        stream: bool = False,
        positions: Optional[str] = None,
        prefill_chunk: int = 64,
        stop: Optional[Sequence[str]] = None,
        state: Optional[State] = None,
        kv: Optional[str] = None,
    ) -> Union[str, TextStream]: ...

def policies() -> List[Dict[str, Any]]: ...
def ruler_tasks() -> List[Dict[str, str]]: ...
def load_plugin(path: StrPath, replace: bool = False) -> str: ...
def register_policy(cls: type, replace: bool = False) -> str: ...
def to_pandas(records: Sequence[Dict[str, Any]]) -> Any: ...
