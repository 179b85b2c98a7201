"""helm/nextbest: lint, render every scenario, validate offline, check invariants, scan.

Tools come from deploy/tools/install.sh (``make test`` runs it): helm, and
kubernetes-validate and checkov in their own virtualenv. A missing tool fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from nextbest.api.widget_tokens import load_public_keys
from nextbest.settings import Settings

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm/nextbest"
TOOLS = Path(os.environ.get("NEXTBEST_TOOLS_DIR", REPO / ".dev/tools"))
SCENARIOS = ["default", *sorted(p.name for p in (CHART / "ci").glob("*.yaml"))]
CRDS = {"ServiceMonitor", "PrometheusRule"}  # not in the Kubernetes schemas: checked below
# checkov findings accepted, each for a reason (offline, checkov cannot tell severities):
# none: secrets are mounted as files (CKV_K8S_35 holds), settings are plain values
ACCEPTED: set[str] = set()
# ... and for the default values only, which deploy by tag for a first try
ACCEPTED_BY_TAG = {"CKV_K8S_43", "CKV_K8S_15"}


def tool(path: str) -> str:
    found = TOOLS / path
    if not found.exists():
        pytest.fail(f"{found} is missing: run deploy/tools/install.sh (make test does)")
    return str(found)


def helm(*args: str) -> str:
    done = subprocess.run(
        [tool("bin/helm"), *args], capture_output=True, text=True, timeout=120, check=False
    )
    if done.returncode != 0:
        raise AssertionError(f"helm {' '.join(args)} failed:\n{done.stderr}")
    return done.stdout


def values_args(scenario: str) -> list[str]:
    return [] if scenario == "default" else ["-f", str(CHART / "ci" / scenario)]


@cache
def rendered(scenario: str) -> str:
    return helm("template", "r1", str(CHART), "--namespace", "nextbest", *values_args(scenario))


def documents(scenario: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered(scenario)) if d]


def by_kind(scenario: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in documents(scenario) if d["kind"] == kind]


def pod_specs(scenario: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("StatefulSet", "Deployment"):
        for document in by_kind(scenario, kind):
            yield document["metadata"]["name"], document["spec"]["template"]["spec"]


def env_of(scenario: str, kind: str) -> dict[str, dict[str, Any]]:
    [workload] = by_kind(scenario, kind)
    [container] = workload["spec"]["template"]["spec"]["containers"]
    return {item["name"]: item for item in container["env"]}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_helm_lint(scenario: str) -> None:
    out = helm("lint", str(CHART), "--strict", *values_args(scenario))
    assert "0 chart(s) failed" in out


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_manifest_validates_offline(scenario: str, tmp_path: Path) -> None:
    plain = [d for d in documents(scenario) if d["kind"] not in CRDS]
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(yaml.safe_dump_all(plain))
    done = subprocess.run(
        [tool("venv/bin/kubernetes-validate"), "--strict", "-k", "1.31.0", str(manifest)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed for resource") == len(plain)


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_pods_run_restricted(scenario: str) -> None:
    specs = list(pod_specs(scenario))
    assert specs
    for name, spec in specs:
        assert spec["automountServiceAccountToken"] is False, name
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, name
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["capabilities"]["drop"] == ["ALL"], name
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, name  # the only writable places are mounts
            assert {"readinessProbe", "livenessProbe", "resources"} <= set(container), name


def test_three_workers_are_a_statefulset_with_a_volume_each() -> None:
    scenario = "three-workers-values.yaml"
    [workers] = by_kind(scenario, "StatefulSet")
    assert workers["spec"]["replicas"] == 3
    assert workers["spec"]["podManagementPolicy"] == "Parallel"
    [claim] = workers["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"
    services = {s["metadata"]["name"]: s for s in by_kind(scenario, "Service")}
    headless = services[workers["spec"]["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == workers["spec"]["selector"]["matchLabels"]
    pod = workers["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] >= 60  # faust commits on SIGTERM
    [mount] = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "data"]
    assert mount["mountPath"] == "/var/lib/nextbest"
    budgets = {b["metadata"]["name"]: b for b in by_kind(scenario, "PodDisruptionBudget")}
    assert budgets["r1-nextbest-worker"]["spec"]["maxUnavailable"] == 1
    env = env_of(scenario, "StatefulSet")
    assert env["NEXTBEST_TOPIC_PARTITIONS"]["value"] == "12"
    assert env["NEXTBEST_DATA_DIR"]["value"].startswith("/var/lib/nextbest")


def mounted_file(spec: dict[str, Any], container: dict[str, Any], path: str) -> tuple[str, str]:
    """The (Secret or ConfigMap name, key) a file path of ``container`` comes from."""
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    for mount in container["volumeMounts"]:
        folder = mount["mountPath"].rstrip("/") + "/"
        if not path.startswith(folder):
            continue
        assert mount.get("readOnly") is True, mount
        volume = volumes[mount["name"]]
        source = volume.get("secret") or volume.get("configMap")
        assert source is not None, volume
        name = source.get("secretName") or source.get("name")
        relative = path.removeprefix(folder)
        items = {item["path"]: item["key"] for item in source.get("items", [])}
        if items:
            assert relative in items, (path, items)
            return name, items[relative]
        return name, relative  # the whole Secret: its keys are the file names
    raise AssertionError(f"{path} is on no mounted volume")


def files_of(scenario: str, kind: str) -> dict[str, tuple[str, str]]:
    """Every setting of the workload that names a file -> (Secret/ConfigMap, key)."""
    [workload] = by_kind(scenario, kind)
    spec = workload["spec"]["template"]["spec"]
    [container] = spec["containers"]
    return {
        item["name"]: mounted_file(spec, container, item["value"])
        for item in container["env"]
        if str(item.get("value", "")).startswith("/etc/nextbest/")
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_no_secret_is_an_environment_variable(scenario: str) -> None:
    for kind in ("StatefulSet", "Deployment"):
        for workload in by_kind(scenario, kind):
            for container in workload["spec"]["template"]["spec"]["containers"]:
                for item in container["env"]:
                    assert "secretKeyRef" not in item.get("valueFrom", {}), item
    assert "Secret" not in {d["kind"] for d in documents(scenario)}


def test_each_worker_pod_is_a_static_member_that_stops_within_its_grace() -> None:
    [workers] = by_kind("default", "StatefulSet")
    pod = workers["spec"]["template"]["spec"]
    env = {item["name"]: item for item in pod["containers"][0]["env"]}
    assert env["NEXTBEST_KAFKA_GROUP_INSTANCE_ID"]["valueFrom"] == {
        "fieldRef": {"fieldPath": "metadata.name"}  # stable across a pod's restarts
    }
    grace = pod["terminationGracePeriodSeconds"]
    assert env["NEXTBEST_SHUTDOWN_TIMEOUT"]["value"] == f"{grace - 10}s"


def test_credentials_are_files_from_existing_secrets() -> None:
    scenario = "three-workers-values.yaml"
    assert files_of(scenario, "StatefulSet") == {
        "NEXTBEST_KAFKA_SASL_PASSWORD_FILE": ("nextbest-kafka-sasl", "password"),
        "NEXTBEST_KAFKA_SSL_CAFILE": ("nextbest-kafka-ca", "ca.crt"),
        "NEXTBEST_REDIS_PASSWORD_FILE": ("nextbest-redis-worker", "password"),
        "NEXTBEST_REDIS_SSL_CA_CERTS": ("nextbest-redis-ca", "ca.crt"),
        "NEXTBEST_RULES": ("r1-nextbest-rules", "rules.toml"),
        "NEXTBEST_ERASURE_SECRET_FILE": ("nextbest-erasure", "secret"),
    }
    assert files_of(scenario, "Deployment") == {
        "NEXTBEST_REDIS_PASSWORD_FILE": ("nextbest-redis-api", "password"),
        "NEXTBEST_REDIS_SSL_CA_CERTS": ("nextbest-redis-ca", "ca.crt"),
        "NEXTBEST_API_TOKENS_FILE": ("nextbest-api-tokens", "tokens"),
        "NEXTBEST_WIDGET_TOKEN_PUBLIC_KEY_FILE": ("r1-nextbest-widget-keys", "public-keys.pem"),
    }
    worker, api = env_of(scenario, "StatefulSet"), env_of(scenario, "Deployment")
    assert worker["NEXTBEST_REDIS_USERNAME"]["value"] == "nextbest-worker"
    assert api["NEXTBEST_REDIS_USERNAME"]["value"] == "nextbest-api"
    assert worker["NEXTBEST_KAFKA_SASL_USERNAME"]["value"] == "nextbest"
    assert api["NEXTBEST_WIDGET_TOKEN_MAX_TTL"]["value"] == "15m"
    # the API never talks to Kafka: no Kafka setting, no Kafka secret in its pods
    assert not [name for name in api if name.startswith("NEXTBEST_KAFKA")]


def test_mutual_tls_and_secrets_holding_whole_values() -> None:
    scenario = "mtls-values.yaml"
    assert files_of(scenario, "StatefulSet") == {
        "NEXTBEST_KAFKA_SSL_CAFILE": ("nextbest-kafka-client", "ca.crt"),
        "NEXTBEST_KAFKA_SSL_CERTFILE": ("nextbest-kafka-client", "tls.crt"),
        "NEXTBEST_KAFKA_SSL_KEYFILE": ("nextbest-kafka-client", "tls.key"),
        "NEXTBEST_KAFKA_SSL_KEY_PASSWORD_FILE": ("nextbest-kafka-client", "tls.key.password"),
        "NEXTBEST_REDIS_URL_FILE": ("nextbest-redis-url", "url"),
        "NEXTBEST_REDIS_SSL_CA_CERTS": ("nextbest-redis-ca", "ca.crt"),
    }
    api = files_of(scenario, "Deployment")
    assert api["NEXTBEST_WIDGET_TOKEN_PUBLIC_KEY_FILE"] == (
        "nextbest-widget-keys",
        "public-keys.pem",
    )


def test_secret_files_are_readable_by_the_pod_group_only() -> None:
    [workers] = by_kind("three-workers-values.yaml", "StatefulSet")
    for volume in workers["spec"]["template"]["spec"]["volumes"]:
        if "secret" in volume:
            assert volume["secret"]["defaultMode"] == 0o440, volume


def test_the_inline_widget_key_is_a_public_key_the_api_loads(tmp_path: Path) -> None:
    [config] = [
        c
        for c in by_kind("three-workers-values.yaml", "ConfigMap")
        if c["metadata"]["name"].endswith("-widget-keys")
    ]
    keys = tmp_path / "public-keys.pem"
    keys.write_text(config["data"]["public-keys.pem"])
    assert len(load_public_keys(keys)) == 1


def test_rotating_widget_keys_rolls_the_api() -> None:
    def checksum(*extra: str) -> str:
        out = helm("template", "r1", str(CHART), *extra)
        [api] = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "Deployment"]
        return str(api["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    key = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA\n-----END PUBLIC KEY-----\n"
    assert checksum("--set-string", f"api.widgetTokens.publicKeys={key}") != checksum()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_setting_the_chart_sets_is_one_nextbest_reads(scenario: str) -> None:
    known = {f"NEXTBEST_{name.upper()}" for name in Settings.model_fields}
    for kind in ("StatefulSet", "Deployment"):
        for workload in by_kind(scenario, kind):
            for container in workload["spec"]["template"]["spec"]["containers"]:
                names = {item["name"] for item in container["env"]}
                assert names <= known, names - known


def test_changing_the_rules_rolls_the_pods() -> None:
    def checksum(*extra: str) -> str:
        out = helm("template", "r1", str(CHART), *extra)
        [workers] = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "StatefulSet"]
        return str(workers["spec"]["template"]["metadata"]["annotations"]["checksum/config"])

    plain = checksum()
    assert checksum("--set", "rules=# one") != plain
    assert checksum("--set", "rules=# two") != checksum("--set", "rules=# one")
    assert checksum() == plain


def test_rules_file_is_mounted_from_a_configmap() -> None:
    scenario = "three-workers-values.yaml"
    [config] = [
        c for c in by_kind(scenario, "ConfigMap") if c["metadata"]["name"].endswith("-rules")
    ]
    assert "[[rule]]" in config["data"]["rules.toml"]
    env = env_of(scenario, "StatefulSet")
    assert env["NEXTBEST_RULES"]["value"] == "/etc/nextbest/rules/rules.toml"


def test_network_policies_allow_only_what_is_needed() -> None:
    scenario = "three-workers-values.yaml"
    policies = {p["metadata"]["name"]: p["spec"] for p in by_kind(scenario, "NetworkPolicy")}
    worker, api = policies["r1-nextbest-worker"], policies["r1-nextbest-api"]

    def egress_ports(policy: dict[str, Any]) -> set[int]:
        return {port["port"] for rule in policy["egress"] for port in rule["ports"]}

    assert egress_ports(worker) == {53, 9093, 6380}
    assert egress_ports(api) == {53, 6380}  # the API never talks to Kafka
    assert [p["port"] for p in worker["ingress"][0]["ports"]] == [6066]
    assert [p["port"] for p in api["ingress"][0]["ports"]] == [8080]
    assert worker["policyTypes"] == ["Ingress", "Egress"]


def test_monitoring_resources_carry_the_tested_alerts_and_dashboard() -> None:
    scenario = "three-workers-values.yaml"
    [rule] = by_kind(scenario, "PrometheusRule")
    alerts = yaml.safe_load((REPO / "deploy/prometheus/alerts.yml").read_text())
    assert rule["spec"] == alerts
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    [monitor] = by_kind(scenario, "ServiceMonitor")
    assert {e["port"] for e in monitor["spec"]["endpoints"]} == {"metrics", "http"}
    [dashboard] = [
        c for c in by_kind(scenario, "ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    ]
    shipped = json.loads((REPO / "deploy/grafana/dashboards/nextbest.json").read_text())
    assert json.loads(dashboard["data"]["nextbest.json"]) == shipped


def test_minimal_install_has_no_api_and_no_volume() -> None:
    kinds = [d["kind"] for d in documents("minimal-values.yaml")]
    assert sorted(kinds) == ["NetworkPolicy", "Service", "StatefulSet"]
    [workers] = by_kind("minimal-values.yaml", "StatefulSet")
    assert "volumeClaimTemplates" not in workers["spec"]


@pytest.mark.parametrize(
    "bad",
    [
        "kafka.securityProtocol=CARRIER_PIGEON",
        "worker.replicas=0",
        "redis.url=http://redis:6379",
        "settings.journey_window=30m",
        "image.digest=latest",
    ],
)
def test_the_values_schema_refuses_mistakes(bad: str) -> None:
    with pytest.raises(AssertionError, match=r"values don.t meet the specifications|schema"):
        helm("template", "r1", str(CHART), "--set", bad)


def test_sasl_without_a_secret_is_refused() -> None:
    with pytest.raises(AssertionError, match=r"kafka\.sasl\.existingSecret is required"):
        helm("template", "r1", str(CHART), "--set", "kafka.securityProtocol=SASL_SSL")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (["kafka.tls.existingSecret=ca"], "kafka.tls.existingSecret needs kafka.securityProtocol"),
        (["redis.tls.existingSecret=ca"], "redis.tls.existingSecret needs a rediss:// redis.url"),
        (
            ["kafka.securityProtocol=SSL", "kafka.tls.existingSecret=c", "kafka.tls.certKey=t"],
            "kafka.tls.keyKey is required",
        ),
    ],
)
def test_tls_settings_that_would_be_ignored_are_refused(values: list[str], message: str) -> None:
    arguments = [argument for value in values for argument in ("--set", value)]
    with pytest.raises(AssertionError, match=re.escape(message)):
        helm("template", "r1", str(CHART), *arguments)


def test_a_private_key_is_refused_as_a_widget_public_key() -> None:
    key = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEI\n-----END PRIVATE KEY-----\n"
    with pytest.raises(AssertionError, match=r"values don.t meet the specifications|schema"):
        helm("template", "r1", str(CHART), "--set-string", f"api.widgetTokens.publicKeys={key}")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_security_scan_finds_nothing_unaccepted(scenario: str, tmp_path: Path) -> None:
    (tmp_path / "chart.yaml").write_text(rendered(scenario))
    done = subprocess.run(
        [tool("venv/bin/checkov"), "-d", str(tmp_path), "--framework", "kubernetes",
         "--skip-download", "--compact", "-o", "json"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "BC_SKIP_MAPPING": "TRUE"},
    )  # fmt: skip
    report = json.loads(done.stdout)
    assert report["summary"]["resource_count"] >= len(documents(scenario))  # it all was read
    accepted = ACCEPTED | (ACCEPTED_BY_TAG if scenario != "three-workers-values.yaml" else set())
    failed = {
        (check["check_id"], check["resource"])
        for check in report["results"]["failed_checks"]
        if check["check_id"] not in accepted
    }
    assert failed == set()
    assert report["summary"]["passed"] > 50  # the scan really ran its checks
