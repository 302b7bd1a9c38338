"""Ids from request data (``gateway.store.ids``) and values the database refuses (``store_errors``).

The helper's table, then the storage boundary on SQLite and PostgreSQL: a value a column cannot hold
is the request's fault (400 without the driver's text), never an outage (503).
"""

from __future__ import annotations

import pytest
from sqlalchemy import text

from gateway.authz.models import PolicyVersion
from gateway.errors import BadRequest
from gateway.store.db import Database, StoreUnavailable, store_errors
from gateway.store.ids import MAX_ID, BadId, parse_id


@pytest.mark.parametrize(
    ("given", "expected"),
    [("1", 1), ("42", 42), ("0042", 42), (str(MAX_ID), MAX_ID), (7, 7), (MAX_ID, MAX_ID)],
)
def test_an_id_of_the_right_shape_is_its_number(given: str | int, expected: int) -> None:
    assert parse_id(given) == expected


@pytest.mark.parametrize(
    "given",
    [
        str(MAX_ID + 1),  # 2147483648: one past PostgreSQL's INTEGER
        "99999999999999999999",  # past 64 bits: SQLite's driver overflows
        "-1",
        "0",
        "",
        "abc",
        "+1",
        " 1",
        "1 ",
        "1.0",
        "1e3",
        "0x10",
        "1_000",
        "\u0661",  # ARABIC-INDIC DIGIT ONE: str.isdigit() and int() accept it
        "\u00b9",  # SUPERSCRIPT ONE: isdigit() accepts it, int() does not
        "00000000001",  # eleven characters: longer than any id
        MAX_ID + 1,
        0,
        -5,
        True,
    ],
)
def test_anything_else_is_a_400_bad_id(given: str | int) -> None:
    with pytest.raises(BadId) as raised:
        parse_id(given, what="version")
    assert raised.value.status == 400
    assert raised.value.reason == "bad-id"
    assert raised.value.detail == f"The version must be a whole number from 1 to {MAX_ID}."


async def _get_version(database: Database, value: int) -> PolicyVersion | None:
    with store_errors("policy load failed"):
        async with database.session() as session:
            return await session.get(PolicyVersion, value)


def _assert_refused_quietly(err: BadRequest, value: int) -> None:
    assert not isinstance(err, StoreUnavailable)
    assert err.status == 400
    for leak in ("int32", "asyncpg", "SQLite", "Error", str(value)):
        assert leak not in err.detail


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1])
async def test_a_value_beyond_64_bits_is_a_400_without_driver_text(database: Database, value: int) -> None:
    with pytest.raises(BadRequest) as raised:
        await _get_version(database, value)
    _assert_refused_quietly(raised.value, value)


async def test_a_value_beyond_integer_is_a_400_on_postgresql_and_absent_on_sqlite(database: Database) -> None:
    """asyncpg refuses int32 overflow itself; SQLite's INTEGER holds 64 bits, so there it is merely absent."""
    if database.backend == "sqlite":
        assert await _get_version(database, MAX_ID + 1) is None
        return
    with pytest.raises(BadRequest) as raised:
        await _get_version(database, MAX_ID + 1)
    _assert_refused_quietly(raised.value, MAX_ID + 1)


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_a_data_exception_from_the_server_is_a_400(database: Database) -> None:
    """SQLSTATE class 22 raised by PostgreSQL itself (SQLite converts instead of refusing)."""
    with pytest.raises(BadRequest), store_errors("probe"):
        async with database.session() as session:
            await session.execute(text("SELECT CAST('99999999999' AS INTEGER)"))


async def test_other_database_errors_are_still_an_outage(database: Database) -> None:
    with pytest.raises(StoreUnavailable), store_errors("probe"):
        async with database.session() as session:
            await session.execute(text("SELECT * FROM no_such_table"))
