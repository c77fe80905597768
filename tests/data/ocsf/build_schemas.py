#!/usr/bin/env python3
"""Build JSON Schemas (draft 2020-12) of OCSF event classes from an ocsf/ocsf-schema checkout.

    python3 tests/data/ocsf/build_schemas.py /path/to/ocsf-schema 6fa6499a0f8c9f449d342816e90e5f687c224b0a

Reads the tree at that commit (tag 1.8.0 of github.com/ocsf/ocsf-schema, Apache-2.0) with `git show`,
resolves each class the way the OCSF schema server does (``extends`` chains of events and objects,
``$include`` of profiles and includes, class attributes refining the dictionary's, enum values of a
class added to those it extends), and writes ``schema-1.8.0/<class>.json``: every attribute with its
type (dictionary types reduced to JSON types, with the type's regex as a pattern where Python can
compile it), arrays, the enums of ``*_id`` attributes, the attributes required by the class, its
objects and the profiles irkit applies (``host``; plus the class's own, e.g. ``incident``), objects as
``$defs`` (recursion through ``$ref``), ``class_uid``/``category_uid`` as constants and ``type_uid``
as the enum ``class_uid * 100 + activity_id``. Unknown attributes are refused
(``additionalProperties: false``), which catches misspelt mappings.

The output is committed as test data, so the tests need no network and no OCSF checkout.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

CLASSES = {
    "base_event": "events/base_event.json",
    "account_change": "events/iam/account_change.json",
    "authentication": "events/iam/authentication.json",
    "remediation_activity": "events/remediation/remediation_activity.json",
    "file_remediation_activity": "events/remediation/file_remediation_activity.json",
    "process_remediation_activity": "events/remediation/process_remediation_activity.json",
    "network_remediation_activity": "events/remediation/network_remediation_activity.json",
    "evidence_info": "events/discovery/evidence_info.json",
    "incident_finding": "events/findings/incident_finding.json",
    "api_activity": "events/application/api_activity.json",
}
APPLIED_PROFILES = {"host"}
BASE_TYPES = {"boolean_t": {"type": "boolean"}, "integer_t": {"type": "integer"}, "long_t": {"type": "integer"},
              "float_t": {"type": "number"}, "string_t": {"type": "string"}, "json_t": {},
              "object_t": {"type": "object"}}


class Tree:
    def __init__(self, repo: str, commit: str) -> None:
        self.repo, self.commit = repo, commit
        self._cache: dict[str, dict] = {}
        files = subprocess.run(["git", "-C", repo, "ls-tree", "-r", "--name-only", commit, "objects/", "events/"],
                               check=True, capture_output=True, text=True).stdout.split()
        self.objects = {}
        self.events = {}
        for path in files:
            if path.endswith(".json"):
                data = self.load(path)
                (self.objects if path.startswith("objects/") else self.events)[data["name"]] = path
        self.dictionary = self.load("dictionary.json")
        self.categories = self.load("categories.json")["attributes"]

    def load(self, path: str) -> dict:
        if path not in self._cache:
            text = subprocess.run(["git", "-C", self.repo, "show", f"{self.commit}:{path}"], check=True,
                                  capture_output=True, text=True).stdout
            self._cache[path] = json.loads(text)
        return copy.deepcopy(self._cache[path])


def merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def attributes_of(tree: Tree, data: dict) -> dict[str, dict]:
    """The item's own attributes with its $include files resolved (profile attributes tagged)."""
    attrs: dict[str, dict] = {}
    for inc in data.get("attributes", {}).get("$include", []) or []:
        included = tree.load(inc)
        profile = included.get("name") if included.get("meta") == "profile" else None
        for name, spec in attributes_of(tree, included).items():
            spec = dict(spec)
            if profile is not None:
                spec.setdefault("profile", profile)
            attrs[name] = merge(attrs.get(name, {}), spec)
    for name, spec in data.get("attributes", {}).items():
        if name == "$include":
            continue
        attrs[name] = merge(attrs.get(name, {}), spec)
    return attrs


def resolve(tree: Tree, kind: str, name: str) -> tuple[dict, dict[str, dict]]:
    """(the item's data, its attributes after the extends chain)."""
    path = (tree.objects if kind == "object" else tree.events)[name]
    data = tree.load(path)
    parent = data.get("extends")
    attrs: dict[str, dict] = {}
    if parent and parent != "object":
        pdata, attrs = resolve(tree, kind, parent)
        data.setdefault("category", pdata.get("category"))
        data["profiles"] = list(dict.fromkeys((pdata.get("profiles") or []) + (data.get("profiles") or [])))
    for aname, spec in attributes_of(tree, data).items():
        attrs[aname] = merge(attrs.get(aname, {}), spec)
    return data, attrs


def type_schema(tree: Tree, type_name: str) -> dict:
    if type_name in BASE_TYPES:
        return dict(BASE_TYPES[type_name])
    types = tree.dictionary["types"]["attributes"]
    spec = types.get(type_name)
    if spec is None:
        raise KeyError(type_name)
    out = type_schema(tree, spec.get("type", "string_t"))
    if "regex" in spec:
        try:
            re.compile(spec["regex"])
            out["pattern"] = spec["regex"]
        except re.error:
            pass
    if "max_len" in spec:
        out["maxLength"] = spec["max_len"]
    if "range" in spec:
        out["minimum"], out["maximum"] = spec["range"]
    if "values" in spec and out.get("type") != "boolean":
        out["enum"] = spec["values"]
    return out


class Builder:
    def __init__(self, tree: Tree, profiles: set[str]) -> None:
        self.tree = tree
        self.profiles = profiles
        self.defs: dict[str, dict] = {}

    def attribute(self, name: str, spec: dict) -> dict:
        dictionary = self.tree.dictionary["attributes"].get(name, {})
        full = merge(dictionary, spec)
        type_name = full.get("type", "string_t")
        if type_name in self.tree.objects:
            schema: dict = {"$ref": f"#/$defs/{type_name}"}
            self.object(type_name)
        else:
            schema = type_schema(self.tree, type_name)
        enum = full.get("enum")
        if enum and name.endswith("_id"):
            schema["enum"] = sorted(int(k) for k in enum)
        if full.get("is_array"):
            schema = {"type": "array", "items": schema}
        return schema

    def properties(self, attrs: dict[str, dict], profiles: set[str]) -> tuple[dict, list[str]]:
        props, required = {}, []
        for name, spec in sorted(attrs.items()):
            props[name] = self.attribute(name, spec)
            if spec.get("requirement") == "required" and (spec.get("profile") in (None, *profiles)):
                required.append(name)
        return props, required

    def object(self, name: str) -> None:
        if name in self.defs:
            return
        if name == "object":  # the generic object ("unmapped" and the like): any attributes
            self.defs[name] = {"type": "object"}
            return
        self.defs[name] = {}  # placeholder against recursion
        _, attrs = resolve(self.tree, "object", name)
        props, required = self.properties(attrs, self.profiles)
        self.defs[name] = {"type": "object", "properties": props, "required": required,
                           "additionalProperties": False}

    def event(self, name: str) -> dict:
        data, attrs = resolve(self.tree, "event", name)
        profiles = self.profiles  # the class's "profiles" list says what MAY apply, not what does
        props, required = self.properties(attrs, profiles)
        category = data.get("category")
        cat_uid = self.tree.categories[category]["uid"] if category in self.tree.categories else 0
        class_uid = cat_uid * 1000 + int(data.get("uid", 0))
        activities = props.get("activity_id", {}).get("enum", [0, 99])
        props["class_uid"] = {"const": class_uid}
        props["category_uid"] = {"const": cat_uid}
        props["type_uid"] = {"enum": [class_uid * 100 + a for a in activities]}
        return {
            "title": f"OCSF 1.8.0 {data.get('caption')} ({class_uid})",
            "description": f"{CLASSES[name]}; profiles applied: {', '.join(sorted(profiles)) or 'none'}",
            "type": "object", "properties": props, "required": sorted(set(required)),
            "additionalProperties": False,
        }


def main(argv: list[str]) -> int:
    repo, commit = argv[1], argv[2]
    tree = Tree(repo, commit)
    version = json.loads(subprocess.run(["git", "-C", repo, "show", f"{commit}:version.json"], check=True,
                                        capture_output=True, text=True).stdout)["version"]
    out = Path(__file__).resolve().parent / f"ocsf-{version}.schema.json"
    builder = Builder(tree, APPLIED_PROFILES)
    classes = {name: builder.event(name) for name in CLASSES}
    for name, schema in classes.items():
        print(name, schema["properties"]["class_uid"]["const"], "required:", schema["required"])
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"ocsf-{version}",
        "description": f"JSON Schemas of OCSF {version} event classes, built by tests/data/ocsf/build_schemas.py "
                       f"from github.com/ocsf/ocsf-schema@{commit} (Apache-2.0). Validate an event against "
                       "{'$ref': 'ocsf-<version>#/$defs/classes/<name>'}; objects are in $defs.",
        "source": {"repository": "github.com/ocsf/ocsf-schema", "commit": commit, "version": version},
        "class_uids": {name: c["properties"]["class_uid"]["const"] for name, c in classes.items()},
        "$defs": {**builder.defs, "classes": classes},
    }
    out.write_text(json.dumps(document, indent=0, sort_keys=True) + "\n")
    print(out, out.stat().st_size, "bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
