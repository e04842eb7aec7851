"""Task lists: the capped count of page mode, orderings and their tie-breaks, search by id or name,
and (on MariaDB) the plans of the list queries the API sends: one index read in order, no
filesort, no index merge."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone
from rest_framework.test import APIClient

from taskhub.apikeys.models import ApiKey
from tasks.models import Task
from tasks.states import TaskStatus
from tests import factories
from tests.console_support import operator

API = "/api/v1/tasks"


def _ok(response: Any) -> Any:
    assert response.status_code == 200, response.content
    return response.json()


def _seed(owner: Any, n: int, **fields: Any) -> list[int]:
    return [factories.task(owner=owner, **fields).pk for _ in range(n)]


@pytest.fixture
def owner_client(make_client: Any) -> Any:
    client = make_client("lists")
    client.key = ApiKey.objects.get(name="lists")
    return client


def test_count_below_the_cap_is_exact(owner_client: Any, settings: Any) -> None:
    settings.API_LIST_COUNT_CAP = 10
    _seed(owner_client.key, 7)
    body = _ok(owner_client.get(f"{API}?page=1&limit=3"))
    assert (body["total"], body["totalRelation"], body["totalPages"]) == (7, "eq", 3)
    assert len(body["items"]) == 3


def test_count_at_the_cap_is_still_exact(owner_client: Any, settings: Any) -> None:
    settings.API_LIST_COUNT_CAP = 6
    _seed(owner_client.key, 6)
    body = _ok(owner_client.get(f"{API}?page=1&limit=2"))
    assert (body["total"], body["totalRelation"], body["totalPages"]) == (6, "eq", 3)


def test_count_above_the_cap_is_a_lower_bound_and_reads_at_most_cap_plus_one_rows(
    owner_client: Any, settings: Any
) -> None:
    settings.API_LIST_COUNT_CAP = 4
    _seed(owner_client.key, 9)
    with CaptureQueriesContext(connection) as queries:
        body = _ok(owner_client.get(f"{API}?page=1&limit=2"))
    assert (body["total"], body["totalRelation"], body["totalPages"]) == (4, "gte", 2)
    counts = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT COUNT(*)")]
    assert len(counts) == 1 and "LIMIT 5" in counts[0], counts


def test_pages_past_the_cap_still_work_and_the_last_page_gives_the_exact_total(
    owner_client: Any, settings: Any
) -> None:
    settings.API_LIST_COUNT_CAP = 4
    ids = sorted(_seed(owner_client.key, 9), reverse=True)
    third = _ok(owner_client.get(f"{API}?page=3&limit=2"))
    assert [t["id"] for t in third["items"]] == ids[4:6]
    # Rows were read past the cap: the bound says at least what this page reached.
    assert (third["total"], third["totalRelation"]) == (6, "gte")
    last = _ok(owner_client.get(f"{API}?page=5&limit=2"))
    assert [t["id"] for t in last["items"]] == ids[8:]
    assert (last["total"], last["totalRelation"], last["totalPages"]) == (9, "eq", 5)
    past = _ok(owner_client.get(f"{API}?page=9&limit=2"))
    assert past["items"] == [] and (past["total"], past["totalRelation"]) == (4, "gte")


def test_a_short_first_page_needs_no_count(owner_client: Any) -> None:
    _seed(owner_client.key, 2)
    with CaptureQueriesContext(connection) as queries:
        body = _ok(owner_client.get(f"{API}?page=1&limit=10&status=PENDING"))
    assert (body["total"], body["totalRelation"], body["totalPages"]) == (2, "eq", 1)
    assert not [q for q in queries.captured_queries if q["sql"].startswith("SELECT COUNT(*)")]
    empty = _ok(owner_client.get(f"{API}?page=1&limit=10&status=FAILED"))
    assert (empty["items"], empty["total"], empty["totalRelation"], empty["totalPages"]) == ([], 0, "eq", 0)


def test_unit_lists_share_the_capped_count(client_a: Any, register_unit: Any, settings: Any) -> None:
    settings.API_LIST_COUNT_CAP = 2
    for i in range(4):
        register_unit(f"u-{i}")
    body = _ok(client_a.get("/api/v1/execution-units?page=1&limit=1"))
    assert (body["total"], body["totalRelation"], len(body["items"])) == (2, "gte", 1)
    settings.API_LIST_COUNT_CAP = 10
    body = _ok(client_a.get("/api/v1/execution-units?page=1&limit=3"))
    assert (body["total"], body["totalRelation"], body["totalPages"]) == (4, "eq", 2)


def test_orderings_break_ties_by_id_in_their_own_direction(owner_client: Any) -> None:
    low = _seed(owner_client.key, 2, priority=1)
    high = _seed(owner_client.key, 2, priority=5)

    def order(ordering: str) -> list[int]:
        return [t["id"] for t in _ok(owner_client.get(f"{API}?ordering={ordering}"))["items"]]

    assert order("priority") == [*low, *high]
    assert order("-priority") == [*reversed(high), *reversed(low)]
    assert order("id") == sorted(low + high)
    assert order("-id") == sorted(low + high, reverse=True)
    Task.objects.update(created_at=timezone.now())
    assert order("createdAt") == sorted(low + high)
    assert order("-createdAt") == sorted(low + high, reverse=True)


def test_search_digits_match_the_id_only_and_words_match_names(owner_client: Any, client_b: Any) -> None:
    (named_digits,) = _seed(owner_client.key, 1, name="build 2024")
    (other,) = _seed(owner_client.key, 1, name="nightly report")

    def found(term: str, client: Any = owner_client) -> list[int]:
        return [t["id"] for t in _ok(client.get(f"{API}?search={term}"))["items"]]

    assert found(str(other)) == [other]
    assert found(f"00{other}") == [other]
    assert found("2024") == ([named_digits] if named_digits == 2024 else [])
    assert found("build 20") == [named_digits]
    assert found("REPORT") == [other]
    assert found(str(other), client_b) == []  # an id is looked up among the caller's own tasks only
    assert found("9" * 30) == []  # longer than any id: no task, not a 500
    # A Unicode digit ("²".isdigit() is true) is not an id: a name search. MariaDB's collation
    # equates "²" with "2", SQLite's does not.
    assert found("\u00b2") in ([], [named_digits])


def test_a_name_search_looks_at_the_newest_window_of_the_filtered_tasks(owner_client: Any, settings: Any) -> None:
    settings.API_SEARCH_WINDOW = 3
    old = _seed(owner_client.key, 2, name="alpha old")
    paused = _seed(owner_client.key, 1, name="alpha paused")
    Task.objects.filter(pk__in=paused).update(status=TaskStatus.PAUSED)  # test data, not a transition
    new = _seed(owner_client.key, 3, name="alpha new")

    windows: dict[str, int | None] = {}

    def found(query: str) -> list[int]:
        body = _ok(owner_client.get(f"{API}?{query}"))
        windows[query] = body.get("searchWindow")
        return [t["id"] for t in body["items"]]

    assert found("search=alpha") == sorted(new, reverse=True)
    assert found("search=old") == []  # older than the newest 3 ...
    assert windows["search=old"] == 3  # ... and the reply says older tasks were not searched
    # The window is taken after the other filters: the newest 3 PAUSED tasks hold the paused one.
    assert found("search=alpha&status=PAUSED") == paused
    assert windows["search=alpha&status=PAUSED"] is None  # one PAUSED task: nothing left out
    settings.API_SEARCH_WINDOW = 6  # exactly the caller's tasks: nothing left out
    assert found("search=old") == sorted(old, reverse=True)
    assert windows["search=old"] is None


# --- MariaDB: the plans ----------------------------------------------------------------------

STATUSES = [TaskStatus.PENDING, *[TaskStatus.COMPLETED] * 6, TaskStatus.FAILED, TaskStatus.CANCELLED, TaskStatus.PAUSED]
ROWS = 20_000


def _bulk(owner: Any, n: int) -> None:
    factories.tasks_in_bulk(
        n,
        now=timezone.now(),
        owner=owner,
        config={"inputFile": "data.csv", "outputFormat": "json"},
        row=lambda i: {
            "name": f"bench task {i}",
            "task_type": f"T{i % 5}",
            "priority": i % 7,
            "status": STATUSES[i % len(STATUSES)],
        },
    )


def _explain(sql: str) -> list[dict[str, Any]]:
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + sql)
        columns = [c[0] for c in cursor.description]
        return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


def _list_sql(client: Any, query: str) -> list[str]:
    """The reads of tasks the API sent for `query` (the page; a name search's window edge first),
    not the capped count."""
    with CaptureQueriesContext(connection) as queries:
        _ok(client.get(f"{API}?{query}"))
    reads = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT `tasks`.`id`")]
    assert reads and reads[-1].startswith("SELECT `tasks`.`id`, `tasks`.`owner_id`"), queries.captured_queries
    return reads


# (who lists, query, the indexes that read its page in order): each plan is one of them, no filesort.
PLANS = [
    ("key", "page=1&limit=10&status=PENDING", {"task_owner_status_idx"}),
    # 60% of the rows match: reading the owner's ids in order and skipping the rest is as good.
    ("key", "page=3&limit=10&status=COMPLETED", {"task_owner_status_idx", "task_owner_id_idx", "PRIMARY"}),
    ("key", "cursor=&limit=10&status=PENDING", {"task_owner_status_idx"}),
    ("key", "page=1&limit=10&status=PENDING&ordering=-priority", {"task_owner_prio_idx"}),
    ("key", "page=1&limit=10&status=PAUSED&ordering=priority", {"task_owner_prio_idx"}),
    ("key", "page=1&limit=10&ordering=-priority", {"task_owner_prio_idx"}),
    ("key", "page=1&limit=10", {"task_owner_id_idx"}),
    ("key", "page=50&limit=10", {"task_owner_id_idx"}),
    ("key", "cursor=&limit=10", {"task_owner_id_idx"}),
    ("key", "page=1&limit=10&search=task%201", {"task_owner_id_idx", "PRIMARY"}),
    ("operator", "page=1&limit=10&status=PENDING", {"task_status_id_idx"}),
    ("operator", "page=1&limit=10", {"PRIMARY"}),
]


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
def test_list_queries_read_one_index_in_order(make_client: Any) -> None:
    key_client = make_client("plans")
    _bulk(ApiKey.objects.get(name="plans"), ROWS)
    _bulk(factories.api_key("someone else")[0], ROWS // 4)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE TABLE tasks")
        cursor.fetchall()
    op_client = APIClient()
    op_client.force_login(operator())
    bad = []
    for who, query, keys in PLANS:
        for sql in _list_sql(key_client if who == "key" else op_client, query):
            plan = _explain(sql)
            print("EXPLAIN", who, query, plan)
            extra = (plan[0]["Extra"] or "").lower()
            if len(plan) != 1 or plan[0]["key"] not in keys or "filesort" in extra or plan[0]["type"] == "index_merge":
                bad.append((who, query, plan))
    assert not bad, bad


@pytest.mark.mariadb
@pytest.mark.django_db(transaction=True)
def test_heartbeat_reads_stored_commands_through_the_unit_command_index(register_unit: Any) -> None:
    unit, body = register_unit("veteran")
    now = timezone.now()
    Task.objects.bulk_create(
        [
            Task(
                name=f"done {i}",
                task_type="DATA_PROCESSING",
                status=TaskStatus.CANCELLED if i % 1000 == 0 else TaskStatus.COMPLETED,
                pending_command="cancel" if i % 1000 == 0 else "",
                max_retries=3,
                unit_id=body["id"],
                available_at=now,
                created_at=now,
                updated_at=now,
            )
            for i in range(5000)
        ],
        batch_size=2000,
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE TABLE tasks")
        cursor.fetchall()
    with CaptureQueriesContext(connection) as queries:
        response = unit.post(f"/api/v1/execution-units/{body['id']}/heartbeat", {"currentLoad": 0, "tasks": []})
    assert response.status_code == 200, response.content
    (sql,) = [q["sql"] for q in queries.captured_queries if "`pending_command` <> ''" in q["sql"]]
    plan = _explain(sql)
    print("EXPLAIN heartbeat leases", plan)
    assert len(plan) == 1 and "task_unit_command_idx" in (plan[0]["key"] or ""), plan
    # Two small ranges (the RUNNING leases, the 5 tasks with a command), not the 5,000 past tasks.
    assert int(plan[0]["rows"]) < 100, plan


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["tasks", "execution-units", "schedules"])
def test_every_list_caps_its_limit_at_the_page_size_setting(client_a: Any, settings: Any, path: str) -> None:
    # One PageQuery for every list: a limit above API_PAGE_SIZE_MAX is capped, never refused.
    settings.API_PAGE_SIZE_MAX = 7
    response = client_a.get(f"/api/v1/{path}?limit=5000")
    assert response.status_code == 200, response.content
    assert response.json()["limit"] == 7
    assert client_a.get(f"/api/v1/{path}?limit=0").status_code == 400
