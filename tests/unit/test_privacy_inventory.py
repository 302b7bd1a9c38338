"""docs/privacy.md lists every table and column of the schema, each with its purpose, basis and retention.

The inventory is the record of processing: a column nobody described is personal data nobody decided
to keep. The page's machine-checkable part is one ``### table <name>`` heading per table, each followed
by a Markdown table ``| column | personal? | purpose | basis | retention |``; this test compares it with
``gateway.schema.metadata`` both ways (a column added without a line here, and a line left behind for a
column that is gone) and checks that each line says something in every cell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from sqlalchemy import Column, MetaData, Table, Text

from gateway.schema import metadata

INVENTORY: Final = Path(__file__).resolve().parents[2] / "docs" / "privacy.md"
HEADER: Final = ("column", "personal?", "purpose", "basis", "retention")
ADD_IT: Final = "add it to docs/privacy.md with its purpose, basis and retention"
# The lawful bases a personal column may name (docs/privacy.md, "Words used here").
BASES: Final = ("contract", "legitimate interest", "legal obligation", "consent")
_HEADING: Final = re.compile(r"^### table (\S+)\s*$")


@dataclass(frozen=True, slots=True)
class Line:
    """One column's line of the inventory."""

    personal: str
    purpose: str
    basis: str
    retention: str


Inventory = dict[str, dict[str, Line]]


def _cells(row: str) -> list[str]:
    return [cell.strip().strip("`").strip() for cell in row.strip().strip("|").split("|")]


def parse_inventory(text: str) -> tuple[Inventory, list[str]]:
    """The tables and columns the page lists, and what is malformed about the page itself."""
    inventory: Inventory = {}
    problems: list[str] = []
    table: str | None = None
    seen_header = False
    for number, raw in enumerate(text.splitlines(), start=1):
        heading = _HEADING.match(raw)
        if heading is not None:
            table, seen_header = heading.group(1), False
            if table in inventory:
                problems.append(f"docs/privacy.md:{number}: table {table} is listed twice")
            inventory[table] = {}
            continue
        if raw.startswith("#"):
            table = None  # any other heading ends the table's section
            continue
        if table is None or not raw.startswith("|"):
            continue
        cells = _cells(raw)
        if not seen_header:
            if tuple(c.lower() for c in cells) != HEADER:
                problems.append(
                    f"docs/privacy.md:{number}: table {table}: expected the header | {' | '.join(HEADER)} |"
                )
            seen_header = True
            continue
        if set("".join(cells)) <= set("-: "):
            continue  # the |---| line
        if len(cells) != len(HEADER):
            problems.append(
                f"docs/privacy.md:{number}: table {table}: {len(cells)} cells, expected {len(HEADER)}"
            )
            continue
        column, personal, purpose, basis, retention = cells
        if column in inventory[table]:
            problems.append(f"docs/privacy.md:{number}: table {table}, column {column} is listed twice")
        inventory[table][column] = Line(personal, purpose, basis, retention)
        problems.extend(
            f"docs/privacy.md:{number}: {p}" for p in _line_problems(table, column, inventory[table][column])
        )
    return inventory, problems


def _line_problems(table: str, column: str, line: Line) -> list[str]:
    where = f"table {table}, column {column}"
    problems = []
    if line.personal.split(" ", 1)[0] not in ("yes", "no"):
        problems.append(f"{where}: 'personal?' must be yes or no, not {line.personal!r}")
    if not line.purpose or not line.retention:
        problems.append(f"{where}: say its purpose and retention")
    if line.personal.startswith("yes") and not any(basis in line.basis for basis in BASES):
        problems.append(
            f"{where}: personal data needs a lawful basis ({', '.join(BASES)}), not {line.basis!r}"
        )
    return problems


def inventory_problems(schema: MetaData, inventory: Inventory) -> list[str]:
    """Every difference between the schema and the inventory, naming the table and column."""
    problems = []
    for table in sorted(schema.tables.values(), key=lambda t: t.name):
        listed = inventory.get(table.name)
        if listed is None:
            problems.append(f"table {table.name} is not in the inventory: {ADD_IT} (a '### table' section)")
            continue
        problems.extend(
            f"table {table.name}, column {column.name} is not in the inventory: {ADD_IT}"
            for column in table.columns
            if column.name not in listed
        )
        problems.extend(
            f"table {table.name}, column {name} is in docs/privacy.md but no longer exists: remove its line"
            for name in listed
            if name not in table.columns
        )
    problems.extend(
        f"table {name} is in docs/privacy.md but no longer exists: remove its section"
        for name in sorted(set(inventory) - set(schema.tables))
    )
    return problems


def _copy(schema: MetaData) -> MetaData:
    copy = MetaData()
    for table in schema.sorted_tables:
        table.to_metadata(copy)
    return copy


def test_every_table_and_column_is_in_the_inventory() -> None:
    inventory, malformed = parse_inventory(INVENTORY.read_text(encoding="utf-8"))
    assert malformed == [], "\n".join(malformed)
    problems = inventory_problems(metadata, inventory)
    assert problems == [], "\n".join(problems)
    # The comparison really covered the schema (a parser that found nothing would also pass above).
    assert set(inventory) == set(metadata.tables)
    assert {"salts", "erased"} <= set(inventory["audit_events"])  # chain version 3, migration 0008


def test_a_new_column_or_table_fails_until_it_is_described() -> None:
    inventory, _ = parse_inventory(INVENTORY.read_text(encoding="utf-8"))
    schema = _copy(metadata)
    assert inventory_problems(schema, inventory) == []
    schema.tables["users"].append_column(Column("phone_number", Text))
    Table("loyalty_cards", schema, Column("id", Text, primary_key=True))
    schema.remove(schema.tables["kv_settings"])
    assert inventory_problems(schema, inventory) == [
        "table loyalty_cards is not in the inventory: "
        "add it to docs/privacy.md with its purpose, basis and retention (a '### table' section)",
        "table users, column phone_number is not in the inventory: "
        "add it to docs/privacy.md with its purpose, basis and retention",
        "table kv_settings is in docs/privacy.md but no longer exists: remove its section",
    ]
    # The real metadata is untouched by the experiment.
    assert "phone_number" not in metadata.tables["users"].columns


def test_a_column_left_behind_and_a_vague_line_are_named() -> None:
    text = """
### table users

| column | personal? | purpose | basis | retention |
|---|---|---|---|---|
| id | yes | the key | contract | until erased |
| nickname | maybe | fun | | |
| `email` | yes | contact | whatever | until erased |

### Not a table section

| column | personal? | purpose | basis | retention |
|---|---|---|---|---|
| ignored | no | x | — | y |
"""
    inventory, malformed = parse_inventory(text)
    assert set(inventory) == {"users"}
    assert set(inventory["users"]) == {"id", "nickname", "email"}
    assert [m.split(": ", 1)[1] for m in malformed] == [
        "table users, column nickname: 'personal?' must be yes or no, not 'maybe'",
        "table users, column nickname: say its purpose and retention",
        "table users, column email: personal data needs a lawful basis "
        "(contract, legitimate interest, legal obligation, consent), not 'whatever'",
    ]
    users = Table("users", MetaData(), Column("id", Text, primary_key=True), Column("email", Text))
    assert inventory_problems(users.metadata, inventory) == [
        "table users, column nickname is in docs/privacy.md but no longer exists: remove its line"
    ]
