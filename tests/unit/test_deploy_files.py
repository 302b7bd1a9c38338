"""The deployment examples in deploy/ are valid and agree with the gateway they deploy.

Each gateway.yaml in deploy/ is loaded through the gateway's own settings validation (secret files
written to a temporary directory), so a renamed or removed setting breaks this test, not a
deployment. The compose file goes through docker-compose's own validation, the Kubernetes manifests
through the Kubernetes JSON schemas (kubernetes-validate, strict: unknown fields are errors), the
systemd unit through ``systemd-analyze verify``, nginx.conf through ``nginx -t``. On top, what no
schema knows: ports, probe paths, addresses, users and secret mounts are the same on both sides.

Also here: ``GATEWAY_CONFIG`` as the default of every ``--config`` (gateway/cli/harness.py).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from gateway.settings.listen import parse_listen
from gateway.settings.loader import parse_settings
from gateway.settings.schema import Settings
from gateway.store.fast.url import RedisMode, parse_redis_url
from gateway.web.app import health, ready
from tests.support.certs import self_signed

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
COMPOSE_DIR = DEPLOY / "compose"
KUBE = DEPLOY / "kubernetes"
UNIT = DEPLOY / "systemd" / "gateway.service"
# The oldest Kubernetes minor the manifests must be valid for.
KUBE_VERSION = "1.33"

_SECRET_REF = re.compile(r"\$\{file:([^}]+)\}")


# -- helpers -----------------------------------------------------------------------------------------------


def _load_with_secrets(
    text: str, secrets_dir: str, tmp_path: Path, *, replace: dict[str, str] | None = None
) -> Settings:
    """Validate a deploy/ gateway.yaml as the gateway would, its secret files faked under tmp_path.

    Every ``${file:<secrets_dir>/NAME}`` gets a file tmp_path/NAME, so the references themselves are
    checked (a missing mount is a missing file in the container); other absolute paths the file names
    (a policy file) are mapped by ``replace``.
    """
    fake = tmp_path / "secrets"
    fake.mkdir(exist_ok=True)
    for ref in _SECRET_REF.findall(text):
        assert ref.startswith(secrets_dir + "/"), f"secret {ref} is not under {secrets_dir}"
        # Hex, like init-secrets.sh makes: safe inside a URL.
        (fake / ref.removeprefix(secrets_dir + "/")).write_text("0123456789abcdef\n")
    text = text.replace(secrets_dir + "/", f"{fake}/")
    for old, new in (replace or {}).items():
        text = text.replace(old, new)
    return parse_settings(text, source="deploy", base_dir=tmp_path)


def _port(address: str) -> int:
    return parse_listen(address)[1]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


def _kube_documents(directory: Path) -> list[tuple[Path, dict[str, Any]]]:
    """Every resource a kustomization lists, following its directories."""
    kustomization = yaml.safe_load((directory / "kustomization.yaml").read_text())
    docs: list[tuple[Path, dict[str, Any]]] = []
    for entry in kustomization["resources"]:
        path = (directory / entry).resolve()
        assert path.exists(), f"{directory}/kustomization.yaml lists {entry}, which does not exist"
        if path.is_dir():
            docs.extend(_kube_documents(path))
        else:
            docs.extend((path, doc) for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


def _kube(kind: str, name: str) -> dict[str, Any]:
    for _path, doc in _kube_documents(KUBE) + _kube_documents(KUBE / "migrate"):
        if doc["kind"] == kind and doc["metadata"]["name"] == name:
            return doc
    raise AssertionError(f"no {kind} {name} in deploy/kubernetes")


def _dockerfile_uid() -> int:
    match = re.search(r"useradd [^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text())
    assert match, "the Dockerfile no longer creates its user with --uid"
    return int(match[1])


# -- docker compose ----------------------------------------------------------------------------------------


def _compose_settings(tmp_path: Path) -> Settings:
    return _load_with_secrets(
        (COMPOSE_DIR / "gateway.yaml").read_text(),
        "/run/secrets",
        tmp_path,
        replace={"/etc/gateway/policy.csv": str(COMPOSE_DIR / "policy.csv")},
    )


@pytest.mark.peer  # a skip for a missing tool fails CI (scripts/ensure-test-deps installs it)
@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian) not installed")
def test_compose_file_passes_docker_compose_validation() -> None:
    result = subprocess.run(
        ["docker-compose", "-f", str(COMPOSE), "-p", "gateway", "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Ignored keys (configs: outside a swarm) would be a warning, and a silently missing file.
    assert "ignored" not in result.stderr, result.stderr


@pytest.mark.peer  # a skip for a missing tool fails CI (scripts/ensure-test-deps installs it)
@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian) not installed")
def test_docker_compose_validation_catches_a_broken_file(tmp_path: Path) -> None:
    broken = COMPOSE.read_text().replace(
        "condition: service_completed_successfully", "condition: finished", 1
    )
    (tmp_path / "compose.yaml").write_text(broken)
    result = subprocess.run(
        ["docker-compose", "-f", str(tmp_path / "compose.yaml"), "config", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode != 0


def test_every_long_running_compose_service_has_memory_and_process_limits() -> None:
    """An attack run on the deployment files: no service had a memory or process limit, so a runaway
    or a fork storm in one container was limited only by the host."""
    services = _compose()["services"]
    running = {name: svc for name, svc in services.items() if svc.get("restart") == "unless-stopped"}
    assert {"gateway-1", "gateway-2", "postgres", "redis-primary", "nginx", "echo"} <= set(running)
    for name, svc in running.items():
        assert svc.get("mem_limit"), name
        assert svc.get("pids_limit"), name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name


def test_compose_gateway_config_is_valid_for_the_gateway(tmp_path: Path) -> None:
    settings = _compose_settings(tmp_path)
    assert settings.storage.url is not None
    assert settings.storage.url.startswith("postgresql+asyncpg://")
    assert settings.state.redis_url is not None
    assert parse_redis_url(settings.state.redis_url).mode is RedisMode.SENTINEL
    assert settings.admin.listen is not None
    assert _port(settings.admin.listen) != _port(settings.listen)


def test_compose_replicas_migrations_and_healthchecks() -> None:
    services = _compose()["services"]
    replicas = [name for name, svc in services.items() if svc.get("command") == ["serve"]]
    assert replicas == ["gateway-1", "gateway-2"]
    for name in ["migrate", "keys-init", *replicas]:
        svc = services[name]
        assert svc["build"] == {"context": "..", "dockerfile": "Dockerfile"}, name
        assert (DEPLOY / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file()
        assert svc["environment"]["GATEWAY_CONFIG"] == "/etc/gateway/gateway.yaml", name
        assert "./compose/gateway.yaml:/etc/gateway/gateway.yaml:ro" in svc["volumes"], name
        assert svc["read_only"] is True, name
        assert svc["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in svc["security_opt"], name
    assert services["migrate"]["command"] == ["migrate"]
    for name in replicas:
        svc = services[name]
        assert svc["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
        assert svc["depends_on"]["keys-init"] == {"condition": "service_completed_successfully"}
        assert svc["healthcheck"]["test"] == ["CMD", "gateway", "healthcheck"]
        # One keyring for all: the same volume at the path gateway.yaml names.
        assert "keys:/var/lib/gateway/keys" in svc["volumes"]
    assert services["nginx"]["depends_on"] == {r: {"condition": "service_healthy"} for r in replicas}


def test_compose_publishes_only_nginx_and_the_admin_port_on_loopback(tmp_path: Path) -> None:
    settings = _compose_settings(tmp_path)
    assert settings.admin.listen is not None
    services = _compose()["services"]
    published = {name: svc["ports"] for name, svc in services.items() if "ports" in svc}
    assert list(published) == ["nginx"]
    admin_port = _port(settings.admin.listen)
    public_port = 8443
    assert f"{public_port}:{public_port}" in published["nginx"]
    assert f"127.0.0.1:{admin_port}:{admin_port}" in published["nginx"]
    # The console checks Origin against public_url's host on admin.listen's port: the published port
    # must be that port, and the public port public_url's.
    assert settings.public_url.endswith(f":{public_port}")
    for mapping in published["nginx"]:
        assert mapping.rpartition(":")[2] != str(_port(settings.listen))


def test_compose_trusts_exactly_nginx(tmp_path: Path) -> None:
    settings = _compose_settings(tmp_path)
    compose = _compose()
    nginx_ip = compose["services"]["nginx"]["networks"]["front"]["ipv4_address"]
    assert settings.trusted_proxies == (nginx_ip,)
    subnet = compose["networks"]["front"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(nginx_ip) in ipaddress.ip_network(subnet)


def test_compose_secrets_are_files_mounted_where_gateway_yaml_reads_them() -> None:
    compose = _compose()
    text = (COMPOSE_DIR / "gateway.yaml").read_text()
    referenced = {ref.removeprefix("/run/secrets/") for ref in _SECRET_REF.findall(text)}
    assert referenced == {"db_password", "redis_password"}
    for name in ["gateway-1", "gateway-2", "migrate", "keys-init"]:
        assert referenced <= set(compose["services"][name]["secrets"]), name
    for secret, spec in compose["secrets"].items():
        assert spec["file"] == f"./compose/secrets/{secret}"
    # No secret value anywhere in the compose file or the config: only references.
    assert "PASSWORD:" not in COMPOSE.read_text().replace("POSTGRES_PASSWORD_FILE:", "")
    # init-secrets.sh makes every one of them.
    script = (COMPOSE_DIR / "init-secrets.sh").read_text()
    for secret in compose["secrets"]:
        assert secret in script, secret


def test_compose_sentinel_setup_matches_the_redis_url(tmp_path: Path) -> None:
    settings = _compose_settings(tmp_path)
    assert settings.state.redis_url is not None
    target = parse_redis_url(settings.state.redis_url)
    services = _compose()["services"]
    sentinels = [name for name, svc in services.items() if svc.get("command", [None])[0] == "sentinel"]
    assert len(sentinels) >= 3
    assert sorted(host for host, _ in target.hosts) == sorted(sentinels)
    assert {port for _, port in target.hosts} == {26379}
    assert target.password
    assert target.sentinel_password
    conf = (COMPOSE_DIR / "sentinel.conf").read_text()
    monitor = re.search(r"^sentinel monitor (\S+) (\S+) (\d+) (\d+)$", conf, re.M)
    assert monitor, "sentinel.conf has no `sentinel monitor` line"
    service, host, port, quorum = monitor[1], monitor[2], int(monitor[3]), int(monitor[4])
    assert service == target.service_name
    assert services[host]["command"] == ["primary", host]
    assert port == 6379
    assert len(sentinels) // 2 < quorum <= len(sentinels)
    replicas = [name for name, svc in services.items() if svc.get("command", [None])[0] == "replica"]
    assert replicas == ["redis-replica"]
    # The start script gives every node and Sentinel the password, and the replica its primary.
    script = (COMPOSE_DIR / "redis-start.sh").read_text()
    assert f"sentinel auth-pass {service} " in script
    assert f"replicaof {host} {port}" in script
    for keyword in ("requirepass", "masterauth", "sentinel-pass"):
        assert keyword in script


def test_compose_nginx_forwards_to_the_gateways_listen_and_admin_ports(tmp_path: Path) -> None:
    settings = _compose_settings(tmp_path)
    assert settings.admin.listen is not None
    conf = (COMPOSE_DIR / "nginx.conf").read_text()
    upstreams = dict(re.findall(r"upstream (\w+) \{(.*?)\}", conf, re.S))
    servers = {name: re.findall(r"server (\S+):(\d+)", body) for name, body in upstreams.items()}
    assert servers["gateway_public"] == [
        ("gateway-1", str(_port(settings.listen))),
        ("gateway-2", str(_port(settings.listen))),
    ]
    admin = str(_port(settings.admin.listen))
    assert servers["gateway_admin"] == [("gateway-1", admin), ("gateway-2", admin)]
    assert f"listen {admin} ssl" in conf
    # The client address nginx reports is its peer's, never one the client chose.
    assert "$proxy_add_x_forwarded_for" not in conf
    assert conf.count("proxy_set_header X-Forwarded-For $remote_addr;") == 2


def test_compose_nginx_limits_each_client_and_waits_no_longer_than_the_gateways(tmp_path: Path) -> None:
    """Connection floods: one address's stalled requests cannot take every gateway connection slot."""
    settings = _compose_settings(tmp_path)
    conf = (COMPOSE_DIR / "nginx.conf").read_text()
    assert "limit_conn_zone $binary_remote_addr zone=per_client:" in conf
    [per_client] = re.findall(r"limit_conn per_client (\d+);", conf)
    assert 0 < int(per_client) < settings.server.max_connections * 2  # the two replicas' slots
    [header] = re.findall(r"client_header_timeout (\d+)s;", conf)
    [body] = re.findall(r"client_body_timeout (\d+)s;", conf)
    assert int(header) <= settings.server.header_timeout
    assert int(body) <= settings.limits.body_timeout


@pytest.mark.peer  # a skip for a missing tool fails CI (scripts/ensure-test-deps installs it)
@pytest.mark.skipif(not Path("/usr/sbin/nginx").exists(), reason="nginx not installed")
def test_compose_nginx_conf_passes_nginx_t(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    conf = (COMPOSE_DIR / "nginx.conf").read_text()
    # nginx resolves upstream names at load time: the compose names are not resolvable here.
    conf = re.sub(r"server gateway-\d:", "server 127.0.0.1:", conf)
    conf = conf.replace("/tmp/", f"{tmp_path}/")
    conf = conf.replace("/run/secrets/tls_certificate", str(cert)).replace("/run/secrets/tls_key", str(key))
    (tmp_path / "nginx.conf").write_text(conf)
    result = subprocess.run(
        ["/usr/sbin/nginx", "-t", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"), "-e", "stderr"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# -- Kubernetes --------------------------------------------------------------------------------------------


def _kube_settings(tmp_path: Path) -> Settings:
    configmap = _kube("ConfigMap", "gateway-config")
    return _load_with_secrets(configmap["data"]["gateway.yaml"], "/run/secrets/gateway", tmp_path)


def test_kubernetes_manifests_pass_the_kubernetes_schemas() -> None:
    docs = _kube_documents(KUBE) + _kube_documents(KUBE / "migrate")
    kinds = {doc["kind"] for _path, doc in docs}
    assert {
        "Namespace",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "Job",
    } <= kinds
    # Secrets are referenced, never shipped with values.
    assert "Secret" not in kinds
    for path, doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:  # pragma: no cover - the failure message
            pytest.fail(f"{path.relative_to(ROOT)}: {doc['kind']} {doc['metadata']['name']}: {exc.message}")


def test_kubernetes_schema_check_refuses_an_unknown_field() -> None:
    deployment = _kube("Deployment", "gateway")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBE_VERSION, strict=True)


def test_kubernetes_configmap_is_valid_for_the_gateway(tmp_path: Path) -> None:
    settings = _kube_settings(tmp_path)
    assert settings.storage.url is not None
    assert settings.storage.url.startswith("postgresql+asyncpg://")
    assert settings.state.redis_url is not None


def test_kubernetes_deployment_probes_ports_and_volumes(tmp_path: Path) -> None:
    settings = _kube_settings(tmp_path)
    assert settings.admin.listen is not None
    deployment = _kube("Deployment", "gateway")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": _port(settings.listen), "admin": _port(settings.admin.listen)}
    # The probes ask the gateway's real endpoints (the handlers' own paths), on the data plane.
    assert container["readinessProbe"]["httpGet"] == {"path": next(iter(ready.paths)), "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": next(iter(health.paths)), "port": "http"}
    assert container["readinessProbe"]["httpGet"]["path"] == "/.gateway/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/.gateway/health"
    assert container["args"] == ["serve"]
    env = {e["name"]: e["value"] for e in container["env"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    config_path = Path(env["GATEWAY_CONFIG"])
    assert mounts[str(config_path.parent)]["name"] == "config"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == "gateway-config"
    # data_dir and /tmp are writable volumes (the root file system is read-only).
    assert mounts[settings.data_dir].get("readOnly") is not True
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]
    # Every secret file gateway.yaml reads is in the mounted Secret.
    assert volumes[mounts["/run/secrets/gateway"]["name"]]["secret"]["secretName"] == "gateway-secrets"
    # The keyring: copied into a memory volume with mode 0600 by the init container.
    keyring = Path(str(settings.keyring))
    keys_mount = mounts[str(keyring.parent)]
    assert volumes[keys_mount["name"]]["emptyDir"]["medium"] == "Memory"
    (init,) = pod["initContainers"]
    assert init["command"][:3] == ["install", "-m", "0600"]
    assert init["command"][-1] == str(keyring)


def test_kubernetes_every_pod_runs_as_the_dockerfile_user_locked_down() -> None:
    uid = _dockerfile_uid()
    pods = [
        _kube("Deployment", "gateway")["spec"]["template"]["spec"],
        _kube("Job", "gateway-migrate")["spec"]["template"]["spec"],
    ]
    for pod in pods:
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == uid
        assert context["runAsGroup"] == uid
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod.get("initContainers", []) + pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, container["name"]
            assert sc["readOnlyRootFilesystem"] is True, container["name"]
            assert sc["capabilities"] == {"drop": ["ALL"]}, container["name"]
            assert container["image"] == "gateway", container["name"]


def test_kubernetes_services_and_network_policy_agree_with_the_ports(tmp_path: Path) -> None:
    settings = _kube_settings(tmp_path)
    assert settings.admin.listen is not None
    public, admin = _port(settings.listen), _port(settings.admin.listen)
    labels = _kube("Deployment", "gateway")["spec"]["template"]["metadata"]["labels"]
    for name, port_name in (("gateway", "http"), ("gateway-admin", "admin")):
        service = _kube("Service", name)
        assert service["spec"]["selector"] == labels
        # One port each: exposing the public Service never exposes the admin listener.
        assert [p["targetPort"] for p in service["spec"]["ports"]] == [port_name]
    policy = _kube("NetworkPolicy", "gateway")["spec"]
    assert policy["podSelector"]["matchLabels"] == labels
    assert policy["policyTypes"] == ["Ingress"]
    rules = {rule["ports"][0]["port"]: rule["from"] for rule in policy["ingress"]}
    assert set(rules) == {public, admin}
    for rule in policy["ingress"]:
        assert len(rule["ports"]) == 1
    assert rules[public] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}}}
    ]
    assert rules[admin] == [
        {"namespaceSelector": {"matchLabels": {"gateway.example.com/admin-access": "true"}}}
    ]
    pdb = _kube("PodDisruptionBudget", "gateway")["spec"]
    assert pdb["selector"]["matchLabels"] == labels
    assert pdb["maxUnavailable"] == 1


def test_kubernetes_migration_job_uses_the_same_config_and_secrets() -> None:
    job = _kube("Job", "gateway-migrate")
    deployment = _kube("Deployment", "gateway")
    (migrate,) = job["spec"]["template"]["spec"]["containers"]
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    assert migrate["args"] == ["migrate"]
    assert migrate["env"] == server["env"]
    job_volumes = {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}
    server_volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    for name in ("config", "secrets"):
        assert job_volumes[name] == server_volumes[name]
    # The Job's labels do not make it a target of the server's Services or budget.
    assert job["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] == "migrate"
    main = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    migrate_k = yaml.safe_load((KUBE / "migrate" / "kustomization.yaml").read_text())
    assert main["images"] == migrate_k["images"]


# -- systemd ------------------------------------------------------------------------------------------------


def _unit_for_verify(tmp_path: Path, unit: str) -> Path:
    # verify checks that ExecStart's program and the EnvironmentFile exist: point them at this checkout.
    gateway = Path(sys.executable).with_name("gateway")
    unit = unit.replace("/opt/gateway/bin/gateway", str(gateway))
    unit = unit.replace("/etc/gateway/gateway.env", str(DEPLOY / "systemd" / "gateway.env"))
    path = tmp_path / "gateway.service"
    path.write_text(unit)
    return path


def _verify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.peer  # a skip for a missing tool fails CI (scripts/ensure-test-deps installs it)
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    result = _verify(_unit_for_verify(tmp_path, UNIT.read_text()))
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr


@pytest.mark.peer  # a skip for a missing tool fails CI (scripts/ensure-test-deps installs it)
@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_reports_a_bad_directive(tmp_path: Path) -> None:
    broken = UNIT.read_text().replace("KillMode=mixed", "KillMode=sometimes")
    result = _verify(_unit_for_verify(tmp_path, broken))
    # Warnings count: the good unit must verify without any output.
    assert "kill mode" in result.stderr
    assert "sometimes" in result.stderr


def test_systemd_unit_hardening_and_lifecycle() -> None:
    lines = [line.strip() for line in UNIT.read_text().splitlines()]
    directives: dict[str, list[str]] = {}
    for line in lines:
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            directives.setdefault(key, []).append(value)
    one = {key: values[-1] for key, values in directives.items()}
    assert one["MemoryMax"]
    assert one["TasksMax"]
    assert one["ExecStart"] == "/opt/gateway/bin/gateway serve"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    # SIGTERM to the master alone (it stops its workers), SIGKILL to whatever is left at the timeout.
    assert one["KillMode"] == "mixed"
    assert one["NoNewPrivileges"] == "yes"
    assert one["ProtectSystem"] == "strict"
    assert one["PrivateTmp"] == "yes"
    assert one["CapabilityBoundingSet"] == ""
    assert one["AmbientCapabilities"] == ""
    assert one["User"] == "gateway"
    assert one["UMask"] == "0077"
    # data_dir is the one writable place.
    assert one["ReadWritePaths"] == f"/var/lib/{one['StateDirectory']}" == one["WorkingDirectory"]
    # TimeoutStopSec beyond the default server.graceful_timeout, so a graceful stop is not cut short.
    assert int(one["TimeoutStopSec"]) > Settings(public_url="https://x.example").server.graceful_timeout
    env = (DEPLOY / "systemd" / "gateway.env").read_text()
    assert re.search(r"^GATEWAY_CONFIG=/etc/gateway/gateway.yaml$", env, re.M)
    assert one["EnvironmentFile"] == "/etc/gateway/gateway.env"


# -- GATEWAY_CONFIG ----------------------------------------------------------------------------------------


def _gateway(args: list[str], cwd: Path, config: Path | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_CONFIG"}
    if config is not None:
        env["GATEWAY_CONFIG"] = str(config)
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )


def _node_config(directory: Path) -> Path:
    directory.mkdir()
    config = directory / "gateway.yaml"
    config.write_text("public_url: https://gw.example.com\ndata_dir: ./data\n")
    return config


def test_gateway_config_is_the_default_of_every_config_option(tmp_path: Path) -> None:
    config = _node_config(tmp_path / "node")
    work = tmp_path / "elsewhere"  # no ./gateway.yaml here
    work.mkdir()
    result = _gateway(["keys", "init"], work, config)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "node" / "data" / "keys" / "keyring.json").is_file()
    result = _gateway(["check-config"], work, config)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_an_explicit_config_wins_over_gateway_config(tmp_path: Path) -> None:
    from_env = _node_config(tmp_path / "env")
    given = _node_config(tmp_path / "given")
    result = _gateway(["keys", "init", "--config", str(given)], tmp_path, from_env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "given" / "data" / "keys" / "keyring.json").is_file()
    assert not (tmp_path / "env" / "data").exists()


def test_without_gateway_config_nothing_changes(tmp_path: Path) -> None:
    # --config still defaults to ./gateway.yaml, and so does check-config's FILE (as every command's).
    result = _gateway(["keys", "init"], tmp_path, None)
    assert result.returncode == 2
    assert "gateway.yaml: no such file" in result.stderr
    result = _gateway(["check-config"], tmp_path, None)
    assert result.returncode == 2
    assert "gateway.yaml: no such file" in result.stderr


def test_help_names_gateway_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from gateway.cli.app import build_parser

    monkeypatch.delenv("GATEWAY_CONFIG", raising=False)
    parser = build_parser()
    for command in (["serve"], ["migrate"], ["keys", "init"], ["check-config"], ["audit", "verify-bundle"]):
        with pytest.raises(SystemExit) as exit_:
            parser.parse_args([*command, "--help"])
        assert exit_.value.code == 0
        assert "$GATEWAY_CONFIG" in capsys.readouterr().out, command


def test_gateway_config_is_read_when_the_parser_is_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from gateway.cli.app import build_parser

    monkeypatch.setenv("GATEWAY_CONFIG", str(tmp_path / "gw.yaml"))
    parser = build_parser()
    assert parser.parse_args(["migrate"]).config == tmp_path / "gw.yaml"
    # Optional for verify-bundle (an auditor's offline check): set only by the variable.
    assert parser.parse_args(["audit", "verify-bundle", "b.zip"]).config == tmp_path / "gw.yaml"
    assert parser.parse_args(["check-config"]).config == tmp_path / "gw.yaml"
    assert parser.parse_args(["migrate", "-c", "other.yaml"]).config == Path("other.yaml")
    # An empty variable is no variable.
    monkeypatch.setenv("GATEWAY_CONFIG", "")
    parser = build_parser()
    assert parser.parse_args(["migrate"]).config == Path("gateway.yaml")
    assert parser.parse_args(["audit", "verify-bundle", "b.zip"]).config is None
