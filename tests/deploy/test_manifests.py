"""The deployment files, checked as far as this machine can (no container engine, no cluster): who
may reach what. Kubernetes: every manifest is applied by the kustomization, and each NetworkPolicy
opens only ports that the pods it selects name. Compose: published ports are bound to 127.0.0.1 and
Grafana has neither anonymous access nor a default password."""
from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"


def k8s_objects() -> list[dict]:
    return [one for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for one in yaml.safe_load_all(path.read_text()) if one]  # fmt: skip


def test_the_kustomization_applies_every_manifest_but_the_secret_example():
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret-example.yaml"}


def test_network_policies_open_only_the_ports_their_pods_name():
    objects = k8s_objects()
    pods = {one["metadata"]["name"]: one["spec"]["template"] for one in objects
            if one["kind"] in ("StatefulSet", "Deployment")}  # fmt: skip
    policies = {one["metadata"]["name"]: one["spec"] for one in objects if one["kind"] == "NetworkPolicy"}

    def opened(policy: dict) -> dict[str, list]:
        """port name -> who may connect to it."""
        return {port["port"]: rule["from"] for rule in policy["ingress"] for port in rule["ports"]}

    def ports_of(template: dict) -> dict[str, int]:
        return {port["name"]: port["containerPort"] for container in template["spec"]["containers"]
                for port in container["ports"]}  # fmt: skip

    scorer, lookup = policies["intentstream"], policies["intentstream-lookup"]
    for policy, workload in ((scorer, "intentstream"), (lookup, "intentstream-lookup")):
        assert policy["podSelector"]["matchLabels"] == pods[workload]["metadata"]["labels"]
        assert policy["policyTypes"] == ["Ingress"]
        assert set(opened(policy)) == set(ports_of(pods[workload]))  # every port covered, none invented
    assert ports_of(pods["intentstream"]) == {"cluster": 2101, "metrics": 9100}
    assert opened(scorer)["cluster"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "intentstream"}}}]
    prometheus = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
                  "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}  # fmt: skip
    assert opened(scorer)["metrics"] == [prometheus]
    assert opened(lookup)["http"] == [{"namespaceSelector": {"matchLabels": {"intentstream.io/reads-intents": "true"}}},
                                      prometheus]  # fmt: skip


def test_compose_publishes_to_this_machine_only_and_grafana_asks_for_a_password():
    services = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    published = {name: service["ports"] for name, service in services.items() if "ports" in service}
    assert set(published) == {"kafka", "scorer", "lookup", "prometheus", "grafana"}
    for name, ports in published.items():
        assert all(port.startswith("127.0.0.1:") for port in ports), (name, ports)
    grafana = services["grafana"]["environment"]
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")  # none unless .env sets it
