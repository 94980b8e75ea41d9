"""Tools around the processor: the local stack (devstack), the traffic emitter, the demo and
replay.

May import anything in ``stream``; nothing in ``stream.core``, ``stream.adapter`` or
``stream.serving`` imports a tool.
"""
