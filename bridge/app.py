"""The application object every surface holds: settings, the database, Redis.

It imports the store (and so SQLAlchemy) only when the database is first used,
so that a process that never opens it (``bridge worker``) never loads it.
"""

from types import ModuleType
from typing import TYPE_CHECKING

from bridge.broker import Broker, connect, nudge_quietly
from bridge.settings import Settings

if TYPE_CHECKING:
    from bridge.store import Engine


def _store() -> ModuleType:
    from bridge import store

    return store


class App:
    """What every use case needs: the settings, the database and, when asked, Redis.

    The database is opened on first use: with ``create`` a missing one is made
    (``add``, ``run``, ``dispatch``); without it a missing one is an error and a
    read-only one is opened read-only. One ``App`` per process (or per request
    surface); ``close`` releases both connections.
    """

    def __init__(
        self, settings: Settings, *, create: bool = False, engine: "Engine | None" = None
    ) -> None:
        self.settings = settings
        self.create = create
        self._engine = engine
        self._broker: Broker | None = None
        self._namespace: str | None = None

    @property
    def engine(self) -> "Engine":
        if self._engine is None:
            self._engine = _store().open_engine(
                self.settings.database_url,
                create=self.create,
                auto_migrate=self.settings.auto_migrate,
            )
        return self._engine

    @property
    def namespace(self) -> str:
        """The database's Redis namespace (read once)."""
        if self._namespace is None:
            store = _store()
            with store.reading(self.engine) as session:
                self._namespace = store.namespace(session=session)
        return self._namespace

    def broker(self) -> Broker:
        """The broker on the configured Redis; ``BrokerError`` if Redis does not answer."""
        if self._broker is None:
            client = connect(self.settings.redis_url, check=True)
            self._broker = Broker(client, self.namespace)
        return self._broker

    def nudge(self) -> None:
        """Wake a running dispatcher at once; without Redis it finds the change on its own."""
        nudge_quietly(self.settings.redis_url, self.namespace)

    def close(self) -> None:
        if self._broker is not None:
            self._broker.client.close()
            self._broker = None
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None
