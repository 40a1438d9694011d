"""Static checks of Kubernetes and KEDA objects, as a cluster would make them.

- Kubernetes objects: the OpenAPI schema of one Kubernetes version, strict (unknown fields
  rejected), through ``kubernetes-validate``.
- KEDA objects: the ``openAPIV3Schema`` of KEDA's CRDs (../shared/schemas/keda/, KEDA
  v2.20), plus the pruning check ``kubectl apply --validate=strict`` makes: a field the
  schema does not declare is an error unless ``x-kubernetes-preserve-unknown-fields`` or
  ``additionalProperties`` allows it (CRD schemas leave ``additionalProperties`` out, so
  jsonschema alone would accept anything).
- KEDA's redis scaler rules: what the scaler's parser demands of a trigger's metadata.
- The metrics chain: every HPA metric comes from a prometheus-adapter rule, and that rule
  (or a KEDA prometheus trigger) reads a series our Prometheus scrapes, filtered by the
  job that scrapes it.

Each function returns a list of problems (empty: accepted).
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml

from app.config import REPO_ROOT
from tests.fixtures.shared import shared_schemas

K8S_VERSION = "1.33"
KEDA_SCHEMAS = shared_schemas() / "keda"
CRD_FILES = {
    "ScaledObject": "keda.sh_scaledobjects.yaml",
    "TriggerAuthentication": "keda.sh_triggerauthentications.yaml",
}
# ObjectMeta fields we write; the API server validates metadata itself, not the CRD schema.
METADATA_FIELDS = frozenset({"name", "namespace", "labels", "annotations"})

# Metadata keys KEDA's `redis` scaler reads (kedacore/keda pkg/scalers/redis_scaler.go:
# redisMetadata and redisConnectionInfo, parsed by scalersconfig.TypedConfig; keys read
# from the scale target's environment take the suffix FromEnv; keda.sh/docs/2.16/scalers/
# redis-lists). `password`/`username` in plain metadata are accepted by KEDA but refused
# here: a secret belongs in a TriggerAuthentication.
REDIS_METADATA = frozenset(
    {
        "address",
        "addressFromEnv",
        "host",
        "hostFromEnv",
        "port",
        "portFromEnv",
        "usernameFromEnv",
        "passwordFromEnv",
        "listName",
        "listLength",
        "activationListLength",
        "databaseIndex",
        "enableTLS",
        "unsafeSsl",
    }
)
REDIS_AUTH_PARAMETERS = frozenset(
    {"address", "host", "port", "username", "password", "tls", "cert", "key", "keyPassword", "ca"}
)
BOOLEANS = frozenset({"true", "false", "True", "False", "1", "0", "t", "f", "TRUE", "FALSE"})


def kubernetes_problems(obj: dict[str, Any]) -> list[str]:
    """``obj`` against the Kubernetes OpenAPI schema of K8S_VERSION, unknown fields rejected."""
    try:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = ".".join(str(p) for p in exc.path)
        return [f"{where}: {exc.message}"]
    except kubernetes_validate.SchemaNotFoundError as exc:
        return [exc.message]
    return []


@cache
def crd(kind: str) -> dict[str, Any]:
    """KEDA's CRD of ``kind`` (raises FileNotFoundError when the schemas are absent)."""
    loaded: dict[str, Any] = yaml.safe_load((KEDA_SCHEMAS / CRD_FILES[kind]).read_text())
    return loaded


def served_schema(definition: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(apiVersion, openAPIV3Schema) of the CRD's served storage version."""
    spec = definition["spec"]
    version = next(v for v in spec["versions"] if v.get("served") and v.get("storage"))
    return f"{spec['group']}/{version['name']}", version["schema"]["openAPIV3Schema"]


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields of ``value`` that the structural ``schema`` would prune (strict: errors)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found: list[str] = []
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        for key, item in value.items():
            where = f"{path}.{key}" if path else key
            if key in props:
                found += unknown_fields(item, props[key], where)
            elif isinstance(extra, dict):
                found += unknown_fields(item, extra, where)
            elif extra is not True:
                found.append(f"{where}: unknown field")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def crd_problems(obj: dict[str, Any], definition: dict[str, Any]) -> list[str]:
    """``obj`` as the API server checks a custom resource: version, schema, strict fields."""
    api_version, schema = served_schema(definition)
    problems = []
    if obj.get("apiVersion") != api_version:
        problems.append(f"apiVersion: {obj.get('apiVersion')!r} is not served ({api_version})")
    if obj.get("kind") != definition["spec"]["names"]["kind"]:
        problems.append(f"kind: {obj.get('kind')!r} is not {definition['spec']['names']['kind']}")
    meta = obj.get("metadata")
    if not isinstance(meta, dict) or not meta.get("name"):
        problems.append("metadata.name: required")
    else:
        problems += [f"metadata.{k}: unknown field" for k in sorted(set(meta) - METADATA_FIELDS)]
    for error in jsonschema.Draft4Validator(schema).iter_errors(obj):
        problems.append(f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}")
    rest = {k: v for k, v in obj.items() if k != "metadata"}
    problems += unknown_fields(rest, schema)
    return problems


def _integer(text: Any) -> bool:
    return isinstance(text, str) and text.strip().lstrip("-").isdigit()


def redis_trigger_problems(trigger: dict[str, Any], auths: dict[str, dict[str, Any]]) -> list[str]:
    """What KEDA's redis scaler would refuse (or we do), for one ``type: redis`` trigger.
    ``auths``: the TriggerAuthentications by name."""
    meta = trigger.get("metadata") or {}
    problems = [
        f"metadata.{k}: not a redis scaler field" for k in sorted(set(meta) - REDIS_METADATA)
    ]
    if not meta.get("listName"):
        problems.append("metadata.listName: required")
    length = meta.get("listLength")
    if length is None:
        problems.append("metadata.listLength: required (KEDA would default to 5)")
    elif not _integer(length) or int(length) <= 0:
        problems.append(f"metadata.listLength: {length!r} is not a string holding an integer > 0")
    for key in ("activationListLength", "databaseIndex"):
        if key in meta and (not _integer(meta[key]) or int(meta[key]) < 0):
            problems.append(
                f"metadata.{key}: {meta[key]!r} is not a string holding an integer >= 0"
            )
    for key in ("enableTLS", "unsafeSsl"):
        if key in meta and meta[key] not in BOOLEANS:
            problems.append(f"metadata.{key}: {meta[key]!r} is not a boolean string")
    if not _has_address(meta):
        problems.append("metadata: needs address (host:port), addressFromEnv, or host and port")
    elif meta.get("address") and not _host_port(meta["address"]):
        problems.append(f"metadata.address: {meta['address']!r} is not host:port")
    ref = (trigger.get("authenticationRef") or {}).get("name")
    if ref is not None:
        auth = auths.get(ref)
        if auth is None:
            problems.append(f"authenticationRef: no TriggerAuthentication {ref!r}")
        else:
            params = {p.get("parameter") for p in auth["spec"].get("secretTargetRef", [])}
            problems += [
                f"{ref}: {p!r} is not a redis auth parameter"
                for p in sorted(params - REDIS_AUTH_PARAMETERS)
            ]
    return problems


def _has_address(meta: dict[str, Any]) -> bool:
    if meta.get("address") or meta.get("addressFromEnv"):
        return True
    has_host = bool(meta.get("host") or meta.get("hostFromEnv"))
    return has_host and bool(meta.get("port") or meta.get("portFromEnv"))


def _host_port(address: str) -> bool:
    host, _, port = address.rpartition(":")
    return bool(host) and port.isdigit() and 0 < int(port) < 65536


def load_documents(path: Path) -> list[dict[str, Any]]:
    """The YAML documents of a file, empty ones dropped."""
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


KEDA_DIR = REPO_ROOT / "keda"
VALUES_DIR = "prometheus-adapter/"  # Helm values there, not Kubernetes objects


def committed_objects(folder: Path = KEDA_DIR) -> list[tuple[str, dict[str, Any]]]:
    """(path under ``folder``, object) of every Kubernetes and KEDA object in it."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.rglob("*.yaml")):
        name = path.relative_to(folder).as_posix()
        if not name.startswith(VALUES_DIR):
            found += [(name, doc) for doc in load_documents(path)]
    return found


# ---- HPA metric -> adapter rule -> PromQL -> Prometheus scrape job ----

_SELECTOR = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}")
_MATCHER = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!=|!~|=)\s*"([^"]*)"')


def render_adapter_query(metrics_query: str, series: str, matchers: str = "") -> str:
    """A metricsQuery as prometheus-adapter sends it, for ``series`` and an HPA's
    ``matchers`` (empty: no selector)."""
    return metrics_query.replace("<<.Series>>", series).replace("<<.LabelMatchers>>", matchers)


def selectors(promql: str) -> list[tuple[str, dict[str, str]]]:
    """(metric, its ``label="value"`` matchers) of every ``metric{...}`` selector."""
    return [
        (name, {k: v for k, op, v in _MATCHER.findall(body) if op == "="})
        for name, body in _SELECTOR.findall(promql)
    ]


def query_problems(
    promql: str, jobs: set[str], sources: dict[str, str], require_job: bool = True
) -> list[str]:
    """What breaks between ``promql`` and Prometheus: a series no scrape job in ``jobs``
    exports (``sources``: series -> the job exporting it), or a ``job`` filter naming
    another job (or none, with ``require_job``)."""
    found = selectors(promql)
    if not found:
        return [f"{promql!r}: no metric{{...}} selector"]
    problems = []
    for series, labels in found:
        job = sources.get(series)
        if job is None:
            problems.append(f"{series}: no known exporter")
        elif job not in jobs:
            problems.append(f"{series}: Prometheus has no scrape job {job!r}")
        elif labels.get("job", job if not require_job else None) != job:
            problems.append(f"{series}: filtered by job {labels.get('job')!r}, scraped by {job!r}")
    return problems


def adapter_problems(
    hpas: list[dict[str, Any]],
    rules: list[dict[str, Any]],
    jobs: set[str],
    sources: dict[str, str],
) -> list[str]:
    """Each HPA metric must be External (our dns_sd series have no pod label) and served by
    an external rule of ``rules`` whose series and metrics queries pass query_problems."""
    by_name = {r["name"]["as"]: r for r in rules}
    problems = []
    for hpa in hpas:
        for metric in hpa["spec"]["metrics"]:
            where = f"HPA {hpa['metadata']['name']}"
            if metric["type"] != "External":
                problems.append(f"{where}: a {metric['type']} metric needs per-pod series")
                continue
            name = metric["external"]["metric"]["name"]
            rule = by_name.get(name)
            if rule is None:
                problems.append(f"{where}: no adapter rule serves {name!r}")
                continue
            series = rule["name"]["matches"].strip("^$")
            if [n for n, _ in selectors(rule["seriesQuery"])] != [series]:
                problems.append(f"rule {name}: seriesQuery does not find {series}")
            for query in (rule["seriesQuery"], render_adapter_query(rule["metricsQuery"], series)):
                problems += [f"rule {name}: {p}" for p in query_problems(query, jobs, sources)]
    return problems
