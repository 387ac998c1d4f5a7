#!/usr/bin/env python3
"""Compiles HL7's FHIR R4 (4.0.1) core definitions into fhir-profiles/r4/definitions.json and
fhir-profiles/r4/types.ndjson.

Called by generate.sh (the only writer of those files) with the unpacked npm packages
`hl7.fhir.r4.examples@4.0.1` (StructureDefinitions with snapshots, ValueSets, CodeSystems) and
`hl7.fhir.r4.expansions@4.0.1` (ValueSet expansions). Deterministic: sorted keys, no dates.

Output shape (all keys short, the files are embedded in every binary), shown as one document;
it is written as two files (see write_outputs): each type's "elements" go to one line of
types.ndjson, `{"elements": [...], "name": "Patient"}`, sorted by name, and definitions.json
keeps the rest:

  {"fhirVersion": "4.0.1",
   "primitives": {"date": "<regex>", ...},          # value regex per primitive type
   "types": {"Patient": {"kind": "resource", "base": "DomainResource", "abstract": false,
             "elements": [{"p": "name", "min": 0, "max": "*",        # path below the root
                           "t": [{"c": "HumanName"}, {"c": "Reference", "r": ["Patient"]}],
                           "cr": "Questionnaire.item",              # contentReference
                           "fixed": <json>, "pattern": <json>,
                           "b": ["required", "http://hl7.org/fhir/ValueSet/x"],
                           "inv": [["key", "error", "fhirpath", "human text"]]}, ...]}},
   "valueSets": {"url": {"codes": {"system": ["code", ...]}, "open": ["system not held", ...]}},
   "codeSystems": {"url": ["code", ...]}}           # complete FHIR-defined code systems
"""

import json
import os
import sys

FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
SD_PREFIX = "http://hl7.org/fhir/StructureDefinition/"


def load_dir(path):
    out = []
    for name in sorted(os.listdir(path)):
        if name.endswith(".json") and not name.startswith("."):
            with open(os.path.join(path, name), encoding="utf-8") as f:
                try:
                    out.append(json.load(f))
                except json.JSONDecodeError:
                    continue
    return out


def strip_version(url):
    return url.split("|", 1)[0] if url else url


def type_code(t, path, is_resource_id):
    code = t["code"]
    if code.startswith("http://hl7.org/fhirpath/System."):
        for ext in t.get("extension", []):
            if ext.get("url") == FHIR_TYPE_EXT:
                code = ext.get("valueUrl") or ext.get("valueUri") or code
                break
        # Resource.id is declared `string` in 4.0.1 but its rules are those of `id`.
        if is_resource_id:
            code = "id"
        # Element.id and Extension.url carry no `_name` sibling in JSON.
        return "System." + code
    return code


def compile_element(e, root, is_resource):
    path = e["path"]
    rel = path[len(root) + 1 :] if path != root else ""
    out = {"p": rel, "min": e.get("min", 0), "max": e.get("max", "*")}
    types = []
    for t in e.get("type", []):
        entry = {"c": type_code(t, path, is_resource and path == root + ".id")}
        targets = [
            strip_version(p)[len(SD_PREFIX) :]
            for p in t.get("targetProfile", [])
            if strip_version(p).startswith(SD_PREFIX)
        ]
        if targets:
            entry["r"] = targets
        types.append(entry)
    if types:
        out["t"] = types
    if "contentReference" in e:
        out["cr"] = e["contentReference"].lstrip("#")
    for k, v in e.items():
        if k.startswith("fixed"):
            out["fixed"] = v
        elif k.startswith("pattern"):
            out["pattern"] = v
    b = e.get("binding")
    if b and b.get("valueSet"):
        out["b"] = [b["strength"], strip_version(b["valueSet"])]
    inv = [
        [c["key"], c.get("severity", "error"), c["expression"], c.get("human", "")]
        for c in e.get("constraint", [])
        if c.get("expression")
    ]
    if inv:
        out["inv"] = inv
    return out


def compile_types(sds):
    types = {}
    primitives = {}
    for sd in sds:
        if sd.get("derivation") not in (None, "specialization") or sd.get("kind") == "logical":
            continue
        if not sd.get("url", "").startswith(SD_PREFIX):
            continue
        name = sd["type"]
        elements = sd["snapshot"]["element"]
        root = elements[0]["path"]
        types[name] = {
            "kind": sd["kind"],
            "base": (sd.get("baseDefinition") or "")[len(SD_PREFIX) :] or None,
            "abstract": sd.get("abstract", False),
            "elements": [
                compile_element(e, root, sd["kind"] == "resource") for e in elements
            ],
        }
        if sd["kind"] == "primitive-type":
            for e in elements:
                if e["path"] == name + ".value":
                    for t in e.get("type", []):
                        for ext in t.get("extension", []):
                            if ext.get("url") == REGEX_EXT:
                                primitives[name] = ext["valueString"]
                    primitives.setdefault(name, None)
    return types, primitives


class Terminology:
    def __init__(self, resources, expansions):
        self.cs = {}
        self.vs = {}
        for r in resources:
            if r.get("resourceType") == "CodeSystem" and r.get("url"):
                self.cs[r["url"]] = r
            elif r.get("resourceType") == "ValueSet" and r.get("url"):
                self.vs[r["url"]] = r
        self.exp = {}
        for r in expansions:
            if r.get("resourceType") == "ValueSet" and r.get("url") and r.get("expansion"):
                self.exp[r["url"]] = r["expansion"]
        self.cache = {}

    def cs_codes(self, url):
        """All codes of a complete code system we hold, with their is-a children."""
        cs = self.cs.get(url)
        if not cs or cs.get("content") != "complete" or not cs.get("concept"):
            return None
        codes = []
        children = {}

        def walk(concepts, parent):
            for c in concepts:
                codes.append(c["code"])
                if parent is not None:
                    children.setdefault(parent, []).append(c["code"])
                for p in c.get("property", []):
                    if p.get("code") in ("parent", "subsumedBy") and "valueCode" in p:
                        children.setdefault(p["valueCode"], []).append(c["code"])
                walk(c.get("concept", []), c["code"])

        walk(cs["concept"], None)
        return codes, children

    def descendants(self, url, code, include_self):
        held = self.cs_codes(url)
        if held is None:
            return None
        _, children = held
        out, stack = [], [code]
        seen = set()
        while stack:
            c = stack.pop()
            if c in seen:
                continue
            seen.add(c)
            if c != code or include_self:
                out.append(c)
            stack.extend(children.get(c, []))
        return out

    def set_of(self, part, open_systems, depth):
        """Codes of one include/exclude; None system => nothing (recorded as open)."""
        result = {}
        for vs_url in part.get("valueSet", []):
            sub = self.expand(strip_version(vs_url), depth + 1)
            if sub is None:
                open_systems.add("valueset:" + strip_version(vs_url))
                continue
            for s, cs in sub["codes"].items():
                result.setdefault(s, set()).update(cs)
            open_systems.update(sub.get("open", []))
        system = part.get("system")
        if not system:
            return result
        if "concept" in part:
            result.setdefault(system, set()).update(c["code"] for c in part["concept"])
            return result
        filters = part.get("filter", [])
        if not filters:
            held = self.cs_codes(system)
            if held is None:
                open_systems.add(system)
            else:
                result.setdefault(system, set()).update(held[0])
            return result
        codes = None
        for f in filters:
            op, value = f.get("op"), f.get("value")
            if f.get("property") == "concept" and op in ("is-a", "descendent-of"):
                got = self.descendants(system, value, op == "is-a")
            else:
                got = None
            if got is None:
                open_systems.add(system)
                return result
            codes = set(got) if codes is None else codes & set(got)
        result.setdefault(system, set()).update(codes or set())
        return result

    def expand(self, url, depth=0):
        if url in self.cache:
            return self.cache[url]
        if depth > 10:
            return None
        self.cache[url] = None  # cycle guard
        out = None
        exp = self.exp.get(url)
        if exp is not None and exp.get("contains") and not any(
            p.get("name") == "limitedExpansion" for p in exp.get("parameter", [])
        ):
            codes = {}

            def walk(contains):
                for c in contains:
                    if c.get("system") and c.get("code") and not c.get("abstract"):
                        codes.setdefault(c["system"], set()).add(c["code"])
                    walk(c.get("contains", []))

            walk(exp["contains"])
            total = exp.get("total")
            if total is None or total == sum(len(v) for v in codes.values()):
                out = {"codes": codes, "open": set()}
        if out is None:
            vs = self.vs.get(url)
            if vs is None or "compose" not in vs:
                self.cache[url] = None
                return None
            open_systems = set()
            codes = {}
            for inc in vs["compose"].get("include", []):
                for s, cs in self.set_of(inc, open_systems, depth).items():
                    codes.setdefault(s, set()).update(cs)
            for exc in vs["compose"].get("exclude", []):
                for s, cs in self.set_of(exc, set(), depth).items():
                    if s in codes:
                        codes[s] -= cs
            out = {"codes": codes, "open": open_systems}
        self.cache[url] = out
        return out


def main():
    examples, expansions, out_path, types_path = sys.argv[1:5]
    resources = load_dir(examples)
    sds = [r for r in resources if r.get("resourceType") == "StructureDefinition"]
    types, primitives = compile_types(sds)
    term = Terminology(resources, load_dir(expansions))

    bound = set()
    for t in types.values():
        for e in t["elements"]:
            if "b" in e:
                bound.add(e["b"][1])
    value_sets = {}
    for url in sorted(bound):
        exp = term.expand(url)
        if exp is None:
            value_sets[url] = {"codes": {}, "open": ["valueset:" + url]}
            continue
        value_sets[url] = {
            "codes": {s: sorted(c) for s, c in sorted(exp["codes"].items())},
            "open": sorted(exp["open"]),
        }
    code_systems = {}
    for url, cs in sorted(term.cs.items()):
        held = term.cs_codes(url)
        if held is not None and url.startswith("http://hl7.org/fhir/") or (
            held is not None and url.startswith("http://terminology.hl7.org/")
        ):
            code_systems[url] = sorted(set(held[0]))
    # Displays of the held code systems' concepts (display checks on Codings).
    displays = {}
    for url in code_systems:
        shown = {}

        def walk_displays(concepts):
            for c in concepts:
                if c.get("display"):
                    shown.setdefault(c["code"], c["display"])
                walk_displays(c.get("concept", []))

        walk_displays(term.cs[url].get("concept", []))
        if shown:
            displays[url] = dict(sorted(shown.items()))
    # Core search parameters' types (SearchParameter.derivedFrom, CapabilityStatement checks).
    search_params = {
        r["url"]: r["type"]
        for r in resources
        if r.get("resourceType") == "SearchParameter" and r.get("url") and r.get("type")
    }
    # Core extensions' contexts (where each extension may be used): [type, expression].
    extension_contexts = {}
    for sd in sds:
        if sd.get("type") == "Extension" and sd.get("derivation") == "constraint" and sd.get("url"):
            ctx = [[c.get("type", ""), c.get("expression", "")] for c in sd.get("context", [])]
            if ctx:
                extension_contexts[sd["url"]] = ctx
    out = {
        "displays": displays,
        "extensionContexts": extension_contexts,
        "searchParams": search_params,
        "fhirVersion": "4.0.1",
        "primitives": primitives,
        "types": types,
        "valueSets": value_sets,
        "codeSystems": code_systems,
    }
    write_outputs(out, out_path, types_path)


def write_outputs(out, out_path, types_path):
    """Writes the compiled definitions as two files, so that a validator can load a type's
    elements on first use instead of parsing all of them at start (a Lambda's cold start):
    `out_path` holds everything but the elements (each type keeps its kind, base and
    abstract flag), `types_path` one line per type, sorted by name:
    `{"elements":[...],"name":"Patient"}`."""
    header = dict(out)
    header["types"] = {
        name: {k: v for k, v in t.items() if k != "elements"} for name, t in out["types"].items()
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(header, f, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        f.write("\n")
    with open(types_path, "w", encoding="utf-8") as f:
        for name in sorted(out["types"]):
            line = {"name": name, "elements": out["types"][name]["elements"]}
            json.dump(line, f, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
            f.write("\n")


if __name__ == "__main__":
    main()
