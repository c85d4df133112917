"""The audit spec: a YAML file, validated with pydantic, that says what to audit and how to gate.

```yaml
name: adult-mlp               # optional; default: the subject's name
seed: 0
tier: smoke                   # smoke (every push) or full (nightly/release)
subject:
  checkpoint: models/adult-mlp          # a zoo checkpoint directory, relative to this file
  # or a user model:
  # model: mypkg.models:make_model      # factory returning the nn.Module
  # weights: model.safetensors
  # data: mypkg.data:load               # returns a trustlab DataBundle
auditors:                     # name -> parameters; omitted: every registered auditor that applies
  performance: {}
policy:
  - performance.test_accuracy >= 0.80
  - rule: upper(fairness.sex.equalized_odds_difference) <= 0.10
    name: equalized odds
```

Every error names the file, the line and the field, and what is allowed there.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, \
    model_validator

from trustlab.audit.policy import Rule, RuleError, parse_rule
from trustlab.audit.runner import available_auditors, get_auditor
from trustlab.errors import ConfigError

Loc = tuple[str | int, ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubjectSpec(_Strict):
    """A zoo checkpoint directory, or a user model (factory + safetensors) with a data loader."""

    name: str | None = None
    checkpoint: Path | None = None
    model: str | None = Field(None, description="package.module:factory returning an nn.Module")
    weights: Path | None = Field(None, description="safetensors file of the model's state_dict")
    data: str | None = Field(None, description="package.module:function returning a DataBundle")
    task: Literal["classification", "reconstruction"] = "classification"
    training: dict[str, Any] = Field(default_factory=dict,
                                     description="training facts for the card (wall_time_s, ...)")
    privacy: dict[str, Any] | None = None

    @field_validator("model", "data")
    @classmethod
    def _reference(cls, value: str | None) -> str | None:
        if value is not None and not _is_reference(value):
            raise ValueError(f"{value!r} is not a reference of the form package.module:function")
        return value

    @model_validator(mode="after")
    def _one_kind(self) -> "SubjectSpec":
        user = [self.model, self.weights, self.data]
        if self.checkpoint is not None and any(v is not None for v in user):
            raise ValueError("give either checkpoint, or model + weights + data, not both")
        if self.checkpoint is None and not all(v is not None for v in user):
            raise ValueError("give checkpoint (a zoo checkpoint directory), or all three of "
                             "model (package.module:factory), weights (.safetensors) and data "
                             "(package.module:function)")
        return self

    @property
    def kind(self) -> str:
        return "checkpoint" if self.checkpoint is not None else "user"


class RuleSpec(_Strict):
    """One policy rule; a bare string in the YAML is its ``rule``."""

    rule: str
    name: str | None = None
    description: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, value: Any) -> Any:
        return {"rule": value} if isinstance(value, str) else value

    @field_validator("rule")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            parse_rule(value)
        except RuleError as exc:  # pydantic reports ValueErrors with the field's location
            raise ValueError(str(exc)) from None
        return value

    def parsed(self) -> Rule:
        return parse_rule(self.rule, name=self.name)


class CardSpec(_Strict):
    """What only the model's owner can say, for the model card."""

    intended_use: str | None = None
    out_of_scope: str | None = None
    owners: str | None = None
    license: str | None = None
    ethical_considerations: str | None = None


class AuditSpec(_Strict):
    """The whole spec; ``source`` is the file it came from (relative paths resolve against it)."""

    version: Literal[1] = 1
    name: str | None = None
    seed: int = 0
    tier: Literal["smoke", "full"] = "smoke"
    subject: SubjectSpec
    auditors: dict[str, dict[str, Any] | None] | None = None
    plugins: list[str] = Field(default_factory=list,
                               description="modules to import first; they register auditors")
    policy: list[RuleSpec] = Field(default_factory=list)
    on_auditor_error: Literal["error", "fail", "ignore"] = "error"
    card: CardSpec = Field(default_factory=CardSpec)
    source: Path | None = Field(None, exclude=True)

    def auditor_params(self) -> dict[str, dict]:
        return {name: params or {} for name, params in (self.auditors or {}).items()}

    def rules(self) -> list[Rule]:
        return [r.parsed() for r in self.policy]

    def resolve(self, path: Path) -> Path:
        """``path`` relative to the spec file's folder (absolute paths stay as they are)."""
        base = self.source.parent if self.source else Path.cwd()
        return path if path.is_absolute() else (base / path)


def load_spec(path: str | Path) -> AuditSpec:
    """Read and validate a spec file; a ``ConfigError`` names file, line, field and what is
    allowed."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"audit spec {path} not found")
    return parse_spec(path.read_text(), source=path)


def parse_spec(text: str, source: str | Path = "<spec>") -> AuditSpec:
    """Validate spec ``text``; ``source`` names it in errors and anchors relative paths."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else str(source)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: an audit spec is a YAML mapping with at least 'subject'")
    import_plugins(data.get("plugins"), source)
    try:
        spec = AuditSpec.model_validate({**data, "source": Path(source)})
    except ValidationError as exc:
        raise ConfigError(_format_errors(source, root, [
            (tuple(e["loc"]), _message(e)) for e in exc.errors()])) from None
    problems = check_names(spec)
    if problems:
        raise ConfigError(_format_errors(source, root, problems))
    return spec


def import_plugins(plugins: Any, source: str | Path = "<spec>") -> None:
    """Import the spec's plugin modules, which register their auditors."""
    for module in plugins or []:
        try:
            importlib.import_module(str(module))
        except ImportError as exc:
            raise ConfigError(f"{source}: plugins: cannot import {module!r}: {exc}") from exc


def check_names(spec: AuditSpec) -> list[tuple[Loc, str]]:
    """What pydantic cannot know: auditor names, their parameters, the auditors rules refer to."""
    known = available_auditors()
    problems: list[tuple[Loc, str]] = []
    for name, params in spec.auditor_params().items():
        if name not in known:
            problems.append((("auditors", name), f"unknown auditor {name!r}; available: "
                                                 f"{', '.join(known)}"))
            continue
        model = getattr(type(get_auditor(name)), "Params", None)
        if isinstance(model, type) and issubclass(model, BaseModel):
            try:
                model.model_validate(params)
            except ValidationError as exc:
                problems += [(("auditors", name, *e["loc"]), _message(e)) for e in exc.errors()]
    running = list(spec.auditor_params()) if spec.auditors is not None else known
    for index, rule in enumerate(spec.policy):
        for metric in rule.parsed().metrics():
            auditor = metric.split(".", 1)[0]
            if auditor not in running:
                problems.append((("policy", index, "rule"),
                                 f"metric {metric!r} belongs to auditor {auditor!r}, which this "
                                 f"spec does not run; auditors run: {', '.join(running)}"))
    return problems


def _message(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown field; allowed here: " + ", ".join(_allowed_fields(error["loc"]))
    return error["msg"].removeprefix("Value error, ")


def _allowed_fields(loc: Loc) -> list[str]:
    """The field names of the model that ``loc`` (ending in the unknown field) points into."""
    model: type[BaseModel] = AuditSpec
    for part in loc[:-1]:
        field = model.model_fields.get(str(part)) if isinstance(part, str) else None
        if field is not None:
            model = _submodel(field.annotation) or model
    return [name for name in model.model_fields if name != "source"]


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return next(filter(None, map(_submodel, get_args(annotation))), None)


def _format_errors(source: str | Path, root: yaml.Node | None, problems: list[tuple[Loc, str]]
                   ) -> str:
    lines = []
    for loc, message in problems:
        field = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
        line = yaml_line(root, loc)
        lines.append(f"{source}:{line}: {field or '(top level)'}: {message}" if line
                     else f"{source}: {field}: {message}")
    return "invalid audit spec\n  " + "\n  ".join(lines)


def yaml_line(root: yaml.Node | None, loc: Loc) -> int | None:
    """The 1-based line of the deepest YAML node on the path ``loc`` (keys and list indices)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                break
            key, node = match
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and \
                part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _is_reference(value: str) -> bool:
    module, sep, attr = value.partition(":")
    return bool(sep) and all(p.isidentifier() for p in module.split(".")) and attr.isidentifier()


def resolve_reference(reference: str, what: str) -> Any:
    """Import ``package.module:name``; a failure names the reference and what it is for."""
    module_name, _, attr = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"subject.{what}: cannot import {module_name!r} ({exc}); is the "
                          "package installed or on PYTHONPATH?") from exc
    if not hasattr(module, attr):
        raise ConfigError(f"subject.{what}: module {module_name!r} has no {attr!r}")
    return getattr(module, attr)

