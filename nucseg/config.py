"""Checking a workflow configuration against its JSON schema, with messages a user can act on.

The workflow checks its config before any job starts (``rules/common.smk``). Each problem is one
line that names the key by its dotted path (``segment.min_sise``, ``datasets.my_plate.role``),
says what is wrong and what is allowed, and, for an unknown key, which keys that place takes.
Besides the schema, the rules that tie keys together are checked here too (``otsu_bounds`` low
before high, the ``body`` head first, a train and a test dataset), so that a config the jobs
would refuse after downloading and training is refused before any job runs.
"""

from __future__ import annotations

import json
import math
import os
import reprlib
from collections.abc import Sequence
from pathlib import Path

import jsonschema
import yaml

#: The settings sections, and those a model may override.
SECTIONS = ("download", "preprocess", "train", "predict", "segment", "split")
MODEL_SECTIONS = ("train", "predict", "segment")

#: The most values (keys, items and scalars) a config may expand to through YAML aliases. A
#: real config has a few hundred; anchors nested in each other (an "alias bomb": nine aliases
#: of nine aliases of ... nine values) reach billions, which every later step (Snakemake's
#: merge, the schema check, an error message) would expand in memory.
MAX_CONFIG_VALUES = 100_000


def _location(path) -> str:
    return ".".join(str(part) for part in path) or "the config's top level"


def _children(node) -> list:
    if isinstance(node, dict):
        return list(node.values())
    return list(node) if isinstance(node, (list, tuple)) else []


def _expanded_sizes(root, limit: int) -> tuple[dict[int, int], dict[int, int]]:
    """How many values each container under ``root`` stands for once its aliases are expanded
    (capped at ``limit + 1``; a container holding itself counts ``limit + 1``), and how often
    each is referenced, by ``id``. Every distinct container is visited once, so an alias bomb
    costs the size of its text, not of its expansion."""
    sizes: dict[int, int] = {}
    refs: dict[int, int] = {}
    open_: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        if children_done:
            open_.discard(key)
            total = 1 + sum(sizes.get(id(child), limit + 1) if isinstance(child, (dict, list, tuple)) else 1 for child in _children(node))
            total += len(node) if isinstance(node, dict) else 0  # the keys
            sizes[key] = min(total, limit + 1)
            continue
        if key in sizes:
            continue
        open_.add(key)
        stack.append((node, True))
        for child in _children(node):
            if isinstance(child, (dict, list, tuple)):
                refs[id(child)] = refs.get(id(child), 0) + 1
                if id(child) not in sizes and id(child) not in open_:
                    stack.append((child, False))
    return sizes, refs


def config_size_problem(config, limit: int = MAX_CONFIG_VALUES) -> str | None:
    """Why ``config`` is refused for its size, or ``None``: more than ``limit`` values once its
    YAML aliases are expanded (anchors nested in each other: an alias bomb), or a value that
    holds itself through an alias. Counted over each distinct value once, before anything
    expands it: call this before any other use of a config read from YAML.

    Returns
    -------
    str or None
        One line naming the key (``segment.threshold: expands to more than 100,000 values ...``).
    """
    if not isinstance(config, (dict, list, tuple)):
        return None
    sizes, refs = _expanded_sizes(config, limit)
    if sizes[id(config)] <= limit:
        return None
    # name the key: go down through mappings along values over the limit, and stop at the
    # first one that an alias points at (referenced more than once) or at a list
    path, node = [], config
    while isinstance(node, dict) and (not path or refs.get(id(node), 0) <= 1):
        big = next(((k, v) for k, v in node.items() if isinstance(v, (dict, list, tuple)) and sizes.get(id(v), 0) > limit), None)
        if big is None:
            break
        path.append(big[0])
        node = big[1]
    return (
        f"{_location(path)}: expands to more than {limit:,} values through YAML aliases (*name) of anchors (&name) nested in each "
        "other, or holds itself: refused before anything reads it (a config needs a few hundred values)"
    )


def non_finite_problems(config) -> list[tuple[list, str]]:
    """Every NaN or infinite number in ``config`` (``.nan``, ``.inf`` in YAML), by key: no
    setting takes one, and a JSON schema's bounds let NaN through (every comparison with it is
    false). Call after :func:`config_size_problem` (this visits every value)."""
    problems, stack = [], [([], config)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            problems.append((path, f"{_location(path)}: {node} is not allowed: every number in the config must be finite (not NaN or infinity)"))
        elif isinstance(node, dict):
            stack.extend((path + [key], value) for key, value in node.items())
        elif isinstance(node, (list, tuple)):
            stack.extend((path + [i], value) for i, value in enumerate(node))
    return problems


def _typed(value, kinds: tuple[type, ...] = (bool, int, float, list)):
    """A text value read as YAML, if it reads as null or one of ``kinds``."""
    if not isinstance(value, str):
        return value
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    return parsed if parsed is None or isinstance(parsed, kinds) else value


def typed_cli_values(section: dict, keys: tuple[str, ...] | None = None) -> None:
    """Type the values that ``--config`` leaves as text, in place.

    ``--config train='{epochs: 5}'`` gives the text ``'5'`` and ``--config
    segment='{otsu_bounds: [0.2, 0.8]}'`` the list ``['0.2', '0.8']`` (Snakemake parses nested
    values as text): such values of a settings section (or of the given ``keys`` only), and the
    items of such lists, are read as YAML scalars (or lists) again. Text that is not a number,
    boolean or null (``otsu``, ``body``) stays text.
    """
    for key, value in section.items():
        if keys is not None and key not in keys:
            continue
        value = _typed(value)
        section[key] = [_typed(item, (bool, int, float)) for item in value] if isinstance(value, list) else value


def type_cli_config(config: dict) -> None:
    """:func:`typed_cli_values` over every settings section of a workflow config, the
    datasets' ``evaluate`` and the models' overrides (in place)."""
    for section in SECTIONS:
        if isinstance(config.get(section), dict):
            typed_cli_values(config[section])
    for dataset in (config.get("datasets") or {}).values():
        if isinstance(dataset, dict):
            typed_cli_values(dataset, keys=("evaluate",))  # the others are text (a sha256 may be digits)
    for model in (config.get("models") or {}).values():
        for section in MODEL_SECTIONS:
            if isinstance((model or {}).get(section), dict):
                typed_cli_values(model[section])


def _describe(schema: dict) -> str:
    """What a (sub)schema allows, in words: ``'otsu'``, ``a number greater than 0 and less than 1``."""
    if "enum" in schema:
        return " or ".join(repr(v) for v in schema["enum"])
    kind = {"number": "a number", "integer": "a whole number", "string": "text", "boolean": "true or false", "array": "a list", "null": "null"}
    types = schema.get("type", "value")
    text = " or ".join(kind.get(t, t) for t in ([types] if isinstance(types, str) else types))
    bounds = [
        f"{word} {schema[key]}"
        for key, word in (("minimum", "at least"), ("exclusiveMinimum", "greater than"), ("maximum", "at most"), ("exclusiveMaximum", "less than"))
        if key in schema
    ]
    return text + (" " + " and ".join(bounds) if bounds else "")


#: How a message quotes a value: text up to 160 characters whole, lists and mappings cut short.
_QUOTE = reprlib.Repr()
_QUOTE.maxstring = _QUOTE.maxother = 160
_QUOTE.maxlevel, _QUOTE.maxlist, _QUOTE.maxtuple, _QUOTE.maxdict = 2, 4, 4, 4


def _message(error: jsonschema.ValidationError) -> str:
    """The problem in words; a large value quoted in it is shortened (``[{'model': {...}, ...}]``),
    so that it does not make a line of megabytes."""
    shown = _QUOTE.repr(error.instance)
    if error.validator in ("oneOf", "anyOf"):
        choices = ", or ".join(_describe(option) for option in error.validator_value)
        return f"{shown} is not allowed: use {choices}"
    full = repr(error.instance)
    return error.message.replace(full, shown) if len(full) > len(shown) else error.message


def _cross_field_problems(config: dict) -> list[tuple[list, str]]:
    """The rules a schema cannot state: each settings place, as given and as a model's override."""
    places = [([section], config.get(section)) for section in ("train", "segment")]
    for name, model in (config.get("models") or {}).items():
        for section in ("train", "segment"):
            places.append((["models", name, section], (model or {}).get(section) if isinstance(model, dict) else None))
    problems = []
    for path, values in places:
        if not isinstance(values, dict):
            continue
        bounds = values.get("otsu_bounds")
        if (
            path[-1] == "segment"
            and isinstance(bounds, list)
            and len(bounds) == 2
            and all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds)  # NaN and inf: non_finite_problems
            and bounds[0] > bounds[1]
        ):
            key = path + ["otsu_bounds"]
            problems.append((key, f"{_location(key)}: {bounds} is inverted: write the lower bound first ([{bounds[1]}, {bounds[0]}])"))
        heads = values.get("heads")
        if path[-1] == "train" and isinstance(heads, list) and heads and heads[0] != "body":
            key = path + ["heads"]
            problems.append(
                (
                    key,
                    f"{_location(key)}: {heads} must start with body ([body], [body, border] or [body, border, seed]): "
                    "the body head is the nucleus foreground every model predicts",
                )
            )
    return problems + _init_problems(config)


def _init_problems(config: dict) -> list[tuple[list, str]]:
    """``train.init`` naming a model of the config: it must not lead back to the model itself
    (a model cannot start from its own weights, nor two models from each other's). ``pretrained``
    is always the shipped model, whatever the config's models are named."""
    models = config.get("models") if isinstance(config.get("models"), dict) else {}
    default = (config.get("train") or {}).get("init") if isinstance(config.get("train"), dict) else None

    def init_of(name):
        model = models.get(name)
        train = model.get("train") if isinstance(model, dict) else None
        return train["init"] if isinstance(train, dict) and "init" in train else default

    problems = []
    for name in models:
        seen, current = [name], init_of(name)
        while isinstance(current, str) and current != "pretrained" and current in models and current not in seen:
            seen.append(current)
            current = init_of(current)
        if current == name != "pretrained":
            key = ["models", name, "train", "init"]
            chain = " -> ".join(seen + [name])
            problems.append((key, f"{_location(key)}: the models start from each other's weights ({chain}): name a model folder, pretrained, or another model"))
    return problems


def _dataset_problems(config: dict) -> list[tuple[list, str]]:
    """A run segments its test datasets with models trained on its train datasets (or ready
    model folders, ``models: {name: {folder: ...}}``): it needs a test set, and a train set for
    any model that is to be trained."""
    datasets = config.get("datasets")
    if not isinstance(datasets, dict):
        return []
    if any(isinstance(d, dict) and d.get("role") not in ("train", "test") for d in datasets.values()):
        return []  # a missing or misspelled role is named by the schema check
    roles = {role: sorted(name for name, d in datasets.items() if isinstance(d, dict) and d.get("role") == role) for role in ("train", "test")}
    models = config.get("models") if isinstance(config.get("models"), dict) else {}
    to_train = sorted(name for name, m in models.items() if not (isinstance(m, dict) and m.get("folder")))
    found = f"this config has train: {', '.join(roles['train']) or 'none'}; test: {', '.join(roles['test']) or 'none'}"
    problems = []
    if not roles["test"]:
        problems.append((["datasets"], f"datasets: a run needs at least one dataset with role: test (the images it segments); {found}"))
    if not roles["train"] and (to_train or not models):
        problems.append(
            (
                ["datasets"],
                (
                    f"datasets: a run needs at least one dataset with role: train to train its models ({', '.join(to_train) or 'none given'}); "
                    f"{found}. To segment with a ready model and no training, give the model a folder: models: {{pretrained: {{folder: pretrained}}}}"
                ),
            )
        )
    sections = [(["train"], config.get("train"))] + [(["models", m, "train"], o.get("train")) for m, o in models.items() if isinstance(o, dict)]
    for path, section in sections:
        shares = section.get("shares") if isinstance(section, dict) else None
        for key in sorted(set(shares) - set(roles["train"]) if isinstance(shares, dict) else (), key=str):
            problems.append((path + ["shares", key], f"{_location(path + ['shares', key])}: {key!r} is not a training dataset ({found})"))
        if isinstance(shares, dict) and all(isinstance(v, (int, float)) and 0 < v <= 1 for v in shares.values()):  # else the schema says
            total = sum(shares.values())
            if total > 1 + 1e-9 or (roles["train"] and set(roles["train"]) <= set(shares) and abs(total - 1) > 1e-6):
                problems.append(
                    (path + ["shares"], f"{_location(path + ['shares'])}: the shares sum to {total:g}; at most 1, and 1 when every training dataset is named")
                )
    for name, d in datasets.items():
        if isinstance(d, dict) and d.get("evaluate") is True and d.get("layout") == "images":
            problems.append((["datasets", name, "evaluate"], f"datasets.{name}.evaluate: true, but layout: images has no ground truth to score against"))
    return problems


def schema_problems(instance, schema: dict) -> list[tuple[list, str]]:
    """Every way ``instance`` breaks the JSON ``schema``, and every NaN or infinite number in it,
    as ``(key path, line)``; the line names the key by its dotted path, says what is wrong and
    what is allowed (for an unknown key: the keys that place takes). Call after
    :func:`config_size_problem` for anything read from YAML."""
    non_finite = non_finite_problems(instance)
    problems = list(non_finite)
    flagged = {tuple(path) for path, _ in non_finite}
    for error in jsonschema.Draft202012Validator(schema).iter_errors(instance):
        path = list(error.absolute_path)
        if tuple(path) in flagged:
            continue  # named as not finite already (NaN passes or fails the bounds by chance)
        if error.validator == "additionalProperties" and error.validator_value is False:
            allowed = list(error.schema.get("properties", {}))
            for key in sorted(set(error.instance) - set(allowed), key=str):
                place = _location(path) if path else "the top level"
                problems.append((path + [key], f"{_location(path + [key])}: unknown key ({place} takes: {', '.join(allowed)})"))
            continue
        description = error.schema.get("description") if isinstance(error.schema, dict) else None
        suffix = f" ({description})" if description and error.validator != "required" else ""
        problems.append((path, f"{_location(path)}: {_message(error)}{suffix}"))
    return problems


def config_problems(config: dict, schema: dict) -> list[str]:
    """Every way ``config`` breaks ``schema`` or the rules between its keys, one line each, sorted by key.

    Parameters
    ----------
    config : dict
        The configuration as Snakemake read it (config files and ``--config`` merged, typed by
        :func:`type_cli_config`).
    schema : dict
        A JSON schema (``config/config.schema.yaml``, read once by the workflow).

    Returns
    -------
    list of str
        Empty when the config is valid. A config that expands to more than
        :data:`MAX_CONFIG_VALUES` values through YAML aliases gives that one line alone
        (:func:`config_size_problem`); a NaN or infinite number gives ``"train.learning_rate:
        nan is not allowed: every number in the config must be finite ..."``. An unknown key gives
        ``"segment.min_sise: unknown key (segment takes: threshold, ...)"``; a value that is not
        one of the allowed kinds says which are (``"segment.threshold: 1.5 is not allowed: use
        'otsu', or a number greater than 0 and less than 1"``); any other problem gives the key's
        path, the validator's message and the key's description.
    """
    too_large = config_size_problem(config)
    if too_large:  # the schema check, and its messages quoting the values, would expand it all
        return [too_large]
    problems = schema_problems(config, schema)
    problems += _cross_field_problems(config) + _dataset_problems(config)
    return [line for _, line in sorted(problems, key=lambda item: [str(part) for part in item[0]])]


# A model folder's config.json (nucseg.modelfolder.load_model, the workflow's folder: and train.init).


def model_folder_schema(heads: Sequence[str] | None = None, architectures: Sequence[str] | None = None) -> dict:
    """The JSON schema of a model folder's ``config.json``: what rebuilding the network reads.

    ``model`` (the network's settings, per task) and ``normalize`` (``low``, ``high``,
    ``invert_dark``) are required, whole, and take no other keys; ``task``, ``classes``,
    ``nuclei`` (the training nuclei's diameters) and ``modalities`` (sub-folder names, one
    level, no path) are typed. The other top-level keys are the record of the training (settings, scores, versions,
    notes) and are free. ``heads`` and ``architectures`` (:data:`nucseg.model.HEADS`,
    :data:`nucseg.nets.SEMANTIC_PRESETS`) restrict the head and semantic network names; without
    them (the workflow's config check, which does not import PyTorch) any text is taken.
    """
    percentile = {"type": "number", "minimum": 0, "maximum": 100}
    return {
        "type": "object",
        "required": ["model", "normalize"],
        "properties": {
            "task": {"enum": ["instance", "semantic"]},
            "classes": {"type": "object", "additionalProperties": {"type": "integer", "minimum": 0, "maximum": 255}},
            "architecture": {"type": "string"},
            "model": {"type": "object"},
            "normalize": {
                "type": "object",
                "description": "the intensity percentiles the model was trained with",
                "required": ["low", "high", "invert_dark"],
                "additionalProperties": False,
                "properties": {"low": percentile, "high": percentile, "invert_dark": {"type": "boolean"}},
            },
            "modalities": {
                "type": "object",
                "description": "a model folder inside this one for the images of a modality (the modality guess), by modality",
                "propertyNames": {"enum": ["fluorescence", "brightfield", "histology"]},
                "additionalProperties": {"type": "string", "pattern": "^[A-Za-z0-9_][A-Za-z0-9_.-]*$"},
            },
            "nuclei": {
                "type": "object",
                "description": "the training nuclei's (semantic task: objects') diameters, px (the target of predict.scale auto)",
                "required": ["median", "p10", "p90"],
                "properties": {k: {"type": "number", "exclusiveMinimum": 0} for k in ("median", "p10", "p90")} | {"n": {"type": "integer", "minimum": 0}},
            },
        },
        "if": {"properties": {"task": {"const": "semantic"}}, "required": ["task"]},
        "then": {"properties": {"model": _semantic_model_schema(architectures)}},
        "else": {"properties": {"model": _instance_model_schema(heads)}},
    }


def _instance_model_schema(heads: Sequence[str] | None) -> dict:
    """:func:`model_folder_schema`'s ``model`` of the instance task: the ResUNet's settings."""
    positive = {"type": "integer", "minimum": 1}
    head = {"enum": list(heads)} if heads is not None else {"type": "string"}
    return {
        "type": "object",
        "description": "the ResUNet's settings",
        "required": ["width", "blocks", "heads", "in_channels"],
        "additionalProperties": False,
        "properties": {
            "width": positive,
            "blocks": positive,
            "heads": {"type": "array", "items": head, "minItems": 1, "uniqueItems": True},
            "in_channels": positive,
        },
    }


def _semantic_model_schema(architectures: Sequence[str] | None) -> dict:
    """:func:`model_folder_schema`'s ``model`` of the semantic task: the semantic network's settings."""
    positive = {"type": "integer", "minimum": 1}
    return {
        "type": "object",
        "description": "the semantic network's settings",
        "required": ["architecture", "width", "classes", "in_channels"],
        "additionalProperties": False,
        "properties": {
            "architecture": {"enum": list(architectures)} if architectures is not None else {"type": "string"},
            "width": positive,
            "classes": {"type": "array", "items": {"type": "string"}, "minItems": 2, "uniqueItems": True},
            "in_channels": positive,
        },
    }


def read_model_folder_config(model_dir: str | os.PathLike, heads: Sequence[str] | None = None, architectures: Sequence[str] | None = None) -> dict:
    """The ``config.json`` of a model folder, checked against :func:`model_folder_schema`.

    Raises
    ------
    ValueError
        The file is missing, not JSON, or breaks the schema: one line naming the file and each
        key (``<folder>/config.json: model.width: 'sixteen' is not of type 'integer'``).
    """
    path = Path(model_dir) / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{model_dir}: not a readable nucseg model folder ({exc})") from exc
    found = schema_problems(config, model_folder_schema(heads, architectures))
    problems = [line for _, line in sorted(found, key=lambda item: [str(part) for part in item[0]])]
    if isinstance(config, dict) and isinstance(config.get("normalize"), dict):
        low, high = config["normalize"].get("low"), config["normalize"].get("high")
        if all(isinstance(v, (int, float)) and math.isfinite(v) for v in (low, high)) and not low < high:
            problems.append(f"normalize: low {low} must be below high {high}")
    if problems:
        raise ValueError(f"{path}: " + "; ".join(problems).replace("the config's top level", "the top level"))
    return config


def settings_from_file(path: str | os.PathLike, section: str, cls: type, model: str | None = None, given: dict | None = None):
    """The settings dataclass ``cls`` (:class:`nucseg.infer.PredictSettings`,
    :class:`nucseg.postprocess.SegmentSettings` ...) that a workflow run with the config file
    ``path`` uses for ``section``: the file's top-level section, then ``models.<model>.<section>``'s
    overrides, then ``given`` (the command line's explicit options) over both. Keys the file
    leaves out take the dataclass's defaults, which are the workflow's.

    Raises
    ------
    ValueError
        Naming the file and the key: an unreadable file or one that is no mapping, a model the
        file does not name, a key that is no setting of the section (with the settings there
        are), or a value the settings refuse.
    """
    import dataclasses

    config = _read_yaml_mapping(path)
    values = _section(config, [section], path)
    if model is not None:
        models = config.get("models") or {}
        if not isinstance(models, dict) or model not in models:
            raise ValueError(f"{path}: models: no model {model!r} (the file has {sorted(models) if isinstance(models, dict) else 'none'})")
        values = {**values, **_section(config, ["models", model, section], path)}
    known = [f.name for f in dataclasses.fields(cls)]
    for key in values:
        if key not in known:
            raise ValueError(f"{path}: {section}.{key}: not a {section} setting (the settings are {', '.join(known)})")
    try:
        return cls(**{**values, **(given or {})})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{path}: {section}: {exc}") from exc


def _read_yaml_mapping(path: str | os.PathLike) -> dict:
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ValueError(f"{path}: not a readable YAML config file ({exc})") from exc
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config file holds a mapping of sections (predict:, segment: ...), not {type(config).__name__}")
    return config


def _section(config: dict, keys: list[str], path: str | os.PathLike) -> dict:
    """The mapping at ``keys`` of ``config`` (empty when absent)."""
    node = config
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    if node is None:
        return {}
    if not isinstance(node, dict):
        raise ValueError(f"{path}: {_location(keys)}: a mapping of settings, not {type(node).__name__}")
    return node
