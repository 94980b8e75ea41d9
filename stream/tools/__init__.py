"""Tools around the processor: the local stack (devstack), the traffic emitter, the demo,
replay, and the HTML report (report: fetching; charts: the page, pure).

May import anything in ``stream``; nothing in ``stream.core``, ``stream.adapter`` or
``stream.serving`` imports a tool.
"""
