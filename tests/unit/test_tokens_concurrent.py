"""Fencing tokens stay unique when two transactions reserve them at once.

On PostgreSQL (READ COMMITTED) a read-then-write counter hands the same tokens to two
transactions that overlap; the reservation must serialise them on the row instead.
"""

import threading

from bridge import store
from bridge.store import schema


def test_overlapping_reservations_get_distinct_tokens_on_postgresql(pg_url):
    engine = store.open_engine(pg_url)
    first_in = threading.Event()
    results: list[int] = []

    def reserve(hold: bool) -> None:
        with store.writing(engine) as session:
            results.append(schema.take_tokens(session=session, count=10))
            if hold:  # keep the transaction open while the other one reserves
                first_in.set()
                threading.Event().wait(0.5)

    holder = threading.Thread(target=reserve, args=(True,))
    holder.start()
    first_in.wait(10)
    other = threading.Thread(target=reserve, args=(False,))
    other.start()
    holder.join(10)
    other.join(10)
    engine.dispose()
    assert len(results) == 2
    low, high = sorted(results)
    assert high - low >= 10, results  # no token handed out twice
