"""Store-and-forward delivery: messages accepted with their audit record, delivered later by workers.

    accept.py     the message door's stages: the exchange is checked like any other, its message
                  stored in the transaction of its audit record, answered 202 (idempotent)
    store.py      the durable queue: tables, claim with row locks and leases, per-key order
    worker.py     delivery workers: claim, call the destination's adapter, record every attempt,
                  back off and retry, dead-letter; callbacks on the final outcome
    callbacks.py  the sender told the final outcome: signed POSTs, retried, each try audited
    wakeup.py     PostgreSQL NOTIFY at acceptance: workers in every process claim at once
    status.py     what a sender (and an operator) sees of a message
    operators.py  list, show, replay, cancel (CLI, admin API, console), each action audited
"""
