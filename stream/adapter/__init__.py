"""The Faust adapter: topics, tables, the agent and the worker around the core.

Turns batches of Kafka messages into calls of the core's per-partition engines
(`stream.core.engine`) and their results into table writes and sends (`shell.py`, `tables.py`).
It holds no business rule of its own.

May import: ``stream.core``, ``stream.telemetry``, ``stream.serving``, ``stream.settings``,
``stream.topic_names``, ``stream.kafka_client``,
``schemas``, faust and aiokafka.
"""
