"""``store.progress(task_ids=...)``: what ``bridge run FILE`` judges, FILE's tasks only."""

from pathlib import Path

from sqlalchemy import text

from bridge import store
from bridge.graph import TaskSpec
from bridge.states import TaskStatus


def test_progress_over_given_ids_counts_only_those_across_chunks(tmp_path: Path):
    # Given 1,200 tasks of a file (more than one IN chunk) and an unrelated failed task
    engine = store.open_engine(f"sqlite:///{tmp_path / 't.db'}")
    mine = [TaskSpec(id=f"m{i}") for i in range(1200)]
    mine.append(TaskSpec(id="m-last", dependencies=("m0",)))
    with store.writing(engine) as session:
        store.add_tasks(session=session, specs=[*mine, TaskSpec(id="other")])
        session.execute(text("UPDATE tasks SET status = 'failed' WHERE id = 'other'"))
        session.execute(text("UPDATE tasks SET status = 'done' WHERE id IN ('m1', 'm2')"))
    ids = [s.id for s in mine]
    # When progress is read over the file's ids
    with store.reading(engine) as session:
        state = store.progress(session=session, task_ids=ids)
        everything = store.progress(session=session)
    # Then only the file's tasks are counted, in every chunk
    assert state.total == 1201
    assert state.count(TaskStatus.DONE) == 2
    assert state.count(TaskStatus.FAILED) == 0
    assert state.ready == 1198  # m-last waits on m0
    assert not state.stuck and not state.finished
    # And the whole database still sees the unrelated failure
    assert everything.total == 1202 and everything.count(TaskStatus.FAILED) == 1
    engine.dispose()
