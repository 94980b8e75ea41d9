"""engage: a real-time customer-engagement stream processor.

`__version__` is the one place the release version is written: the package metadata
(pyproject.toml reads it), `engage --version`, the CloudEvents `dataschema` of decisions and
nudges and the `$id` of every published JSON Schema derive from it (docs/versioning.md).
"""

__version__ = "0.1.0"
