"""Prometheus metrics: pipeline metrics, KPI components and Faust's own sensor.

May import: ``stream.core`` (to read states), ``schemas`` and prometheus_client; never Kafka or
Redis clients.
"""
