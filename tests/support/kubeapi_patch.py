"""The three PATCH types kube-apiserver applies (JSON patch, merge patch, strategic merge patch)."""

from __future__ import annotations

import copy
import json
from typing import Any

# strategic-merge-patch list merge keys (path from the object root -> key)
_SMP_MERGE_KEYS: dict[tuple[str, ...], str] = {
    ("imagePullSecrets",): "name",
    ("secrets",): "name",
    ("metadata", "ownerReferences"): "uid",
}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _strip_directives(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip_directives(v) for k, v in value.items() if not k.startswith("$")}
    if isinstance(value, list):
        return [_strip_directives(v) for v in value]
    return value


def strategic_merge_patch(target: Any, patch: Any, path: tuple[str, ...] = ()) -> Any:
    """Strategic merge patch: RFC 7386 plus merge-by-key for the known lists and the
    ``$patch`` / ``$deleteFromPrimitiveList`` / ``$setElementOrder`` / ``$retainKeys`` directives."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    if patch.get("$patch") == "replace":
        return _strip_directives(patch)
    result = copy.deepcopy(target) if isinstance(target, dict) else {}
    deletions: list[tuple[str, list[Any]]] = []
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys") or key.startswith("$setElementOrder/"):
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            deletions.append((key.split("/", 1)[1], value if isinstance(value, list) else []))
            continue
        sub = (*path, key)
        if value is None or (isinstance(value, dict) and value.get("$patch") == "delete"):
            result.pop(key, None)
        elif isinstance(value, list) and sub in _SMP_MERGE_KEYS:
            result[key] = _smp_merge_list(result.get(key) or [], value, _SMP_MERGE_KEYS[sub], sub)
        elif isinstance(value, dict):
            result[key] = strategic_merge_patch(result.get(key), value, sub)
        else:
            result[key] = _strip_directives(copy.deepcopy(value))
    for fld, values in deletions:
        if isinstance(result.get(fld), list):
            result[fld] = [v for v in result[fld] if v not in values]
    return result


def _smp_merge_list(current: list[Any], patch: list[Any], key: str, path: tuple[str, ...]) -> list[Any]:
    if any(isinstance(i, dict) and i.get("$patch") == "replace" for i in patch):
        return [_strip_directives(i) for i in patch if not (isinstance(i, dict) and "$patch" in i)]
    out = [copy.deepcopy(i) for i in current] if isinstance(current, list) else []
    for item in patch:
        if not isinstance(item, dict) or key not in item:
            out.append(_strip_directives(item))
            continue
        idx = next((n for n, c in enumerate(out) if isinstance(c, dict) and c.get(key) == item[key]), None)
        if item.get("$patch") == "delete":
            out = [c for c in out if not (isinstance(c, dict) and c.get(key) == item[key])]
        elif idx is None:
            out.append(_strip_directives(item))
        else:
            out[idx] = strategic_merge_patch(out[idx], item, path)
    return out


class JsonPatchError(Exception):
    """A JSON patch operation that cannot be applied (never carries values)."""


def _pointer(path: Any) -> list[str]:
    if not isinstance(path, str):
        raise JsonPatchError("path is not a string")
    if path == "":
        return []
    if not path.startswith("/"):
        raise JsonPatchError(f"invalid JSON pointer {path!r}")
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _resolve_parent(doc: Any, tokens: list[str], path: str) -> tuple[Any, str]:
    cur = doc
    for tok in tokens[:-1]:
        if isinstance(cur, dict) and tok in cur:
            cur = cur[tok]
        elif isinstance(cur, list) and tok.isdigit() and int(tok) < len(cur):
            cur = cur[int(tok)]
        else:
            raise JsonPatchError(f"doc is missing path: {path}: missing value")
    return cur, tokens[-1]


def _jp_get(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return doc
    parent, last = _resolve_parent(doc, tokens, path)
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise JsonPatchError(f"doc is missing key: {path}: missing value")


def _jp_add(doc: Any, path: str, value: Any) -> Any:
    tokens = _pointer(path)
    if not tokens:
        return value
    parent, last = _resolve_parent(doc, tokens, path)
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        if last == "-":
            parent.append(value)
        elif last.isdigit() and int(last) <= len(parent):
            parent.insert(int(last), value)
        else:
            raise JsonPatchError(f"add operation does not apply: index out of bounds: {path}")
    else:
        raise JsonPatchError(f"add operation does not apply: doc is missing path: {path}")
    return doc


def _jp_remove(doc: Any, path: str) -> Any:
    tokens = _pointer(path)
    if not tokens:
        raise JsonPatchError("remove operation does not apply: cannot remove the root")
    parent, last = _resolve_parent(doc, tokens, path)
    if isinstance(parent, dict) and last in parent:
        del parent[last]
    elif isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        del parent[int(last)]
    else:
        raise JsonPatchError(f"remove operation does not apply: doc is missing path: {path}")
    return doc


def _json_equal(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def json_patch(doc: Any, ops: list[Any]) -> Any:
    """Apply an RFC 6902 JSON patch (add/remove/replace/move/copy/test) to a copy of doc."""
    doc = copy.deepcopy(doc)
    for op in ops:
        if not isinstance(op, dict):
            raise JsonPatchError("patch operation is not an object")
        kind = op.get("op")
        path = op.get("path")
        src = op.get("from", "")
        if not isinstance(path, str) or not isinstance(src, str):
            raise JsonPatchError(f"{kind} operation has an invalid path")
        if kind in ("add", "replace", "test") and "value" not in op:
            raise JsonPatchError(f"{kind} operation has no value")
        if kind == "add":
            doc = _jp_add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "remove":
            doc = _jp_remove(doc, path)
        elif kind == "replace":
            _jp_get(doc, path)
            if _pointer(path):
                doc = _jp_remove(doc, path)
            doc = _jp_add(doc, path, copy.deepcopy(op["value"]))
        elif kind == "test":
            if not _json_equal(_jp_get(doc, path), op["value"]):
                raise JsonPatchError(f"testing value {path} failed: test failed")
        elif kind in ("move", "copy"):
            value = copy.deepcopy(_jp_get(doc, src))
            if kind == "move":
                if path.startswith(src + "/"):
                    raise JsonPatchError("move operation cannot move a value into its own child")
                doc = _jp_remove(doc, src)
            doc = _jp_add(doc, path, value)
        else:
            raise JsonPatchError(f"Unexpected kind: {kind}")
    return doc
