"""The Faust adapter: topics, tables, the agent and the worker around the core.

Turns Kafka messages into calls of the core and the core's outputs into table writes and
sends. It holds no business rule of its own.

May import: ``stream.core``, ``stream.telemetry``, ``stream.serving``, ``stream.settings``,
``schemas``, faust and aiokafka.
"""
