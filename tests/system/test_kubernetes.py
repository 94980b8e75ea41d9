"""The Kubernetes manifests under ops/kubernetes/ are valid and say what the worker needs.

Every object is validated against the OpenAPI schemas of a pinned Kubernetes version
(`kubernetes-validate`, installed by `make kube-tools`, which `make test` runs), in strict mode so
a misspelt field fails. The rest checks what a schema cannot: the probes reach /readyz and
/healthz on the worker's web port, secrets are referenced and never written down, every
`ENGAGE_` variable is a real setting and the values together pass the worker's own validation,
the rules ConfigMap is a valid rules file, and the autoscaler never goes past the partitions.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import kubernetes_validate  # `make kube-tools` (run by `make test`) installs it, pinned
import pytest
import yaml
from pydantic import SecretStr

from stream.core.rules import DEFAULT_RULES_FILE, load_rules
from stream.settings import Settings

#: The Kubernetes version the manifests are checked against (bump with requirements-kube.lock).
KUBERNETES_VERSION = "1.33.0"
ROOT = Path(__file__).resolve().parents[2]
DIR = ROOT / "ops" / "kubernetes"
FILES = sorted(p for p in DIR.glob("*.yaml") if p.name != "kustomization.yaml")


def _objects() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in FILES:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc is not None:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


OBJECTS = _objects()


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for _, o in OBJECTS if o["kind"] == kind and name in (None, o["metadata"]["name"])]
    assert len(found) == 1, f"{kind} {name}: {len(found)} found"
    return found[0]


def _pod_specs() -> list[dict[str, Any]]:
    return [
        o["spec"]["template"]["spec"] for _, o in OBJECTS if o["kind"] in {"StatefulSet", "Job"}
    ]


def _worker() -> dict[str, Any]:
    (container,) = _one("StatefulSet", "engage")["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _settings_data() -> dict[str, str]:
    return _one("ConfigMap", "engage-settings")["data"]


@pytest.mark.parametrize(("where", "obj"), OBJECTS, ids=[w for w, _ in OBJECTS])
def test_every_object_validates_against_the_pinned_kubernetes_schema(
    where: str, obj: dict[str, Any]
) -> None:
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    """The check above can fail: a misspelt field and a wrong type are refused."""
    broken = copy.deepcopy(_one("StatefulSet", "engage"))
    broken["spec"]["replica"] = 2
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = copy.deepcopy(_one("StatefulSet", "engage"))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_kustomization_applies_every_manifest() -> None:
    kustomization = yaml.safe_load((DIR / "kustomization.yaml").read_text(encoding="utf-8"))
    assert sorted(kustomization["resources"]) == [p.name for p in FILES]
    images = {i["name"] for i in kustomization["images"]}
    for spec in _pod_specs():
        for container in spec["containers"]:
            assert container["image"] in images  # one place names the image and its tag


def test_probes_point_at_readyz_and_healthz_on_the_web_port() -> None:
    worker = _worker()
    env = _env(worker)
    port = int(env["ENGAGE_WEB_PORT"]["value"])
    (web,) = [p for p in worker["ports"] if p["name"] == "web"]
    assert web["containerPort"] == port
    assert env["ENGAGE_WEB_HOST"]["value"] == "0.0.0.0"  # reachable from the kubelet
    probes = {k: worker[k]["httpGet"] for k in ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"  # never /readyz: recovery would loop
    assert probes["startupProbe"]["path"] == "/healthz"
    for probe in probes.values():
        assert probe["port"] in ("web", port)


def test_secrets_are_referenced_never_inlined() -> None:
    assert not [w for w, o in OBJECTS if o["kind"] == "Secret"]
    secret_settings = {
        f"ENGAGE_{name.upper()}"
        for name, field in Settings.model_fields.items()
        if "SecretStr" in str(field.annotation)
    } | {"ENGAGE_SASL_USERNAME"}
    assert {"ENGAGE_API_TOKEN", "ENGAGE_SASL_PASSWORD", "ENGAGE_REDIS_URL"} <= secret_settings
    assert not secret_settings & set(_settings_data())
    for spec in _pod_specs():
        for container in spec["containers"]:
            env = _env(container)
            for name in secret_settings & set(env):
                assert "value" not in env[name], name
                assert env[name]["valueFrom"]["secretKeyRef"]["name"], name
    worker_env = _env(_worker())
    for name in ("ENGAGE_API_TOKEN", "ENGAGE_SASL_USERNAME", "ENGAGE_SASL_PASSWORD"):
        assert "secretKeyRef" in worker_env[name]["valueFrom"], name


def _engage_variables() -> dict[str, str | None]:
    """Every ENGAGE_ variable the manifests set, with its literal value (None: from a Secret)."""
    out: dict[str, str | None] = {}
    for name, value in _settings_data().items():
        out[name] = value
    for spec in _pod_specs():
        for container in spec["containers"]:
            for name, entry in _env(container).items():
                if name.startswith("ENGAGE_"):
                    out[name] = entry.get("value")
    return out


def test_every_engage_variable_is_a_real_setting() -> None:
    names = _engage_variables()
    assert names
    unknown = [n for n in names if n.removeprefix("ENGAGE_").lower() not in Settings.model_fields]
    assert not unknown, f"not settings of stream/settings.py: {unknown}"


def test_the_worker_settings_pass_the_worker_validation() -> None:
    """The ConfigMap and the worker's env together, as the pod engage-0 sees them."""
    values = {**_settings_data()}
    for name, entry in _env(_worker()).items():
        if name.startswith("ENGAGE_") and "value" in entry:
            values[name] = (
                entry["value"]
                .replace("$(POD_NAME)", "engage-0")
                .replace("$(POD_NAMESPACE)", "prod")
            )
    fields = {k.removeprefix("ENGAGE_").lower(): v for k, v in values.items()}
    settings = Settings(**fields, api_token=SecretStr("t"))
    assert settings.store == "rocksdb://"
    assert settings.advertised_url == "http://engage-0.engage-headless.prod.svc:6066"


def test_the_advertised_url_is_the_pods_stable_name_through_the_headless_service() -> None:
    statefulset = _one("StatefulSet", "engage")
    headless = _one("Service", statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True  # routing during recovery
    url = _env(_worker())["ENGAGE_WEB_ADVERTISED_URL"]["value"]
    assert url.startswith(f"http://$(POD_NAME).{headless['metadata']['name']}.$(POD_NAMESPACE).")
    names = [e["name"] for e in _worker()["env"]]
    assert names.index("POD_NAME") < names.index("ENGAGE_WEB_ADVERTISED_URL")  # $(...) order


def test_the_rocksdb_data_dir_is_the_pods_persistent_volume() -> None:
    statefulset = _one("StatefulSet", "engage")
    env = _env(_worker())
    assert env["ENGAGE_STORE"]["value"] == "rocksdb://"
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    mounts = {m["name"]: m["mountPath"] for m in _worker()["volumeMounts"]}
    assert mounts[claim["metadata"]["name"]] == env["ENGAGE_DATA_DIR"]["value"]


def test_the_rules_configmap_is_the_packaged_rules_file_mounted_where_the_worker_reads() -> None:
    rules_map = _one("ConfigMap", "engage-rules")
    text = rules_map["data"]["rules.yaml"]
    assert text == DEFAULT_RULES_FILE.read_text(encoding="utf-8"), (
        "copy stream/core/default_rules.yaml into ops/kubernetes/rules-configmap.yaml"
    )
    path = Path(_env(_worker())["ENGAGE_RULES_FILE"]["value"])
    volumes = {
        v["name"]: v for v in _one("StatefulSet", "engage")["spec"]["template"]["spec"]["volumes"]
    }
    mounts = {m["mountPath"]: m["name"] for m in _worker()["volumeMounts"]}
    assert volumes[mounts[str(path.parent)]]["configMap"]["name"] == "engage-rules"
    assert path.name in rules_map["data"]


def test_the_rules_in_the_configmap_load(tmp_path: Path) -> None:
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(_one("ConfigMap", "engage-rules")["data"]["rules.yaml"])
    assert load_rules(rules_file).version == load_rules().version


def test_selectors_match_the_worker_pods() -> None:
    labels = _one("StatefulSet", "engage")["spec"]["template"]["metadata"]["labels"]
    for _, obj in OBJECTS:
        if obj["kind"] == "Service":
            assert obj["spec"]["selector"].items() <= labels.items()
        if obj["kind"] in {"PodDisruptionBudget", "StatefulSet"}:
            assert obj["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_the_autoscaler_scales_the_workers_on_consumer_lag_up_to_the_partitions() -> None:
    hpa = _one("HorizontalPodAutoscaler", "engage")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("StatefulSet", "engage")
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "engage_consumer_lag_messages"
    partitions = int(_settings_data()["ENGAGE_PARTITIONS"])
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"] <= partitions
    assert "idle" in (DIR / "hpa.yaml").read_text(encoding="utf-8")  # the comment says why
