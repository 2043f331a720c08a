"""Monitoring: dashboards-as-code, the runbook and the local Prometheus/Alertmanager stack launcher."""
