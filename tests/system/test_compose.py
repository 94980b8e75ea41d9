"""docker-compose.yml is complete and consistent (no Docker needed to check it).

The file is parsed and its references are resolved the way Compose does: every `depends_on`
names a service with a valid condition, every named volume is declared, images carry exact
tags, the Kafka image is the broker version the local stack runs, workers are health-checked
on /readyz with a command the image has, and the demo profile runs the demo against this stack.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

import yaml

from stream.cli import COMMANDS
from tests.harness import ROOT

COMPOSE = ROOT / "docker-compose.yml"
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}


def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def pom_kafka_version() -> str:
    tree = ET.parse(ROOT / "ops" / "kafka" / "pom.xml")
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    node = tree.find(".//m:properties/m:kafka.version", ns)
    if node is None:
        node = tree.find(".//properties/kafka.version")
    assert node is not None and node.text
    return node.text.strip()


def test_references_resolve() -> None:
    config = yaml.safe_load(COMPOSE.read_text())
    declared = set(config.get("volumes") or {})
    all_services = config["services"]
    for name, svc in all_services.items():
        assert "image" in svc or "build" in svc, name
        depends = svc.get("depends_on") or {}
        for other, spec in depends.items() if isinstance(depends, dict) else []:
            assert other in all_services, f"{name} depends on unknown {other}"
            assert spec["condition"] in CONDITIONS, name
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in all_services[other], f"{other} has no healthcheck"
        for volume in svc.get("volumes") or []:
            source = volume.split(":")[0]
            if not source.startswith((".", "/")):
                assert source in declared, f"{name}: volume {source} not declared"
            else:
                assert (ROOT / source).exists(), f"{name}: {source} missing"
        for port in svc.get("ports") or []:
            assert re.fullmatch(r"127\.0\.0\.1:\d+:\d+", port), f"{name}: publish on loopback"


def test_images_are_pinned_and_match_the_local_stack() -> None:
    for name, svc in services().items():
        image = svc.get("image", "")
        if svc.get("build"):
            continue
        tag = image.partition(":")[2]
        assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: exact tag, not {image!r}"
    assert services()["kafka"]["image"] == f"apache/kafka:{pom_kafka_version()}"


def test_workers_are_health_checked_on_readyz() -> None:
    all_services = services()
    workers = [n for n, s in all_services.items() if s.get("command") == ["engage", "worker"]]
    assert len(workers) >= 2
    for name in workers:
        check = all_services[name]["healthcheck"]
        assert check["test"] == ["CMD", "engage", "probe", "readyz"]
        assert "ENGAGE_WEB_PORT" in all_services[name]["environment"]  # what probe reads
        assert check["start_period"] and check["retries"] >= 3
    assert "probe" in COMMANDS
    prometheus = yaml.safe_load((ROOT / "ops" / "prometheus" / "prometheus.yml").read_text())
    targets = {
        t for job in prometheus["scrape_configs"] if job["job_name"] == "engage"
        for group in job["static_configs"] for t in group["targets"]
    }  # fmt: skip
    expected = {f"{n}:{all_services[n]['environment']['ENGAGE_WEB_PORT']}" for n in workers}
    assert targets == expected


def test_the_demo_profile_runs_the_demo_on_this_stack() -> None:
    demo = services()["demo"]
    assert demo["profiles"] == ["demo"]
    assert demo["command"][:3] == ["engage", "demo", "--external"]
    assert demo["environment"]["ENGAGE_BROKER"] == "kafka://kafka:9092"
    from stream.tools import demo as demo_module

    parsed = demo_module.build_parser().parse_args(demo["command"][2:])
    assert parsed.external and parsed.plain
    assert all("profiles" not in s for n, s in services().items() if n != "demo")
