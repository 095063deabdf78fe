"""Money and points as integers: the only arithmetic the ledger knows.

Money is held in integer minor units of an ISO 4217 currency (cents for USD,
yen for JPY, fils for KWD); points are integers scaled by the loyalty
program's decimal precision (precision 2 stores 12.34 points as 1234). Program
files and request files write decimals; they are converted here, exactly, and a
value that cannot be held exactly is an error rather than a rounding.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from fractions import Fraction

import iso4217

# Every code the standard lists, with its minor-unit digits (None for "N.A."), read once:
# every purchase's currency is checked, and asking iso4217's enum each time cost 4 µs.
_EXPONENTS: dict[str, int | None] = {
    currency.code: currency.exponent for currency in iso4217.Currency
}


def currency_exponent(code: str) -> int:
    """Number of minor-unit digits of an ISO 4217 currency code.

    Codes the standard lists with no minor unit ("N.A.": XXX for "no currency", XTS for
    tests, XAU and the other metals, XDR) are not currencies of payment: nothing can be
    held exactly in them, so they are refused like an unknown code.
    """
    upper = code.upper()
    if upper not in _EXPONENTS:
        raise ValueError(f"unknown currency {code!r} (expected an ISO 4217 code)")
    exponent = _EXPONENTS[upper]
    if exponent is None:
        raise ValueError(
            f"{code.upper()} is not a currency of payment (ISO 4217 lists no minor unit)"
        )
    return exponent


def is_currency(code: str) -> bool:
    try:
        currency_exponent(code)
    except ValueError:
        return False
    return True


def scaled(value: Decimal | int | str, digits: int, what: str = "value") -> int:
    """``value`` times ``10**digits`` as an int; raises ValueError if not exact."""
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"{what} {value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"{what} {value!r} is not a finite number")
    units = number.scaleb(digits)
    if units != units.to_integral_value():
        raise ValueError(f"{what} {value} has more than {digits} decimal places")
    return int(units)


def to_minor(value: Decimal | int | str, currency: str) -> int:
    """Minor units of a decimal amount of ``currency``."""
    return scaled(value, currency_exponent(currency), f"amount in {currency}")


def to_points(value: Decimal | int | str, precision: int) -> int:
    """Point units of a decimal number of points at ``precision`` decimals."""
    return scaled(value, precision, "points")


def format_units(units: int, digits: int) -> str:
    """Decimal text of an integer scaled by ``10**digits`` (1234, 2 -> "12.34")."""
    if digits == 0:
        return str(units)
    sign = "-" if units < 0 else ""
    whole, frac = divmod(abs(units), 10**digits)
    return f"{sign}{whole}.{frac:0{digits}d}"


def ratio(value: Decimal | int | str, digits_max: int = 6) -> Fraction:
    """An exact fraction for a multiplier or factor with at most ``digits_max`` decimals."""
    units = scaled(value, digits_max, "factor")
    return Fraction(units, 10**digits_max)


def convert(amount: int, currency: str, rate: str | None, base_currency: str) -> int:
    """Minor units of ``base_currency`` for ``amount`` minor units of ``currency``.

    ``rate`` is the decimal number of base units per one unit of ``currency``
    (for EUR to USD, "1.08"), supplied by the caller with the transaction.
    The result is rounded half to even, the usual banking rule, because
    conversion is the one place an exact result may not exist.
    """
    if currency.upper() == base_currency.upper():
        return amount
    if rate is None:
        raise ValueError(f"an exchange rate is needed to convert {currency} to {base_currency}")
    factor = ratio(rate, 9) * Fraction(
        10 ** currency_exponent(base_currency), 10 ** currency_exponent(currency)
    )
    if factor <= 0:
        raise ValueError(f"exchange rate {rate!r} must be positive")
    return round(amount * factor)
