"""Customers in PostgreSQL: birth and signup days and audience lists, and the cards
registered to them. Here is ``Customers`` (enroll, register a card, set audiences, look
customers up); ``Customers.customers`` is on the transaction path, one query per batch for
any number of ids, and everything else is administration. PostgreSQL failures become
``DatabaseUnavailableError`` (code 1001), as in the ledger.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Sequence

import psycopg

from processor import calendar
from processor.engine.types import Customer
from processor.errors import InternalError, InvalidFieldError, NotFoundError, mask_card
from processor.limits import (
    AUDIENCE_CHARS_MAX,
    AUDIENCES_MAX,
    CUSTOMER_ID_CHARS_MAX,
    LOOKUP_KEYS_MAX,
)
from processor.store.catalog_base import CatalogBase, ConflictError, one_row
from processor.store.ledger import database_error

_UPSERT_CUSTOMER = """
INSERT INTO customers (customer_id, birth_day, signup_day, audiences)
VALUES (%(id)s, %(birth)s, %(signup)s, %(audiences)s::text[])
ON CONFLICT (customer_id) DO UPDATE SET
    birth_day = excluded.birth_day,
    signup_day = excluded.signup_day,
    audiences = CASE WHEN %(keep_audiences)s THEN customers.audiences
                     ELSE excluded.audiences END,
    updated_at = now()
RETURNING birth_day, signup_day, audiences, (xmax = 0) AS created
"""


# --------------------------------------------------------------------------- customers


class Customers(CatalogBase):
    """Customers and their cards, over the Store's connection pool."""

    async def enroll(
        self,
        customer_id: str,
        birth_date: int | str | datetime.date | None = None,
        signup_date: int | str | datetime.date | None = None,
        audiences: Sequence[str] | None = None,
    ) -> tuple[Customer, bool]:
        """Create a customer, or update the one with this id; (customer as stored, created).

        ``audiences`` None keeps an existing customer's memberships.
        """
        _check_text(customer_id, "customer.id", CUSTOMER_ID_CHARS_MAX)
        params = {
            "id": customer_id,
            "birth": _as_day(birth_date, "customer.birth_date"),
            "signup": _as_day(signup_date, "customer.signup_date"),
            "audiences": _check_audiences(audiences or ()),
            "keep_audiences": audiences is None,
        }
        async with self._transaction("enroll a customer") as cursor:
            await cursor.execute(_UPSERT_CUSTOMER, params)
            birth, signup, stored, created = await one_row(cursor)
        return Customer(customer_id, birth, signup, frozenset(stored)), bool(created)

    async def register_card(self, card_number: str, customer_id: str) -> None:
        """Register a card to an enrolled customer; CARD_REGISTERED if another holds it."""
        async with self._transaction("register a card") as cursor:
            await cursor.execute("SELECT 1 FROM customers WHERE customer_id = %s", (customer_id,))
            if await cursor.fetchone() is None:
                raise NotFoundError(f"no customer {customer_id!r}", reason="UNKNOWN_CUSTOMER")
            await cursor.execute(
                "SELECT customer_id FROM cards WHERE card_number = %s FOR UPDATE", (card_number,)
            )
            row = await cursor.fetchone()
            if row is None:
                raise NotFoundError(f"no card {mask_card(card_number)}", reason="UNKNOWN_CARD")
            if row[0] == customer_id:
                return
            if row[0] is not None:
                raise ConflictError(
                    f"card {mask_card(card_number)} is registered to another customer",
                    reason="CARD_REGISTERED",
                )
            await cursor.execute(
                "UPDATE cards SET customer_id = %s WHERE card_number = %s",
                (customer_id, card_number),
            )

    async def set_audiences(self, customer_id: str, audiences: Iterable[str]) -> tuple[str, ...]:
        """Replace a customer's audience memberships; the memberships as stored, sorted."""
        lists = _check_audiences(audiences)
        async with self._transaction("set audiences") as cursor:
            await cursor.execute(
                "UPDATE customers SET audiences = %s::text[], updated_at = now()"
                " WHERE customer_id = %s",
                (lists, customer_id),
            )
            if cursor.rowcount == 0:
                raise NotFoundError(f"no customer {customer_id!r}", reason="UNKNOWN_CUSTOMER")
        return tuple(lists)

    async def customers(self, ids: Sequence[str]) -> dict[str, Customer]:
        """The customers of these ids that exist, in one query (the transaction path's)."""
        if len(ids) > LOOKUP_KEYS_MAX:
            raise InternalError(f"a lookup of {len(ids)} customers is over {LOOKUP_KEYS_MAX}")
        if not ids:
            return {}
        try:
            async with self._pool.connection() as connection:
                cursor = connection.cursor(binary=True)
                await cursor.execute(
                    "SELECT customer_id, birth_day, signup_day, audiences FROM customers"
                    " WHERE customer_id = ANY(%b::text[])",
                    (list(ids),),
                )
                rows = await cursor.fetchall()
        except psycopg.Error as error:
            raise database_error(error, "look up customers", self._pool.timeout) from error
        return {
            customer_id: Customer(customer_id, birth, signup, frozenset(audiences or ()))
            for customer_id, birth, signup, audiences in rows
        }


# --------------------------------------------------------------------------- helpers


def _as_day(value: int | str | datetime.date | None, field: str) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, datetime.date):
        return calendar.to_day(value)
    try:
        return calendar.parse_day(value)
    except ValueError:
        raise InvalidFieldError(field, f"{value!r} is not a date (YYYY-MM-DD)") from None


def _check_text(value: object, field: str, chars_max: int) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= chars_max:
        raise InvalidFieldError(field, f"must be 1 to {chars_max} characters")
    # PostgreSQL refuses NUL in text; other control characters have no place in a name.
    if not value.isprintable():
        raise InvalidFieldError(field, "must be printable text")
    return value


def _check_audiences(audiences: Iterable[str]) -> list[str]:
    unique = sorted(set(audiences))
    if len(unique) > AUDIENCES_MAX:
        raise InvalidFieldError("audiences", f"more than {AUDIENCES_MAX} lists")
    for name in unique:
        _check_text(name, "audiences", AUDIENCE_CHARS_MAX)
    return unique
