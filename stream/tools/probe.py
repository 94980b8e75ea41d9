"""`engage probe [readyz|healthz]`: ask this machine's worker whether it is ready (or alive).

For container healthchecks in images without curl or wget: GET
http://127.0.0.1:$ENGAGE_WEB_PORT/<path>, exit 0 on 200 and 1 otherwise (not answering
included), printing one line. It reads only ENGAGE_WEB_PORT, so it starts in milliseconds.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

from stream.cli import EXIT_FAILURE, EXIT_OK, command_parser, fail


def main(argv: list[str]) -> int:
    """0 when the worker answers 200 on the probed path, 1 otherwise."""
    parser = command_parser("probe", __doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument("path", nargs="?", choices=["readyz", "healthz"], default="readyz")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument(
        "--port", type=int, default=None, help="default: ENGAGE_WEB_PORT, else 6066"
    )
    args = parser.parse_args(argv)
    try:
        port = args.port or int(os.environ.get("ENGAGE_WEB_PORT", "6066"))
    except ValueError:
        return fail("probe", "invalid configuration: ENGAGE_WEB_PORT is not a port number", 2)
    url = f"http://127.0.0.1:{port}/{args.path}"
    try:
        with urllib.request.urlopen(url, timeout=args.timeout) as resp:
            status = resp.status
    except urllib.error.HTTPError as exc:
        status = exc.code
    except OSError as exc:
        print(f"{url}: {exc.__class__.__name__}", file=sys.stderr)
        return EXIT_FAILURE
    print(f"{url}: {status}")
    return EXIT_OK if status == 200 else EXIT_FAILURE
