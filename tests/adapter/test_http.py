"""The HTTP API of SPEC §6 across two workers."""

from __future__ import annotations

import json

import pytest

from tests.factory import event
from tests.harness import produce_events, table_state, wait_for

pytestmark = pytest.mark.integration


def test_any_worker_answers_for_customers_on_both_workers(make_worker, bootstrap: str) -> None:
    a = make_worker().start()
    b = make_worker(app_id=a.app_id, namespace=a.namespace).start()
    wait_for(lambda: a.ready() and b.ready(), timeout=60, what="both workers ready")
    customers = [f"hana-{i}" for i in range(24)]
    produce_events(
        bootstrap, a.namespace, [event("purchase", c, 1, amount=f"{i + 1}.00")
                                 for i, c in enumerate(customers)]
    )  # fmt: skip
    wait_for(
        lambda: len(table_state(bootstrap, a.changelog)) == len(customers),
        timeout=60,
        what="every customer folded",
    )

    def every_profile_from_both() -> bool:
        return all((w.profile(c) or {}).get("orders") == 1 for c in customers for w in (a, b))

    wait_for(every_profile_from_both, timeout=60, what="every profile from both workers")
    for i, c in enumerate(customers):
        pa, pb = a.profile(c), b.profile(c)
        assert pa is not None and pb is not None
        assert pa["revenue"] == pb["revenue"] == f"{i + 1}.00"
    # Both workers own some of the partitions, so half the answers above crossed workers.
    assert [json.loads(w.get("/readyz")[1])["ready"] for w in (a, b)] == [True, True]
    handled = [w.metric("engage_events_processed_total") for w in (a, b)]
    assert all(n > 0 for n in handled) and sum(handled) == len(customers), handled
    kpis = [json.loads(w.get("/kpis")[1]) for w in (a, b)]
    assert sum(k["orders"] for k in kpis) == len(customers)
    assert all(k["scope"] == "worker" for k in kpis)
