"""A tiny ordered registry that lower apps fill from `AppConfig.ready()`.

Upper apps (crm) expose registries; lower apps (tagging, lifecycle, campaigns) register into
them, so no app imports one below it and no signal chain is needed.
"""

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, name: str) -> None:
        self.name = name
        self._items: dict[str, T] = {}

    def register(self, key: str, item: T) -> T:
        # Re-registering the same key replaces it, so `ready()` running twice is harmless.
        self._items[key] = item
        return item

    def unregister(self, key: str) -> None:
        self._items.pop(key, None)

    def get(self, key: str) -> T | None:
        return self._items.get(key)

    def __iter__(self) -> Iterator[T]:
        return iter(list(self._items.values()))

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


Hook = Callable[..., None]
