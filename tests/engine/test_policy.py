"""The forwarding policy (engine/policy.py) and the phone-line state rule (engine/account_state.py)."""

from __future__ import annotations

import itertools
from typing import Any, NamedTuple

import msgspec
import pytest

from engine.account_model import ForwardingMode, ForwardingSettings
from engine.account_state import UNKNOWN_FAULT, AccountState, apply_event, changes_state
from engine.policy import (
    Decision,
    DecisionReason,
    TwoWayVoiceAction,
    TwoWayVoiceRequirement,
    check_two_way_voice_eligibility,
    decide,
    ul_effective_categories,
)
from protocols.categories import classify
from protocols.signal import (
    DEFAULT_FORWARDED_CATEGORIES,
    FORWARDING_CATEGORIES,
    Category,
    Classification,
    Event,
    Family,
)

ALL_CATEGORIES = (*FORWARDING_CATEGORIES, Category.OTHER, Category.UNCLASSIFIED)


# A failed line recorded before failures were kept apart (migration 0480): any restore ends it.
FAILED_BEFORE = AccountState(line_faults=frozenset({UNKNOWN_FAULT}))


def event_in(
    category: Category,
    *,
    fire: bool = False,
    co: bool = False,
    restore: bool = False,
    status: bool = False,
) -> Event:
    """An event with a given classification (the code is irrelevant to decide())."""
    return Event(
        family=Family.SIA,
        code="XX",
        classification=Classification(
            category=category, fire=fire, co=co, restore=restore, status=status
        ),
    )


def cid(code: str, qualifier: str | None = "1") -> Event:
    """A Contact ID event classified the way ingest classifies it."""
    return Event(
        family=Family.CID,
        code=code,
        qualifier=qualifier,
        classification=classify(Family.CID, code, qualifier or "1"),
    )


def sia(code: str) -> Event:
    """A SIA DC-03 event classified the way ingest classifies it."""
    return Event(family=Family.SIA, code=code, classification=classify(Family.SIA, code))


_CONFIGURED = ForwardingSettings(
    mode=ForwardingMode.ALWAYS,
    station_account="5555",
    primary_receiver="rx1",
    backup_receiver="rx2",
)


def forwarding(**overrides: Any) -> ForwardingSettings:
    """A fully configured account in mode always, with ``overrides`` applied."""
    return msgspec.structs.replace(_CONFIGURED, **overrides)


# -- The table ---------------------------------------------------------------------------------

# The event kinds that matter to the two-way-voice action: (fire, co, restore, status).
KINDS = {
    "plain": (False, False, False, False),
    "fire": (True, False, False, False),
    "co": (False, True, False, False),
    "fire_restore": (True, False, True, False),
    "co_status": (False, True, False, True),
}


class Case(NamedTuple):
    mode: ForwardingMode
    line_connected: bool
    line_failed: bool
    dialer_failed: bool
    category: Category
    selected: bool
    ul_listed: bool
    server_generated: bool
    two_way_voice: bool
    kind: str


def oracle(case: Case) -> tuple[bool, str, str]:
    """(forward, reason, two-way voice) from PRODUCT.md's numbered rules, spelled out by hand."""
    # Rule 1: mode is not never.
    if case.mode == ForwardingMode.NEVER:
        return False, "mode_never", "none"
    # Rule 2: the category is selected. Unknown and "other" codes cannot be selected at all.
    if case.category == Category.UNCLASSIFIED:
        return False, "unclassified", "none"
    if case.category == Category.OTHER:
        return False, "not_forwardable", "none"
    ul_cannot_deselect = case.ul_listed and case.category in (
        Category.ALARMS,
        Category.PANEL_NOT_RESPONDING,
    )
    if not case.selected and not ul_cannot_deselect:
        return False, "category_not_selected", "none"
    # Rule 3: only for signals from the premises.
    if not case.server_generated and case.mode == ForwardingMode.PHONE_LINE_FAILURE:
        line_down = (not case.line_connected) or case.line_failed or case.dialer_failed
        if not line_down:
            return False, "phone_line_ok", "none"
    fire, co, restore, status = KINDS[case.kind]
    new_fire_or_co = (fire or co) and not restore and not status
    voice = "listen_in_after_delivery" if case.two_way_voice and new_fire_or_co else "none"
    return True, "forwarded", voice


CASES = [
    Case(*values)
    for values in itertools.product(
        list(ForwardingMode),
        [True, False],  # phone_line_connected
        [True, False],  # account's phone line currently failed
        [True, False],  # the signal says the dialer failed
        ALL_CATEGORIES,
        [True, False],  # category selected
        [True, False],  # ul_listed
        [True, False],  # server-generated
        [True, False],  # two-way-voice option
        list(KINDS),
    )
]


def run(case: Case) -> Decision:
    """decide() for one table row; the selection is the category alone or all but it."""
    others = frozenset(c for c in FORWARDING_CATEGORIES if c is not case.category)
    fire, co, restore, status = KINDS[case.kind]
    settings = forwarding(
        mode=case.mode,
        phone_line_connected=case.line_connected,
        categories=frozenset({case.category}) if case.selected else others,
        ul_listed=case.ul_listed,
        two_way_voice=case.two_way_voice,
    )
    return decide(
        event_in(case.category, fire=fire, co=co, restore=restore, status=status),
        settings,
        AccountState(line_faults=frozenset({"351"}) if case.line_failed else frozenset()),
        server_generated=case.server_generated,
        dialer_failed=case.dialer_failed,
    )


class TestPolicyTable:
    def test_table_covers_every_category(self) -> None:
        """The table has every Category member (the 12, other, unclassified) and every mode."""
        assert {c.category for c in CASES} == set(Category)
        assert {c.mode for c in CASES} == set(ForwardingMode)

    def test_every_combination_matches_the_rules(self) -> None:
        """mode × line connected × line failed × dialer × category × selected × UL × origin × 2WV × kind."""
        mismatches = []
        for case in CASES:
            decision = run(case)
            got = (decision.forward, decision.reason.value, decision.two_way_voice.value)
            if got != oracle(case):
                mismatches.append((case, got, oracle(case)))
        assert mismatches[:5] == []

    def test_every_decision_carries_the_event_category_and_targets_only_when_forwarded(
        self,
    ) -> None:
        """Category always echoed; station account and receivers set exactly on forwarded ones."""
        for case in CASES:
            decision = run(case)
            assert decision.category is case.category
            targets = (
                decision.station_account,
                decision.primary_receiver,
                decision.backup_receiver,
            )
            expected = ("5555", "rx1", "rx2") if decision.forward else (None, None, None)
            assert targets == expected, case


# -- Named cases ---------------------------------------------------------------------------------


class TestPhoneLineFailureMode:
    def settings(
        self, categories: frozenset[Category] = DEFAULT_FORWARDED_CATEGORIES
    ) -> ForwardingSettings:
        return forwarding(
            mode=ForwardingMode.PHONE_LINE_FAILURE, phone_line_connected=True, categories=categories
        )

    def test_line_ok_suppresses_with_reason(self) -> None:
        """Line connected and healthy: a burglary alarm is suppressed as phone_line_ok."""
        decision = decide(cid("130"), self.settings(), AccountState())
        assert (decision.forward, decision.reason) == (False, DecisionReason.PHONE_LINE_OK)

    def test_fault_forwards_itself_then_restore_suppresses_again(self) -> None:
        """351 sets the state before its own decision (forwarded); the restore clears it."""
        settings = self.settings(DEFAULT_FORWARDED_CATEGORIES | {Category.PHONE_COMM_FAILURES})
        state = apply_event(AccountState(), cid("351"))
        assert state.phone_line_failed
        assert decide(cid("351"), settings, state).reason is DecisionReason.FORWARDED
        assert decide(cid("130"), settings, state).reason is DecisionReason.FORWARDED
        state = apply_event(state, cid("351", "3"))
        assert not state.phone_line_failed
        assert decide(cid("130"), settings, state).reason is DecisionReason.PHONE_LINE_OK

    def test_fault_not_selected_by_default_still_opens_the_line(self) -> None:
        """With default categories the 351 itself is not selected, but alarms after it go out."""
        state = apply_event(AccountState(), cid("351"))
        assert decide(cid("351"), self.settings(), state).reason is (
            DecisionReason.CATEGORY_NOT_SELECTED
        )
        assert decide(cid("130"), self.settings(), state).forward

    def test_dialer_failed_forwards_on_a_healthy_line(self) -> None:
        """The signal saying the panel's dialer failed is forwarded although the line is fine."""
        assert decide(cid("130"), self.settings(), AccountState(), dialer_failed=True).forward

    def test_no_phone_line_connected_forwards(self) -> None:
        """phone_line_connected false: everything selected goes out (the module is the only path)."""
        settings = forwarding(mode=ForwardingMode.PHONE_LINE_FAILURE, phone_line_connected=False)
        assert decide(cid("130"), settings, AccountState()).forward

    def test_server_generated_ignores_the_line(self) -> None:
        """Panel Not Responding and Crash & Smash need only rules 1 and 2."""
        for category in (Category.PANEL_NOT_RESPONDING, Category.CRASH_SMASH):
            event = event_in(category)
            assert decide(event, self.settings(), AccountState(), server_generated=True).forward
            assert not decide(event, self.settings(), AccountState()).forward


class TestRulesOneAndTwo:
    def test_ul_cannot_deselect_alarms_or_pnr(self) -> None:
        """On UL/ETL, Alarms and PNR are forwarded though deselected; other categories are not."""
        settings = forwarding(categories=frozenset(), ul_listed=True)
        assert decide(cid("130"), settings, AccountState()).forward
        pnr = event_in(Category.PANEL_NOT_RESPONDING)
        assert decide(pnr, settings, AccountState(), server_generated=True).forward
        assert decide(cid("301"), settings, AccountState()).reason is (
            DecisionReason.CATEGORY_NOT_SELECTED
        )
        assert ul_effective_categories(settings) == {Category.ALARMS, Category.PANEL_NOT_RESPONDING}

    def test_without_ul_alarms_can_be_deselected(self) -> None:
        """Not UL-listed: a deselected Alarms category is not forwarded."""
        settings = forwarding(categories=frozenset({Category.TROUBLES}))
        assert decide(cid("130"), settings, AccountState()).reason is (
            DecisionReason.CATEGORY_NOT_SELECTED
        )
        assert ul_effective_categories(settings) == {Category.TROUBLES}

    def test_mode_never_wins_even_for_ul_alarms(self) -> None:
        """Rule 1 is checked first: a self-monitored UL account forwards nothing."""
        settings = forwarding(mode=ForwardingMode.NEVER, ul_listed=True)
        assert decide(cid("130"), settings, AccountState()).reason is DecisionReason.MODE_NEVER

    def test_unknown_and_other_codes_say_which(self) -> None:
        """An unknown code is 'unclassified'; a known never-forwarded code is 'not_forwardable'."""
        assert decide(cid("999"), forwarding(), AccountState()).reason is (
            DecisionReason.UNCLASSIFIED
        )
        assert decide(sia("LB"), forwarding(), AccountState()).reason is (
            DecisionReason.NOT_FORWARDABLE
        )

    def test_defaults_are_the_account_creation_flow(self) -> None:
        """Default settings forward the 8 default categories, not Bypass, Comm Failures, Tamper, Restorals."""
        settings = forwarding()
        forwarded = {
            c
            for c in FORWARDING_CATEGORIES
            if decide(event_in(c), settings, AccountState()).forward
        }
        assert forwarded == {
            Category.ALARMS, Category.ARMING, Category.CANCELS, Category.CRASH_SMASH,
            Category.PANEL_NOT_RESPONDING, Category.PANICS, Category.PHONE_TESTS, Category.TROUBLES,
        }  # fmt: skip


class TestMisconfiguration:
    @pytest.mark.parametrize("station_account", [None, ""])
    def test_no_station_account(self, station_account: str | None) -> None:
        """Forwardable but no station account number: not forwarded, reason no_station_account."""
        settings = forwarding(station_account=station_account)
        decision = decide(cid("130"), settings, AccountState())
        assert (decision.forward, decision.reason) == (False, DecisionReason.NO_STATION_ACCOUNT)

    @pytest.mark.parametrize("primary", [None, ""])
    def test_no_primary_receiver(self, primary: str | None) -> None:
        """Forwardable but no primary receiver: not forwarded, reason no_receiver."""
        decision = decide(cid("130"), forwarding(primary_receiver=primary), AccountState())
        assert (decision.forward, decision.reason) == (False, DecisionReason.NO_RECEIVER)

    def test_misconfiguration_only_after_the_rules(self) -> None:
        """A suppressed signal keeps its rule's reason even on a misconfigured account."""
        settings = forwarding(station_account=None, primary_receiver=None)
        assert decide(cid("570"), settings, AccountState()).reason is (
            DecisionReason.CATEGORY_NOT_SELECTED
        )

    def test_backup_is_optional(self) -> None:
        """No backup receiver: forwarded to the primary alone."""
        decision = decide(cid("130"), forwarding(backup_receiver=None), AccountState())
        assert (decision.forward, decision.primary_receiver, decision.backup_receiver) == (
            True,
            "rx1",
            None,
        )


class TestTwoWayVoice:
    @pytest.mark.parametrize(
        ("event", "expected"),
        [
            (cid("110"), TwoWayVoiceAction.LISTEN_IN_AFTER_DELIVERY),  # fire
            (cid("162"), TwoWayVoiceAction.LISTEN_IN_AFTER_DELIVERY),  # CO
            (sia("FA"), TwoWayVoiceAction.LISTEN_IN_AFTER_DELIVERY),
            (cid("110", "3"), TwoWayVoiceAction.NONE),  # fire restore
            (sia("FR"), TwoWayVoiceAction.NONE),
            (cid("110", "6"), TwoWayVoiceAction.NONE),  # status repeat of a standing alarm
            (cid("130"), TwoWayVoiceAction.NONE),  # burglary
        ],
    )
    def test_only_new_fire_and_co_alarms(self, event: Event, expected: TwoWayVoiceAction) -> None:
        """With the option on, only a new fire or CO alarm asks for listen-in after delivery."""
        assert (
            decide(event, forwarding(two_way_voice=True), AccountState()).two_way_voice is expected
        )

    def test_option_off(self) -> None:
        """With the option off a fire alarm is forwarded without voice."""
        assert (
            decide(cid("110"), forwarding(), AccountState()).two_way_voice is TwoWayVoiceAction.NONE
        )

    def test_not_forwarded_means_no_voice(self) -> None:
        """A suppressed fire alarm never asks for voice."""
        settings = forwarding(two_way_voice=True, categories=frozenset({Category.TROUBLES}))
        decision = decide(cid("110"), settings, AccountState())
        assert (decision.forward, decision.two_way_voice) == (False, TwoWayVoiceAction.NONE)

    @pytest.mark.parametrize(
        ("module", "receiver", "package"), list(itertools.product([True, False], repeat=3))
    )
    def test_eligibility_names_exactly_what_is_missing(
        self, module: bool, receiver: bool, package: bool
    ) -> None:
        """Each missing condition is named once, in the order module, receiver, package."""
        missing = check_two_way_voice_eligibility(
            module_capable=module, receiver_supports=receiver, package_includes=package
        )
        expected = [
            name
            for name, present in (
                ("module_two_way_voice_capable", module),
                ("receiver_supports_two_way_voice", receiver),
                ("package_includes_two_way_voice", package),
            )
            if not present
        ]
        assert missing == expected
        assert all(isinstance(m, TwoWayVoiceRequirement) for m in missing)


class TestApplyEvent:
    @pytest.mark.parametrize("code", ["351", "352", "354"])
    @pytest.mark.parametrize(("qualifier", "failed"), [("1", True), ("6", True), ("3", False)])
    def test_contact_id_line_faults(self, code: str, qualifier: str, failed: bool) -> None:
        """351/352/354: Q=1 (and Q=6 status) set the failed line, Q=3 clears it."""
        for start in (AccountState(), FAILED_BEFORE):
            assert apply_event(start, cid(code, qualifier)).phone_line_failed is failed

    @pytest.mark.parametrize("code", ["350", "353", "355", "356", "357", "130", "301"])
    def test_other_contact_id_codes_leave_the_line(self, code: str) -> None:
        """Other codes (even other 35x communication codes) do not touch the line state."""
        for start in (AccountState(), FAILED_BEFORE):
            for qualifier in ("1", "3"):
                assert apply_event(start, cid(code, qualifier)) is start

    @pytest.mark.parametrize(
        ("code", "failed"), [("LT", True), ("YC", True), ("LR", False), ("YK", False)]
    )
    def test_sia_line_codes(self, code: str, failed: bool) -> None:
        """SIA LT and YC set the failed line, LR and YK clear it."""
        for start in (AccountState(), FAILED_BEFORE):
            assert apply_event(start, sia(code)).phone_line_failed is failed
        assert changes_state(sia(code))

    def test_each_failure_is_ended_by_its_own_restore(self) -> None:
        """Line 1 fault, then line 2's restore: the line is still failed (it was cleared, and the
        alarms of an 'only if the phone line fails' account were held back)."""
        state = apply_event(AccountState(), cid("351"))
        state = apply_event(state, cid("352", "3"))
        assert state.phone_line_failed and state.line_faults == {"351"}
        state = apply_event(apply_event(state, cid("354")), cid("351", "3"))
        assert state.line_faults == {"354"}
        assert not apply_event(state, cid("354", "3")).phone_line_failed
        sia_state = apply_event(AccountState(), sia("LT"))
        assert apply_event(sia_state, sia("YK")).phone_line_failed  # YK ends YC, not LT
        assert not apply_event(sia_state, sia("LR")).phone_line_failed

    def test_sia_line_trouble_is_kept_per_line(self) -> None:
        """SIA LT / LR carry the line number as their address (PROTOCOLS.md §3.2): line 2's
        restore does not end line 1's fault (it did: both were one "LT"); LR without a line ends
        every line's, and LR2 ends an LT that named no line."""

        def line(code: str, number: int | None) -> Event:
            return msgspec.structs.replace(sia(code), zone=number)

        state = apply_event(AccountState(), line("LT", 1))
        state = apply_event(state, line("LT", 2))
        state = apply_event(state, line("LR", 2))
        assert state.phone_line_failed and state.line_faults == {"LT1"}
        assert not apply_event(state, line("LR", 1)).phone_line_failed
        both = apply_event(apply_event(state, line("LT", 2)), sia("YC"))
        assert apply_event(both, line("LR", None)).line_faults == {"YC"}
        assert not apply_event(apply_event(AccountState(), sia("LT")), line("LR", 2)).line_faults
        assert not apply_event(FAILED_BEFORE, line("LR", 2)).phone_line_failed

    def test_a_failure_from_before_is_ended_by_any_restore(self) -> None:
        """A failed line recorded without its cause (before migration 0480) ends at the first
        line restore, as it did."""
        assert not apply_event(FAILED_BEFORE, cid("352", "3")).phone_line_failed
        assert not apply_event(FAILED_BEFORE, sia("YK")).phone_line_failed

    def test_unchanged_state_is_returned_as_is(self) -> None:
        """No change, no new object (the per-signal path allocates nothing)."""
        failed = AccountState(line_faults=frozenset({"351"}))
        assert apply_event(failed, cid("351")) is failed
        assert apply_event(failed, sia("BA")) is failed

    def test_server_generated_wire_form_is_not_reclassified(self) -> None:
        """A Panel Not Responding sent upstream as SIA YC is not the panel's line failing."""
        pnr = Event(
            family=Family.SIA,
            code="YC",
            classification=Classification(category=Category.PANEL_NOT_RESPONDING),
        )
        assert apply_event(AccountState(), pnr) == AccountState()
        assert not changes_state(pnr)

    def test_changes_state_agrees_with_apply_event(self) -> None:
        """Every event apply_event can change is one changes_state flags (so its row is locked)."""
        events = [cid(f"{n:03d}", q) for n in range(100, 1000) for q in ("1", "3", "6")]
        events += [
            sia(a + b) for a in "ABCDEFGHIJKLMNOPQRSTUVWXYZ" for b in "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
        ]
        for event in events:
            for start in (AccountState(), FAILED_BEFORE):
                if apply_event(start, event) != start:
                    assert changes_state(event), event
