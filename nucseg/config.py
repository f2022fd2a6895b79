"""Checking a workflow configuration against its JSON schema, with messages a user can act on.

The workflow checks its config before any job starts (``rules/common.smk``). Each problem is one
line that names the key by its dotted path (``segment.min_sise``, ``datasets.my_plate.role``),
says what is wrong and, for an unknown key, which keys that place takes.
"""

from __future__ import annotations

import jsonschema


def _location(path) -> str:
    return ".".join(str(part) for part in path) or "the config's top level"


def config_problems(config: dict, schema: dict) -> list[str]:
    """Every way ``config`` breaks ``schema``, one line each, sorted by key.

    Parameters
    ----------
    config : dict
        The configuration as Snakemake read it (config files and ``--config`` merged).
    schema : dict
        A JSON schema (``config/config.schema.yaml``, read once by the workflow).

    Returns
    -------
    list of str
        Empty when the config is valid. An unknown key gives
        ``"segment.min_sise: unknown key (segment takes: threshold, ...)"``; any other
        problem gives the key's path, the validator's message and the key's description.
    """
    validator = jsonschema.Draft202012Validator(schema)
    problems = []
    for error in validator.iter_errors(config):
        path = list(error.absolute_path)
        if error.validator == "additionalProperties" and error.validator_value is False:
            allowed = list(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(allowed), key=str):
                place = _location(path) if path else "the top level"
                problems.append((path + [key], f"{_location(path + [key])}: unknown key ({place} takes: {', '.join(allowed)})"))
            continue
        description = error.schema.get("description") if isinstance(error.schema, dict) else None
        suffix = f" ({description})" if description and error.validator != "required" else ""
        problems.append((path, f"{_location(path)}: {error.message}{suffix}"))
    return [line for _, line in sorted(problems, key=lambda item: [str(part) for part in item[0]])]
