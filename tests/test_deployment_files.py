"""Checks of the deployment files: systemd unit, container image, Kubernetes
manifests, Prometheus alerts and the Grafana dashboard.

External tools: `systemd-analyze` (tests needing it skip when it is absent) and
`promtool`, which `find_promtool()` takes from PATH or extracts from Debian's
`prometheus` package (see there).
"""

from __future__ import annotations

import http.server
import importlib
import ipaddress
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from daemon.metrics import Metrics
from daemon.settings import Settings, load_settings
from daemon.webhooks import WebhookMetrics
from tests.tools import find_promtool

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "lifecycled.service"
ENV_EXAMPLE = ROOT / "systemd" / "lifecycled.env.example"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
K8S_DIR = ROOT / "config" / "kubernetes"
PROM_DIR = ROOT / "config" / "prometheus"
DASHBOARD = ROOT / "config" / "grafana" / "lifecycled.json"

# Defaults from SPEC §5.
DEFAULT_SHUTDOWN_TIMEOUT_S = 10.0
HTTP_PORT = 8080
METRICS_PORT = 9464

# Settings named in the SPEC (environment variable LIFECYCLE_<NAME>).
SETTINGS = {
    "config_file",
    "redis_url",
    "redis_cluster",
    "data_dir",
    "key_prefix",
    "partitions",
    "http_host",
    "http_port",
    "api_keys",
    "api_keys_file",
    "metrics_host",
    "metrics_port",
    "plans_file",
    "default_plan",
    "billing_hold_terminates",
    "terminated_retention_seconds",
    "warn_before_seconds",
    "max_clock_skew_ms",
    "claim_idle_ms",
    "commands_maxlen",
    "shutdown_timeout_seconds",
    "log_level",
    "log_format",
}

# Metrics of SPEC §5, plus the readiness gauge.
HISTOGRAMS = {
    "lifecycle_expiry_lateness_seconds",
    "lifecycle_event_lag_seconds",
    "lifecycle_webhook_latency_seconds",
}
METRICS = {
    "lifecycle_events_total",
    "lifecycle_events_invalid_total",
    "lifecycle_events_ignored_total",
    "lifecycle_terminations_total",
    "lifecycle_admissions_total",
    "lifecycle_sessions_live",
    "lifecycle_redis_up",
    "lifecycle_build_info",
    "lifecycle_ready",
    "lifecycle_events_backlog",
    "lifecycle_partitions_consumed",
    "lifecycle_event_loop_lag_seconds",
    "lifecycle_webhook_deliveries_total",
    "lifecycle_webhook_backlog",
    "lifecycle_webhook_dead_deliveries",
} | {f"{h}{suffix}" for h in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}


def test_metrics_used_here_are_exported_by_the_daemon() -> None:
    registry = Metrics().registry
    WebhookMetrics(registry)  # registered on the same registry by the daemon
    exposition = generate_latest(registry).decode()
    families = list(text_string_to_metric_families(exposition))
    # A labelled gauge exports no sample until its first label value is set: its name counts.
    exported = {sample.name for family in families for sample in family.samples}
    exported |= {family.name for family in families if family.type == "gauge"}
    assert exported >= METRICS, f"not exported: {sorted(METRICS - exported)}"


# --------------------------------------------------------------------------- helpers


# Fetching promtool the first time may take minutes: longer than the suite's timeout.
PROMTOOL_TIMEOUT = pytest.mark.timeout(900)


@pytest.fixture(scope="session")
def promtool() -> str:
    path = find_promtool()
    if path is None:
        pytest.skip(
            "promtool unavailable: not on PATH, and Debian's `prometheus` package "
            "could not be downloaded or installed (needs apt-get and Debian's registry)"
        )
    return path


def run_promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """systemd unit file: section -> key -> every value in order."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        assert "=" in line, f"not a key=value line: {line!r}"
        key, value = line.split("=", 1)
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


_TIMESPAN_UNITS = {
    "us": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "sec": 1.0,
    "m": 60.0,
    "min": 60.0,
    "h": 3600.0,
    "hr": 3600.0,
}


def parse_timespan(value: str) -> float:
    """systemd time span in seconds ("30", "30s", "1min 30s")."""
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value)
    assert parts, f"not a time span: {value!r}"
    return sum(float(n) * _TIMESPAN_UNITS[u or "s"] for n, u in parts)


_PROMQL_NOT_METRICS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}


def metric_names(expr: str) -> set[str]:
    """Metric names that a PromQL expression (possibly with Grafana variables) reads."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() in _PROMQL_NOT_METRICS:
            continue
        names.add(match.group())
    return names


def test_metric_names_helper() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, job) (rate(lifecycle_event_lag_seconds_bucket"
        '{job=~"$job", le!="+Inf"}[$__rate_interval]))) > 1e3 and on (job) lifecycle_ready'
        " offset 5m"
    )
    assert metric_names(expr) == {"lifecycle_event_lag_seconds_bucket", "lifecycle_ready"}
    assert metric_names("sum(rate(up[5m])) by (instance)") == {"up"}
    assert metric_names("count by (version) (lifecycle_build_info)") == {"lifecycle_build_info"}


# --------------------------------------------------------------------------- systemd


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def last(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit.get(section, {}).get(key)
    assert values, f"[{section}] {key}= missing"
    return values[-1]


def test_unit_service_lifecycle(unit: dict[str, dict[str, list[str]]]) -> None:
    svc = "Service"
    assert last(unit, svc, "Type") == "notify"
    assert last(unit, svc, "NotifyAccess") == "main"
    assert parse_timespan(last(unit, svc, "WatchdogSec")) == 30
    assert last(unit, svc, "Restart") == "on-failure"
    # Invalid configuration exits 2; restarting in a loop cannot help.
    assert "2" in last(unit, svc, "RestartPreventExitStatus").split()

    exec_start = shlex.split(last(unit, svc, "ExecStart"))
    assert exec_start[:2] == ["/usr/local/bin/lifecycled", "run"]
    if "--config" in exec_start:
        assert exec_start[exec_start.index("--config") + 1] == "/etc/lifecycled/lifecycled.toml"
    reload = shlex.split(last(unit, svc, "ExecReload"))
    assert reload[0].endswith("/kill")
    assert "-HUP" in reload
    assert "$MAINPID" in reload

    # The daemon gets SIGTERM alone and must have time to drain before SIGKILL.
    assert last(unit, svc, "KillSignal") == "SIGTERM"
    assert last(unit, svc, "KillMode") == "mixed"
    assert parse_timespan(last(unit, svc, "TimeoutStopSec")) > DEFAULT_SHUTDOWN_TIMEOUT_S

    assert "multi-user.target" in last(unit, "Install", "WantedBy").split()


def test_unit_user_state_and_environment(unit: dict[str, dict[str, list[str]]]) -> None:
    svc = unit["Service"]
    dynamic = svc.get("DynamicUser", ["no"])[-1] in ("yes", "true", "1")
    user = svc.get("User", [""])[-1]
    assert dynamic or user == "lifecycled", "needs DynamicUser=yes or User=lifecycled"
    assert user not in ("root", "0")

    assert last(unit, "Service", "StateDirectory") == "lifecycled"
    env = dict(item.split("=", 1) for value in svc["Environment"] for item in shlex.split(value))
    # %S/lifecycled is exactly the StateDirectory, the one writable place.
    assert env["LIFECYCLE_DATA_DIR"] == "%S/lifecycled"
    assert "-/etc/lifecycled/lifecycled.env" in svc["EnvironmentFile"]


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictRealtime": "yes",
    "RestrictSUIDSGID": "yes",
    "LockPersonality": "yes",
    "MemoryDenyWriteExecute": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}


def test_unit_hardening(unit: dict[str, dict[str, list[str]]]) -> None:
    for key, expected in HARDENING.items():
        assert last(unit, "Service", key) == expected, key
    families = set(last(unit, "Service", "RestrictAddressFamilies").split())
    assert families == {"AF_UNIX", "AF_INET", "AF_INET6"}
    assert "@system-service" in unit["Service"].get("SystemCallFilter", [])


def test_unit_documentation_is_what_the_install_steps_install(
    unit: dict[str, dict[str, list[str]]], tmp_path: Path
) -> None:
    """Each ``Documentation=`` file exists once the README's systemd steps have run."""
    urls = [url for value in unit["Unit"]["Documentation"] for url in value.split()]
    assert urls and all(url.startswith("file:///usr/share/doc/lifecycled/") for url in urls)
    readme = (ROOT / "README.md").read_text().split("\n## Running under systemd\n", 1)[1]
    steps = "".join(re.findall(r"^```sh\n(.*?)^```$", readme.split("\n## ")[0], re.S | re.M))
    # The steps that install documentation, run as written into a scratch root.
    docs = [ln.split("  #")[0] for ln in steps.splitlines() if "/usr/share/doc/" in ln]
    assert docs, "the README's systemd steps install no documentation"
    script = "\n".join(docs).replace("/usr/share/doc/", f"{tmp_path}/usr/share/doc/")
    subprocess.run(["bash", "-e", "-c", script], cwd=ROOT, check=True, timeout=30)
    for url in urls:
        assert (tmp_path / url.removeprefix("file:///")).is_file(), url


def test_unit_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    copy = tmp_path / UNIT.name
    shutil.copy(UNIT, copy)
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    exe = shlex.split(last(parse_unit(UNIT.read_text()), "Service", "ExecStart"))[0]
    if not os.access(exe, os.X_OK):
        # The daemon is not installed on this machine: that is the one complaint allowed.
        lines = [ln for ln in lines if f"Command {exe} is not executable" not in ln]
    assert not lines, "\n".join(lines)
    if os.access(exe, os.X_OK):
        assert result.returncode == 0


def test_unit_security_exposure(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed")
    copy = tmp_path / UNIT.name
    shutil.copy(UNIT, copy)
    result = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    if match is None and "offline" in result.stderr:
        pytest.skip("systemd-analyze too old for `security --offline`")
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 2.0, result.stdout


def test_env_example_documents_known_settings() -> None:
    documented = set()
    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        stripped = line.strip()
        assert not stripped or stripped.startswith("#"), (
            f"line {number} sets a value; the example must only document: {line!r}"
        )
        match = re.match(r"#\s*LIFECYCLE_([A-Z0-9_]+)=", stripped)
        if match:
            documented.add(match.group(1).lower())
    # Every setting the SPEC names, and every one the daemon has, is documented.
    actual = set(Settings.model_fields) | {"config_file"}
    assert documented <= actual, f"unknown settings: {sorted(documented - actual)}"
    assert actual >= SETTINGS, f"SPEC settings missing: {sorted(SETTINGS - actual)}"
    assert documented == actual, f"undocumented settings: {sorted(actual - documented)}"


# --------------------------------------------------------------------------- Dockerfile


class Instruction:
    def __init__(self, keyword: str, args: str) -> None:
        self.keyword = keyword
        self.args = args

    def exec_form(self) -> list[str]:
        """Arguments in JSON (exec) form; fails for shell form."""
        value = json.loads(self.args)
        assert isinstance(value, list), self.args
        assert all(isinstance(v, str) for v in value), self.args
        return value


# Global ARG defaults, and the instructions of each stage (FROM first).
Docker = tuple[dict[str, str], list[list[Instruction]]]


def parse_dockerfile(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        line, pending = (pending + line).strip(), ""
        keyword, _, args = line.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends with a line continuation"
    return instructions


def split_stages(instructions: list[Instruction]) -> Docker:
    args: dict[str, str] = {}
    stages: list[list[Instruction]] = []
    for ins in instructions:
        if ins.keyword == "FROM":
            stages.append([ins])
        elif stages:
            stages[-1].append(ins)
        elif ins.keyword == "ARG":
            name, _, default = ins.args.partition("=")
            args[name] = default
        else:
            raise AssertionError(f"{ins.keyword} before the first FROM")
    return args, stages


def stage_image_and_name(stage: list[Instruction], args: dict[str, str]) -> tuple[str, str]:
    words = [w for w in stage[0].args.split() if not w.startswith("--")]
    image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], words[0])
    name = words[2] if len(words) == 3 and words[1].upper() == "AS" else ""
    return image, name


def env_of(stage: list[Instruction]) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage:
        if ins.keyword == "ENV":
            for item in shlex.split(ins.args):
                key, sep, value = item.partition("=")
                assert sep, f"ENV in the legacy `ENV key value` form: {ins.args!r}"
                env[key] = value
    return env


@pytest.fixture(scope="module")
def docker() -> Docker:
    return split_stages(parse_dockerfile(DOCKERFILE.read_text()))


def test_dockerfile_multi_stage_build(docker: Docker) -> None:
    args, stages = docker
    assert len(stages) >= 2
    named = {stage_image_and_name(s, args)[1]: s for s in stages}
    assert "builder" in named, "no stage named builder"
    builder, runtime = named["builder"], stages[-1]
    assert stage_image_and_name(builder, args)[0] == "python:3.11-slim"
    assert stage_image_and_name(runtime, args)[0] == "python:3.11-slim"
    assert any(
        i.keyword == "RUN" and re.search(r"\bpip wheel\b.*\s\.(\s|$)", i.args) for i in builder
    ), "builder does not run `pip wheel .`"
    # The runtime installs the builder's wheels and carries no source tree.
    installs = [i for i in runtime if i.keyword == "RUN" and "pip install" in i.args]
    assert installs, "runtime stage installs nothing"
    assert any("from=builder" in i.args for i in installs) or any(
        i.keyword == "COPY" and "--from=builder" in i.args for i in runtime
    )
    assert any(re.search(r"pip install .*\blifecycled\b", i.args) for i in installs)
    assert not any(i.keyword in ("COPY", "ADD") and "--from" not in i.args for i in runtime)


def test_dockerfile_runtime_settings(docker: Docker) -> None:
    runtime = docker[1][-1]
    users = [i.args for i in runtime if i.keyword == "USER"]
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")

    def only(keyword: str) -> Instruction:
        found = [i for i in runtime if i.keyword == keyword]
        assert found, f"no {keyword}"
        return found[-1]

    assert only("ENTRYPOINT").exec_form() == ["lifecycled"]
    assert only("CMD").exec_form() == ["run"]
    exposed = {p.split("/")[0] for i in runtime if i.keyword == "EXPOSE" for p in i.args.split()}
    assert exposed == {str(HTTP_PORT), str(METRICS_PORT)}

    env = env_of(runtime)
    assert env["LIFECYCLE_DATA_DIR"] == "/var/lib/lifecycled"
    volume = only("VOLUME").args
    volumes = json.loads(volume) if volume.startswith("[") else volume.split()
    assert env["LIFECYCLE_DATA_DIR"] in volumes
    # The daemon refuses a non-loopback API address without keys.
    host = env.get("LIFECYCLE_HTTP_HOST", "127.0.0.1")
    assert ipaddress.ip_address(host).is_loopback or "LIFECYCLE_API_KEYS" in env


def _healthcheck_argv(runtime: list[Instruction]) -> list[str]:
    checks = [i for i in runtime if i.keyword == "HEALTHCHECK"]
    assert checks, "no HEALTHCHECK"
    options, _, command = checks[-1].args.partition("CMD ")
    assert command, "HEALTHCHECK without CMD"
    assert "--interval" in options
    assert "--timeout" in options
    argv = Instruction("CMD", command.strip()).exec_form()
    assert argv[0] in ("python", "python3"), "slim images have no curl or wget"
    return argv


def test_dockerfile_healthcheck_probes_healthz(
    docker: Docker,
) -> None:
    argv = _healthcheck_argv(docker[1][-1])
    url = f"http://127.0.0.1:{METRICS_PORT}/healthz"
    code = argv[-1]
    assert argv[-2] == "-c"
    assert url in code

    status = {"value": 200}
    paths: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            paths.append(self.path)
            self.send_response(status["value"])
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        local = code.replace(f":{METRICS_PORT}/", f":{server.server_address[1]}/")

        def probe() -> int:
            cmd = [sys.executable, "-c", local]
            return subprocess.run(cmd, capture_output=True, timeout=30, check=False).returncode

        assert probe() == 0
        status["value"] = 503
        assert probe() != 0
    finally:
        server.shutdown()
        server.server_close()
    assert paths == ["/healthz", "/healthz"]


def _dockerignore_patterns() -> list[tuple[bool, re.Pattern[str]]]:
    patterns = []
    for raw in DOCKERIGNORE.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = os.path.normpath(line.lstrip("!").strip().strip("/"))
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                end = pattern.index("]", i)
                regex += pattern[i : end + 1]
                i = end + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        patterns.append((negate, re.compile(regex + r"\Z")))
    return patterns


def in_build_context(path: str, patterns: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents wins."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    included = True
    for negate, regex in patterns:
        if any(regex.match(p) for p in prefixes):
            included = negate
    return included


def test_dockerignore_context_has_what_pip_wheel_needs() -> None:
    patterns = _dockerignore_patterns()
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = ["pyproject.toml", "daemon/__init__.py", "daemon/py.typed", "daemon/plans.toml"]
    readme = pyproject["project"].get("readme")
    if isinstance(readme, str):
        needed.append(readme)
    for package in pyproject.get("tool", {}).get("setuptools", {}).get("packages", []):
        needed += [p.relative_to(ROOT).as_posix() for p in (ROOT / package).rglob("*.py")]
    for path in needed:
        assert in_build_context(path, patterns), f"{path} is excluded from the build context"
    for path in [".venv/bin/python", ".git/HEAD", "tests/test_deployment_files.py"]:
        assert not in_build_context(path, patterns), f"{path} is sent to the Docker daemon"
    assert not in_build_context("daemon/__pycache__/cli.cpython-311.pyc", patterns)


# --------------------------------------------------------------------------- Kubernetes

kubernetes_validate: Any = importlib.import_module("kubernetes_validate")

# Oldest release with native sidecars on by default, and the newest schema shipped.
K8S_VERSIONS = ["1.29.0", kubernetes_validate.latest_version()]
BUILTIN_GROUPS = {
    "",
    "apps",
    "batch",
    "policy",
    "autoscaling",
    "networking.k8s.io",
    "rbac.authorization.k8s.io",
}


def load_manifests(name: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all((K8S_DIR / name).read_text()) if d is not None]
    assert docs, f"{name} is empty"
    return docs


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def lifecycled_containers(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    containers = pod_spec.get("containers", []) + pod_spec.get("initContainers", [])
    return [c for c in containers if "lifecycled" in c["image"].rsplit("/", 1)[-1]]


def env_value(container: dict[str, Any], name: str) -> dict[str, Any] | None:
    for item in container.get("env", []):
        if item["name"] == name:
            return dict(item)
    return None


def port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    for p in container.get("ports", []):
        if p.get("name") == port:
            return int(p["containerPort"])
    raise AssertionError(f"container {container['name']} has no port named {port}")


_QUANTITY = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20}
_QUANTITY |= {"Gi": 2**30, "Ti": 2**40}


def quantity(value: str | int) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([A-Za-z]*)", str(value))
    assert match, f"bad quantity {value!r}"
    assert match.group(2) in _QUANTITY, f"bad unit in {value!r}"
    return float(match.group(1)) * _QUANTITY[match.group(2)]


@pytest.mark.parametrize("name", ["deployment.yaml", "sidecar.yaml", "servicemonitor.yaml"])
def test_manifests_match_kubernetes_schema(name: str) -> None:
    for doc in load_manifests(name):
        group = doc["apiVersion"].rpartition("/")[0]
        if group not in BUILTIN_GROUPS:
            # A custom resource: no schema shipped; its shape is tested below.
            assert doc["kind"] == "ServiceMonitor"
            assert doc["apiVersion"] == "monitoring.coreos.com/v1"
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                path = "/".join(str(p) for p in error.path)
                pytest.fail(f"{name}: {doc['kind']} invalid for {version} at {path}: {error}")


def check_lifecycled_container(container: dict[str, Any], pod_spec: dict[str, Any]) -> None:
    name = container["name"]
    probes = {"livenessProbe": "/healthz", "readinessProbe": "/readyz"}
    for probe, path in probes.items():
        get = container[probe]["httpGet"]
        assert get["path"] == path, f"{name} {probe}"
        assert port_number(container, get["port"]) == METRICS_PORT, f"{name} {probe} port"
    if "startupProbe" in container:
        get = container["startupProbe"]["httpGet"]
        assert get["path"] in probes.values(), f"{name} startupProbe"
        assert port_number(container, get["port"]) == METRICS_PORT, f"{name} startupProbe port"
    metrics_port = env_value(container, "LIFECYCLE_METRICS_PORT")
    assert metrics_port is None or int(metrics_port["value"]) == METRICS_PORT

    timeout = env_value(container, "LIFECYCLE_SHUTDOWN_TIMEOUT_SECONDS")
    shutdown = float(timeout["value"]) if timeout else DEFAULT_SHUTDOWN_TIMEOUT_S
    assert pod_spec["terminationGracePeriodSeconds"] > shutdown

    resources = container["resources"]
    for res in ("cpu", "memory"):
        request, limit = resources["requests"][res], resources["limits"][res]
        assert quantity(request) <= quantity(limit), f"{name}: {res} request above limit"

    pod_sc, sc = pod_spec.get("securityContext", {}), container["securityContext"]
    assert sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")) is True
    assert sc.get("runAsUser", pod_sc.get("runAsUser", 1)) != 0
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert "ALL" in sc["capabilities"]["drop"]

    # With a read-only root, the data directory must be a mounted volume.
    data_dir_env = env_value(container, "LIFECYCLE_DATA_DIR")
    assert data_dir_env, f"{name}: LIFECYCLE_DATA_DIR unset"
    mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
    assert data_dir_env["value"] in mounts, f"{name}: data dir not on a volume"
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    assert "emptyDir" in volumes[mounts[data_dir_env["value"]]]

    # The daemon refuses a non-loopback API address without keys.
    host = env_value(container, "LIFECYCLE_HTTP_HOST")
    if host and not ipaddress.ip_address(host["value"]).is_loopback:
        assert env_value(container, "LIFECYCLE_API_KEYS") or env_value(
            container, "LIFECYCLE_API_KEYS_FILE"
        ), f"{name}: API on {host['value']} without API keys"


def check_prometheus_annotations(template: dict[str, Any]) -> None:
    annotations = template["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == METRICS_PORT
    assert annotations.get("prometheus.io/path", "/metrics") == "/metrics"


def test_deployment_standalone() -> None:
    docs = load_manifests("deployment.yaml")
    deployment = one(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 3
    template = deployment["spec"]["template"]
    pod_labels = template["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    check_prometheus_annotations(template)

    pod_spec = template["spec"]
    (container,) = lifecycled_containers(pod_spec)
    assert container in pod_spec["containers"]
    check_lifecycled_container(container, pod_spec)
    for name in ("LIFECYCLE_REDIS_URL", "LIFECYCLE_API_KEYS"):
        item = env_value(container, name)
        assert item, f"{name} unset"
        assert "secretKeyRef" in item.get("valueFrom", {}), f"{name} not from a Secret"

    service = one(docs, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert set(ports) == {"http", "metrics"}
    assert ports["http"]["port"] == HTTP_PORT
    assert ports["metrics"]["port"] == METRICS_PORT
    assert port_number(container, ports["http"]["targetPort"]) == HTTP_PORT
    assert port_number(container, ports["metrics"]["targetPort"]) == METRICS_PORT

    pdb = one(docs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    replicas = deployment["spec"]["replicas"]
    if "maxUnavailable" in pdb["spec"]:
        allowed = int(pdb["spec"]["maxUnavailable"])
    else:
        allowed = replicas - int(pdb["spec"]["minAvailable"])
    assert 1 <= allowed < replicas, "the PDB must allow a drain and keep a replica"

    if "serviceAccountName" in pod_spec:
        account = one(docs, "ServiceAccount")
        assert account["metadata"]["name"] == pod_spec["serviceAccountName"]


def test_servicemonitor_targets_the_service() -> None:
    monitor = one(load_manifests("servicemonitor.yaml"), "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["name"]
    service = one(load_manifests("deployment.yaml"), "Service")
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    endpoints = monitor["spec"]["endpoints"]
    assert endpoints
    for endpoint in endpoints:
        assert endpoint["port"] in port_names
        assert endpoint.get("path", "/metrics") == "/metrics"
    assert any(
        p["name"] == endpoints[0]["port"] and p["port"] == METRICS_PORT
        for p in service["spec"]["ports"]
    )


def test_sidecar_is_native_sidecar() -> None:
    deployment = one(load_manifests("sidecar.yaml"), "Deployment")
    template = deployment["spec"]["template"]
    pod_spec = template["spec"]
    check_prometheus_annotations(template)
    (sidecar,) = lifecycled_containers(pod_spec)
    assert sidecar in pod_spec.get("initContainers", []), "sidecar must be an init container"
    assert sidecar["restartPolicy"] == "Always"
    check_lifecycled_container(sidecar, pod_spec)

    # The API stays on loopback: the platform reaches it in the pod's network.
    host = env_value(sidecar, "LIFECYCLE_HTTP_HOST")
    assert host is None or ipaddress.ip_address(host["value"]).is_loopback
    platform = [c for c in pod_spec["containers"] if c is not sidecar]
    assert platform, "no platform container next to the sidecar"
    urls = [env_value(c, "LIFECYCLE_API_URL") for c in platform]
    assert f"http://127.0.0.1:{HTTP_PORT}" in [u["value"] for u in urls if u]


def test_runtime_user_matches_pod_security_context(
    docker: Docker,
) -> None:
    users = [i.args for i in docker[1][-1] if i.keyword == "USER"]
    uid = users[-1].split(":")[0]
    assert uid.isdigit(), "a numeric USER lets Kubernetes verify runAsNonRoot"
    for name in ("deployment.yaml", "sidecar.yaml"):
        pod_spec = one(load_manifests(name), "Deployment")["spec"]["template"]["spec"]
        assert pod_spec["securityContext"]["runAsUser"] == int(uid), name


# --------------------------------------------------------------------------- Prometheus

REQUIRED_ALERTS = {
    "LifecycledRedisDown": "lifecycle_redis_up",
    "LifecycledNotReady": "lifecycle_ready",
    "LifecycledConsumerLagGrowing": "lifecycle_event_lag_seconds_bucket",
    "LifecycledExpiryLate": "lifecycle_expiry_lateness_seconds_bucket",
    "LifecycledEventsDeadLettered": "lifecycle_events_invalid_total",
    "LifecycledWebhookBacklogGrowing": "lifecycle_webhook_backlog",
    "LifecycledWebhookDeliveriesDead": "lifecycle_webhook_deliveries_total",
}


def alert_rules() -> dict[str, dict[str, Any]]:
    groups = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def test_alert_rules_content() -> None:
    rules = alert_rules()
    assert set(REQUIRED_ALERTS) <= set(rules)
    for name, rule in rules.items():
        names = metric_names(rule["expr"])
        assert names <= METRICS, f"{name} reads unknown metrics {sorted(names - METRICS)}"
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert rule["annotations"]["description"].strip(), name
    for name, metric in REQUIRED_ALERTS.items():
        assert metric in metric_names(rules[name]["expr"]), name


def test_alert_unit_tests_cover_every_alert() -> None:
    tests = yaml.safe_load((PROM_DIR / "alerts_test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    cases = [case for t in tests["tests"] for case in t.get("alert_rule_test", [])]
    firing = {c["alertname"] for c in cases if c.get("exp_alerts")}
    silent = {c["alertname"] for c in cases if not c.get("exp_alerts")}
    assert firing == set(alert_rules()), "every alert needs a firing case"
    assert silent, "no case where an alert stays silent"


@PROMTOOL_TIMEOUT
def test_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", "alerts.yml", cwd=PROM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


@PROMTOOL_TIMEOUT
def test_promtool_test_rules(promtool: str) -> None:
    result = run_promtool(promtool, "test", "rules", "alerts_test.yml", cwd=PROM_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


# --------------------------------------------------------------------------- Grafana


def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def all_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))


def dashboard_exprs() -> list[str]:
    return [
        target["expr"]
        for panel in all_panels(dashboard()["panels"])
        for target in panel.get("targets", [])
    ]


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["schemaVersion"] >= 36
    inputs = {i["name"]: i for i in dash["__inputs"]}
    assert inputs["DS_PROMETHEUS"]["type"] == "datasource"
    assert inputs["DS_PROMETHEUS"]["pluginId"] == "prometheus"

    panels = list(all_panels(dash["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    boxes = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        boxes.append((panel["title"], grid["x"], grid["y"], grid["w"], grid["h"]))
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], f"{panel['title']} has no query"
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
    for i, (t1, x1, y1, w1, h1) in enumerate(boxes):
        for t2, x2, y2, w2, h2 in boxes[i + 1 :]:
            overlap = x1 < x2 + w2 and x2 < x1 + w1 and y1 < y2 + h2 and y2 < y1 + h1
            assert not overlap, f"panels {t1!r} and {t2!r} overlap"


def _datasources(node: Any) -> Iterator[Any]:
    if isinstance(node, dict):
        if "datasource" in node:
            yield node["datasource"]
        for value in node.values():
            yield from _datasources(value)
    elif isinstance(node, list):
        for value in node:
            yield from _datasources(value)


def test_dashboard_uses_only_the_datasource_input() -> None:
    sources = list(_datasources(dashboard()))
    assert sources
    for source in sources:
        if isinstance(source, dict) and source.get("type") == "grafana":
            continue  # Grafana's built-in annotations
        uid = source.get("uid") if isinstance(source, dict) else source
        assert uid == "${DS_PROMETHEUS}", f"datasource {source!r} is not the DS_PROMETHEUS input"


def test_dashboard_metrics_are_exported_ones() -> None:
    exprs = dashboard_exprs()
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        query = query.get("query", "") if isinstance(query, dict) else query or ""
        match = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query.strip())
        exprs.append(match.group(1) if match else query)
    for expr in exprs:
        names = metric_names(expr)
        assert names, f"expression reads no metric: {expr}"
        assert names <= METRICS, f"unknown metrics {sorted(names - METRICS)} in {expr}"


@pytest.mark.parametrize(
    ("metric", "grouping"),
    [
        ("lifecycle_events_total", "type"),
        ("lifecycle_events_invalid_total", None),
        ("lifecycle_terminations_total", "reason"),
        ("lifecycle_admissions_total", "result"),
        ("lifecycle_sessions_live", None),
        ("lifecycle_expiry_lateness_seconds_bucket", "le"),
        ("lifecycle_event_lag_seconds_bucket", "le"),
        ("lifecycle_redis_up", None),
        ("lifecycle_ready", None),
        ("lifecycle_webhook_deliveries_total", "result"),
        ("lifecycle_webhook_latency_seconds_bucket", "le"),
        ("lifecycle_webhook_backlog", None),
        ("lifecycle_webhook_dead_deliveries", None),
    ],
)
def test_dashboard_has_panel_for(metric: str, grouping: str | None) -> None:
    exprs = [e for e in dashboard_exprs() if metric in metric_names(e)]
    assert exprs, f"no panel reads {metric}"
    if grouping:
        assert any(re.search(rf"\bby\s*\(\s*{grouping}\s*\)", e) for e in exprs), (
            f"no panel shows {metric} by {grouping}"
        )
    if metric in {f"{h}_bucket" for h in HISTOGRAMS}:
        quantiles = {q for e in exprs for q in re.findall(r"histogram_quantile\(\s*([0-9.]+)", e)}
        assert "0.99" in quantiles


@PROMTOOL_TIMEOUT
def test_dashboard_exprs_parse(promtool: str, tmp_path: Path) -> None:
    """Every query, with Grafana's variables filled in, is valid PromQL."""
    rules = []
    for n, expr in enumerate(dashboard_exprs()):
        filled = expr.replace("$__rate_interval", "5m").replace("$job", ".+")
        assert "$" not in filled, f"unhandled Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{n}", "expr": filled})
    (tmp_path / "dashboard.yml").write_text(
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]})
    )
    result = run_promtool(promtool, "check", "rules", "dashboard.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --------------------------------------------------------------------------- settings

# Stand-ins for values the manifests take from Secrets.
SECRET_STANDINS = {
    "LIFECYCLE_REDIS_URL": "redis://redis.example.internal:6379/0",
    "LIFECYCLE_API_KEYS": "0" * 64 + ":admin",
}


def shipped_environments() -> Iterator[tuple[str, dict[str, str]]]:
    unit = parse_unit(UNIT.read_text())
    env = dict(i.split("=", 1) for v in unit["Service"]["Environment"] for i in shlex.split(v))
    yield "systemd unit", env
    yield "Dockerfile", env_of(split_stages(parse_dockerfile(DOCKERFILE.read_text()))[1][-1])
    for name in ("deployment.yaml", "sidecar.yaml"):
        pod_spec = one(load_manifests(name), "Deployment")["spec"]["template"]["spec"]
        for container in lifecycled_containers(pod_spec):
            env = {}
            for item in container.get("env", []):
                if item["name"].startswith("LIFECYCLE_"):
                    value = item.get("value")
                    env[item["name"]] = SECRET_STANDINS[item["name"]] if value is None else value
            yield f"{name}:{container['name']}", env


@pytest.mark.parametrize(
    ("source", "env"), list(shipped_environments()), ids=lambda v: v if isinstance(v, str) else ""
)
def test_shipped_environment_is_valid_configuration(
    source: str, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The daemon's own settings validation accepts every environment shipped here."""
    for name in list(os.environ):
        if name.startswith("LIFECYCLE_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value.replace("%S", str(tmp_path)))
    settings = load_settings(None)
    assert settings.http_port == HTTP_PORT
    assert settings.metrics_port == METRICS_PORT
    assert settings.log_format == "json", source
