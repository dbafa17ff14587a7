"""Dimension sources for retraining: a search's dims.json, `fde:D`, or `random:SEED` (RaS), with
optional per-field overrides (`--dim FIELD=D`) on top of any of them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from configs import fileio
from configs.features import DataSchema
from configs.loader import ConfigError


def dims_path(source: str) -> Path | fileio.RemotePath:
    """The dims.json a `--dims` path names: the file itself, or the one in a directory."""
    path = fileio.path(source)
    return path / "dims.json" if path.is_dir() else path


def load_dims(source: str, schema: DataSchema, candidate_dims, *, trial: int = 0) -> dict:
    """Returns {"source", "kind", "dims": [per field in schema order], "candidate_dims"}.

    - a path to dims.json (or a directory holding one): refused unless it was searched on this
      very schema (schema_hash) and names exactly the schema's fields;
    - `fde:D`: every field at dimension D;
    - `random:SEED`: each field uniformly from the candidate dimensions (the paper's RaS);
      `trial` k draws the k-th independent sample for the same seed.
    """
    names = schema.field_names
    if source.startswith("fde:"):
        try:
            d = int(source[4:])
        except ValueError:
            raise ConfigError(f"--dims {source!r}: expected fde:D with an integer D") from None
        if d <= 0:
            raise ConfigError(f"--dims {source!r}: D must be positive")
        return {"source": source, "kind": "fde", "dims": [d] * len(names),
                "candidate_dims": [d]}
    if source.startswith("random:"):
        try:
            seed = int(source[7:])
        except ValueError:
            raise ConfigError(f"--dims {source!r}: expected random:SEED with an integer") from None
        rng = np.random.default_rng([seed, trial])
        cands = list(candidate_dims)
        dims = [int(cands[i]) for i in rng.integers(0, len(cands), size=len(names))]
        return {"source": f"{source}#{trial}", "kind": "random", "dims": dims,
                "candidate_dims": cands}
    path = dims_path(source)
    if not path.is_file():
        raise ConfigError(f"--dims {source!r}: not fde:D, random:SEED, or an existing dims.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None
    if data.get("schema_hash") != schema.schema_hash:
        raise ConfigError(
            f"{path} was searched on dataset {data.get('dataset')!r} with schema "
            f"{data.get('schema_hash')}, but --data has dataset {schema.dataset!r} with schema "
            f"{schema.schema_hash}; search again on this data")
    fields = data.get("fields", {})
    missing = [n for n in names if n not in fields]
    extra = [n for n in fields if n not in names]
    if missing or extra:
        raise ConfigError(
            f"{path}: fields differ from the schema (missing {missing}, extra {extra})"
        )
    budget = (data.get("budget") or {}).get("params")
    return {"source": str(path), "kind": "autodim", "dims": [int(fields[n]["dim"]) for n in names],
            "candidate_dims": data.get("candidate_dims"), "search_backbone": data.get("backbone"),
            "variant": data.get("variant"), "budget": int(budget) if budget else None}


def parse_dim_overrides(items) -> dict:
    """`["item=16", "user=8"]` -> {"item": 16, "user": 8}; refuses malformed or repeated items."""
    out: dict = {}
    for item in items or ():
        name, sep, value = str(item).partition("=")
        name = name.strip()
        if not sep or not name:
            raise ConfigError(f"--dim {item!r}: expected FIELD=D, e.g. --dim item=16")
        try:
            d = int(value)
        except ValueError:
            raise ConfigError(f"--dim {item!r}: D must be an integer") from None
        if d <= 0:
            raise ConfigError(f"--dim {item!r}: D must be positive")
        if name in out:
            raise ConfigError(f"--dim {item!r}: field {name!r} is given twice")
        out[name] = d
    return out


def apply_dim_overrides(dims: dict, overrides: dict, schema: DataSchema) -> dict:
    """A copy of a load_dims result with the named fields' dimensions replaced (a per-field
    ablation: "the search's choice, but with item at 32"). Unknown fields are refused by name.
    Overrides that take a budgeted search's dims.json over its budget are allowed (an explicit
    choice) but carry an "over_budget" warning, which retrain prints."""
    if not overrides:
        return dims
    names = schema.field_names
    unknown = [n for n in overrides if n not in names]
    if unknown:
        raise ConfigError(f"--dim: no field {unknown[0]!r} in dataset {schema.dataset!r} "
                          f"(fields: {', '.join(names)})")
    out = dict(dims)
    out["dims"] = [int(overrides.get(n, d)) for n, d in zip(names, dims["dims"])]
    out["overrides"] = dict(overrides)
    out["source"] = f"{dims['source']} with " + ",".join(f"{k}={v}" for k, v in overrides.items())
    budget = dims.get("budget")
    if budget:
        from pipeline.budget import params_of

        params = params_of(out["dims"], [schema.vocab_sizes[n] for n in names])
        if params > budget:
            given = ",".join(f"{k}={v}" for k, v in overrides.items())
            out["over_budget"] = (f"warning: --dim {given} gives {params:,} embedding "
                                  f"parameters, over the "
                                  f"{budget:,} budget {dims['source']} was searched for "
                                  f"(its \"budget\"); retraining anyway")
    return out
