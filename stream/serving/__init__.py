"""Serving: the Redis profile projection (and its rebuild) that messaging systems read.

`projector` keeps Redis up to date from the worker, `changelog_reader` reads the `customers`
changelog back, and `rebuild` is `engage project rebuild`, which recreates Redis from it.

May import: ``stream.core``, ``stream.telemetry``, ``stream.settings``, redis and aiokafka (to
read the changelog for a rebuild), and ``stream.adapter.faust_private`` for aiokafka's private
names (it loads no faust); never faust.
"""
