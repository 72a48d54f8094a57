"""One shared `model_fields_set` per distinct set of field names, instead of one per model.

pydantic keeps, in every model instance, the set of the fields its input gave
(`__pydantic_fields_set__`). A set of five names or more takes 728 bytes: 5.1 of
the 8.2 KB an idle session's status model held, one set per condition
(bench/PERFORMANCE.md, round 6). Shared, a session's status and spec went from
8.5 to 4.1 KB (round 7). Upstream has an open change to keep these as a bitset
(pydantic/pydantic#12924); until it lands, equal sets are shared here.

Sharing is safe because the models are frozen: pydantic changes a model's set in
place only on attribute assignment, which a frozen model refuses before it gets
there, and `model_copy` copies the set before it adds the updated names (then the
copy is shared too). tests/unit/test_fields_sets.py fails if a pydantic upgrade
changes either.
"""

from __future__ import annotations

from pydantic import BaseModel

# Each distinct combination of field names, once. Models have a few dozen fields and
# only some combinations occur; the cap keeps a caller that builds many from growing it.
_SHARED: dict[frozenset[str], set[str]] = {}
MAX_SHARED = 4096


def share(model: BaseModel) -> None:
    """Points `model`'s fields set at the shared one equal to it."""
    mine: set[str] = model.__pydantic_fields_set__
    key = frozenset(mine)
    shared = _SHARED.get(key)
    if shared is None:
        if len(_SHARED) >= MAX_SHARED:
            return
        shared = _SHARED[key] = set(key)
    if shared is not mine:
        object.__setattr__(model, "__pydantic_fields_set__", shared)

