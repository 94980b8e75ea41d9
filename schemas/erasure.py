"""Erasure records (SPEC §4 Erasure): the request on `engage.erasures` and the receipt on
`engage.erasure-receipts`. Neither holds free text: ids, instants and counts only."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, field_validator

Id = Annotated[str, Field(min_length=1, max_length=128)]


class ErasureRequest(BaseModel):
    """Forget a customer. Keyed by `customer_id` (the same partition as the customer's events)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    request_id: Id = Field(description="Chosen by the requester; repeated on the receipt.")
    customer_id: Id = Field(description="Must equal the Kafka message key.")
    requested_at: AwareDatetime = Field(description="RFC 3339 with an offset.")

    @field_validator("requested_at")
    @classmethod
    def _to_utc(cls, value: datetime) -> datetime:
        return value.astimezone(UTC)


class Deleted(BaseModel):
    """What the owning worker deleted for one request."""

    model_config = ConfigDict(extra="forbid")

    state: bool = Field(description="The customer's table entry (a changelog tombstone).")
    timers: int = Field(ge=0, description="Pending ritual timers (check-ins, deferrals...).")
    queued_events: int = Field(ge=0, description="Events waiting for ritual time.")
    due_index: bool = Field(description="The customer's wake-up in the worker's due index.")
    redis_profile: bool = Field(
        description="The Redis profile hash and segment memberships (removed by the projection "
        "writer; false when the projection is off)."
    )


class ErasureReceipt(BaseModel):
    """Proof of an erasure, on `engage.erasure-receipts`, keyed by `customer_id`."""

    model_config = ConfigDict(extra="forbid")

    request_id: Id
    customer_id: Id
    requested_at: str = Field(description="From the request (RFC 3339, UTC).")
    erased_at: str = Field(description="When the worker deleted the state (RFC 3339, UTC).")
    deleted: Deleted


RECORD_MODELS: dict[str, type[BaseModel]] = {
    "erasure_request": ErasureRequest,
    "erasure_receipt": ErasureReceipt,
}
