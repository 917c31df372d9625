"""The forwarding policy over every mode × phone line × dialer × category × selection × UL × origin."""

from __future__ import annotations

import itertools

import pytest

from engine.account_model import ForwardingMode, ForwardingSettings
from engine.account_state import AccountState, apply_event
from engine.policy import (
    DecisionReason,
    TwoWayVoiceAction,
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

ALL_CATEGORIES = [*FORWARDING_CATEGORIES, Category.OTHER, Category.UNCLASSIFIED]


def event_in(category: Category, *, fire: bool = False, restore: bool = False) -> Event:
    return Event(
        family=Family.SIA,
        code="XX",
        classification=Classification(category=category, fire=fire, restore=restore),
    )


def oracle(
    mode: ForwardingMode,
    connected: bool,
    line_failed: bool,
    dialer_failed: bool,
    category: Category,
    selected: bool,
    ul: bool,
    server: bool,
) -> tuple[bool, str]:
    """PRODUCT.md's numbered rules, spelled out independently of the implementation."""
    if mode == ForwardingMode.NEVER:
        return False, "mode_never"
    if category in (Category.OTHER, Category.UNCLASSIFIED):
        return False, "not_forwardable"
    effective = selected or (ul and category in (Category.ALARMS, Category.PANEL_NOT_RESPONDING))
    if not effective:
        return False, "category_not_selected"
    if server:
        return True, "forwarded"
    if mode == ForwardingMode.ALWAYS:
        return True, "forwarded"
    if (not connected) or line_failed or dialer_failed:
        return True, "forwarded"
    return False, "phone_line_ok"


COMBINATIONS = list(
    itertools.product(
        list(ForwardingMode),
        [True, False],
        [True, False],
        [True, False],
        ALL_CATEGORIES,
        [True, False],
        [True, False],
        [True, False],
    )
)


class TestPolicyTable:
    def test_table_is_complete(self) -> None:
        """3 modes × 2 × 2 × 2 × 14 categories × 2 × 2 × 2 combinations are all exercised."""
        assert len(COMBINATIONS) == 3 * 2 * 2 * 2 * 14 * 2 * 2 * 2

    @pytest.mark.parametrize(
        (
            "mode",
            "connected",
            "line_failed",
            "dialer_failed",
            "category",
            "selected",
            "ul",
            "server",
        ),
        COMBINATIONS,
    )
    def test_every_combination(
        self,
        mode: ForwardingMode,
        connected: bool,
        line_failed: bool,
        dialer_failed: bool,
        category: Category,
        selected: bool,
        ul: bool,
        server: bool,
    ) -> None:
        """decide() matches the spelled-out rules for this combination."""
        categories = (
            frozenset({category})
            if selected
            else frozenset(c for c in FORWARDING_CATEGORIES if c != category)
        )
        settings = ForwardingSettings(
            mode=mode,
            phone_line_connected=connected,
            categories=categories,
            station_account="5555",
            primary_receiver="rx1",
            ul_listed=ul,
        )
        decision = decide(
            event_in(category),
            settings,
            AccountState(phone_line_failed=line_failed),
            server_generated=server,
            dialer_failed=dialer_failed,
        )
        expected_forward, expected_reason = oracle(
            mode, connected, line_failed, dialer_failed, category, selected, ul, server
        )
        assert (decision.forward, decision.reason.value) == (expected_forward, expected_reason)
        assert decision.category is category
        if decision.forward:
            assert (decision.station_account, decision.primary_receiver) == ("5555", "rx1")


class TestNamedCases:
    def test_defaults(self) -> None:
        """The default selection is the account-creation flow's (8 on, 4 off)."""
        assert {
            Category.ALARMS, Category.ARMING, Category.CANCELS, Category.CRASH_SMASH,
            Category.PANEL_NOT_RESPONDING, Category.PANICS, Category.PHONE_TESTS, Category.TROUBLES,
        } == DEFAULT_FORWARDED_CATEGORIES  # fmt: skip

    def test_phone_line_failure_sequence(self) -> None:
        """Line fine → suppressed; telco fault 351 → the fault itself and later signals forwarded; restore → suppressed."""
        settings = ForwardingSettings(
            mode=ForwardingMode.PHONE_LINE_FAILURE,
            phone_line_connected=True,
            categories=DEFAULT_FORWARDED_CATEGORIES | {Category.PHONE_COMM_FAILURES},
            station_account="5555",
            primary_receiver="rx1",
        )
        state = AccountState()
        burglary = Event(
            family=Family.CID,
            code="130",
            qualifier="1",
            classification=classify(Family.CID, "130", "1"),
        )
        assert decide(burglary, settings, state).reason is DecisionReason.PHONE_LINE_OK
        fault = Event(
            family=Family.CID,
            code="351",
            qualifier="1",
            classification=classify(Family.CID, "351", "1"),
        )
        state = apply_event(state, fault)
        assert state.phone_line_failed
        assert decide(fault, settings, state).forward
        assert decide(burglary, settings, state).forward
        restore = Event(
            family=Family.CID,
            code="351",
            qualifier="3",
            classification=classify(Family.CID, "351", "3"),
        )
        state = apply_event(state, restore)
        assert not state.phone_line_failed
        assert decide(burglary, settings, state).reason is DecisionReason.PHONE_LINE_OK

    @pytest.mark.parametrize(
        ("code", "sets"), [("LT", True), ("YC", True), ("LR", False), ("YK", False)]
    )
    def test_sia_line_state(self, code: str, sets: bool) -> None:
        """SIA LT/YC set the failed line, LR/YK clear it."""
        event = Event(family=Family.SIA, code=code, classification=classify(Family.SIA, code))
        start = AccountState(phone_line_failed=not sets)
        assert apply_event(start, event).phone_line_failed is sets

    def test_ul_cannot_deselect_alarms(self) -> None:
        """On a UL/ETL account Alarms and PNR are forwarded even when deselected."""
        settings = ForwardingSettings(
            mode=ForwardingMode.ALWAYS,
            categories=frozenset(),
            ul_listed=True,
            station_account="1",
            primary_receiver="r",
        )
        assert decide(event_in(Category.ALARMS), settings, AccountState()).forward
        assert decide(
            event_in(Category.PANEL_NOT_RESPONDING), settings, AccountState(), server_generated=True
        ).forward
        assert not decide(event_in(Category.TROUBLES), settings, AccountState()).forward
        assert ul_effective_categories(settings) == {Category.ALARMS, Category.PANEL_NOT_RESPONDING}

    def test_misconfigured_accounts_are_visible(self) -> None:
        """Forwardable but no station account or receiver: not forwarded, with a reason saying so."""
        no_account = ForwardingSettings(mode=ForwardingMode.ALWAYS, primary_receiver="r")
        assert (
            decide(event_in(Category.ALARMS), no_account, AccountState()).reason
            is DecisionReason.NO_STATION_ACCOUNT
        )
        no_receiver = ForwardingSettings(mode=ForwardingMode.ALWAYS, station_account="1")
        assert (
            decide(event_in(Category.ALARMS), no_receiver, AccountState()).reason
            is DecisionReason.NO_RECEIVER
        )

    def test_two_way_voice_on_fire_only_when_enabled(self) -> None:
        """Fire alarms ask for listen-in after delivery when the option is on; restores and burglary do not."""
        on = ForwardingSettings(
            mode=ForwardingMode.ALWAYS,
            station_account="1",
            primary_receiver="r",
            two_way_voice=True,
        )
        off = ForwardingSettings(
            mode=ForwardingMode.ALWAYS, station_account="1", primary_receiver="r"
        )
        fire = event_in(Category.ALARMS, fire=True)
        assert (
            decide(fire, on, AccountState()).two_way_voice
            is TwoWayVoiceAction.LISTEN_IN_AFTER_DELIVERY
        )
        assert decide(fire, off, AccountState()).two_way_voice is TwoWayVoiceAction.NONE
        assert (
            decide(
                event_in(Category.ALARMS, fire=True, restore=True), on, AccountState()
            ).two_way_voice
            is TwoWayVoiceAction.NONE
        )
        assert (
            decide(event_in(Category.ALARMS), on, AccountState()).two_way_voice
            is TwoWayVoiceAction.NONE
        )

    def test_eligibility_names_what_is_missing(self) -> None:
        """Eligibility lists each missing condition."""
        assert (
            check_two_way_voice_eligibility(
                module_capable=True, receiver_supports=True, package_includes=True
            )
            == []
        )
        missing = check_two_way_voice_eligibility(
            module_capable=False, receiver_supports=True, package_includes=False
        )
        assert len(missing) == 2
        assert any("module" in m for m in missing)
        assert any("package" in m for m in missing)
