"""docker-compose.yml and the engine's Dockerfile, checked without a Docker engine.

The compose-spec JSON schema (check-jsonschema) covers the structure; the
checks below cover what a schema cannot see: cross-references between
services, volumes and secrets, pinned tags, healthchecks, that the config files
mounted into Prometheus, Alertmanager and Grafana are the repo files the other
tests check, and that the engine serves where prometheus.yml scrapes. Each
check returns its problems and is also run on a broken copy, so it can fail.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
PROMETHEUS = ROOT / "prometheus" / "prometheus.yml"
ALERTMANAGER = ROOT / "alertmanager" / "alertmanager.yml"
GRAFANA_DASHBOARDS = ROOT / "grafana" / "provisioning" / "dashboards" / "plasticity.yml"
GRAFANA_DATASOURCE = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
ENGINES = ("engine", "engine-gpu")
#: The `ray` profile: Ray head, Ray workers, and the sweep coordinator that runs trials on them.
RAY_SERVICES = ("ray-head", "ray-worker", "ray-sweep")
TORCH = "torch==2.13.0"
#: (service, host path) -> container path: the files the rule/config/dashboard tests check.
CONFIG_MOUNTS = {
    ("prometheus", "prometheus/prometheus.yml"): "/etc/prometheus/prometheus.yml",
    ("prometheus", "prometheus/rules"): "/etc/prometheus/rules",
    ("alertmanager", "alertmanager/alertmanager.yml"): "/etc/alertmanager/alertmanager.yml",
    ("alertmanager", "alertmanager/templates"): "/etc/alertmanager/templates",
    ("grafana", "grafana/provisioning"): "/etc/grafana/provisioning",
    ("grafana", "grafana/dashboards"): "/etc/grafana/dashboards",
}
#: Secret files are never committed: their default path is documented instead.
SECRET_DEFAULT = re.compile(r"^\$\{([A-Z_]+)_FILE:-\./secrets/([a-z_]+)\}$")

Compose = dict[str, Any]
Problems = list[str]


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose() -> Compose:
    data: Compose = load(COMPOSE)
    return data


@pytest.fixture(scope="module")
def prometheus_cfg() -> dict[str, Any]:
    cfg: dict[str, Any] = load(PROMETHEUS)
    return cfg


# -- helpers ---------------------------------------------------------------------

def services(c: Compose) -> dict[str, dict[str, Any]]:
    return c.get("services") or {}


def command_text(svc: dict[str, Any]) -> str:
    cmd = svc.get("command") or []
    return cmd if isinstance(cmd, str) else " ".join(str(x) for x in cmd)


def flags(svc: dict[str, Any]) -> dict[str, str]:
    """``--flag=value`` / ``--flag value`` pairs of a service's command (last one wins)."""
    tokens = command_text(svc).replace('"', " ").split()
    out: dict[str, str] = {}
    for i, tok in enumerate(tokens):
        if tok.startswith("--"):
            name, eq, value = tok.partition("=")
            out[name] = value if eq else (tokens[i + 1] if i + 1 < len(tokens) else "")
    return out


def mounts(svc: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(kind, source, target) of every volume entry; kind is "bind" or "volume"."""
    out = []
    for v in svc.get("volumes") or []:
        if isinstance(v, str):
            parts = v.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else ("", parts[0])
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        else:
            kind, source, target = v.get("type", "volume"), v.get("source", ""), v.get("target", "")
        out.append((kind, source, target))
    return out


def volume_target(svc: dict[str, Any], volume: str) -> str | None:
    return next((t for k, s, t in mounts(svc) if k == "volume" and s == volume), None)


def secret_targets(svc: dict[str, Any]) -> dict[str, str]:
    out = {}
    for s in svc.get("secrets") or []:
        if isinstance(s, str):
            out[s] = f"/run/secrets/{s}"
        else:
            target = s.get("target") or s["source"]
            out[s["source"]] = target if target.startswith("/") else f"/run/secrets/{target}"
    return out


def dependencies(svc: dict[str, Any]) -> list[str]:
    deps = svc.get("depends_on") or []
    return list(deps) if isinstance(deps, (list, dict)) else []


def image_tag(image: str) -> str:
    """The tag of an image reference ("" when missing); digests count as pinned."""
    if "@sha256:" in image:
        return "@digest"
    name = image.rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else ""


def version(tag: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", tag)[:3])


def static_engine_port(prom: dict[str, Any]) -> int | None:
    for job in prom.get("scrape_configs", []):
        for sc in job.get("static_configs", []):
            for target in sc.get("targets", []):
                host, _, port = str(target).rpartition(":")
                if host == "engine":
                    return int(port)
    return None


def file_sd_dirs(prom: dict[str, Any]) -> set[str]:
    return {str(Path(f).parent) for job in prom.get("scrape_configs", [])
            for fsd in job.get("file_sd_configs", []) for f in fsd.get("files", [])}


# -- checks ------------------------------------------------------------------------

def check_depends_on(c: Compose) -> Problems:
    names = set(services(c))
    return [f"{n}: depends_on unknown service {dep!r}" for n, s in services(c).items()
            for dep in dependencies(s) if dep not in names]


def check_images(c: Compose) -> Problems:
    bad = []
    for n, s in services(c).items():
        image = str(s.get("image", ""))
        tag = image_tag(image)
        if not image:
            bad.append(f"{n}: no image (a built service needs a pinned image name too)")
        elif not tag or tag == "latest" or tag.startswith("latest"):
            bad.append(f"{n}: image {image!r} is not pinned to a tag")
    return bad


def check_versions(c: Compose) -> Problems:
    """Prometheus 2.x and Alertmanager >= 0.25 (the semantics the real-binary tests check); Grafana 11.6."""
    svc = services(c)
    want = {
        "prometheus": ("prom/prometheus:v", lambda v: v[:1] == (2,)),
        "alertmanager": ("prom/alertmanager:v", lambda v: v[:2] >= (0, 25) and v[:1] == (0,)),
        "grafana": ("grafana/grafana:", lambda v: v[:2] == (11, 6)),
    }
    bad = []
    for name, (prefix, ok) in want.items():
        image = str(svc.get(name, {}).get("image", ""))
        if not image.startswith(prefix) or not ok(version(image_tag(image))):
            bad.append(f"{name}: image {image!r} is not the expected version line")
    return bad


def check_healthchecks(c: Compose) -> Problems:
    bad = []
    for n, s in services(c).items():
        hc = s.get("healthcheck") or {}
        test = hc.get("test")
        if not test or hc.get("disable") or (isinstance(test, list) and test[0] == "NONE"):
            bad.append(f"{n}: no healthcheck")
    return bad


def check_volumes_and_secrets(c: Compose) -> Problems:
    bad = []
    declared_v, declared_s = set(c.get("volumes") or {}), set(c.get("secrets") or {})
    used_v, used_s = set(), set()
    for n, s in services(c).items():
        for kind, source, _ in mounts(s):
            if kind == "volume" and source:
                used_v.add(source)
                if source not in declared_v:
                    bad.append(f"{n}: volume {source!r} is not declared")
        for secret in secret_targets(s):
            used_s.add(secret)
            if secret not in declared_s:
                bad.append(f"{n}: secret {secret!r} is not declared")
    bad += [f"volume {v!r} is declared but unused" for v in sorted(declared_v - used_v)]
    bad += [f"secret {s!r} is declared but unused" for s in sorted(declared_s - used_s)]
    for name, spec in (c.get("secrets") or {}).items():
        m = SECRET_DEFAULT.match(str((spec or {}).get("file", "")))
        if not m or m.group(2) != name:
            bad.append(f"secret {name!r}: file must be ${{..._FILE:-./secrets/{name}}} (path from the environment)")
    return bad


def check_bind_mounts(c: Compose, root: Path = ROOT) -> Problems:
    return [f"{n}: bind-mounted {source!r} does not exist in the repo"
            for n, s in services(c).items() for kind, source, _ in mounts(s)
            if kind == "bind" and not (root / source).exists()]


def check_config_mounts(c: Compose) -> Problems:
    """The config files mounted are exactly the repo files the other tests check."""
    bad = []
    found = {(n, os.path.normpath(source)): target for n, s in services(c).items()
             for kind, source, target in mounts(s) if kind == "bind"}
    for key, target in CONFIG_MOUNTS.items():
        if found.get(key) != target:
            bad.append(f"{key[0]}: ./{key[1]} must be mounted at {target}, found {found.get(key)}")
    for key in sorted(set(found) - set(CONFIG_MOUNTS)):
        bad.append(f"{key[0]}: unexpected bind mount ./{key[1]}")
    svc = services(c)
    for name, cfg in (("prometheus", "/etc/prometheus/prometheus.yml"),
                      ("alertmanager", "/etc/alertmanager/alertmanager.yml")):
        if flags(svc.get(name, {})).get("--config.file") != cfg:
            bad.append(f"{name}: --config.file is not the mounted {cfg}")
    if "--web.enable-lifecycle" not in command_text(svc.get("prometheus", {})):
        bad.append("prometheus: --web.enable-lifecycle missing (reloads after rule edits)")
    return bad


def check_engine(c: Compose, prom: dict[str, Any]) -> Problems:
    """The engine serves where prometheus.yml scrapes, and sweeps write file_sd where Prometheus reads."""
    bad = []
    port = static_engine_port(prom)
    if port is None:
        return ["prometheus.yml has no static target engine:<port>"]
    svc = services(c)
    sd_target = volume_target(svc.get("prometheus", {}), "file_sd")
    sd_dirs = file_sd_dirs(prom)
    if sd_target is None or sd_dirs != {sd_target}:
        bad.append(f"prometheus: reads file_sd from {sd_dirs}, but the file_sd volume is at {sd_target}")
    for name in ENGINES:
        s = svc.get(name, {})
        text, f = command_text(s), flags(s)
        if f.get("--metrics_host") != "0.0.0.0":
            bad.append(f"{name}: command must pass --metrics_host 0.0.0.0")
        if f.get("--metrics_port") != str(port):
            bad.append(f"{name}: --metrics_port {f.get('--metrics_port')} != prometheus.yml's engine:{port}")
        if f"127.0.0.1:{port}:{port}" not in [str(p) for p in s.get("ports", [])] and name == "engine":
            bad.append(f"{name}: port {port} not published on 127.0.0.1")
        engine_sd = volume_target(s, "file_sd")
        if engine_sd is None or f.get("--file_sd_dir") != engine_sd:
            bad.append(f"{name}: --file_sd_dir {f.get('--file_sd_dir')} is not the file_sd volume ({engine_sd})")
        if not re.search(r"(^|\s)-s\s", text) or "run)" not in text or "sweep)" not in text:
            bad.append(f"{name}: command must run the sweep by default and a single run with ENGINE_MODE=run")
        if (s.get("environment") or {}).get("ENGINE_MODE") != "${ENGINE_MODE:-sweep}":
            bad.append(f"{name}: ENGINE_MODE must come from the environment, default sweep")
    return bad


def check_gpu(c: Compose) -> Problems:
    bad = []
    svc = services(c)
    gpu = svc.get("engine-gpu", {})
    if gpu.get("profiles") != ["gpu"]:
        bad.append("engine-gpu must be in the gpu profile (and only there)")
    devices = (((gpu.get("deploy") or {}).get("resources") or {}).get("reservations") or {}).get("devices") or []
    if not any(dv.get("driver") == "nvidia" and "gpu" in (dv.get("capabilities") or []) for dv in devices):
        bad.append("engine-gpu: no NVIDIA device reservation")
    if flags(gpu).get("--device") != "cuda":
        bad.append("engine-gpu: command must pass --device cuda")
    if flags(svc.get("engine", {})).get("--device") != "cpu":
        bad.append("engine: command must pass --device cpu (a plain `up` works without a GPU)")
    for n, s in svc.items():
        if n != "engine-gpu" and (("deploy" in s) or (s.get("profiles") and n not in RAY_SERVICES)):
            bad.append(f"{n}: only engine-gpu (and the ray profile) may need a profile or device reservation")
    return bad


def check_ray(c: Compose) -> Problems:
    """The ray profile: workers join the head, the coordinator sweeps on it into the shared volumes."""
    bad = []
    svc = services(c)
    for name in RAY_SERVICES:
        s = svc.get(name, {})
        if s.get("profiles") != ["ray"]:
            bad.append(f"{name} must be in the ray profile (and only there)")
        if ((s.get("build") or {}).get("args") or {}).get("WITH_RAY") != "1":
            bad.append(f"{name}: its image must be built with WITH_RAY=1 (requirements-ray.txt)")
    head, worker, sweep = (svc.get(n, {}) for n in RAY_SERVICES)
    gcs = f"ray-head:{flags(head).get('--port')}"
    if "--head" not in command_text(head).split() or gcs == "ray-head:None":
        bad.append("ray-head: command must be `ray start --head --port=<port>`")
    if flags(worker).get("--address") != gcs:
        bad.append(f"ray-worker: --address {flags(worker).get('--address')} is not the head's {gcs}")
    f = flags(sweep)
    if f.get("--executor") != "ray" or f.get("--ray_address") != gcs:
        bad.append(f"ray-sweep: must run with --executor ray --ray_address {gcs}")
    if f.get("--file_sd_dir") is None or f.get("--file_sd_dir") != volume_target(sweep, "file_sd"):
        bad.append(f"ray-sweep: --file_sd_dir {f.get('--file_sd_dir')} is not the file_sd volume Prometheus reads")
    results = volume_target(sweep, "results")
    if f.get("--output_dir") != results or volume_target(worker, "results") != results:
        bad.append("ray-sweep and ray-worker must share the results volume at --output_dir")
    return bad


def check_grafana(c: Compose) -> Problems:
    bad = []
    g = services(c).get("grafana", {})
    provider = load(GRAFANA_DASHBOARDS)["providers"][0]
    if provider["options"]["path"] != CONFIG_MOUNTS[("grafana", "grafana/dashboards")]:
        bad.append(f"grafana: provider path {provider['options']['path']} is not the dashboards mount")
    env = g.get("environment") or {}
    if env.get("GF_SECURITY_ADMIN_PASSWORD__FILE") != secret_targets(g).get("grafana_admin_password"):
        bad.append("grafana: GF_SECURITY_ADMIN_PASSWORD__FILE must be the grafana_admin_password secret")
    if any("PASSWORD" in k and not k.endswith("__FILE") for k in env):
        bad.append("grafana: a password in plain environment")
    url = load(GRAFANA_DATASOURCE)["datasources"][0]["url"]
    host, port = re.match(r"http://([\w-]+):(\d+)$", url).groups()  # type: ignore[union-attr]
    if host not in services(c) or port != "9090":
        bad.append(f"grafana datasource {url} is not the prometheus service")
    return bad


def _slack_url_files(am: dict[str, Any]) -> set[str]:
    files = {am.get("global", {}).get("slack_api_url_file")}
    files |= {sc.get("api_url_file") for r in am.get("receivers", []) for sc in r.get("slack_configs", []) or []}
    return {f for f in files if f}


def check_alertmanager(c: Compose, am: dict[str, Any]) -> Problems:
    bad = []
    svc = services(c).get("alertmanager", {})
    target = secret_targets(svc).get("slack_webhook_url")
    files = _slack_url_files(am)
    if not files or files != {target}:
        bad.append(f"alertmanager: Slack api_url_file {files} is not the slack_webhook_url secret at {target}")
    templates_dir = CONFIG_MOUNTS[("alertmanager", "alertmanager/templates")]
    for t in am.get("templates", []):
        if str(Path(t).parent) != templates_dir:
            bad.append(f"alertmanager: template glob {t} is outside the mounted {templates_dir}")
    if not am.get("templates"):
        bad.append("alertmanager: no message templates")
    return bad


def check_prometheus(c: Compose, prom: dict[str, Any]) -> Problems:
    bad = []
    rules_dir = CONFIG_MOUNTS[("prometheus", "prometheus/rules")]
    for f in prom.get("rule_files", []):
        if not str(f).startswith(rules_dir + "/"):
            bad.append(f"prometheus: rule file {f} is outside the mounted {rules_dir}")
    names = set(services(c))
    for am in prom.get("alerting", {}).get("alertmanagers", []):
        for sc in am.get("static_configs", []):
            for t in sc.get("targets", []):
                if str(t).rpartition(":")[0] not in names:
                    bad.append(f"prometheus: alertmanager target {t} is not a service")
    return bad


# -- the tests ---------------------------------------------------------------------

def check_schema(path: Path) -> subprocess.CompletedProcess[str]:
    """Validate ``path`` against check-jsonschema's vendored compose-spec schema."""
    try:
        import check_jsonschema  # noqa: F401
    except ImportError:
        msg = "check-jsonschema is not installed: pip install -r requirements-dev.txt"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    cmd = [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec", str(path)]
    return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=120)


def test_schema() -> None:
    res = check_schema(COMPOSE)
    assert res.returncode == 0, res.stdout + res.stderr


def test_schema_rejects_a_broken_file(tmp_path: Path) -> None:
    broken = load(COMPOSE)
    broken["services"]["prometheus"]["healthcheck"]["retries"] = ["five"]
    broken["services"]["grafana"]["restart_policy"] = "always"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    assert check_schema(path).returncode != 0


CHECKS: dict[str, Callable[[Compose, dict[str, Any]], Problems]] = {
    "depends_on": lambda c, p: check_depends_on(c),
    "images": lambda c, p: check_images(c),
    "versions": lambda c, p: check_versions(c),
    "healthchecks": lambda c, p: check_healthchecks(c),
    "volumes_and_secrets": lambda c, p: check_volumes_and_secrets(c),
    "bind_mounts": lambda c, p: check_bind_mounts(c),
    "config_mounts": lambda c, p: check_config_mounts(c),
    "engine": check_engine,
    "gpu": lambda c, p: check_gpu(c),
    "ray": lambda c, p: check_ray(c),
    "grafana": lambda c, p: check_grafana(c),
    "prometheus": check_prometheus,
}


def _svc(c: Compose, name: str) -> dict[str, Any]:
    return c["services"][name]


def _replace_command(c: Compose, name: str, old: str, new: str) -> None:
    _svc(c, name)["command"] = [str(x).replace(old, new) for x in _svc(c, name)["command"]]


BREAKERS: dict[str, Callable[[Compose, dict[str, Any]], None]] = {
    "depends_on": lambda c, p: _svc(c, "grafana")["depends_on"].update({"loki": {"condition": "service_started"}}),
    "images": lambda c, p: _svc(c, "mlflow").update(image="ghcr.io/mlflow/mlflow:latest"),
    "versions": lambda c, p: _svc(c, "prometheus").update(image="prom/prometheus:v3.0.1"),
    "healthchecks": lambda c, p: _svc(c, "tensorboard").pop("healthcheck"),
    "volumes_and_secrets": lambda c, p: c["volumes"].pop("grafana_data"),
    "bind_mounts": lambda c, p: _svc(c, "grafana")["volumes"].append("./grafana/no-such-dir:/etc/x:ro"),
    "config_mounts": lambda c, p: _svc(c, "prometheus")["volumes"].pop(1),
    "engine": lambda c, p: _replace_command(c, "engine", "--metrics_host 0.0.0.0", "--metrics_host 127.0.0.1"),
    "gpu": lambda c, p: _svc(c, "engine-gpu").pop("deploy"),
    "ray": lambda c, p: _replace_command(c, "ray-sweep", "--ray_address ray-head:6379", "--ray_address ray-head:1"),
    "grafana": lambda c, p: _svc(c, "grafana")["environment"].update(GF_SECURITY_ADMIN_PASSWORD="admin"),
    "prometheus": lambda c, p: p.update(rule_files=["/etc/prometheus/other/*.yml"]),
}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_compose_cross_references(compose: Compose, prometheus_cfg: dict[str, Any], check: str) -> None:
    assert CHECKS[check](compose, prometheus_cfg) == []


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_checks_catch_a_broken_compose_file(compose: Compose, prometheus_cfg: dict[str, Any], check: str) -> None:
    c, p = copy.deepcopy(compose), copy.deepcopy(prometheus_cfg)
    BREAKERS[check](c, p)
    assert CHECKS[check](c, p), f"{check} did not notice the defect"


def test_engine_port_follows_prometheus_yml(compose: Compose, prometheus_cfg: dict[str, Any]) -> None:
    moved = copy.deepcopy(prometheus_cfg)
    for job in moved["scrape_configs"]:
        for sc in job.get("static_configs", []):
            sc["targets"] = [t.replace("engine:", "engine:1") for t in sc["targets"]]
    assert any("--metrics_port" in p for p in check_engine(compose, moved))


def test_alertmanager_secret_and_templates(compose: Compose) -> None:
    am = load(ALERTMANAGER)
    assert check_alertmanager(compose, am) == []
    broken = copy.deepcopy(am)
    for r in broken.get("receivers", []):
        for sc in r.get("slack_configs", []) or []:
            sc["api_url_file"] = "/etc/alertmanager/slack_url"
    broken.get("global", {}).pop("slack_api_url_file", None)
    assert check_alertmanager(compose, broken)


def test_secret_files_are_never_committed(compose: Compose) -> None:
    """Only the README and .gitkeep of secrets/ are tracked; the secret files are git-ignored."""
    git = shutil.which("git")
    if git is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([git, *args], cwd=ROOT, check=False, capture_output=True, text=True, timeout=30)

    tracked = run("ls-files", "secrets")
    assert set(tracked.stdout.split()) <= {"secrets/README.md", "secrets/.gitkeep"}
    readme = (ROOT / "secrets" / "README.md").read_text(encoding="utf-8")
    for name, spec in compose["secrets"].items():
        m = SECRET_DEFAULT.match(spec["file"])
        assert m is not None
        assert f"secrets/{name}" in readme and f"{m.group(1)}_FILE" in readme, f"{name} not documented"
        ignored = run("check-ignore", "-q", "--no-index", f"secrets/{name}")
        assert ignored.returncode == 0, f"secrets/{name} is not git-ignored"
    kept = run("check-ignore", "-q", "--no-index", "secrets/README.md")
    assert kept.returncode == 1, "secrets/README.md must stay tracked"


# -- Dockerfile --------------------------------------------------------------------

def dockerfile_problems(text: str) -> Problems:
    """Pinned base image; torch installed (pinned) before requirements.txt; no index host named."""
    lines = [ln.strip() for ln in text.replace("\\\n", " ").splitlines() if ln.strip() and not ln.startswith("#")]
    bad = []
    froms = [ln.split()[1] for ln in lines if ln.upper().startswith("FROM ")]
    if not froms:
        bad.append("no FROM")
    for image in froms:
        tag = image_tag(image)
        if not tag or tag.startswith("latest") or not image.startswith("python:3.11"):
            bad.append(f"base image {image!r} is not a pinned python:3.11 tag")
    args = dict(re.findall(r"^ARG (\w+)=(\S*)", "\n".join(lines), flags=re.MULTILINE))
    runs = [re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), ln).replace('"', "")
            for ln in lines if ln.upper().startswith("RUN ")]
    torch_at = next((i for i, r in enumerate(runs) if "pip install" in r and TORCH in r.split()), None)
    req_at = next((i for i, r in enumerate(runs) if "pip install" in r and "-r requirements.txt" in r), None)
    if torch_at is None or req_at is None or torch_at >= req_at:
        bad.append(f"pip install {TORCH} must come before pip install -r requirements.txt")
    if re.search(r"https?://", text):
        bad.append("the Dockerfile names a host (index URLs come from build arguments)")
    return bad


def test_dockerfile() -> None:
    assert dockerfile_problems(DOCKERFILE.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize("old,new", [
    ("FROM python:3.11.11-slim-bookworm", "FROM python:latest"),
    ("FROM python:3.11.11-slim-bookworm", "FROM python"),
    ("ARG TORCH_SPEC=torch==2.13.0", "ARG TORCH_SPEC=torch"),
    ('ARG TORCH_PIP_ARGS=""', 'ARG TORCH_PIP_ARGS="--extra-index-url https://example.invalid/whl"'),
])
def test_dockerfile_check_can_fail(old: str, new: str) -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert old in text
    assert dockerfile_problems(text.replace(old, new))


def test_dockerfile_check_requires_torch_first() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    torch_line = next(ln for ln in text.splitlines() if ln.startswith("RUN pip install") and "TORCH_SPEC" in ln)
    moved = text.replace(torch_line + "\n", "") + torch_line + "\n"
    assert dockerfile_problems(moved)


def test_dockerignore_keeps_secrets_and_state_out() -> None:
    entries = set((ROOT / ".dockerignore").read_text(encoding="utf-8").split())
    assert {"secrets", ".git", "results", "mlruns"} <= entries
    for needed in ("engine", "scripts", "sweeps", "requirements.txt", "pyproject.toml", "README.md"):
        assert needed not in entries
        assert (ROOT / needed).exists()
