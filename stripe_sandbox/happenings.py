"""The one call refunds.py and disputes.py make when something happens that Stripe reports as
an event: `charge.refunded`, `refund.created`, `refund.updated`, `charge.dispute.created`,
`charge.dispute.closed`.

For now it only notes (type, object id) in `AccountState.happened`, which tests read; the
webhook events of the sandbox can take over here (record an Event of `type_` for `obj`).
"""

from __future__ import annotations

from .store import AccountState, Json


def happened(state: AccountState, type_: str, obj: Json) -> None:
    state.happened.append((type_, obj["id"]))
