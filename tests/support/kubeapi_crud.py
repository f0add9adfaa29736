"""The test server's resource verbs: get, list, create, update, patch and delete, strict where
kube-apiserver is strict (preconditions, AlreadyExists, missing namespaces, validation, PATCH types)."""

from __future__ import annotations

import base64
import copy
import json
import uuid
from typing import Any

from tests.support.kubeapi_http import Request, object_key
from tests.support.kubeapi_patch import JsonPatchError, json_patch, merge_patch, strategic_merge_patch
from tests.support.kubeapi_resources import JSON, ResourceType
from tests.support.kubeapi_select import parse_field_selector, parse_label_selector
from tests.support.kubeapi_status import (
    FieldError,
    KubeError,
    bad_request,
    conflict,
    invalid_error,
    not_found,
    ns_not_found,
    status_details,
)
from tests.support.kubeapi_store import NAMESPACES, ObjectStore, timestamp_now
from tests.support.kubeapi_validate import check_types, validate_kind, validate_meta


class ResourceVerbs:
    """get/list/create/update/patch/delete on an ObjectStore (authorisation happened before)."""

    #: real kube answers a list in a missing namespace with an empty list; this server (by the
    #: project's contract) answers 404 so a typo in a namespace is loud. Set False for kube's way.
    list_missing_namespace_404 = True

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def require_namespace(self, req: Request, for_create: bool) -> None:
        rt = req.rt
        assert rt is not None
        if not rt.namespaced or req.namespace is None:
            return
        ns = self.store.kind(NAMESPACES).get(("", req.namespace))
        if ns is None:
            if for_create or req.verb == "list":
                raise ns_not_found(req.namespace)
            raise not_found(rt, req.name or "")
        if for_create and (ns.get("status") or {}).get("phase") == "Terminating":
            raise KubeError(
                403,
                "Forbidden",
                f'{rt.qualified} "{req.name or ""}" is forbidden: unable to create new content in '
                f"namespace {req.namespace} because it is being terminated",
                {
                    **status_details(rt, req.name),
                    "causes": [
                        {
                            "reason": "NamespaceTerminating",
                            "message": f"namespace {req.namespace} is being terminated",
                            "field": "metadata.namespace",
                        }
                    ],
                },
            )

    def get(self, req: Request) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None and req.name
        with self.store.lock:
            return 200, copy.deepcopy(self._existing(req, rt))

    def _existing(self, req: Request, rt: ResourceType) -> JSON:
        """The stored object the request names (call under the lock); 404 when there is none."""
        assert req.name
        self.require_namespace(req, for_create=False)
        obj = self.store.kind(rt).get(object_key(req, rt))
        if obj is None:
            raise not_found(rt, req.name)
        return obj

    def list(self, req: Request) -> tuple[int, Any]:
        """A LIST paged the way the etcd-backed storage pages it: ``limit`` counts the objects
        read from storage *before* the selectors filter them, so a selected list may answer a
        short or empty page that still carries a ``continue`` token. Selected lists carry no
        ``remainingItemCount``; a token older than the compacted revision is 410 Expired."""
        rt = req.rt
        assert rt is not None
        labels = parse_label_selector(req.query.get("labelSelector", ""))
        fields = parse_field_selector(rt, req.query.get("fieldSelector", ""))
        limit = int(req.query["limit"]) if req.query.get("limit", "").isdigit() else 0
        with self.store.lock:
            start_after, rv = self.store.decode_continue(req.query.get("continue", ""))
            if (
                rt.namespaced
                and req.namespace is not None
                and self.list_missing_namespace_404
                and not self.store.has_namespace(req.namespace)
            ):
                raise ns_not_found(req.namespace)
            items = self.store.sorted_items(rt, req.namespace)
        if start_after is not None:
            items = [(k, o) for k, o in items if list(k) > start_after]
        meta: JSON = {"resourceVersion": str(rv)}
        if limit and len(items) > limit:
            meta["continue"] = self.store.encode_continue(items[limit - 1][0], rv)
            if not labels and not fields:
                meta["remainingItemCount"] = len(items) - limit
            items = items[:limit]
        selected = [
            obj
            for _, obj in items
            if all(m.matches(obj["metadata"].get("labels") or {}) for m in labels)
            and all(m.matches(obj) for m in fields)
        ]
        return 200, {
            "kind": f"{rt.kind}List",
            "apiVersion": rt.api_version,
            "metadata": meta,
            "items": [_list_item(obj) for obj in selected],
        }

    def _decode_body(self, req: Request) -> JSON:
        rt = req.rt
        assert rt is not None
        if req.content_type not in ("", "application/json"):
            raise KubeError(
                415,
                "UnsupportedMediaType",
                "the body of the request was in an unknown format - accepted media types "
                "include: application/json, application/yaml, "
                "application/vnd.kubernetes.protobuf",
            )
        try:
            obj = json.loads(req.body or b"null")
        except ValueError as exc:
            msg = exc.msg if isinstance(exc, json.JSONDecodeError) else "invalid JSON"
            raise bad_request(f"couldn't get version/kind; json parse error: {msg}") from exc
        check_types(rt, obj)
        if obj.get("kind") not in (None, "", rt.kind) or obj.get("apiVersion") not in (
            None,
            "",
            rt.api_version,
        ):
            raise bad_request(
                f"the API version in the data ({obj.get('apiVersion')}) does not match the "
                f"expected API version ({rt.api_version})"
            )
        return dict(obj)

    def _normalize(self, rt: ResourceType, obj: JSON) -> None:
        obj["apiVersion"], obj["kind"] = rt.api_version, rt.kind
        meta = obj.setdefault("metadata", {})
        for fld in ("labels", "annotations"):
            if fld in meta and not meta[fld]:
                del meta[fld]
        if rt.kind == "Secret":
            string_data = obj.pop("stringData", None) or {}
            if string_data:
                data = obj.setdefault("data", {}) or {}
                obj["data"] = data
                for key, value in string_data.items():
                    data[key] = base64.b64encode(value.encode("utf-8")).decode()
            if not obj.get("type"):
                obj["type"] = "Opaque"
            if "data" in obj and obj["data"] is None:
                del obj["data"]
        if rt.plural == "namespaces":
            labels = meta.setdefault("labels", {})
            labels["kubernetes.io/metadata.name"] = meta.get("name", "")
            obj.setdefault("spec", {"finalizers": ["kubernetes"]})
            obj.setdefault("status", {"phase": "Active"})

    def _validate(self, rt: ResourceType, obj: JSON, old: JSON | None) -> None:
        errors: list[FieldError] = []
        validate_meta(rt, obj, errors)
        validate_kind(rt, obj, old, errors)
        if errors:
            raise invalid_error(rt, obj["metadata"].get("name", ""), errors)

    def create(self, req: Request) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None
        obj = self._decode_body(req)
        meta = obj.setdefault("metadata", {})
        body_ns = meta.get("namespace")
        if rt.namespaced and body_ns and body_ns != req.namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name") or ""
        req.name = name or None
        for fld in ("resourceVersion", "uid", "creationTimestamp", "deletionTimestamp"):
            if fld == "resourceVersion" and meta.get(fld):
                raise invalid_error(
                    rt,
                    name,
                    [FieldError("Invalid", "metadata.resourceVersion", "must be empty on create", meta[fld])],
                )
            meta.pop(fld, None)
        with self.store.lock:
            self.require_namespace(req, for_create=True)
            if not name:
                raise invalid_error(
                    rt,
                    "",
                    [FieldError("Required", "metadata.name", "name or generateName is required")],
                )
            self._normalize(rt, obj)
            self._validate(rt, obj, None)
            key = (req.namespace or "" if rt.namespaced else "", name)
            if key in self.store.kind(rt):
                raise KubeError(
                    409,
                    "AlreadyExists",
                    f'{rt.qualified} "{name}" already exists',
                    status_details(rt, name),
                )
            self.store.stamp_new(rt, obj, req.namespace if rt.namespaced else None, dry_run=req.dry_run)
            if not req.dry_run:
                self.store.commit(rt, obj)
            return 201, copy.deepcopy(obj)

    def _commit_update(self, req: Request, old: JSON, new: JSON) -> tuple[int, Any]:
        """Preconditions, validation, no-op detection and storage for update and patch."""
        rt = req.rt
        assert rt is not None and req.name
        meta = new.setdefault("metadata", {})
        if not isinstance(meta, dict):
            raise bad_request("metadata must be an object")
        old_meta = old["metadata"]
        rv = meta.get("resourceVersion")
        if rv and rv != old_meta["resourceVersion"]:
            raise conflict(rt, req.name)
        if meta.get("uid") and meta["uid"] != old_meta["uid"]:
            raise conflict(
                rt,
                req.name,
                f"Precondition failed: UID in precondition: {meta['uid']}, "
                f"UID in object meta: {old_meta['uid']}",
            )
        for fld in ("uid", "creationTimestamp", "deletionTimestamp"):
            if fld in old_meta:
                meta[fld] = old_meta[fld]
            else:
                meta.pop(fld, None)
        if rt.namespaced:
            meta["namespace"] = req.namespace
        self._normalize(rt, new)
        self._validate(rt, new, old)
        meta["resourceVersion"] = old_meta["resourceVersion"]
        if new == old:
            return 200, copy.deepcopy(old)  # no-op: kube does not write (resourceVersion stays)
        if req.dry_run:
            return 200, copy.deepcopy(new)
        meta["resourceVersion"] = self.store.next_rv()
        self.store.commit(rt, new)
        return 200, copy.deepcopy(new)

    def update(self, req: Request) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None and req.name
        obj = self._decode_body(req)
        meta = obj.setdefault("metadata", {})
        if meta.get("name") != req.name:
            raise bad_request(
                f"the name of the object ({meta.get('name') or ''}) does not match the name on "
                f"the URL ({req.name})"
            )
        if rt.namespaced and meta.get("namespace") and meta["namespace"] != req.namespace:
            raise bad_request(
                "the namespace of the provided object does not match the namespace sent on the request"
            )
        with self.store.lock:
            return self._commit_update(req, self._existing(req, rt), obj)

    def patch(self, req: Request) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None and req.name
        ctype = req.content_type
        supported = (
            "application/json-patch+json",
            "application/merge-patch+json",
            "application/strategic-merge-patch+json",
        )
        if ctype not in supported:
            raise KubeError(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted media types "
                f"include: {', '.join(supported)}",
            )
        try:
            patch = json.loads(req.body or b"null")
        except ValueError as exc:
            raise bad_request("error decoding patch: invalid JSON") from exc
        if ctype == "application/json-patch+json" and not isinstance(patch, list):
            kind = "object" if isinstance(patch, dict) else type(patch).__name__
            raise bad_request(f"json: cannot unmarshal {kind} into Go value of type jsonpatch.Patch")
        if ctype != "application/json-patch+json" and not isinstance(patch, dict):
            raise bad_request(
                "error decoding patch: json: cannot unmarshal non-object into Go value of type "
                "map[string]interface {}"
            )
        with self.store.lock:
            old = self._existing(req, rt)
            if ctype == "application/json-patch+json":
                try:
                    new = json_patch(old, patch)
                except JsonPatchError as exc:
                    raise KubeError(
                        422,
                        "Invalid",
                        f"the server rejected our request due to an error in our request: {exc}",
                        status_details(rt, req.name, rt.kind),
                    ) from exc
            elif ctype == "application/merge-patch+json":
                new = merge_patch(old, patch)
            else:
                new = strategic_merge_patch(old, patch)
            if not isinstance(new, dict):
                raise bad_request("the patched object is not a JSON object")
            check_types(rt, new)
            meta = new.get("metadata") or {}
            if meta.get("name") != req.name:
                raise invalid_error(
                    rt,
                    req.name,
                    [FieldError("Invalid", "metadata.name", "field is immutable", meta.get("name"))],
                )
            new["apiVersion"], new["kind"] = old["apiVersion"], old["kind"]
            return self._commit_update(req, old, new)

    def delete(self, req: Request) -> tuple[int, Any]:
        rt = req.rt
        assert rt is not None and req.name
        opts: JSON = {}
        if req.body:
            try:
                opts = json.loads(req.body) or {}
            except ValueError as exc:
                raise bad_request("invalid DeleteOptions") from exc
        pre = opts.get("preconditions") or {} if isinstance(opts, dict) else {}
        with self.store.lock:
            key = object_key(req, rt)
            old = self._existing(req, rt)
            for fld, label in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
                want = pre.get(fld)
                if want and want != old["metadata"].get(fld):
                    raise conflict(
                        rt,
                        req.name,
                        f"Precondition failed: {label} in precondition: {want}, {label} in "
                        f"object meta: {old['metadata'].get(fld)}",
                    )
            if rt.plural == "namespaces":
                new = copy.deepcopy(old)
                new["metadata"]["deletionTimestamp"] = timestamp_now()
                new["status"] = {"phase": "Terminating"}
                if not req.dry_run:
                    new["metadata"]["resourceVersion"] = self.store.next_rv()
                    self.store.commit(rt, new)
                return 200, copy.deepcopy(new)
            if not req.dry_run:
                self.store.remove(rt, *key)
            return 200, {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {**status_details(rt, req.name), "uid": old["metadata"]["uid"]},
            }


def _list_item(obj: JSON) -> JSON:
    """A copy of a stored object as a list item (items carry no kind/apiVersion)."""
    item = copy.deepcopy(obj)
    item.pop("kind", None)
    item.pop("apiVersion", None)
    return item
