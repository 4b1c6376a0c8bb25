"""Flows: one module per domain action, the layer every entry point calls.

A flow owns its transactions, its AWS calls and the announcement made after commit:

    plan    — a short transaction: authorize, validate, read what AWS must be told
    call    — AWS, with no transaction open (no SQLite writer lock, no audit-chain lock)
    record  — a short transaction: write what took effect, audit rows chained at commit
    tell    — Slack messages, only after the commit, saying exactly what took effect

Slack listeners, jobs, the SNS endpoint, the SQS poller and the CLI reach the core only
through these functions. A crash between `call` and `record` is repaired by the existing
paths: enforce re-asserts every active revocation's deny, reconcile removes a deny that no
revocation row explains and puts back one that is missing.
"""
