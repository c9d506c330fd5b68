"""What a resource type is: its names, scope, subresources and per-kind behaviour."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .patch import MergeKeys
from .selectors import field_value

if TYPE_CHECKING:
    from .store import Store

Causes = list[tuple[str, str, str]]


class Strategy:
    """Per-kind hooks, called with the store lock held. The defaults suit plain objects."""

    # False: the hooks only replace top-level fields of a new object and never edit
    # containers nested in it, so a merge patch may hand them a result that shares its
    # untouched parts with the (immutable) stored object instead of a full private copy.
    edits_nested = True

    def prepare_create(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        """Defaults and server-owned fields on create (e.g. reset status, allocate IPs)."""

    def prepare_update(self, store: Store, rt: ResourceType, new: dict[str, Any],
                       old: dict[str, Any], subresource: str) -> None:
        """Carry over what this update may not change (status on the main resource, ...)."""
        if "status" in rt.subresources:
            if subresource == "status":
                _reset_for_status(new, old)
            elif "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)

    def validate(self, store: Store, rt: ResourceType, obj: dict[str, Any],
                 old: dict[str, Any] | None, subresource: str = "") -> Causes:
        return []

    def commit_create(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        """Take resources (IPs, ports) once validation passed; undone by release()."""

    def commit_update(self, store: Store, rt: ResourceType, new: dict[str, Any],
                      old: dict[str, Any]) -> None:
        """Like commit_create, for updates."""

    def release(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        """The object is gone for good: give back what commit_* took."""

    def committed(self, store: Store, rt: ResourceType, obj: dict[str, Any]) -> None:
        """A create or update was stored (e.g. a CRD now serves its resource)."""

    def grace_seconds(self, rt: ResourceType, obj: dict[str, Any],
                      requested: int | None) -> int:
        """Graceful deletion period; 0 means delete now (subject to finalizers)."""
        return 0


def _reset_for_status(new: dict[str, Any], old: dict[str, Any]) -> None:
    # A status write changes status only (ResetObjectMetaForStatus + spec carry-over).
    status = new.get("status")
    new.clear()
    new.update({k: v for k, v in old.items() if k != "status"})
    new["metadata"] = dict(old["metadata"])
    if status is not None:
        new["status"] = status


@dataclass(eq=False)
class ResourceType:
    group: str
    versions: tuple[str, ...]          # served versions, preferred first
    storage_version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    list_kind: str = ""
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    subresources: frozenset[str] = frozenset()
    # Field-selector label -> dotted path in the object.
    fields: Mapping[str, str] = field(default_factory=dict)
    # None: strategic merge patch is refused (custom resources).
    merge_keys: MergeKeys | None = None
    name_check: Callable[[str], str | None] | None = None
    return_deleted: bool = False
    create_on_update: bool = False
    unconditional_update: bool = True
    generation: bool = False
    strategy: Strategy = field(default_factory=Strategy)
    # For custom resources: the CRD that defines them (its latest stored form).
    crd: dict[str, Any] | None = None
    verbs: tuple[str, ...] = ("create", "delete", "deletecollection", "get", "list", "patch",
                              "update", "watch")

    def __post_init__(self) -> None:
        if not self.list_kind:
            self.list_kind = self.kind + "List"
        self.key = f"{self.plural}.{self.group}" if self.group else self.plural
        self.field_labels = frozenset(self.fields)

    def api_version(self, version: str | None = None) -> str:
        v = version or self.storage_version
        return f"{self.group}/{v}" if self.group else v

    def group_version(self) -> str:
        return self.api_version(self.versions[0])

    def fields_of(self, obj: Mapping[str, Any]) -> dict[str, str]:
        return {label: field_value(obj, path) for label, path in self.fields.items()}
