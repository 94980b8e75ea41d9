"""Synthetic customer traffic for `engage emit` (SPEC §1 events, closed loop on SPEC §4 nudges).

The package is split so that the interesting part is testable without Kafka:

- `personas`: the one table of behaviour parameters (rates per day, probabilities) per persona;
- `simulation`: a deterministic, seeded generator of events in simulated-time order;
- `reactions`: a pure function from (customer, nudge, rng, simulated now) to planned actions;
- `faults`: malformed messages of every SPEC §1 dead-letter reason, mixed into the traffic;
- `sink`: event encoding, the JSON-lines file writer, the aiokafka producer and nudge listener;
- `runner` / `report` / `cli`: pacing, progress, summary and the command line.
"""
