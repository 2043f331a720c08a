"""``stack up|down|status``: the monitoring stack (Prometheus + Alertmanager) for local runs.

With a reachable Docker engine (and the ``docker`` package) ``up`` runs the
compose file's pinned images through the Docker SDK; otherwise it starts the
installed binaries (``apt-get install prometheus prometheus-alertmanager``).
Both use the repo's configs rewritten for loopback (see ``monitoring/stack_config.py``).
For the full stack with Grafana, MLflow and TensorBoard use ``docker compose up``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}
DURATION = "Prometheus duration, e.g. 1s or 1m30s"


def _fail(exc: Exception) -> click.exceptions.Exit:
    click.echo(f"error: {exc}", err=True)
    return click.exceptions.Exit(2)


@click.group("stack", context_settings=CONTEXT)
def stack() -> None:
    """Start, stop or inspect the local monitoring stack (Prometheus + Alertmanager)."""


@stack.command("up")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("results/stack"), show_default=True,
              help="Rendered configs, data, logs and the stack.json state file.")
@click.option("--prometheus_port", type=click.IntRange(1, 65535), default=9090, show_default=True)
@click.option("--alertmanager_port", type=click.IntRange(1, 65535), default=9093, show_default=True)
@click.option("--engine_target", "engine_targets", multiple=True, default=("127.0.0.1:8000",), show_default=True,
              help="host:port of a run's metrics endpoint (repeatable); replaces compose's engine:8000.")
@click.option("--file_sd_dir", type=click.Path(path_type=Path), default=Path("results/file_sd"), show_default=True,
              help="Where sweeps register their trials (OUTPUT_DIR/file_sd of the sweep).")
@click.option("--slack_url_file", type=click.Path(path_type=Path), envvar="SLACK_WEBHOOK_URL_FILE", default=None,
              help="File holding the Slack incoming-webhook URL [env SLACK_WEBHOOK_URL_FILE, else "
              "secrets/slack_webhook_url if it exists, as for compose]. Without one, alerts still show in "
              "Alertmanager but notifications fail (logged in WORKDIR/alertmanager.log).")
@click.option("--scrape_interval", default=None, help=f"Override the shipped scrape interval ({DURATION}).")
@click.option("--evaluation_interval", default=None, help=f"Override the shipped rule evaluation interval ({DURATION}).")
@click.option("--group_wait", default=None, help=f"Override Alertmanager's group_wait ({DURATION}).")
@click.option("--group_interval", default=None, help=f"Override Alertmanager's group_interval ({DURATION}).")
@click.option("--resend_delay", default=None, help=f"Prometheus --rules.alert.resend-delay ({DURATION}).")
@click.option("--docker/--no_docker", "use_docker", default=None,
              help="Run the compose images through Docker [default: when a Docker engine answers].")
def up(workdir: Path, prometheus_port: int, alertmanager_port: int, engine_targets: tuple[str, ...],
       file_sd_dir: Path, slack_url_file: Path | None, use_docker: bool | None, **timing: Any) -> int:
    """Start Prometheus and Alertmanager on 127.0.0.1 and print where to open them."""
    from monitoring import stack as ms

    if slack_url_file is None and ms.COMPOSE_SLACK_URL_FILE.is_file():
        slack_url_file = ms.COMPOSE_SLACK_URL_FILE  # the secret file compose would use
    client = ms.docker_client() if use_docker is not False else None
    try:
        if use_docker and client is None:
            raise ms.StackError("--docker: no Docker engine reachable (or `pip install docker` missing)")
        where = Path(workdir)
        targets = list(engine_targets)
        if client is not None:
            services = ms.start_docker(where, client, prometheus_port=prometheus_port,
                                       alertmanager_port=alertmanager_port, engine_targets=targets,
                                       file_sd_dir=file_sd_dir, slack_url_file=slack_url_file, **timing)
        else:
            services = ms.start_local(where, prometheus_port=prometheus_port, alertmanager_port=alertmanager_port,
                                      engine_targets=targets, file_sd_dir=file_sd_dir, slack_url_file=slack_url_file,
                                      **timing)
    except ms.StackError as exc:
        raise _fail(exc) from None
    mode = "docker containers" if client is not None else "local processes"
    click.echo(f"monitoring stack up ({mode}), state in {Path(workdir).resolve() / ms.STATE_FILE}")
    for svc in services:
        click.echo(f"  {svc.name:<12} {svc.url}" + (f"  (pid {svc.pid}, log {svc.log})" if svc.pid else ""))
    click.echo(f"Scraping {', '.join(engine_targets)} and file_sd {Path(file_sd_dir).resolve()}/*.json; "
               f"stop with: stack down --workdir {workdir}")
    click.echo("Grafana, MLflow and TensorBoard come with `docker compose up`.")
    return 0


@stack.command("down")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("results/stack"), show_default=True)
def down(workdir: Path) -> int:
    """Stop exactly what `stack up --workdir WORKDIR` started."""
    from monitoring import stack as ms

    try:
        stopped = ms.stop_local(workdir)
    except ms.StackError as exc:
        raise _fail(exc) from None
    if not stopped:
        click.echo(f"nothing running from {workdir}")
    for svc in stopped:
        click.echo(f"stopped {svc.name} ({f'pid {svc.pid}' if svc.pid else svc.container[:12]})")
    return 0


@stack.command("status")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("results/stack"), show_default=True)
def status(workdir: Path) -> int:
    """Show each service of the stack started from WORKDIR; exit 1 unless all are running and ready."""
    from monitoring import stack as ms

    rows = ms.status(workdir)
    if not rows:
        click.echo(f"no stack started from {workdir}")
        return 1
    for svc, running, is_ready in rows:
        state = "ready" if is_ready else "running, not ready" if running else "stopped"
        where = f"pid {svc.pid}" if svc.pid else f"container {svc.container[:12]}"
        click.echo(f"{svc.name:<12} {state:<18} {svc.url}  {where}")
    return 0 if all(r[2] for r in rows) else 1

