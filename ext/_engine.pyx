# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The compiled engine: the reference engine's purchase path over flat, typed arrays.

processor.engine.reference is the definition of correct behaviour; this module must
give the same results, result for result and trace entry for trace entry, and the
test suite runs the same tests on both. What it does differently is *how*:

- a program is packed once (``PackedProgram``): rules, windows, item, location and
  tender sets, level tables become C structs and int arrays, strings become ids;
- a purchase's lines are packed into arrays once, then every issue rule runs over them
  in C;
- a loyalty account is packed once per batch (``PackedAccount``: lots in arrays), and
  turned back into Python objects only when the caller reads ``accounts``;
- results and receipts are recorded as rows of integers and built as Python objects
  only when read (``results[i]``, ``receipts[id]``); the answer of a fast-path result
  is written as loyalty.v1 bytes straight from its rows (``results.answers``, the bytes
  processor.wire.answers writes, tested equal), so its trace never becomes objects.

Purchases are the hot path. Everything else (returns, voids, engagements, tender
operations, award redemptions, purchases with stored value, coupons presented or a
foreign currency, and any amount too large for 64-bit arithmetic) is handed to the
reference engine request by request, on the same account states, so the two engines
cannot drift apart on the rare paths.
"""

from libc.stdint cimport int64_t, INT64_MAX, INT64_MIN
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memset

from calendar cimport (
    PeriodUnit, add_period, civil_from_days, days_from_civil, days_in_month, floor_mod,
    month_index, weekday, year_of,
)
from limits cimport LINES_MAX

include "wire.pxi"
include "msgpack.pxi"
include "lots.pxi"
include "slots.pxi"

import copy
import gc
import weakref
from collections.abc import Mapping

from processor.engine import shared
from processor.engine.codes import award_code
from processor.engine.types import (
    AccountState, Award, AwardIssue, LevelMove, LineEarning, Lot, LoyaltyAccount, Posting,
    Purchase, Receipt, Result, TraceEntry,
)
from processor.store.codec import (
    DeferredState, loyalty_award_fields, loyalty_awards_from, loyalty_fields,
    loyalty_from_stored, padded_loyalty_fields, state_fields, trimmed_loyalty_fields,
)

cdef int64_t SPENT_MOST = shared.SPENT_MONTH_UNITS_MAX
cdef _Maker _POSTING = _Maker(Posting)
cdef _Maker _LEVEL_MOVE = _Maker(LevelMove)

# Compile-time constants: enums for small ints, a macro for the 64-bit one (an enum is a
# C int). Cython 3 deprecates DEF.
cdef extern from *:
    """
    #define LOYALTY_NONE_DAY (-INT64_MAX)
    """
    # Stands for "no date" (None) in day columns.
    const int64_t NONE_DAY "LOYALTY_NONE_DAY"

cdef enum:
    MONTHS_KEPT = 37
    SPENT_MONTHS_KEPT = 2
    AWARDS_PER_RULE_MAX = 100
    # Shared trace entries: string ids below this fit a key of one int (20 bits each);
    # at most this many kept per program.
    TRACE_ID_LIMIT = 1 << 20
    TRACE_ENTRIES_MAX = 65536

# Calculation types, time rule types, award and movement kinds, as small ints.
cdef enum Calculation:
    CALC_VALUE = 0
    CALC_QUANTITY = 1
    CALC_ENGAGEMENTS = 2
    CALC_TRANSACTIONS = 3
    CALC_VISITS = 4
    CALC_MONTH_SPEND = 5

cdef enum TimeRule:
    TIME_BIRTHDAY = 0
    TIME_SIGNUP = 1
    TIME_BONUS = 2
    TIME_BLACKOUT = 3

cdef enum AwardKind:
    AWARD_COUPON = 0
    AWARD_EAWARD = 1
    AWARD_CERTIFICATE = 2

cdef enum MoveKind:
    MOVE_ADVANCEMENT = 0
    MOVE_SUSTAIN = 1
    MOVE_DEMOTION = 2

cdef enum TestKind:
    TEST_YTD = 0
    TEST_LTD = 1
    TEST_SINCE_MOVE = 2
    TEST_AVERAGE = 3
    TEST_TIME = 4

_CALCULATIONS = {"item_value": CALC_VALUE, "item_quantity": CALC_QUANTITY,
                 "engagements": CALC_ENGAGEMENTS, "transactions": CALC_TRANSACTIONS,
                 "visits": CALC_VISITS, "month_spend": CALC_MONTH_SPEND}
_TIME_TYPES = {"birthday_anniversary": TIME_BIRTHDAY, "signup_anniversary": TIME_SIGNUP,
               "bonus_period": TIME_BONUS, "blackout_period": TIME_BLACKOUT}
_UNITS = {"day": 0, "week": 1, "month": 2, "year": 3}
_TESTS = {"ytd": TEST_YTD, "ltd": TEST_LTD, "since_last_move": TEST_SINCE_MOVE,
          "average_per_month": TEST_AVERAGE, "time_since_last_move": TEST_TIME}
_MOVES = {"advancement": MOVE_ADVANCEMENT, "sustain": MOVE_SUSTAIN, "demotion": MOVE_DEMOTION}
_WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# --------------------------------------------------------------------------- growable arrays


cdef class I64Vec:
    """A growable array of int64, the storage of every packed table."""

    cdef int64_t* data
    cdef Py_ssize_t size
    cdef Py_ssize_t capacity

    def __cinit__(self, Py_ssize_t capacity=16):
        self.capacity = capacity if capacity > 0 else 16
        self.size = 0
        self.data = <int64_t*> malloc(self.capacity * sizeof(int64_t))
        if self.data == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.data)

    cdef inline int push(self, int64_t value) except -1:
        cdef int64_t* grown
        if self.size == self.capacity:
            grown = <int64_t*> realloc(self.data, 2 * self.capacity * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError()
            self.data = grown
            self.capacity *= 2
        self.data[self.size] = value
        self.size += 1
        return 0

    cdef inline void clear(self) noexcept:
        self.size = 0

    cdef I64Vec copy(self):
        cdef I64Vec other = I64Vec(self.size + 4)
        cdef Py_ssize_t i
        for i in range(self.size):
            other.data[i] = self.data[i]
        other.size = self.size
        return other


cdef inline void remove_at(I64Vec column, Py_ssize_t index) noexcept:
    cdef Py_ssize_t i
    for i in range(index, column.size - 1):
        column.data[i] = column.data[i + 1]
    column.size -= 1


cdef inline int64_t day_or_none(object value):
    return NONE_DAY if value is None else <int64_t> value


cdef inline object none_or_day(int64_t value):
    return None if value == NONE_DAY else value


cdef inline int64_t period_after(int64_t day, int64_t count, int64_t unit) noexcept nogil:
    return add_period(day, count, <PeriodUnit> unit)


# --------------------------------------------------------------------------- packed program


cdef struct TimeRuleC:
    int type
    int weekdays            # bit i set: weekday i (Monday 0) matches
    int64_t start_time
    int64_t end_time
    int64_t start_date      # NONE_DAY: open
    int64_t end_date
    int64_t days_before
    int64_t days_after


cdef struct ItemRuleC:
    int select              # 0 all, 1 hierarchy, 2 items
    Py_ssize_t nodes_at, nodes_count
    Py_ssize_t items_at, items_count
    Py_ssize_t conditions_at, conditions_count


cdef struct IssueRuleC:
    int calc
    bint bonus
    int64_t num             # factor = num / den point units per minor unit (or per item)
    int64_t den
    int64_t measure_max     # largest line measure whose product with num fits in int64
    int64_t fixed
    int64_t minimum         # -1: no transaction minimum
    int64_t max_per_day     # -1: no limit
    bint include_non_merchandise
    bint allow_zero_price
    int64_t start_date
    int64_t end_date        # NONE_DAY: open
    int64_t level_mask      # 0: every level
    bint card_customer      # customer eligibility by card (else by transaction)
    Py_ssize_t times_at, times_count
    int item_include        # index into the item rules, -1: none
    int item_exclude
    Py_ssize_t tenders_at
    Py_ssize_t tenders_count   # -1: no tender rule
    Py_ssize_t locations_at    # into the location verdict table
    bint unknown_location_allowed
    bint audience
    int64_t rule_string     # string ids for results
    int64_t key_string      # "program/rule"


cdef struct AwardRuleC:
    int type
    bint cashback
    bint by_job
    int64_t level_mask
    int64_t start_date
    int64_t end_date
    int64_t threshold
    int64_t cost
    bint reset_balance
    int64_t amount
    int64_t minimum
    int64_t value_num       # cashback: award minor units per point unit, as a fraction
    int64_t value_den
    int expiry              # 0 none, 1 relative, 2 the holder's award expiry
    int64_t expiry_count
    int64_t expiry_unit
    int64_t rule_string


cdef struct MovementRuleC:
    int type
    int source_level
    int target_level
    bint by_job
    int64_t start_date
    int64_t end_date
    int64_t threshold
    int64_t cost
    int test
    int64_t months
    int64_t period_count
    int64_t period_unit
    bint extension
    int extension_test
    int64_t extension_months
    int64_t extension_threshold
    int64_t extend_count
    int64_t extend_unit
    int64_t rule_string
    int64_t kind_string


cdef struct LevelC:
    bint active
    bint negative_allowed
    int aging               # 0 none, 1 fixed, 2 relative
    int64_t aging_count
    int64_t aging_unit
    bint escrow
    int64_t escrow_count
    int64_t escrow_unit
    int64_t id_string
    int64_t not_for_string  # "not for level <id>"
    int64_t inactive_string # "level <id> is inactive"


cdef class Strings:
    """Every string a result can hold, as an int: rule ids, reasons, kinds, programs."""

    cdef public list values
    cdef public dict ids

    def __cinit__(self):
        self.values = []
        self.ids = {}

    cdef inline int64_t id(self, str text):
        found = self.ids.get(text)
        if found is not None:
            return <int64_t> found
        cdef int64_t new = len(self.values)
        self.values.append(text)
        self.ids[text] = new
        return new


cdef class PackedPlan:
    """One loyalty program of a packed program."""

    cdef object plan
    cdef object program
    cdef str pid
    cdef int64_t pid_string
    cdef int64_t version
    cdef bint active
    cdef int64_t start_date
    cdef int64_t end_date
    cdef bint card_required
    cdef str currency
    cdef bint open_on_first
    cdef object holder
    cdef int start_level
    cdef int level_count
    cdef LevelC* levels
    cdef list level_ids
    cdef dict level_index
    cdef int issue_count
    cdef IssueRuleC* issue
    cdef list issue_plans
    cdef int time_count
    cdef TimeRuleC* times
    cdef int item_rule_count
    cdef ItemRuleC* item_rules
    cdef I64Vec ints           # node, item, tender and condition tables
    cdef bytearray location_verdicts
    cdef int award_count
    cdef AwardRuleC* award
    cdef list award_plans
    cdef int movement_count
    cdef MovementRuleC* movement
    cdef list movement_plans
    cdef int64_t points_balance_string
    cdef int64_t escrow_balance_string
    cdef dict issue_positions
    cdef int64_t measure_max       # the smallest of the issue rules' measure_max

    def __dealloc__(self):
        free(self.levels)
        free(self.issue)
        free(self.times)
        free(self.item_rules)
        free(self.award)
        free(self.movement)


cdef class PackedProgram:
    """A compiled program packed for the hot loop; built once per program version."""

    cdef public object program
    cdef public Strings strings
    cdef dict symbols          # item, hierarchy, attribute, tender and location names -> id
    cdef dict location_index   # location -> position in each rule's verdict table
    cdef int location_count
    cdef list plans
    # The trace entries made so far, shared between results (TraceEntry is frozen): most
    # are the same from one result to the next, and making one cost more than finding it.
    cdef dict trace_entries
    # The same entries as encoded loyalty.v1 trace fields, for answers written from rows
    # (Batch.row_bytes), under the same keys.
    cdef dict trace_fields
    # Fixed strings the hot loop writes into results.
    cdef int64_t s_empty, s_points, s_escrow, s_regular, s_bonus, s_expire, s_award_cost
    cdef int64_t s_move_cost, s_age_points, s_inactivity, s_lot_expiry, s_extension, s_extended
    cdef int64_t s_not_in_effect, s_card_required, s_no_account, s_counts_engagements
    cdef int64_t s_counts_month_spend
    cdef int64_t s_outside_dates, s_no_customer, s_not_in_audience, s_blackout, s_outside_bonus
    cdef int64_t s_not_birthday, s_not_signup, s_location, s_tender, s_minimum, s_no_items
    cdef int64_t s_visit, s_daily, s_no_points, s_by_job, s_on_posting, s_below_threshold
    cdef int64_t s_below_minimum, s_changes_by_job, s_changes_on_posting, s_test_not_met
    cdef int64_t s_sustain_extended, s_move_balance

    def __init__(self, program):
        self.program = program
        self.strings = Strings()
        self.symbols = {}
        self.plans = []
        self.trace_entries = {}
        self.trace_fields = {}
        self._fixed_strings()
        self._locations(program)
        for plan in program.loyalty:
            self.plans.append(self._pack_plan(plan))

    cdef void _fixed_strings(self):
        cdef Strings s = self.strings
        self.s_empty = s.id("")
        self.s_points = s.id("points")
        self.s_escrow = s.id("escrow")
        self.s_regular = s.id("regular")
        self.s_bonus = s.id("bonus")
        self.s_expire = s.id("expire")
        self.s_award_cost = s.id("award_cost")
        self.s_move_cost = s.id("move_cost")
        self.s_age_points = s.id("age_points")
        self.s_inactivity = s.id("inactivity")
        self.s_lot_expiry = s.id("lot expiry")
        self.s_extension = s.id("extension")
        self.s_extended = s.id("extended")
        self.s_not_in_effect = s.id("program not in effect")
        self.s_card_required = s.id("card required")
        self.s_no_account = s.id("card has no account in this program")
        self.s_counts_engagements = s.id("counts engagements, not purchases")
        self.s_counts_month_spend = s.id(shared.MONTH_SPEND_REASON)
        self.s_outside_dates = s.id("outside rule dates")
        self.s_no_customer = s.id("no customer for the audience rule")
        self.s_not_in_audience = s.id("customer not in audience")
        self.s_blackout = s.id("blackout period")
        self.s_outside_bonus = s.id("outside bonus period")
        self.s_not_birthday = s.id("not the birthday anniversary")
        self.s_not_signup = s.id("not the signup anniversary")
        self.s_location = s.id("location not eligible")
        self.s_tender = s.id("tender type not eligible")
        self.s_minimum = s.id("below transaction minimum")
        self.s_no_items = s.id("no qualifying items")
        self.s_visit = s.id("visit already counted today")
        self.s_daily = s.id("daily transaction limit reached")
        self.s_no_points = s.id("no points")
        self.s_by_job = s.id("issued by the award job")
        self.s_on_posting = s.id("issued on posting")
        self.s_below_threshold = s.id("below threshold")
        self.s_below_minimum = s.id("below minimum award")
        self.s_changes_by_job = s.id("changes level by job")
        self.s_changes_on_posting = s.id("changes on posting")
        self.s_test_not_met = s.id("test not met")
        self.s_sustain_extended = s.id("sustain period extended")
        self.s_move_balance = s.id("balance below the move's points cost")

    cdef int64_t symbol(self, str text):
        found = self.symbols.get(text)
        if found is not None:
            return <int64_t> found
        cdef int64_t new = len(self.symbols)
        self.symbols[text] = new
        return new

    cdef void _locations(self, program):
        names = set(program.directory)
        for plan in program.loyalty:
            for rule in plan.program.issue_rules:
                for location in (rule.location_include, rule.location_exclude):
                    if location is not None:
                        names.update(location.locations)
        self.location_index = {name: index for index, name in enumerate(sorted(names))}
        self.location_count = len(self.location_index)

    cdef PackedPlan _pack_plan(self, plan):
        cdef PackedPlan packed = PackedPlan()
        loyalty = plan.program
        packed.plan = plan
        packed.program = loyalty
        packed.pid = loyalty.id
        packed.pid_string = self.strings.id(loyalty.id)
        packed.version = self.program.version
        packed.active = loyalty.active
        packed.start_date = loyalty.start_date
        packed.end_date = day_or_none(loyalty.end_date)
        packed.card_required = loyalty.card_required
        packed.currency = loyalty.currency.upper()
        packed.open_on_first = loyalty.accounts_on_first_transaction
        packed.holder = plan.award_program
        packed.ints = I64Vec(64)
        packed.location_verdicts = bytearray()
        packed.points_balance_string = self.strings.id(f"points:{loyalty.id}")
        packed.escrow_balance_string = self.strings.id(f"escrow:{loyalty.id}")
        self._pack_levels(packed, loyalty)
        self._pack_issue(packed, plan)
        self._pack_awards(packed, plan)
        self._pack_movements(packed, plan)
        return packed

    cdef void _pack_levels(self, PackedPlan packed, loyalty):
        cdef int index
        cdef LevelC* level
        packed.level_count = len(loyalty.levels)
        packed.levels = <LevelC*> malloc(packed.level_count * sizeof(LevelC))
        memset(packed.levels, 0, packed.level_count * sizeof(LevelC))
        packed.level_ids = [level_model.id for level_model in loyalty.levels]
        packed.level_index = {name: index for index, name in enumerate(packed.level_ids)}
        for index, level_model in enumerate(loyalty.levels):
            level = &packed.levels[index]
            level.active = level_model.active
            level.negative_allowed = level_model.negative_balance_allowed
            if level_model.age_points is not None:
                level.aging = 1 if level_model.age_points.type == "fixed" else 2
                level.aging_count = level_model.age_points.after.count
                level.aging_unit = _UNITS[level_model.age_points.after.unit]
            if level_model.escrow is not None:
                level.escrow = True
                level.escrow_count = level_model.escrow.count
                level.escrow_unit = _UNITS[level_model.escrow.unit]
            level.id_string = self.strings.id(level_model.id)
            level.not_for_string = self.strings.id(f"not for level {level_model.id}")
            level.inactive_string = self.strings.id(f"level {level_model.id} is inactive")
        packed.start_level = packed.level_index[loyalty.start_level]

    cdef int64_t _level_mask(self, PackedPlan packed, levels):
        cdef int64_t mask = 0
        for level in levels:
            mask |= (<int64_t> 1) << packed.level_index[level]
        return mask

    cdef int _pack_item_rule(self, PackedPlan packed, rule, list item_rules):
        if rule is None:
            return -1
        cdef I64Vec ints = packed.ints
        entry = {"select": {"all": 0, "hierarchy": 1, "items": 2}[rule.select]}
        entry["nodes_at"] = ints.size
        for node in rule.hierarchy:
            ints.push(self.symbol(node))
        entry["nodes_count"] = len(rule.hierarchy)
        entry["items_at"] = ints.size
        for item in rule.items:
            ints.push(self.symbol(item))
        entry["items_count"] = len(rule.items)
        # A condition is: name id, value count, value ids.
        entry["conditions_at"] = ints.size
        for condition in rule.attributes:
            ints.push(self.symbol(condition.name))
            ints.push(len(condition.values))
            for value in condition.values:
                ints.push(self.symbol(value))
        entry["conditions_count"] = len(rule.attributes)
        item_rules.append(entry)
        return len(item_rules) - 1

    cdef void _pack_issue(self, PackedPlan packed, plan):
        cdef Py_ssize_t index, count = len(plan.issue)
        cdef IssueRuleC* rule
        cdef TimeRuleC* time_rule
        cdef list item_rules = []
        cdef list time_rules = []
        packed.issue_count = count
        packed.measure_max = INT64_MAX
        packed.issue_plans = list(plan.issue)
        packed.issue_positions = {issue.rule.id: index for index, issue in enumerate(plan.issue)}
        packed.issue = <IssueRuleC*> malloc((count + 1) * sizeof(IssueRuleC))
        memset(packed.issue, 0, (count + 1) * sizeof(IssueRuleC))
        for index, issue in enumerate(plan.issue):
            model = issue.rule
            rule = &packed.issue[index]
            rule.calc = _CALCULATIONS[model.calculation]
            rule.bonus = model.is_bonus
            rule.num = issue.factor.numerator
            rule.den = issue.factor.denominator
            rule.measure_max = INT64_MAX // rule.num if rule.num > 0 else INT64_MAX
            if rule.measure_max < packed.measure_max:
                packed.measure_max = rule.measure_max
            rule.fixed = issue.fixed_points
            rule.minimum = -1 if issue.minimum_minor is None else issue.minimum_minor
            rule.max_per_day = -1 if model.max_transactions_per_day is None else model.max_transactions_per_day
            rule.include_non_merchandise = model.include_non_merchandise
            rule.allow_zero_price = model.allow_zero_price
            rule.start_date = model.start_date
            rule.end_date = day_or_none(model.end_date)
            rule.level_mask = self._level_mask(packed, model.levels)
            rule.card_customer = model.customer_eligibility == "card"
            rule.times_at = len(time_rules)
            rule.times_count = len(model.time_rules)
            for time_model in model.time_rules:
                time_rules.append(time_model)
            rule.item_include = self._pack_item_rule(packed, model.item_include, item_rules)
            rule.item_exclude = self._pack_item_rule(packed, model.item_exclude, item_rules)
            rule.tenders_at = packed.ints.size
            if model.tender is None:
                rule.tenders_count = -1
            else:
                rule.tenders_count = len(model.tender.types)
                for tender_type in model.tender.types:
                    packed.ints.push(self.symbol(tender_type))
            rule.locations_at = len(packed.location_verdicts)
            rule.unknown_location_allowed = model.location_include is None
            for location in sorted(self.location_index, key=self.location_index.get):
                packed.location_verdicts.append(
                    1 if _location_allowed(location, model, self.program.directory) else 0
                )
            rule.audience = model.audience is not None
            rule.rule_string = self.strings.id(model.id)
            rule.key_string = self.strings.id(issue.key)
        packed.time_count = len(time_rules)
        packed.times = <TimeRuleC*> malloc((len(time_rules) + 1) * sizeof(TimeRuleC))
        memset(packed.times, 0, (len(time_rules) + 1) * sizeof(TimeRuleC))
        for index, time_model in enumerate(time_rules):
            time_rule = &packed.times[index]
            time_rule.type = _TIME_TYPES[time_model.type]
            time_rule.days_before = time_model.days_before
            time_rule.days_after = time_model.days_after
            window = time_model.window
            if window is not None:
                time_rule.weekdays = 0
                for day_name in window.weekdays:
                    time_rule.weekdays |= 1 << _WEEKDAYS.index(day_name)
                time_rule.start_time = window.start_time
                time_rule.end_time = window.end_time
                time_rule.start_date = day_or_none(window.start_date)
                time_rule.end_date = day_or_none(window.end_date)
        packed.item_rule_count = len(item_rules)
        packed.item_rules = <ItemRuleC*> malloc((len(item_rules) + 1) * sizeof(ItemRuleC))
        for index, entry in enumerate(item_rules):
            packed.item_rules[index].select = entry["select"]
            packed.item_rules[index].nodes_at = entry["nodes_at"]
            packed.item_rules[index].nodes_count = entry["nodes_count"]
            packed.item_rules[index].items_at = entry["items_at"]
            packed.item_rules[index].items_count = entry["items_count"]
            packed.item_rules[index].conditions_at = entry["conditions_at"]
            packed.item_rules[index].conditions_count = entry["conditions_count"]

    cdef void _pack_awards(self, PackedPlan packed, plan):
        cdef Py_ssize_t index, count = len(plan.award)
        cdef AwardRuleC* rule
        packed.award_count = count
        packed.award_plans = list(plan.award)
        packed.award = <AwardRuleC*> malloc((count + 1) * sizeof(AwardRuleC))
        memset(packed.award, 0, (count + 1) * sizeof(AwardRuleC))
        for index, award in enumerate(plan.award):
            model = award.rule
            rule = &packed.award[index]
            rule.type = {"coupon": AWARD_COUPON, "e_award": AWARD_EAWARD,
                         "certificate": AWARD_CERTIFICATE}[model.type]
            rule.cashback = model.cost_type == "cashback"
            rule.by_job = model.issue == "job"
            rule.level_mask = self._level_mask(packed, model.levels)
            rule.start_date = model.start_date
            rule.end_date = day_or_none(model.end_date)
            rule.threshold = award.threshold
            rule.cost = award.cost
            rule.reset_balance = model.reset_balance
            rule.amount = award.amount_minor
            rule.minimum = award.minimum_minor
            rule.value_num = award.value_per_point.numerator
            rule.value_den = award.value_per_point.denominator
            rule.expiry = 0
            if model.expiry is not None and model.expiry.type == "relative":
                rule.expiry = 1
                rule.expiry_count = model.expiry.after.count
                rule.expiry_unit = _UNITS[model.expiry.after.unit]
            elif model.expiry is not None:
                holder = award.holder
                if holder is not None and holder.award_expiry is not None:
                    rule.expiry = 2
                    rule.expiry_count = holder.award_expiry.count
                    rule.expiry_unit = _UNITS[holder.award_expiry.unit]
            rule.rule_string = self.strings.id(model.id)

    cdef void _pack_movements(self, PackedPlan packed, plan):
        cdef Py_ssize_t index, count = len(plan.movement)
        cdef MovementRuleC* rule
        packed.movement_count = count
        packed.movement_plans = list(plan.movement)
        packed.movement = <MovementRuleC*> malloc((count + 1) * sizeof(MovementRuleC))
        memset(packed.movement, 0, (count + 1) * sizeof(MovementRuleC))
        for index, movement in enumerate(plan.movement):
            model = movement.rule
            rule = &packed.movement[index]
            rule.type = _MOVES[model.type]
            rule.source_level = packed.level_index.get(model.source_level, -1)
            rule.target_level = packed.level_index.get(model.target_level, -1)
            rule.by_job = model.change == "job"
            rule.start_date = model.start_date
            rule.end_date = day_or_none(model.end_date)
            rule.threshold = movement.threshold
            rule.cost = movement.cost
            rule.test = _TESTS[model.test.type]
            rule.months = model.test.months or 1
            if model.test.period is not None:
                rule.period_count = model.test.period.count
                rule.period_unit = _UNITS[model.test.period.unit]
            if model.extension is not None:
                rule.extension = True
                rule.extension_test = _TESTS[model.extension.test.type]
                rule.extension_months = model.extension.test.months or 1
                rule.extension_threshold = movement.extension_threshold
                rule.extend_count = model.extension.extend_by.count
                rule.extend_unit = _UNITS[model.extension.extend_by.unit]
            rule.rule_string = self.strings.id(model.id)
            rule.kind_string = self.strings.id(model.type)


def _location_allowed(location, rule, directory):
    from processor.program.rules import location_allowed
    return location_allowed(location, rule.location_include, rule.location_exclude, directory)


# --------------------------------------------------------------------------- packed accounts


cdef class PackedLoyalty:
    """A loyalty account in arrays: scalars, lots as columns, months and daily rule uses."""

    cdef PackedPlan plan
    cdef int level
    cdef int64_t created_day, level_since_day, last_activity_day, debt
    cdef int64_t earned_ltd, earned_ytd, ytd_year, earned_since_move, sustain_until
    cdef I64Vec lot_earned, lot_rule, lot_kind, lot_points, lot_available, lot_expires
    cdef I64Vec lot_version
    cdef I64Vec months, month_points
    cdef I64Vec spent_months, spent_amounts  # in the order of the reference's dict
    cdef I64Vec rule_day_day, rule_day_uses, rule_day_set
    cdef dict rule_day_other
    cdef dict rule_period
    cdef dict rule_total
    cdef list coupons               # coupons the account came with (copied Award objects)
    cdef int64_t coupons_lapse_day  # no active coupon lapses before this day
    # Coupons issued during the batch, as columns; built as Award objects on the way out.
    cdef list new_codes
    cdef I64Vec new_rule, new_issued, new_expires, new_expired

    cdef inline int64_t available(self, int64_t day) noexcept:
        cdef Py_ssize_t i
        cdef int64_t total = 0, expires
        for i in range(self.lot_points.size):
            expires = self.lot_expires.data[i]
            if self.lot_available.data[i] <= day and (expires == NONE_DAY or day < expires):
                total += self.lot_points.data[i]
        return total - self.debt

    cdef inline int64_t escrowed(self, int64_t day) noexcept:
        cdef Py_ssize_t i
        cdef int64_t total = 0
        for i in range(self.lot_points.size):
            if self.lot_available.data[i] > day:
                total += self.lot_points.data[i]
        return total

    cdef void remove_lot(self, Py_ssize_t index) noexcept:
        """Delete one lot, keeping the order of the others (the reference's list order)."""
        remove_at(self.lot_earned, index)
        remove_at(self.lot_rule, index)
        remove_at(self.lot_kind, index)
        remove_at(self.lot_points, index)
        remove_at(self.lot_available, index)
        remove_at(self.lot_expires, index)
        remove_at(self.lot_version, index)

    cdef void drop_empty_lots(self) noexcept:
        cdef Py_ssize_t i = 0
        while i < self.lot_points.size:
            if self.lot_points.data[i] <= 0:
                self.remove_lot(i)
            else:
                i += 1

    cdef int add_lot(self, int64_t earned, int64_t rule, int64_t kind, int64_t points,
                     int64_t available, int64_t expires, int64_t version) except -1:
        self.lot_earned.push(earned)
        self.lot_rule.push(rule)
        self.lot_kind.push(kind)
        self.lot_points.push(points)
        self.lot_available.push(available)
        self.lot_expires.push(expires)
        self.lot_version.push(version)
        return 0

    cdef int64_t month_get(self, int64_t month) noexcept:
        cdef Py_ssize_t i
        for i in range(self.months.size):
            if self.months.data[i] == month:
                return self.month_points.data[i]
        return 0

    cdef int month_add(self, int64_t month, int64_t points) except -1:
        cdef Py_ssize_t i
        cdef int64_t value
        for i in range(self.months.size):
            if self.months.data[i] == month:
                value = self.month_points.data[i] + points
                self.month_points.data[i] = value if value > 0 else 0
                return 0
        self.months.push(month)
        self.month_points.push(points if points > 0 else 0)
        return 0

    cdef int spent_add(self, int64_t month, int64_t amount) except -1:
        """processor.engine.loyalty.count_spent: a month left at nothing is removed, and
        so is one before the latest SPENT_MONTHS_KEPT."""
        cdef Py_ssize_t i
        cdef int64_t value, latest
        cdef int64_t most = SPENT_MOST
        cdef bint found = False
        if amount > most:
            amount = most
        for i in range(self.spent_months.size):
            if self.spent_months.data[i] == month:
                found = True
                # Both at most 2**62 (and an amount at least -2**62): the sum fits.
                value = self.spent_amounts.data[i] + amount
                if value > most:
                    value = most
                if value > 0:
                    self.spent_amounts.data[i] = value
                else:
                    remove_at(self.spent_months, i)
                    remove_at(self.spent_amounts, i)
                break
        if not found and amount > 0:
            self.spent_months.push(month)
            self.spent_amounts.push(amount)
        if self.spent_months.size:
            latest = self.spent_months.data[0]
            for i in range(1, self.spent_months.size):
                if self.spent_months.data[i] > latest:
                    latest = self.spent_months.data[i]
            drop_months_before(self.spent_months, self.spent_amounts,
                               latest - SPENT_MONTHS_KEPT + 1)
        return 0

    cdef void months_drop_before(self, int64_t oldest) noexcept:
        drop_months_before(self.months, self.month_points, oldest)


cdef void drop_months_before(I64Vec months, I64Vec values, int64_t oldest) noexcept:
    cdef Py_ssize_t i = 0
    while i < months.size:
        if months.data[i] < oldest:
            remove_at(months, i)
            remove_at(values, i)
        else:
            i += 1


cdef PackedLoyalty new_packed(PackedPlan plan, Py_ssize_t lots):
    cdef PackedLoyalty packed = PackedLoyalty()
    cdef Py_ssize_t index
    packed.plan = plan
    packed.lot_earned = I64Vec(lots + 8)
    packed.lot_rule = I64Vec(lots + 8)
    packed.lot_kind = I64Vec(lots + 8)
    packed.lot_points = I64Vec(lots + 8)
    packed.lot_available = I64Vec(lots + 8)
    packed.lot_expires = I64Vec(lots + 8)
    packed.lot_version = I64Vec(lots + 8)
    packed.months = I64Vec(MONTHS_KEPT + 2)
    packed.month_points = I64Vec(MONTHS_KEPT + 2)
    packed.spent_months = I64Vec(4)
    packed.spent_amounts = I64Vec(4)
    packed.rule_day_day = I64Vec(plan.issue_count + 1)
    packed.rule_day_uses = I64Vec(plan.issue_count + 1)
    packed.rule_day_set = I64Vec(plan.issue_count + 1)
    for index in range(plan.issue_count):
        packed.rule_day_day.data[index] = 0
        packed.rule_day_uses.data[index] = 0
        packed.rule_day_set.data[index] = 0
    packed.rule_day_day.size = plan.issue_count
    packed.rule_day_uses.size = plan.issue_count
    packed.rule_day_set.size = plan.issue_count
    packed.sustain_until = NONE_DAY
    return packed


cdef PackedLoyalty pack_loyalty(PackedProgram program, PackedPlan plan, account):
    """Arrays from a LoyaltyAccount; None when it holds what the packed form cannot
    (a level this version no longer has), and the reference must take the request."""
    cdef PackedLoyalty packed
    cdef Strings strings = program.strings
    level = plan.level_index.get(account.level)
    if level is None:
        return None
    packed = new_packed(plan, len(account.lots))
    packed.level = level
    packed.created_day = account.created_day
    packed.level_since_day = account.level_since_day
    packed.last_activity_day = account.last_activity_day
    packed.debt = account.debt
    packed.earned_ltd = account.earned_ltd
    packed.earned_ytd = account.earned_ytd
    packed.ytd_year = account.ytd_year
    packed.earned_since_move = account.earned_since_move
    packed.sustain_until = day_or_none(account.sustain_extended_until)
    for lot in account.lots:
        packed.add_lot(lot.earned_day, strings.id(lot.rule), 1 if lot.kind == "bonus" else 0,
                       lot.points, lot.available_day, day_or_none(lot.expires_day),
                       lot.program_version)
    for month, points in account.earned_by_month.items():
        packed.months.push(month)
        packed.month_points.push(points)
    for month, amount in account.spent_by_month.items():
        packed.spent_months.push(month)
        packed.spent_amounts.push(amount)
    packed.rule_day_other = {}
    for rule_id, (used_day, uses) in account.rule_day.items():
        position = plan.issue_positions.get(rule_id)
        if position is None:
            packed.rule_day_other[rule_id] = (used_day, uses)
        else:
            packed.rule_day_day.data[<Py_ssize_t> position] = used_day
            packed.rule_day_uses.data[<Py_ssize_t> position] = uses
            packed.rule_day_set.data[<Py_ssize_t> position] = 1
    packed.rule_period = dict(account.rule_period)
    packed.rule_total = dict(account.rule_total)
    packed.coupons = [copy.copy(award) for award in account.awards]
    packed.coupons_lapse_day = INT64_MIN  # unknown: the first aging computes it
    new_coupons(packed)
    return packed


cdef PackedLoyalty pack_stored_loyalty(PackedProgram program, PackedPlan plan, list stored):
    """``pack_loyalty(program, plan, codec.loyalty_from(stored))``, packed from the stored
    fields without the account and lot objects between. Anything out of the ordinary (a
    value of an unexpected type, a day beyond the C calendar, damage) takes that very
    path, so every outcome and error is its own."""
    try:
        return _pack_stored(program, plan, stored)
    except _Unusual:
        return pack_loyalty(program, plan, loyalty_from_stored(stored))


class _Unusual(Exception):
    """Stored fields the compiled reader leaves to the objects' path."""


cdef PackedLoyalty _pack_stored(PackedProgram program, PackedPlan plan, list stored):
    cdef PackedLoyalty packed
    cdef Strings strings = program.strings
    cdef int64_t base, earned, month_base
    cdef Py_ssize_t count
    cdef list lot
    try:
        (
            _, level_id, base_value, level_since, last_activity, rules, lots, debt,
            earned_ltd, earned_ytd, ytd_year, earned_since_move, by_month, rule_day,
            rule_period, rule_total, sustain_until, awards, spent,
        ) = padded_loyalty_fields(stored)
        if type(base_value) is not int or not -DAY_LIMIT < base_value < DAY_LIMIT:
            raise _Unusual()
        level = plan.level_index.get(level_id)
        if level is None:
            return None
        base = base_value
        packed = new_packed(plan, len(lots))
        packed.level = level
        packed.created_day = base
        packed.level_since_day = base + level_since
        packed.last_activity_day = base + last_activity
        packed.debt = debt
        packed.earned_ltd = earned_ltd
        packed.earned_ytd = earned_ytd
        packed.ytd_year = year_of(base) + ytd_year
        packed.earned_since_move = earned_since_move
        packed.sustain_until = NONE_DAY if sustain_until is None else base + sustain_until
        for lot in lots:
            count = len(lot)
            if not 4 <= count <= 7 or lot[2] not in (0, 1):
                raise _Unusual()
            earned = base + lot[0]
            packed.add_lot(
                earned, strings.id(rules[lot[1]]), lot[2], lot[3],
                earned + (lot[4] if count > 4 else 0),
                NONE_DAY if count <= 5 or lot[5] is None else earned + lot[5],
                lot[6] if count > 6 else 0,
            )
        month_base = month_index(base)
        for month, points in by_month.items():
            packed.months.push(month_base + month)
            packed.month_points.push(points)
        for month, amount in spent.items():
            packed.spent_months.push(month_base + month)
            packed.spent_amounts.push(amount)
        packed.rule_day_other = {}
        for rule, (day, uses) in rule_day.items():
            rule_id = rules[rule]
            position = plan.issue_positions.get(rule_id)
            if position is None:
                packed.rule_day_other[rule_id] = (base + day, uses)
            else:
                packed.rule_day_day.data[<Py_ssize_t> position] = base + day
                packed.rule_day_uses.data[<Py_ssize_t> position] = uses
                packed.rule_day_set.data[<Py_ssize_t> position] = 1
        packed.rule_period = {rules[rule]: (period, uses) for rule, (period, uses) in rule_period.items()}
        packed.rule_total = {rules[rule]: uses for rule, uses in rule_total.items()}
        packed.coupons = loyalty_awards_from(awards, plan.pid, base, rules) if awards else []
    except _Unusual:
        raise
    except Exception:
        raise _Unusual()
    packed.coupons_lapse_day = INT64_MIN  # unknown: the first aging computes it
    new_coupons(packed)
    return packed


cdef PackedLoyalty open_loyalty(PackedProgram program, PackedPlan plan, int64_t day):
    """A new account at the start level, as processor.engine.loyalty.open_account."""
    cdef PackedLoyalty packed = new_packed(plan, 0)
    packed.level = plan.start_level
    packed.created_day = day
    packed.level_since_day = day
    packed.last_activity_day = day
    packed.ytd_year = year_of(day)
    packed.rule_day_other = {}
    packed.rule_period = {}
    packed.rule_total = {}
    packed.coupons = []
    packed.coupons_lapse_day = INT64_MAX
    new_coupons(packed)
    return packed


cdef void new_coupons(PackedLoyalty packed):
    packed.new_codes = []
    packed.new_rule = I64Vec(4)
    packed.new_issued = I64Vec(4)
    packed.new_expires = I64Vec(4)
    packed.new_expired = I64Vec(4)


cdef object unpack_loyalty(PackedProgram program, PackedLoyalty packed):
    cdef Py_ssize_t index
    cdef list strings = program.strings.values
    cdef PackedPlan plan = packed.plan
    lots = [
        Lot(packed.lot_earned.data[index], strings[packed.lot_rule.data[index]],
            "bonus" if packed.lot_kind.data[index] else "regular", packed.lot_points.data[index],
            packed.lot_available.data[index], none_or_day(packed.lot_expires.data[index]),
            packed.lot_version.data[index])
        for index in range(packed.lot_points.size)
    ]
    rule_day = dict(packed.rule_day_other)
    for index in range(plan.issue_count):
        if packed.rule_day_set.data[index]:
            rule_day[plan.issue_plans[index].rule.id] = (
                packed.rule_day_day.data[index], packed.rule_day_uses.data[index]
            )
    return LoyaltyAccount(
        program=plan.pid,
        level=plan.level_ids[packed.level],
        created_day=packed.created_day,
        level_since_day=packed.level_since_day,
        last_activity_day=packed.last_activity_day,
        lots=lots,
        debt=packed.debt,
        earned_ltd=packed.earned_ltd,
        earned_ytd=packed.earned_ytd,
        ytd_year=packed.ytd_year,
        earned_since_move=packed.earned_since_move,
        earned_by_month={
            packed.months.data[index]: packed.month_points.data[index]
            for index in range(packed.months.size)
        },
        rule_day=rule_day,
        rule_period=dict(packed.rule_period),
        rule_total=dict(packed.rule_total),
        sustain_extended_until=none_or_day(packed.sustain_until),
        awards=[copy.copy(award) for award in packed.coupons] + issued_coupons(program, packed),
        spent_by_month={
            packed.spent_months.data[index]: packed.spent_amounts.data[index]
            for index in range(packed.spent_months.size)
        },
    )


cdef list issued_coupons(PackedProgram program, PackedLoyalty packed):
    """The coupons issued during the batch, as Award objects."""
    cdef list strings = program.strings.values
    cdef Py_ssize_t index
    return [
        Award(packed.new_codes[index], "coupon", strings[packed.new_rule.data[index]],
              packed.plan.pid, packed.new_issued.data[index],
              none_or_day(packed.new_expires.data[index]), 1,
              "expired" if packed.new_expired.data[index] else "active")
        for index in range(len(packed.new_codes))
    ]




cdef list packed_loyalty_fields(
    PackedProgram program, PackedLoyalty packed, list lot_rules=None
):
    """``codec.loyalty_fields(unpack_loyalty(program, packed))``, written from the arrays:
    no account, lot or dictionary of the unpacked form is made. Rule ids are numbered in
    the order the unpacked account would show them (lots, then daily uses, periods,
    totals, coupons), so the bytes are the same; an account opened on a day beyond the C
    calendar is written through its objects.

    With ``lot_rules`` (an empty list, for ``write_packed_loyalty``), the lots are not
    made: each lot's rule number is appended to it instead, and the lots' field holds one
    None in their place (so that trimming still sees lots)."""
    cdef PackedPlan plan = packed.plan
    cdef list strings = program.strings.values
    cdef int64_t base = packed.created_day
    cdef int64_t base_month, earned, expires
    cdef Py_ssize_t index
    cdef dict rules = {}, rule_day = {}, rule_period = {}, rule_total = {}, by_month = {}
    cdef dict spent = {}
    cdef list lots, values
    if not -DAY_LIMIT < base < DAY_LIMIT:
        return loyalty_fields(unpack_loyalty(program, packed))
    base_month = month_index(base)
    lots = []
    if lot_rules is not None:
        for index in range(packed.lot_points.size):
            lot_rules.append(rules.setdefault(strings[packed.lot_rule.data[index]], len(rules)))
        if packed.lot_points.size:
            lots.append(None)
    for index in range(packed.lot_points.size if lot_rules is None else 0):
        earned = packed.lot_earned.data[index]
        expires = packed.lot_expires.data[index]
        values = [
            earned - base,
            rules.setdefault(strings[packed.lot_rule.data[index]], len(rules)),
            packed.lot_kind.data[index],
            packed.lot_points.data[index],
            packed.lot_available.data[index] - earned,
            None if expires == NONE_DAY else expires - earned,
            packed.lot_version.data[index],
        ]
        lots.append(trimmed_lot(values))
    for rule, (day, uses) in packed.rule_day_other.items():
        rule_day[rules.setdefault(rule, len(rules))] = [day - base, uses]
    for index in range(plan.issue_count):
        if packed.rule_day_set.data[index]:
            rule_day[rules.setdefault(plan.issue_plans[index].rule.id, len(rules))] = [
                packed.rule_day_day.data[index] - base, packed.rule_day_uses.data[index]
            ]
    for rule, counts in packed.rule_period.items():
        rule_period[rules.setdefault(rule, len(rules))] = list(counts)
    for rule, uses in packed.rule_total.items():
        rule_total[rules.setdefault(rule, len(rules))] = uses
    for index in range(packed.months.size):
        by_month[packed.months.data[index] - base_month] = packed.month_points.data[index]
    for index in range(packed.spent_months.size):
        spent[packed.spent_months.data[index] - base_month] = packed.spent_amounts.data[index]
    # Numbers the coupons' rules too, so before the rule list is taken.
    awards = (
        loyalty_award_fields(packed.coupons + issued_coupons(program, packed), plan.pid, base,
                             rules) if packed.coupons or packed.new_codes else []
    )
    return trimmed_loyalty_fields([
        plan.pid,
        plan.level_ids[packed.level],
        base,
        packed.level_since_day - base,
        packed.last_activity_day - base,
        list(rules),
        lots,
        packed.debt,
        packed.earned_ltd,
        packed.earned_ytd,
        packed.ytd_year - year_of(base),
        packed.earned_since_move,
        by_month,
        rule_day,
        rule_period,
        rule_total,
        None if packed.sustain_until == NONE_DAY else packed.sustain_until - base,
        awards,
        spent,
    ])


cdef int write_packed_loyalty(_Buffer out, PackedProgram program, PackedLoyalty packed) except -1:
    """``msgpack.packb(packed_loyalty_fields(program, packed))``'s bytes, the lots (most of
    a busy account) written straight from their arrays: no list or int object per lot."""
    cdef Py_ssize_t index, end, count = packed.lot_points.size
    cdef int64_t base = packed.created_day
    cdef int64_t earned, expires, available, version
    if count == 0 or not -DAY_LIMIT < base < DAY_LIMIT:
        return _mp_value(out, packed_loyalty_fields(program, packed))
    cdef list lot_rules = []
    cdef list fields = packed_loyalty_fields(program, packed, lot_rules)
    # Index 6, the lots, is written from the arrays as trimmed_lot would leave each.
    _mp_array(out, len(fields))
    for index in range(len(fields)):
        if index != 6:
            _mp_value(out, fields[index])
            continue
        _mp_array(out, count)
        for end in range(count):
            earned = packed.lot_earned.data[end]
            expires = packed.lot_expires.data[end]
            available = packed.lot_available.data[end] - earned
            version = packed.lot_version.data[end]
            # trimmed_lot: the trailing fields at their defaults are left off.
            if version != 0:
                _mp_array(out, 7)
            elif expires != NONE_DAY:
                _mp_array(out, 6)
            elif available != 0:
                _mp_array(out, 5)
            else:
                _mp_array(out, 4)
            _mp_int(out, earned - base)
            _mp_int(out, <int64_t>lot_rules[end])
            _mp_int(out, packed.lot_kind.data[end])
            _mp_int(out, packed.lot_points.data[end])
            if version != 0 or expires != NONE_DAY or available != 0:
                _mp_int(out, available)
            if version != 0 or expires != NONE_DAY:
                if expires == NONE_DAY:
                    _mp_byte(out, 0xC0)
                else:
                    _mp_int(out, expires - earned)
            if version != 0:
                _mp_int(out, version)
    return 0


cdef class PackedCard:
    """One card during a batch: its own copy of the Python state for tender and award
    programs, and packed loyalty accounts that replace the state's on the way out.

    A card read from its stored bytes (codec.DeferredState) brings its loyalty accounts
    as their stored fields (``stored``, by program; the state's ``loyalty`` holds None in
    their places, to keep their order): each is packed from its fields when first used,
    made into objects only if the card is unpacked, and written back as it came if the
    batch never used it."""

    cdef object state
    cdef dict loyalty
    cdef dict stored

    cdef object unpack(self, PackedProgram program, bint owned=False):
        """The card as a Python state. ``owned``: the card is dropped after this, so its
        private tender and award objects can be handed over instead of copied."""
        state = self.state
        loyalty = {}
        for program_id, account in state.loyalty.items():
            packed = self.loyalty.get(program_id)
            if packed is not None:
                loyalty[program_id] = unpack_loyalty(program, <PackedLoyalty> packed)
            elif self.stored and program_id in self.stored:
                loyalty[program_id] = loyalty_from_stored(self.stored[program_id])
            else:
                loyalty[program_id] = copy.deepcopy(account)
        for program_id, packed in self.loyalty.items():
            if program_id not in loyalty:
                loyalty[program_id] = unpack_loyalty(program, <PackedLoyalty> packed)
        if owned:
            return AccountState(
                account=state.account, version=state.version, status=state.status,
                customer=state.customer, tender=state.tender, awards=state.awards,
                loyalty=loyalty,
            )
        return AccountState(
            account=state.account, version=state.version, status=state.status,
            customer=state.customer, tender=_private(state.tender),
            awards=_private(state.awards), loyalty=loyalty,
        )


    cdef list loyalty_in_order(self):
        """The card's loyalty accounts in the order they are stored: a packed one as its
        PackedLoyalty, one the batch never used as its stored fields, any other as
        ``loyalty_fields`` of it."""
        state = self.state
        loyalty = []
        for program_id, account in state.loyalty.items():
            packed = self.loyalty.get(program_id)
            if packed is not None:
                loyalty.append(packed)
            elif self.stored and program_id in self.stored:
                loyalty.append(self.stored[program_id])  # unused: as it was stored
            else:
                loyalty.append(loyalty_fields(account))
        for program_id, packed in self.loyalty.items():
            if program_id not in state.loyalty:
                loyalty.append(packed)
        return loyalty

    cdef list fields(self, PackedProgram program):
        """``codec.state_fields(self.unpack(program))`` with the version field 1 (the
        commit sets it: codec.encode_fields), the packed accounts written from their
        arrays."""
        loyalty = [
            packed_loyalty_fields(program, <PackedLoyalty> one)
            if type(one) is PackedLoyalty else one
            for one in self.loyalty_in_order()
        ]
        return state_fields(self.state, 1, loyalty)

    cdef bytes stored_bytes(self, PackedProgram program, int64_t format_version,
                            int64_t version):
        """``codec.encode_fields(self.fields(program), version)``'s bytes (format
        ``format_version``), the packed accounts written straight from their arrays
        (write_packed_loyalty). A TypeError or OverflowError: a value the writer here
        does not take (a float, an int beyond 64 bits); codec packs the fields then."""
        fields = state_fields(self.state, version, self.loyalty_in_order())
        cdef _Buffer out = _Buffer()
        _mp_array(out, 1 + len(fields))
        _mp_int(out, format_version)
        for index, value in enumerate(fields):
            if index != 2:  # the loyalty accounts
                _mp_value(out, value)
                continue
            _mp_array(out, len(value))
            for one in value:
                if type(one) is PackedLoyalty:
                    write_packed_loyalty(out, program, <PackedLoyalty> one)
                else:
                    _mp_value(out, one)
        return out.result()

    cdef str level(self, program_id):
        """The level of the card's loyalty account in ``program_id``, "" without one."""
        packed = self.loyalty.get(program_id)
        if packed is not None:
            return str((<PackedLoyalty> packed).plan.level_ids[(<PackedLoyalty> packed).level])
        if self.stored and program_id in self.stored:
            return str(self.stored[program_id][1])
        account = self.state.loyalty.get(program_id)
        return "" if account is None else str(account.level)


cdef inline object _private(value):
    """A deep copy of a card's tender account or award accounts; most cards have none,
    and copying nothing still cost deepcopy a memo and a dispatch on every card."""
    if value is None:
        return None
    if type(value) is dict and not value:
        return {}
    return copy.deepcopy(value)


cdef PackedCard pack_card(PackedProgram program, state):
    """A card's working copy: loyalty accounts are packed on first use, the rest copied."""
    cdef PackedCard card = PackedCard()
    stored = state.stored_loyalty() if type(state) is DeferredState else None
    if stored is not None:
        card.stored = {fields[0]: fields for fields in stored}
        loyalty = dict.fromkeys(card.stored)
    else:
        loyalty = dict(state.loyalty)
    card.state = AccountState(
        account=state.account, version=state.version, status=state.status,
        customer=state.customer, tender=_private(state.tender),
        awards=_private(state.awards), loyalty=loyalty,
    )
    card.loyalty = {}
    return card


# --------------------------------------------------------------------------- the batch


cdef class Batch:
    """One call of the engine: packed cards, result rows, receipts, and the reference
    engine's own batch for the requests this module hands over."""

    cdef PackedProgram p
    cdef object program
    cdef object accounts_in
    cdef object receipts_in
    cdef object ref
    cdef dict cards
    cdef public list results
    cdef list meta
    cdef I64Vec row_posts, row_traces, row_moves, row_bals, row_awards
    cdef I64Vec posts, traces, moves, bals
    cdef list award_issues
    # Receipts of purchases taken on the fast path, built only when read.
    cdef dict fast_receipts
    cdef Py_ssize_t receipts_indexed
    cdef I64Vec rc_lines_at, rc_earn_at, rc_basket_at, rc_spent_at, rc_has_lines, rc_day
    cdef I64Vec rc_lines, rc_earn, rc_basket, rc_spent
    # The purchase being evaluated, packed.
    cdef I64Vec l_number, l_item, l_amount, l_quantity, l_merch
    cdef I64Vec l_nodes_at, l_nodes_count, l_attrs_at, l_attrs_count, l_nodes, l_attrs
    cdef I64Vec tender_types
    cdef I64Vec move_reasons
    cdef int64_t location
    cdef bint location_known
    cdef int64_t total
    cdef int64_t day
    cdef int64_t second
    cdef object customer
    cdef object __weakref__

    def __init__(self, PackedProgram packed, accounts, receipts, Py_ssize_t requests=1):
        # The row tables start at about what ``requests`` purchases fill, and grow: a
        # fixed few hundred KB made every batch of one pay for allocating (and the
        # allocator for trimming and faulting in) memory it never used.
        cdef Py_ssize_t n = requests if requests > 0 else 1
        self.p = packed
        self.program = packed.program
        self.accounts_in = accounts
        self.receipts_in = receipts
        self.ref = shared.Batch(packed.program, _AccountView(self), _ReceiptView(self))
        self.cards = {}
        self.results = []
        self.meta = []
        self.row_posts = I64Vec(n + 1)
        self.row_traces = I64Vec(n + 1)
        self.row_moves = I64Vec(n + 1)
        self.row_bals = I64Vec(n + 1)
        self.row_awards = I64Vec(n + 1)
        self.posts = I64Vec(32 * n)  # 8 per posting
        self.traces = I64Vec(128 * n)  # 5 per trace entry
        self.moves = I64Vec(16)
        self.bals = I64Vec(8 * n)
        self.award_issues = []
        self.fast_receipts = {}
        self.rc_lines_at = I64Vec(n + 1)
        self.rc_earn_at = I64Vec(n + 1)
        self.rc_basket_at = I64Vec(n + 1)
        self.rc_spent_at = I64Vec(n + 1)
        self.rc_has_lines = I64Vec(n + 1)
        self.rc_day = I64Vec(n + 1)
        self.rc_lines = I64Vec(16 * n)  # 3 per line
        self.rc_earn = I64Vec(24 * n)  # 3 per line and rule
        self.rc_basket = I64Vec(8 * n)
        self.rc_spent = I64Vec(2 * n)  # 2 per loyalty program that counted the sale
        self.l_number = I64Vec(64)
        self.l_item = I64Vec(64)
        self.l_amount = I64Vec(64)
        self.l_quantity = I64Vec(64)
        self.l_merch = I64Vec(64)
        self.l_nodes_at = I64Vec(64)
        self.l_nodes_count = I64Vec(64)
        self.l_attrs_at = I64Vec(64)
        self.l_attrs_count = I64Vec(64)
        self.l_nodes = I64Vec(128)
        self.l_attrs = I64Vec(128)
        self.tender_types = I64Vec(8)
        self.move_reasons = I64Vec(16)

    # ----------------------------------------------------------------- accounts

    cdef object current_state(self, str account):
        """The newest Python state of a card, for the reference engine."""
        card = self.cards.get(account)
        if card is not None:
            return (<PackedCard> card).unpack(self.p)
        if account in self.ref.states:
            return self.ref.states[account]
        return self.accounts_in.get(account)

    cdef PackedCard card(self, str account):
        card = self.cards.get(account)
        if card is not None:
            return <PackedCard> card
        if account in self.ref.states:
            packed = pack_card(self.p, self.ref.states[account])
        else:
            state = self.accounts_in.get(account)
            if state is None:
                # A card the batch has never seen: a fresh state is already a private copy.
                packed = PackedCard()
                packed.state = AccountState(account)
                packed.loyalty = {}
            else:
                packed = pack_card(self.p, state)
        self.cards[account] = packed
        return packed

    # ----------------------------------------------------------------- requests

    cdef int run(self, request) except -1:
        if type(request) is Purchase and self.fast_purchase(<object> request):
            return 0
        self.hand_over(request)
        return 0

    cdef void hand_over(self, request):
        """Let the reference engine apply a request, on the newest state of its cards."""
        accounts = [request.account]
        target = getattr(request, "target_account", "")
        if target:
            accounts.append(target)
        for account in accounts:
            card = self.cards.pop(account, None)
            if card is not None:
                self.ref.states[account] = (<PackedCard> card).unpack(self.p, True)
        self.results.append(self.ref.apply(request))

    # ----------------------------------------------------------------- result rows

    cdef dict fast_receipt_rows(self):
        """Request id -> fast-path row, brought up to date only when someone asks."""
        cdef Py_ssize_t row
        for row in range(self.receipts_indexed, len(self.meta)):
            self.fast_receipts[self.meta[row].id] = row
        self.receipts_indexed = len(self.meta)
        return self.fast_receipts

    cdef void open_row(self, request):
        self.row_posts.push(self.posts.size)
        self.row_traces.push(self.traces.size)
        self.row_moves.push(self.moves.size)
        self.row_bals.push(self.bals.size)
        self.row_awards.push(len(self.award_issues))
        self.rc_lines_at.push(self.rc_lines.size)
        self.rc_earn_at.push(self.rc_earn.size)
        self.rc_basket_at.push(self.rc_basket.size)
        self.rc_spent_at.push(self.rc_spent.size)
        self.rc_has_lines.push(0)
        self.rc_day.push(request.day)
        self.results.append(len(self.meta))
        self.meta.append(request)

    cdef inline void post(self, int64_t program, int64_t version, int64_t balance, int64_t kind,
                          int64_t amount, int64_t rule, int64_t day) noexcept:
        self.posts.push(program)
        self.posts.push(version)
        self.posts.push(balance)
        self.posts.push(kind)
        self.posts.push(amount)
        self.posts.push(rule)
        self.posts.push(day)
        self.posts.push(self.p.s_empty)

    cdef inline void trace(self, int64_t program, int64_t rule, bint fired, int64_t points,
                           int64_t reason) noexcept:
        self.traces.push(program)
        self.traces.push(rule)
        self.traces.push(fired)
        self.traces.push(points)
        self.traces.push(reason)

    cdef inline void balance(self, int64_t name, int64_t value) noexcept:
        self.bals.push(name)
        self.bals.push(value)

    cdef void absorb(self, scratch):
        """Copy what a reference helper wrote into a scratch Result into the rows."""
        cdef Strings s = self.p.strings
        for posting in scratch.postings:
            self.posts.push(s.id(posting.program))
            self.posts.push(posting.program_version)
            self.posts.push(s.id(posting.balance))
            self.posts.push(s.id(posting.kind))
            self.posts.push(posting.amount)
            self.posts.push(s.id(posting.rule))
            self.posts.push(posting.day)
            self.posts.push(s.id(posting.account))
        for entry in scratch.trace:
            self.trace(s.id(entry.program), s.id(entry.rule), entry.fired, entry.points,
                       s.id(entry.reason))
        self.award_issues.extend(scratch.awards)
        for name, value in scratch.balances.items():
            self.balance(s.id(name), value)
        scratch.postings.clear()
        scratch.trace.clear()
        scratch.awards.clear()
        scratch.balances.clear()

    cdef object build_result(self, Py_ssize_t row, bint with_trace=True):
        """The Result of a fast-path row, exactly as the reference engine builds it (its
        trace left empty when not ``with_trace``: most entries of a batch are read only as
        bytes, which row_bytes writes from the rows)."""
        cdef list strings = self.p.strings.values
        cdef Py_ssize_t rows = self.row_posts.size
        cdef Py_ssize_t i, start, end
        request = self.meta[row]
        result = Result(request.id, request.account)
        start = self.row_posts.data[row]
        end = self.row_posts.data[row + 1] if row + 1 < rows else self.posts.size
        for i in range(start, end, 8):
            result.postings.append(_POSTING.make((
                strings[self.posts.data[i]], self.posts.data[i + 1],
                strings[self.posts.data[i + 2]], strings[self.posts.data[i + 3]],
                self.posts.data[i + 4], strings[self.posts.data[i + 5]], self.posts.data[i + 6],
                strings[self.posts.data[i + 7]],
            )))
        start = self.row_traces.data[row]
        end = self.row_traces.data[row + 1] if row + 1 < rows else self.traces.size
        if not with_trace:
            end = start
        cdef dict interned = self.p.trace_entries
        for i in range(start, end, 5):
            key = self.trace_key(i)
            entry = interned.get(key) if key is not None else None
            if entry is None:
                entry = TraceEntry(
                    strings[self.traces.data[i]], strings[self.traces.data[i + 1]],
                    bool(self.traces.data[i + 2]), self.traces.data[i + 3],
                    strings[self.traces.data[i + 4]],
                )
                if key is not None:
                    if len(interned) >= TRACE_ENTRIES_MAX:
                        interned.clear()  # bounded: entries with points amounts are endless
                    interned[key] = entry
            result.trace.append(entry)
        start = self.row_moves.data[row]
        end = self.row_moves.data[row + 1] if row + 1 < rows else self.moves.size
        for i in range(start, end, 5):
            result.moves.append(_LEVEL_MOVE.make((
                strings[self.moves.data[i]], strings[self.moves.data[i + 1]],
                strings[self.moves.data[i + 2]], strings[self.moves.data[i + 3]],
                strings[self.moves.data[i + 4]],
            )))
        start = self.row_bals.data[row]
        end = self.row_bals.data[row + 1] if row + 1 < rows else self.bals.size
        for i in range(start, end, 2):
            result.balances[strings[self.bals.data[i]]] = self.bals.data[i + 1]
        start = self.row_awards.data[row]
        end = self.row_awards.data[row + 1] if row + 1 < rows else len(self.award_issues)
        for issue in self.award_issues[start:end]:
            result.awards.append(AwardIssue(*issue) if type(issue) is tuple else issue)
        return result

    cdef object trace_key(self, Py_ssize_t i):
        """The key a trace entry's row is shared under, as an entry and as its encoded field:
        one int for the strings and the flag, and the points beside it (None when its ids
        are too large to pack)."""
        cdef int64_t program_id = self.traces.data[i]
        cdef int64_t rule_id = self.traces.data[i + 1]
        cdef int64_t reason_id = self.traces.data[i + 4]
        if program_id < TRACE_ID_LIMIT and rule_id < TRACE_ID_LIMIT \
                and reason_id < TRACE_ID_LIMIT:
            return (
                (program_id << 41) | (rule_id << 21) | (reason_id << 1)
                | (self.traces.data[i + 2] != 0),
                self.traces.data[i + 3],
            )
        return None

    cdef bytes trace_field(self, Py_ssize_t i, dict exponents):
        """The loyalty.v1 trace field of the entry at ``i`` of the trace rows."""
        cdef list strings = self.p.strings.values
        cdef str program = strings[self.traces.data[i]]
        cdef _Buffer out = _Buffer()
        cdef Py_ssize_t start = out.mark()
        out.text(1, program, False)
        out.text(2, strings[self.traces.data[i + 1]], False)
        out.bool_field(3, self.traces.data[i + 2] != 0)
        _points(out, 4, self.traces.data[i + 3], exponents.get("points:" + program, 0))
        out.text(5, strings[self.traces.data[i + 4]], False)
        out.close(10, start)
        return out.result()

    cdef object row_bytes(self, Py_ssize_t row, dict exponents, dict codes):
        """The loyalty.v1 Result of a fast-path row as bytes, the same bytes
        processor.wire.answers writes for the Result build_result makes of it; None for a
        row that issued awards (their details are the program's, looked up in Python).

        ``exponents`` is the program's balance_digits (one dict per program: the trace
        fields written with it are kept on the packed program); ``codes`` maps the
        contract's enum names to numbers: "approved", and every posting balance and move
        kind.
        """
        cdef list strings = self.p.strings.values
        cdef Py_ssize_t rows = self.row_posts.size
        cdef Py_ssize_t i, start, end, field_start
        cdef dict fields = self.p.trace_fields
        cdef dict balances = {}
        cdef set names = set()
        cdef str program, balance, name
        start = self.row_awards.data[row]
        end = self.row_awards.data[row + 1] if row + 1 < rows else len(self.award_issues)
        if end > start:
            return None
        request = self.meta[row]
        cdef _Buffer out = _Buffer()
        out.text(1, request.id, False)
        out.text(2, request.account, False)
        out.int_field(3, codes["approved"])
        # Result.balances first: the names of its map and of the postings have exponents.
        start = self.row_bals.data[row]
        end = self.row_bals.data[row + 1] if row + 1 < rows else self.bals.size
        for i in range(start, end, 2):
            balances[strings[self.bals.data[i]]] = self.bals.data[i + 1]
        names.update(balances)
        start = self.row_posts.data[row]
        end = self.row_posts.data[row + 1] if row + 1 < rows else self.posts.size
        for i in range(start, end, 8):
            program = strings[self.posts.data[i]]
            balance = strings[self.posts.data[i + 2]]
            if balance == "points":
                name = "points:" + program
            elif balance == "award_value":
                name = "award:" + program
            else:
                name = "tender"
            names.add(name)
            field_start = out.mark()
            out.text(1, program, False)
            out.int_field(2, self.posts.data[i + 1])
            out.int_field(3, codes[balance])
            out.text(4, strings[self.posts.data[i + 3]], False)
            out.int_field(5, self.posts.data[i + 4])
            out.text(6, name, False)
            out.text(7, strings[self.posts.data[i + 5]], False)
            out.text(8, _date(self.posts.data[i + 6]), False)
            out.text(9, strings[self.posts.data[i + 7]], False)
            out.close(5, field_start)
        start = self.row_moves.data[row]
        end = self.row_moves.data[row + 1] if row + 1 < rows else self.moves.size
        for i in range(start, end, 5):
            field_start = out.mark()
            out.text(1, strings[self.moves.data[i]], False)
            out.text(2, strings[self.moves.data[i + 1]], False)
            out.int_field(3, codes[strings[self.moves.data[i + 2]]])
            out.text(4, strings[self.moves.data[i + 3]], False)
            out.text(5, strings[self.moves.data[i + 4]], False)
            out.close(8, field_start)
        _balance_maps(out, balances, names, exponents)
        start = self.row_traces.data[row]
        end = self.row_traces.data[row + 1] if row + 1 < rows else self.traces.size
        for i in range(start, end, 5):
            key = self.trace_key(i)
            field = fields.get(key) if key is not None else None
            if field is None:
                field = self.trace_field(i, exponents)
                if key is not None:
                    if len(fields) >= TRACE_ENTRIES_MAX:
                        fields.clear()  # bounded, as trace_entries
                    fields[key] = field
            out.raw(<bytes>field, len(<bytes>field))
        return out.result()

    cdef object build_receipt(self, Py_ssize_t row):
        cdef list strings = self.p.strings.values
        cdef Py_ssize_t rows = self.rc_lines_at.size
        cdef Py_ssize_t i, start, end
        request = self.meta[row]
        receipt = Receipt(request.id, request.account, "purchase", self.rc_day.data[row],
                          self.program.version)
        start = self.rc_lines_at.data[row]
        end = self.rc_lines_at.data[row + 1] if row + 1 < rows else self.rc_lines.size
        lines = [
            LineEarning(self.rc_lines.data[i], self.rc_lines.data[i + 1], self.rc_lines.data[i + 2])
            for i in range(start, end, 3)
        ]
        start = self.rc_earn_at.data[row]
        end = self.rc_earn_at.data[row + 1] if row + 1 < rows else self.rc_earn.size
        for i in range(start, end, 3):
            lines[self.rc_earn.data[i]].points[strings[self.rc_earn.data[i + 1]]] = (
                self.rc_earn.data[i + 2]
            )
        start = self.rc_basket_at.data[row]
        end = self.rc_basket_at.data[row + 1] if row + 1 < rows else self.rc_basket.size
        for i in range(start, end, 2):
            receipt.basket_points[strings[self.rc_basket.data[i]]] = self.rc_basket.data[i + 1]
        start = self.rc_spent_at.data[row]
        end = self.rc_spent_at.data[row + 1] if row + 1 < rows else self.rc_spent.size
        for i in range(start, end, 2):
            receipt.spent[strings[self.rc_spent.data[i]]] = self.rc_spent.data[i + 1]
        receipt.lines = lines if self.rc_has_lines.data[row] else []
        return receipt

    cdef list receipt_fields(self, Py_ssize_t row):
        """The stored fields of a fast-path receipt: what processor.store.codec's
        encode_receipt packs for the Receipt build_receipt makes of the row (its layout,
        trailing defaults left off), without making the Receipt and its lines."""
        cdef list strings = self.p.strings.values
        cdef Py_ssize_t rows = self.rc_lines_at.size
        cdef Py_ssize_t i, start, end
        cdef list lines = []
        cdef list earned = []
        cdef dict basket = {}
        cdef dict spent = {}
        cdef dict points
        request = self.meta[row]
        start = self.rc_lines_at.data[row]
        end = self.rc_lines_at.data[row + 1] if row + 1 < rows else self.rc_lines.size
        for i in range(start, end, 3):
            lines.append([self.rc_lines.data[i], self.rc_lines.data[i + 1],
                          self.rc_lines.data[i + 2]])
            earned.append(None)
        start = self.rc_earn_at.data[row]
        end = self.rc_earn_at.data[row + 1] if row + 1 < rows else self.rc_earn.size
        for i in range(start, end, 3):
            points = earned[self.rc_earn.data[i]]
            if points is None:
                points = earned[self.rc_earn.data[i]] = {}
            points[strings[self.rc_earn.data[i + 1]]] = self.rc_earn.data[i + 2]
        for i in range(len(lines)):
            if earned[i] is not None:
                (<list> lines[i]).extend((0, earned[i]))  # no quantity returned yet
        start = self.rc_basket_at.data[row]
        end = self.rc_basket_at.data[row + 1] if row + 1 < rows else self.rc_basket.size
        for i in range(start, end, 2):
            basket[strings[self.rc_basket.data[i]]] = self.rc_basket.data[i + 1]
        start = self.rc_spent_at.data[row]
        end = self.rc_spent_at.data[row + 1] if row + 1 < rows else self.rc_spent.size
        for i in range(start, end, 2):
            spent[strings[self.rc_spent.data[i]]] = self.rc_spent.data[i + 1]
        if not self.rc_has_lines.data[row]:
            lines = []
        values = [request.id, request.account, "purchase", self.rc_day.data[row],
                  self.program.version, lines, basket]
        if spent:
            # Its spend comes last, after the fields a purchase leaves at their defaults
            # (returned, tender, awards, voided, original, points recovered).
            values.extend((False, 0, [], False, "", {}, spent))
            return values
        # Without spend, a purchase's receipt has nothing after its basket; what ends in
        # defaults goes.
        if not basket:
            del values[6]
            if not lines:
                del values[5]
                if values[4] == 0:
                    del values[4]
        return values

    # ----------------------------------------------------------------- the fast purchase

    cdef bint pack_lines(self, purchase) except -1:
        """Lines into arrays; False when the purchase must go to the reference engine."""
        cdef dict symbols = self.p.symbols
        cdef int64_t amount, quantity
        cdef set numbers = set()
        self.l_number.clear()
        self.l_item.clear()
        self.l_amount.clear()
        self.l_quantity.clear()
        self.l_merch.clear()
        self.l_nodes_at.clear()
        self.l_nodes_count.clear()
        self.l_attrs_at.clear()
        self.l_attrs_count.clear()
        self.l_nodes.clear()
        self.l_attrs.clear()
        self.tender_types.clear()
        lines = purchase.lines
        if len(lines) > LINES_MAX:
            return False
        self.total = 0
        for line in lines:
            amount = line.amount
            quantity = line.quantity
            if amount < 0 or quantity <= 0 or line.number in numbers:
                return False
            if amount > 10**15 or quantity > 10**12:
                return False
            numbers.add(line.number)
            self.total += amount
            self.l_number.push(line.number)
            self.l_item.push(symbols.get(line.item, -1))
            self.l_amount.push(amount)
            self.l_quantity.push(quantity)
            self.l_merch.push(1 if line.merchandise else 0)
            self.l_nodes_at.push(self.l_nodes.size)
            self.l_nodes_count.push(len(line.hierarchy))
            for node in line.hierarchy:
                self.l_nodes.push(symbols.get(node, -1))
            self.l_attrs_at.push(self.l_attrs.size)
            self.l_attrs_count.push(len(line.attributes))
            for name, value in line.attributes:
                self.l_attrs.push(symbols.get(name, -1))
                self.l_attrs.push(symbols.get(value, -2))
        for tender_line in purchase.tenders:
            self.tender_types.push(symbols.get(tender_line.type, -1))
        located = self.p.location_index.get(purchase.location)
        self.location_known = located is not None
        self.location = located if located is not None else -1
        return True

    cdef bint fast_purchase(self, purchase) except -1:
        """Evaluate a purchase on the packed path; False hands it to the reference."""
        cdef PackedPlan plan
        cdef PackedCard card
        cdef PackedLoyalty account
        cdef Py_ssize_t index, line
        cdef list accounts = []
        if purchase.stored_value or purchase.redeem_codes:
            return False
        if not self.pack_lines(purchase):
            return False
        card = self.card(purchase.account)
        if card.state.status != "active":
            return False
        self.day = purchase.day
        self.second = purchase.second
        self.customer = purchase.customer
        currency = purchase.currency.upper()
        for plan in self.p.plans:
            if plan.currency != currency:
                return False
            for line in range(self.l_amount.size):
                if (self.l_amount.data[line] > plan.measure_max
                        or self.l_quantity.data[line] > plan.measure_max):
                    return False
            packed = card.loyalty.get(plan.pid)
            if packed is None and card.stored and plan.pid in card.stored:
                packed = pack_stored_loyalty(self.p, plan, card.stored[plan.pid])
                if packed is None:
                    return False
                del card.stored[plan.pid]
                card.loyalty[plan.pid] = packed
            elif packed is None and plan.pid in card.state.loyalty:
                packed = pack_loyalty(self.p, plan, card.state.loyalty[plan.pid])
                if packed is None:
                    return False
                card.loyalty[plan.pid] = packed
            accounts.append(packed)
        self.open_row(purchase)
        row = len(self.meta) - 1
        for index, plan in enumerate(self.p.plans):
            account = self.plan_account(plan, card, <object> accounts[index], purchase)
            if account is None:
                continue
            self.age(plan, account, self.day)
            self.earn(plan, card, account, purchase, row)
            self.after_activity(plan, card, account, purchase)
        return True

    cdef PackedLoyalty plan_account(self, PackedPlan plan, PackedCard card, packed, purchase):
        """The account a purchase earns in (opening it when the program says so), or None
        with the reason traced, as reference._loyalty_account."""
        cdef int64_t day = self.day
        cdef PackedLoyalty account
        if not (plan.active and plan.start_date <= day
                and (plan.end_date == NONE_DAY or day <= plan.end_date)):
            self.trace(plan.pid_string, self.p.s_empty, False, 0, self.p.s_not_in_effect)
            return None
        if plan.card_required and not purchase.card_present:
            self.trace(plan.pid_string, self.p.s_empty, False, 0, self.p.s_card_required)
            return None
        if packed is not None:
            return <PackedLoyalty> packed
        if not plan.open_on_first:
            self.trace(plan.pid_string, self.p.s_empty, False, 0, self.p.s_no_account)
            return None
        account = open_loyalty(self.p, plan, day)
        card.loyalty[plan.pid] = account
        card.state.loyalty[plan.pid] = None  # keeps the reference's key order; replaced on unpack
        return account

    # ----------------------------------------------------------------- aging

    cdef void age(self, PackedPlan plan, PackedLoyalty account, int64_t day):
        cdef LevelC* level = &plan.levels[account.level]
        cdef int64_t year = year_of(day)
        cdef Py_ssize_t i
        cdef int64_t expired = 0
        cdef bint inactive
        if year != account.ytd_year:
            account.ytd_year = year
            account.earned_ytd = 0
        account.months_drop_before(month_index(day) - MONTHS_KEPT)
        inactive = level.aging != 0 and period_after(
            account.last_activity_day, level.aging_count, level.aging_unit) <= day
        if level.aging == 1 and inactive:
            for i in range(account.lot_points.size):
                expired += account.lot_points.data[i]
            if expired:
                for column in (account.lot_earned, account.lot_rule, account.lot_kind,
                               account.lot_points, account.lot_available, account.lot_expires,
                               account.lot_version):
                    (<I64Vec> column).clear()
                self.expire_posting(plan, expired, day, self.p.s_inactivity)
        expired = 0
        i = 0
        while i < account.lot_points.size:
            if account.lot_expires.data[i] != NONE_DAY and account.lot_expires.data[i] <= day:
                expired += account.lot_points.data[i]
                account.remove_lot(i)
            else:
                i += 1
        if expired:
            self.expire_posting(plan, expired, day, self.p.s_lot_expiry)
        if day >= account.coupons_lapse_day:
            self.expire_coupons(account, day)

    cdef void expire_coupons(self, PackedLoyalty account, int64_t day):
        """Mark lapsed coupons expired, and remember when the next one lapses."""
        cdef Py_ssize_t i
        cdef int64_t expires
        account.coupons_lapse_day = INT64_MAX
        for coupon in account.coupons:
            if coupon.status == "active" and coupon.expires_day is not None:
                if coupon.expires_day <= day:
                    coupon.status = "expired"
                elif coupon.expires_day < account.coupons_lapse_day:
                    account.coupons_lapse_day = coupon.expires_day
        for i in range(account.new_expires.size):
            expires = account.new_expires.data[i]
            if account.new_expired.data[i] or expires == NONE_DAY:
                continue
            if expires <= day:
                account.new_expired.data[i] = 1
            elif expires < account.coupons_lapse_day:
                account.coupons_lapse_day = expires

    cdef void expire_posting(self, PackedPlan plan, int64_t expired, int64_t day, int64_t why):
        self.post(plan.pid_string, plan.version, self.p.s_points, self.p.s_expire, -expired,
                  self.p.s_empty, day)
        self.trace(plan.pid_string, self.p.s_age_points, True, -expired, why)

    # ----------------------------------------------------------------- issuing

    cdef bint item_matches(self, PackedPlan plan, int rule_index, Py_ssize_t line) noexcept:
        cdef ItemRuleC* rule = &plan.item_rules[rule_index]
        cdef int64_t* ints = plan.ints.data
        cdef Py_ssize_t i, j, at, count, value_count
        cdef int64_t name, value, item
        cdef bint found
        if rule.select == 1:
            found = False
            at = self.l_nodes_at.data[line]
            for i in range(self.l_nodes_count.data[line]):
                for j in range(rule.nodes_count):
                    if self.l_nodes.data[at + i] == ints[rule.nodes_at + j]:
                        found = True
            if not found:
                return False
        elif rule.select == 2:
            found = False
            item = self.l_item.data[line]
            for j in range(rule.items_count):
                if item == ints[rule.items_at + j]:
                    found = True
            if not found:
                return False
        at = rule.conditions_at
        for i in range(rule.conditions_count):
            name = ints[at]
            value_count = ints[at + 1]
            value = -3  # the line has no such attribute
            for j in range(self.l_attrs_count.data[line]):
                if self.l_attrs.data[self.l_attrs_at.data[line] + 2 * j] == name:
                    value = self.l_attrs.data[self.l_attrs_at.data[line] + 2 * j + 1]
            found = False
            for j in range(value_count):
                if ints[at + 2 + j] == value:
                    found = True
            if not found:
                return False
            at += 2 + value_count
        return True

    cdef bint qualifies(self, PackedPlan plan, IssueRuleC* rule, Py_ssize_t line) noexcept:
        if not self.l_merch.data[line] and not rule.include_non_merchandise:
            return False
        if self.l_amount.data[line] == 0 and not rule.allow_zero_price:
            return False
        if rule.item_include >= 0 and not self.item_matches(plan, rule.item_include, line):
            return False
        if rule.item_exclude >= 0 and self.item_matches(plan, rule.item_exclude, line):
            return False
        return True

    cdef int64_t time_reason(self, PackedPlan plan, IssueRuleC* rule, customer,
                             int64_t day, int64_t second):
        cdef TimeRuleC* time_rule
        cdef Py_ssize_t i
        for i in range(rule.times_count):
            time_rule = &plan.times[rule.times_at + i]
            if time_rule.type == TIME_BLACKOUT:
                if window_matches(time_rule, day, second):
                    return self.p.s_blackout
            elif time_rule.type == TIME_BONUS:
                if not window_matches(time_rule, day, second):
                    return self.p.s_outside_bonus
            else:
                origin = None
                if customer is not None:
                    origin = (customer.birth_day if time_rule.type == TIME_BIRTHDAY
                              else customer.signup_day)
                if origin is None or not anniversary(origin, day, time_rule.days_before,
                                                     time_rule.days_after):
                    return (self.p.s_not_birthday if time_rule.type == TIME_BIRTHDAY
                            else self.p.s_not_signup)
        return -1

    cdef int64_t common_reason(self, PackedPlan plan, Py_ssize_t index, PackedLoyalty account,
                               PackedCard card, purchase):
        cdef IssueRuleC* rule = &plan.issue[index]
        cdef int64_t day = self.day
        cdef int64_t reason
        if rule.start_date > day or (rule.end_date != NONE_DAY and day > rule.end_date):
            return self.p.s_outside_dates
        if rule.level_mask and not (rule.level_mask >> account.level) & 1:
            return plan.levels[account.level].not_for_string
        customer = None
        if rule.audience or rule.times_count:
            customer = card.state.customer if rule.card_customer else self.customer
        if rule.audience:
            if customer is None:
                return self.p.s_no_customer
            text = shared.audience_reason(plan.issue_plans[index].rule, customer)
            if text:
                return self.p.strings.id(text)
        if rule.times_count:
            reason = self.time_reason(plan, rule, customer, day, self.second)
            if reason >= 0:
                return reason
        if self.location_known:
            if not plan.location_verdicts[rule.locations_at + self.location]:
                return self.p.s_location
        elif not rule.unknown_location_allowed:
            return self.p.s_location
        return -1

    cdef int64_t purchase_reason(self, PackedPlan plan, Py_ssize_t index, PackedLoyalty account,
                                 PackedCard card, purchase):
        cdef IssueRuleC* rule = &plan.issue[index]
        cdef int64_t reason, uses
        cdef Py_ssize_t i, j, line
        cdef bint found
        if rule.calc == CALC_ENGAGEMENTS:
            return self.p.s_counts_engagements
        if rule.calc == CALC_MONTH_SPEND:
            return self.p.s_counts_month_spend
        reason = self.common_reason(plan, index, account, card, purchase)
        if reason >= 0:
            return reason
        if rule.tenders_count >= 0:
            found = False
            for i in range(self.tender_types.size):
                for j in range(rule.tenders_count):
                    if self.tender_types.data[i] == plan.ints.data[rule.tenders_at + j]:
                        found = True
            if not found:
                return self.p.s_tender
        if rule.minimum >= 0 and self.total < rule.minimum:
            return self.p.s_minimum
        if rule.calc == CALC_VALUE or rule.calc == CALC_QUANTITY:
            found = False
            for line in range(self.l_amount.size):
                if self.qualifies(plan, rule, line):
                    found = True
                    break
            if not found:
                return self.p.s_no_items
        uses = 0
        if account.rule_day_set.data[index] and account.rule_day_day.data[index] == self.day:
            uses = account.rule_day_uses.data[index]
        if rule.calc == CALC_VISITS and uses:
            return self.p.s_visit
        if rule.max_per_day >= 0 and uses >= rule.max_per_day:
            return self.p.s_daily
        return -1

    cdef void earn(self, PackedPlan plan, PackedCard card, PackedLoyalty account, purchase,
                   Py_ssize_t row):
        cdef Py_ssize_t index, line
        cdef IssueRuleC* rule
        cdef int64_t reason, points, line_points, measure
        cdef int64_t day = self.day
        cdef Py_ssize_t earn_start
        account.spent_add(month_index(day), self.total)
        if self.total:
            self.rc_spent.push(plan.pid_string)
            self.rc_spent.push(self.total)
        if not self.rc_has_lines.data[row]:
            # The reference lists every line in the receipt once a program earns on it.
            self.rc_has_lines.data[row] = 1
            for line in range(self.l_amount.size):
                self.rc_lines.push(self.l_number.data[line])
                self.rc_lines.push(self.l_quantity.data[line])
                self.rc_lines.push(self.l_amount.data[line])
        for index in range(plan.issue_count):
            rule = &plan.issue[index]
            reason = self.purchase_reason(plan, index, account, card, purchase)
            if reason >= 0:
                self.trace(plan.pid_string, rule.rule_string, False, 0, reason)
                continue
            points = 0
            earn_start = self.rc_earn.size
            if rule.calc == CALC_VALUE or rule.calc == CALC_QUANTITY:
                for line in range(self.l_amount.size):
                    if not self.qualifies(plan, rule, line):
                        continue
                    measure = (self.l_amount.data[line] if rule.calc == CALC_VALUE
                               else self.l_quantity.data[line])
                    line_points = (measure * rule.num) // rule.den
                    points += line_points
                    if line_points:
                        self.rc_earn.push(line)
                        self.rc_earn.push(rule.key_string)
                        self.rc_earn.push(line_points)
            points += rule.fixed
            if points <= 0:
                self.rc_earn.size = earn_start
                self.trace(plan.pid_string, rule.rule_string, False, 0, self.p.s_no_points)
                continue
            if account.rule_day_set.data[index] and account.rule_day_day.data[index] == day:
                account.rule_day_uses.data[index] += 1
            else:
                account.rule_day_set.data[index] = 1
                account.rule_day_day.data[index] = day
                account.rule_day_uses.data[index] = 1
            if rule.fixed:
                self.rc_basket.push(rule.key_string)
                self.rc_basket.push(rule.fixed)
            self.issue_lot(plan, account, rule.rule_string, rule.bonus, points, day)
            self.trace(plan.pid_string, rule.rule_string, True, points, self.p.s_empty)

    cdef void issue_lot(self, PackedPlan plan, PackedLoyalty account, int64_t rule_string,
                        bint bonus, int64_t points, int64_t day):
        cdef LevelC* level = &plan.levels[account.level]
        cdef int64_t available_day = day
        cdef int64_t expires_day = NONE_DAY
        cdef int64_t repaid
        if level.escrow:
            available_day = period_after(day, level.escrow_count, level.escrow_unit)
        if level.aging == 2:
            expires_day = period_after(day, level.aging_count, level.aging_unit)
        self.post(plan.pid_string, plan.version, self.p.s_points,
                  self.p.s_escrow if available_day > day
                  else (self.p.s_bonus if bonus else self.p.s_regular),
                  points, rule_string, day)
        repaid = account.debt if account.debt < points else points
        account.debt -= repaid
        if points > repaid:
            account.add_lot(day, rule_string, 1 if bonus else 0, points - repaid, available_day,
                            expires_day, plan.version)
        count_earned(account, points, day)

    # ----------------------------------------------------------------- after earning

    cdef void after_activity(self, PackedPlan plan, PackedCard card, PackedLoyalty account,
                             request):
        cdef int64_t day = self.day
        account.last_activity_day = day
        if plan.holder is not None and plan.holder.id in card.state.awards:
            shared.touch_activity(plan.holder, card.state, day)
        self.award_rules(plan, card, account, request)
        self.movement_rules(plan, account, day)
        self.balance(plan.points_balance_string, account.available(day))
        escrowed = account.escrowed(day)
        if escrowed:
            self.balance(plan.escrow_balance_string, escrowed)

    # ----------------------------------------------------------------- award rules

    cdef int64_t award_expiry(self, AwardRuleC* rule, int64_t day) noexcept:
        if rule.expiry == 0:
            return NONE_DAY
        return period_after(day, rule.expiry_count, rule.expiry_unit)

    cdef void award_rules(self, PackedPlan plan, PackedCard card, PackedLoyalty account,
                          request):
        cdef Py_ssize_t index
        cdef AwardRuleC* rule
        cdef int64_t day = self.day
        cdef int64_t reason
        cdef int issued
        for index in range(plan.award_count):
            rule = &plan.award[index]
            if rule.by_job:
                reason = self.p.s_by_job
            elif rule.start_date > day or (rule.end_date != NONE_DAY and day > rule.end_date):
                reason = self.p.s_outside_dates
            elif rule.level_mask and not (rule.level_mask >> account.level) & 1:
                reason = plan.levels[account.level].not_for_string
            else:
                reason = -1
            if reason >= 0:
                self.trace(plan.pid_string, rule.rule_string, False, 0, reason)
                continue
            issued = 0
            while issued < AWARDS_PER_RULE_MAX and reason < 0:
                if account.available(day) < rule.threshold:
                    if issued == 0:
                        reason = self.p.s_below_threshold
                    break
                reason = self.issue_award(plan, index, card, account, request, issued)
                if reason < 0:
                    issued += 1
                    if rule.cashback:
                        break
            if issued:
                self.trace(plan.pid_string, rule.rule_string, True, 0,
                           self.p.strings.id(f"{issued} issued"))
            else:
                self.trace(plan.pid_string, rule.rule_string, False, 0,
                           reason if reason >= 0 else self.p.s_empty)

    cdef int64_t issue_award(self, PackedPlan plan, Py_ssize_t index, PackedCard card,
                             PackedLoyalty account, request, int ordinal):
        """Issue one award and charge its cost, as loyalty._issue_award; a reason string id
        (and no change) when it cannot, -1 when it did."""
        cdef AwardRuleC* rule = &plan.award[index]
        cdef int64_t day = request.day
        cdef int64_t cost = rule.cost
        cdef int64_t value = 0
        cdef int64_t balance
        cdef int64_t expires = self.award_expiry(rule, day)
        award = plan.award_plans[index]
        model = award.rule
        expires_day = none_or_day(expires)
        if rule.type == AWARD_EAWARD:
            holder = award.holder
            if rule.cashback:
                balance = account.available(day)
                value = (balance * rule.value_num) // rule.value_den
                if value <= 0 or value < rule.minimum:
                    return self.p.s_below_minimum
                if rule.reset_balance:
                    cost = balance
                else:
                    cost = -((-value * rule.value_den) // rule.value_num)
            else:
                value = rule.amount
            scratch = Result(request.id, request.account)
            refusal = shared.add_value(holder, card.state, value, request, scratch,
                                        plan.version, source=model.id, expires_day=expires_day)
            if refusal:
                return self.p.strings.id(refusal)
            self.absorb(scratch)
            code = award_code(model.coupon_prefix, plan.pid, request.account, request.id, model.id,
                              ordinal)
            self.award_issues.append((code, "e_award", model.id, holder.id, value, cost,
                                      expires_day))
        elif rule.type == AWARD_CERTIFICATE:
            holder = award.holder
            refusal = shared.refusal(holder, card.state, day)
            if refusal:
                return self.p.strings.id(refusal)
            scratch = Result(request.id, request.account)
            shared.issue_certificate(
                holder, model.certificate, card.state, request, scratch, plan.version,
                expires_day=expires_day, source=model.id, points_cost=cost,
                prefix=model.coupon_prefix or None,
            )
            self.absorb(scratch)
        else:
            code = award_code(model.coupon_prefix, plan.pid, request.account, request.id, model.id,
                              ordinal)
            account.new_codes.append(code)
            account.new_rule.push(rule.rule_string)
            account.new_issued.push(day)
            account.new_expires.push(expires)
            account.new_expired.push(0)
            if expires < account.coupons_lapse_day and expires != NONE_DAY:
                account.coupons_lapse_day = expires
            # A tuple now, an AwardIssue when the result is read: most results never are.
            self.award_issues.append((code, "coupon", model.id, plan.pid, 0, cost, expires_day))
        spend(account, cost, day)
        self.post(plan.pid_string, plan.version, self.p.s_points, self.p.s_award_cost, -cost,
                  rule.rule_string, day)
        return -1

    # ----------------------------------------------------------------- movement rules

    cdef void movement_rules(self, PackedPlan plan, PackedLoyalty account, int64_t day):
        cdef Py_ssize_t index, round_
        cdef int64_t reason
        cdef bint moved
        cdef I64Vec reasons = self.move_reasons
        reasons.clear()
        for round_ in range(plan.level_count):
            moved = False
            reasons.clear()
            for index in range(plan.movement_count):
                reason = self.try_move(plan, index, account, day)
                if reason == -2:
                    # A sustain or an extension keeps the level: nothing more to test.
                    moved = (self.moves.data[self.moves.size - 3] != self.p.s_extension
                             and plan.movement[index].type != MOVE_SUSTAIN)
                    break
                if reason >= 0:
                    reasons.push(plan.movement[index].rule_string)
                    reasons.push(reason)
            if not moved:
                break
        for index in range(0, reasons.size, 2):
            self.trace(plan.pid_string, reasons.data[index], False, 0, reasons.data[index + 1])

    cdef int64_t try_move(self, PackedPlan plan, Py_ssize_t index, PackedLoyalty account,
                          int64_t day):
        """-2 when the rule fired, -1 when it does not apply (no trace), else a reason."""
        cdef MovementRuleC* rule = &plan.movement[index]
        if rule.source_level != account.level:
            return -1
        if rule.by_job:
            return self.p.s_changes_by_job
        if rule.start_date > day or (rule.end_date != NONE_DAY and day > rule.end_date):
            return self.p.s_outside_dates
        if not movement_due(rule, account, day):
            return self.p.s_test_not_met
        if (rule.type == MOVE_DEMOTION and account.sustain_until != NONE_DAY
                and day < account.sustain_until):
            return self.p.s_sustain_extended
        if rule.extension and account.sustain_until == NONE_DAY:
            if test_value(rule.extension_test, rule.extension_months, account, day) >= \
                    rule.extension_threshold:
                account.sustain_until = period_after(day, rule.extend_count, rule.extend_unit)
                self.add_move(plan, rule.rule_string, self.p.s_extension, account.level,
                              account.level)
                self.trace(plan.pid_string, rule.rule_string, True, 0, self.p.s_extended)
                return -2
        if not plan.levels[rule.target_level].active:
            return plan.levels[rule.target_level].inactive_string
        if rule.cost and account.available(day) < rule.cost:
            return self.p.s_move_balance
        if rule.cost:
            spend(account, rule.cost, day)
            self.post(plan.pid_string, plan.version, self.p.s_points, self.p.s_move_cost,
                      -rule.cost, rule.rule_string, day)
        self.add_move(plan, rule.rule_string, rule.kind_string, account.level, rule.target_level)
        self.trace(plan.pid_string, rule.rule_string, True, -rule.cost, rule.kind_string)
        account.level = rule.target_level
        account.level_since_day = day
        account.earned_since_move = 0
        account.sustain_until = NONE_DAY
        return -2

    cdef void add_move(self, PackedPlan plan, int64_t rule, int64_t kind, int from_level,
                       int to_level) noexcept:
        self.moves.push(plan.pid_string)
        self.moves.push(rule)
        self.moves.push(kind)
        self.moves.push(plan.levels[from_level].id_string)
        self.moves.push(plan.levels[to_level].id_string)


# --------------------------------------------------------------------------- leaf functions


cdef bint window_matches(TimeRuleC* rule, int64_t day, int64_t second) noexcept:
    if rule.start_date != NONE_DAY and day < rule.start_date:
        return False
    if rule.end_date != NONE_DAY and day > rule.end_date:
        return False
    if not (rule.weekdays >> weekday(day)) & 1:
        return False
    if rule.start_time <= rule.end_time:
        return rule.start_time <= second < rule.end_time
    return second >= rule.start_time or second < rule.end_time


cdef bint anniversary(int64_t origin, int64_t day, int64_t before, int64_t after) noexcept:
    cdef int64_t origin_year, month, month_day, year, candidate, clamp, date
    origin_year, month, month_day = civil_from_days(origin)
    year = year_of(day)
    for candidate in range(year - 1, year + 2):
        clamp = days_in_month(candidate, month)
        if month_day < clamp:
            clamp = month_day
        date = days_from_civil(candidate, month, clamp)
        if date - before <= day <= date + after:
            return True
    return False


cdef void count_earned(PackedLoyalty account, int64_t points, int64_t day) noexcept:
    cdef int64_t value
    value = account.earned_ltd + points
    account.earned_ltd = value if value > 0 else 0
    if year_of(day) == account.ytd_year:
        value = account.earned_ytd + points
        account.earned_ytd = value if value > 0 else 0
    if day >= account.level_since_day:
        value = account.earned_since_move + points
        account.earned_since_move = value if value > 0 else 0
    account.month_add(month_index(day), points)


cdef void spend(PackedLoyalty account, int64_t points, int64_t day) except *:
    """Spend available points from the oldest lots first (a stable order, as sorted())."""
    cdef int64_t remaining = points
    cdef int64_t taken, expires
    cdef Py_ssize_t i, j, k, n = account.lot_points.size
    cdef Py_ssize_t* order
    if remaining <= 0:
        return
    order = <Py_ssize_t*> malloc((n + 1) * sizeof(Py_ssize_t))
    if order == NULL:
        raise MemoryError()
    try:
        for i in range(n):
            # Insertion sort by earned day: stable, and lots are few and nearly always
            # already in order (they are appended as they are earned), so this is linear.
            j = i
            while j > 0 and account.lot_earned.data[order[j - 1]] > account.lot_earned.data[i]:
                order[j] = order[j - 1]
                j -= 1
            order[j] = i
        for k in range(n):
            i = order[k]
            expires = account.lot_expires.data[i]
            if account.lot_available.data[i] > day or (expires != NONE_DAY and expires <= day):
                continue
            taken = account.lot_points.data[i]
            if taken > remaining:
                taken = remaining
            account.lot_points.data[i] -= taken
            remaining -= taken
            if remaining == 0:
                break
    finally:
        free(order)
    account.drop_empty_lots()
    if remaining:
        raise AssertionError("spend() called with more than the available balance")


cdef bint movement_due(MovementRuleC* rule, PackedLoyalty account, int64_t day) noexcept:
    cdef bint met
    if rule.test == TEST_TIME:
        if period_after(account.level_since_day, rule.period_count, rule.period_unit) > day:
            return False
        met = account.earned_since_move >= rule.threshold
    else:
        met = test_value(rule.test, rule.months, account, day) >= rule.threshold
    return (not met) if rule.type == MOVE_DEMOTION else met


cdef int64_t test_value(int test, int64_t months, PackedLoyalty account, int64_t day) noexcept:
    cdef int64_t current, earned = 0, back
    if test == TEST_YTD:
        return account.earned_ytd
    if test == TEST_LTD:
        return account.earned_ltd
    if test == TEST_AVERAGE:
        current = month_index(day)
        for back in range(1, months + 1):
            earned += account.month_get(current - back)
        return earned // months
    return account.earned_since_move


# --------------------------------------------------------------------------- views and outcome


cdef Batch _alive(reference):
    batch = reference()
    if batch is None:
        raise RuntimeError("a view of an engine batch read after the batch was dropped")
    return <Batch> batch


class _AccountView:
    """What the reference engine sees as its input accounts: the batch's newest states.

    The views hold their batch weakly: the batch holds the reference engine's batch, which
    holds the views, and a strong reference back would make every batch a cycle that only
    the cyclic collector frees, with every state, lot and request it reached (about 35
    objects a transaction, and a sixth of a durable transaction's CPU in collections)."""

    def __init__(self, batch):
        self.batch = weakref.ref(batch)

    def get(self, account, default=None):
        state = _alive(self.batch).current_state(account)
        return default if state is None else state


class _ReceiptView:
    """What the reference engine sees as earlier receipts: fast-path ones built on demand
    (held weakly, as _AccountView)."""

    def __init__(self, batch):
        self.batch = weakref.ref(batch)

    def get(self, request_id, default=None):
        cdef Batch batch = _alive(self.batch)
        row = batch.fast_receipt_rows().get(request_id)
        if row is not None:
            return batch.build_receipt(row)
        return batch.receipts_in.get(request_id, default)


class LazyResults:
    """The results of a batch, in request order; fast-path ones are built when read."""

    def __init__(self, batch):
        self._batch = batch
        self._built = {}

    def __len__(self):
        return len((<Batch> self._batch).results)

    def __getitem__(self, index):
        cdef Batch batch = <Batch> self._batch
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(batch.results)
        entry = batch.results[index]
        if not isinstance(entry, int):
            return entry
        built = self._built.get(index)
        if built is None:
            built = batch.build_result(entry)
            self._built[index] = built
        return built

    def __iter__(self):
        for index in range(len(self)):
            yield self[index]

    def answers(self, dict exponents, dict codes):
        """Per result, in order: (the Result without its trace, its loyalty.v1 bytes) for a
        fast-path result the engine writes itself (see Batch.row_bytes), else None (the
        caller writes it from ``self[index]``). The trace is in the bytes only: its
        entries, most of a result, never become objects."""
        cdef Batch batch = <Batch> self._batch
        written = []
        for index, entry in enumerate(batch.results):
            data = batch.row_bytes(entry, exponents, codes) if isinstance(entry, int) else None
            if data is None:
                written.append(None)
            else:
                written.append((batch.build_result(entry, False), data))
        return written

    def __eq__(self, other):
        return list(self) == list(other)

    def __repr__(self):
        return f"LazyResults({len(self)} results)"


class LazyAccounts(Mapping):
    """The batch's account states by card; a packed card is unpacked when first read."""

    def __init__(self, batch):
        self._batch = batch
        self._states = {}
        self._pending = {}
        for account, state in (<Batch> batch).ref.states.items():
            self._states[account] = state
        for account, card in (<Batch> batch).cards.items():
            self._states.pop(account, None)
            self._pending[account] = card
        self._order = list(self._states) + [a for a in self._pending if a not in self._states]

    def __getitem__(self, account):
        card = self._pending.pop(account, None)
        if card is not None:
            self._states[account] = (<PackedCard> card).unpack((<Batch> self._batch).p, True)
        return self._states[account]

    def __iter__(self):
        return iter(self._order)

    def __len__(self):
        return len(self._order)

    def __contains__(self, account):
        return account in self._states or account in self._pending

    def stored_fields(self, account):
        """The state of ``account`` as ``codec.state_fields`` writes it, its version field 1
        (the commit sets it: codec.encode_fields); a packed card is written from its
        arrays, without being unpacked."""
        card = self._pending.get(account)
        if card is not None:
            return (<PackedCard> card).fields((<Batch> self._batch).p)
        return state_fields(self._states[account], 1)

    def stored_bytes(self, account, int64_t format_version, int64_t version):
        """``codec.encode_fields(self.stored_fields(account), version)``'s bytes, in
        format ``format_version``, for a card evaluated in the arrays (written from
        them: PackedCard.stored_bytes); None for any other account (its fields, then)."""
        card = self._pending.get(account)
        if card is None:
            return None
        return (<PackedCard> card).stored_bytes((<Batch> self._batch).p, format_version, version)

    def level(self, account, program_id):
        """The level of ``account`` in ``program_id`` ("" without an account there), read
        from a packed card without unpacking it."""
        card = self._pending.get(account)
        if card is not None:
            return (<PackedCard> card).level(program_id)
        held = self._states[account].loyalty.get(program_id)
        return "" if held is None else str(held.level)

    def __repr__(self):
        return f"LazyAccounts({len(self)} accounts)"


class LazyReceipts(Mapping):
    """Receipts written by the batch; fast-path ones are built when first read."""

    def __init__(self, batch):
        self._batch = batch
        self._built = {}
        self._pending = dict((<Batch> batch).fast_receipt_rows())
        for request_id, receipt in (<Batch> batch).ref.new_receipts.items():
            self._pending.pop(request_id, None)
            self._built[request_id] = receipt
        self._order = list(self._pending) + [r for r in self._built if r not in self._pending]

    def __getitem__(self, request_id):
        row = self._pending.pop(request_id, None)
        if row is not None:
            self._built[request_id] = (<Batch> self._batch).build_receipt(row)
        return self._built[request_id]

    def __iter__(self):
        return iter(self._order)

    def __len__(self):
        return len(self._order)

    def __contains__(self, request_id):
        return request_id in self._built or request_id in self._pending

    def stored(self, int64_t format_version):
        """The receipts as the store keeps them, without building the fast-path ones:
        (the receipts that are objects already, [(account, request id, stored bytes)] of
        the others: Batch.receipt_fields after ``format_version``, written as msgpack)."""
        cdef Batch batch = <Batch> self._batch
        cdef _Buffer out
        written = []
        for request_id, row in self._pending.items():
            out = _Buffer()
            _mp_value(out, [format_version, *batch.receipt_fields(row)])
            written.append((batch.meta[row].account, request_id, out.result()))
        return list(self._built.values()), written


class CythonEngine:
    """The compiled engine; ``evaluate`` has the reference engine's contract."""

    name = "cython"

    def __init__(self):
        self._packed = {}

    def pack(self, program):
        """The packed form of a compiled program, built once per program object."""
        key = id(program)
        cached = self._packed.get(key)
        if cached is not None and cached[0] is program:
            return cached[1]
        packed = PackedProgram(program)
        self._packed[key] = (program, packed)
        return packed

    def evaluate(self, program, accounts, requests, receipts=None):
        cdef Batch batch = Batch(self.pack(program), accounts, receipts or {}, len(requests))
        # A batch allocates many small objects and frees none of them until it ends;
        # the cyclic collector would walk them again and again for nothing.
        collecting = gc.isenabled()
        gc.disable()
        try:
            for request in requests:
                batch.run(request)
        finally:
            if collecting:
                gc.enable()
        return shared.BatchOutcome(
            LazyResults(batch), LazyAccounts(batch), LazyReceipts(batch)
        )
