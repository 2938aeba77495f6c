"""State trees to JSON plus named tensors, and back, without pickle.

A ``state_dict()`` is a tree of dicts, lists and tuples whose leaves are tensors and plain
values. :func:`encode` takes the tensors out (each named by its path: a module's keys stay as
they are, e.g. ``fc1.weight``; nested ones join with dots, e.g. ``state.0.exp_avg``) and turns
the rest into JSON that keeps what plain JSON would lose: tuples, non-string dict keys, NumPy
arrays. :func:`decode` puts it back together. Anything else is refused with its path: loading a
checkpoint must never run code (the reason safetensors exists), so nothing is pickled.

Markers are one-key objects: ``{"__tensor__": name}``, ``{"__tuple__": [...]}``,
``{"__dict__": [[key, value], ...]}`` (for dicts with non-string keys or keys starting with
``__``), ``{"__ndarray__": {"tensor": name, "dtype": "<u4", "shape": [...]}}``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Tuple

Tensor = Any


class Unsupported(TypeError):
    """A value that can be neither stored as a tensor nor as JSON."""


def _is_numpy_array(value: Any) -> bool:
    kind = type(value)
    return kind.__name__ == "ndarray" and kind.__module__ == "numpy"


def encode(
    tree: Any,
    is_tensor: Callable[[Any], bool],
    ndarray_to_tensor: Callable[[Any], Tensor],
    prefix: str = "",
) -> Tuple[Any, Dict[str, Tensor]]:
    """Splits ``tree`` into JSON-able data and ``{name: tensor}``."""
    tensors: Dict[str, Tensor] = {}

    def name_for(path: str) -> str:
        if path in tensors:
            raise Unsupported(f"{path or '<root>'}: two tensors would share this name")
        return path

    def join(path: str, key: Any) -> str:
        return f"{path}.{key}" if path else str(key)

    def walk(value: Any, path: str) -> Any:
        if is_tensor(value):
            name = name_for(path)
            tensors[name] = value
            return {"__tensor__": name}
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            if math.isnan(value) or math.isinf(value):
                return {"__float__": repr(value)}
            return value
        if _is_numpy_array(value):
            name = name_for(path)
            tensors[name] = ndarray_to_tensor(value)
            return {
                "__ndarray__": {
                    "tensor": name,
                    "dtype": value.dtype.str,
                    "shape": list(value.shape),
                }
            }
        if hasattr(value, "item") and type(value).__module__ == "numpy":
            return walk(value.item(), path)
        if isinstance(value, Mapping):
            plain = all(isinstance(k, str) and not k.startswith("__") for k in value)
            if plain:
                return {k: walk(v, join(path, k)) for k, v in value.items()}
            return {
                "__dict__": [[walk(k, path), walk(v, join(path, k))] for k, v in value.items()]
            }
        if isinstance(value, tuple):
            return {"__tuple__": [walk(v, join(path, i)) for i, v in enumerate(value)]}
        if isinstance(value, list):
            return [walk(v, join(path, i)) for i, v in enumerate(value)]
        raise Unsupported(
            f"{path or '<root>'}: {type(value).__module__}.{type(value).__qualname__} "
            "is neither a tensor nor a JSON-able value"
        )

    return walk(tree, prefix), tensors


def decode(
    data: Any,
    tensors: Mapping[str, Tensor],
    tensor_to_ndarray: Callable[[Tensor, str, List[int]], Any],
) -> Any:
    """Rebuilds a tree from :func:`encode`'s JSON and the tensors read back."""

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(v) for v in value]
        if not isinstance(value, dict):
            return value
        if len(value) == 1:
            ((key, inner),) = value.items()
            if key == "__tensor__":
                if inner not in tensors:
                    raise KeyError(f"tensor {inner!r} is missing from the checkpoint")
                return tensors[inner]
            if key == "__tuple__":
                return tuple(walk(v) for v in inner)
            if key == "__dict__":
                return {_hashable(walk(k)): walk(v) for k, v in inner}
            if key == "__float__":
                return float(inner)
            if key == "__ndarray__":
                if inner["tensor"] not in tensors:
                    raise KeyError(f"array {inner['tensor']!r} is missing from the checkpoint")
                return tensor_to_ndarray(tensors[inner["tensor"]], inner["dtype"], inner["shape"])
        return {k: walk(v) for k, v in value.items()}

    return walk(data)


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key
