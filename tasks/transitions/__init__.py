"""Every write of Task.status happens in this package.

A move locks the task row (`select_for_update` inside `transaction.atomic()`), checks it against
the one table in `tasks.states`, applies the target state's entry effects (`tasks.entry`) and
writes the row and its history row (`tasks.history`) in the same transaction. The API, the
console, the unit endpoints and the jobs call these; nothing else writes `status`.

- `core`: the check, the move in memory, the one writer of moved rows.
- `creation`: new tasks (PENDING).
- `verbs`: what a client or an operator asks for (retry, resume, pause, cancel, requeue, start,
  complete, fail), on one task or many, and the redrive of the dead set.
- `reports`: what a unit reports on its live attempt (progress, result, failure; one or a batch),
  fenced by `tasks.fencing`; and the timeout of an attempt, which fails it the same way.
- `bulk`: the set-based moves: the claim's lease, failover (and poison), due retries.
"""
