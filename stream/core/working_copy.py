"""One event's working copy of an account's state, for the rules engine: copies what it touches,
collects the entries, keeps the account's cap usage and carried remainders, and the offers' budgets.

Caps and budgets count what a share *holds* (its pending plus its confirmed reward not clawed
back): ``grant`` says how much more a share may hold, ``hold`` records every change of a holding.
"""

from __future__ import annotations

from collections.abc import Mapping

from stream.core.abuse import DEFAULT_RULES, AbuseRules
from stream.core.eligibility import AccountProfile, LocalTime, local_time
from stream.core.entries import RECONCILIATION, Entry, Explanation, moves_money
from stream.core.events import CardEvent, EventType
from stream.core.money import format_minor, prorate
from stream.core.notices import Notice
from stream.core.offers import OfferBook, RewardKind
from stream.core.outcomes import Outcome
from stream.core.rewards import Amount, period_kept_until
from stream.core.state import AccountState, Lot, Payout, Share, Txn, Watch, copy_txn


class AccountStep:
    """The working copy for one event: copies what it touches, collects entries and budget deltas,
    and keeps caps and budgets (``grant`` before a holding grows, ``hold`` for every change)."""

    __slots__ = (
        "_copied",
        "_items",
        "_local",
        "_own_caps",
        "_own_carry",
        "_own_lots",
        "_own_payouts",
        "_own_wallet",
        "abuse",
        "at_ms",
        "budget_deltas",
        "budget_reach",
        "budget_remaining",
        "caps",
        "carry",
        "changed",
        "entries",
        "event",
        "lots",
        "notices",
        "offers",
        "payouts",
        "profile",
        "purchase",
        "recent",
        "txns",
        "wallet",
        "watch",
    )

    def __init__(
        self,
        event: CardEvent,
        state: AccountState,
        offers: OfferBook,
        profile: AccountProfile,
        budget_remaining: Mapping[str, int],
        abuse: AbuseRules = DEFAULT_RULES,
    ) -> None:
        self.event = event
        self.at_ms = event.occurred_at_ms  # the event's time, epoch milliseconds
        self.purchase = purchase_ref(event)  # the purchase it is about (``purchase_ref``)
        self.abuse = abuse  # the abuse rules (stream.core.holds)
        self.watch: Watch = state.watch or Watch()  # what they remember; replaced, never changed in place
        self.offers = offers
        self.profile = profile
        self.budget_remaining = budget_remaining
        self.txns: dict[str, Txn] = state.txns  # replaced by a copy on first write
        self.recent = state.recent  # the account's recent events before this one (read only)
        self._copied = False
        self.changed: set[str] = set()  # the transactions this step copied or made (its own to change)
        # the state's until first changed (``own_caps``, ``own_carry``): then a copy
        self.caps: dict[str, dict[str, int]] = state.caps
        self.carry: dict[str, int] = state.carry
        self.lots: list[Lot] = state.lots  # unused rewards that expire (stream.core.expiry); ``own_lots`` to change
        self._own_caps = self._own_carry = self._own_lots = False
        # AVAILABLE per "<kind>:<unit>" (None: not known); kept by ``entry``, the one place money moves
        self.wallet: dict[str, int] | None = state.wallet
        self.payouts: dict[str, Payout] = state.payouts  # ``own_payouts`` to change
        self._own_wallet = self._own_payouts = False
        self.budget_deltas: dict[str, int] = {}
        self.budget_reach: dict[str, int] = {}  # budget key -> the most a grant took it to (``grant``)
        self.entries: list[Entry] = []
        self.notices: list[Notice] = []  # what the customer is to be told beside the entries (stream.core.notices)
        self._items = 0  # reconciliation items among the entries: they take no position (``entry``)
        self._local: LocalTime | None = None

    @property
    def local(self) -> LocalTime:
        if self._local is None:
            self._local = local_time(self.event)
        return self._local

    @property
    def owns_txns(self) -> bool:
        """Whether ``txns`` is the step's own copy (not the state's dict)."""
        return self._copied

    def txn(self, ref: str) -> Txn | None:
        """The transaction ``ref`` to change (a copy of the state's; None when unknown)."""
        txn = self.txns.get(ref)
        if txn is None or ref in self.changed:
            return txn
        return self.put(ref, copy_txn(txn))

    def put(self, ref: str, txn: Txn) -> Txn:
        """Make ``txn`` the account's transaction ``ref`` (new, or a copy ``txn`` made)."""
        if not self._copied:
            self.txns = dict(self.txns)
            self._copied = True
        self.txns[ref] = txn
        self.changed.add(ref)
        return txn

    # --- limits ----------------------------------------------------------------------------------

    def headroom(self, share: Share) -> tuple[int | None, Outcome | None]:
        """How much more ``share`` may hold (None: unlimited) and the limit that binds."""
        room: int | None = None
        binding: Outcome | None = None
        if share.cap is not None:
            used = self.caps.get(limits_key(share), {}).get(share.cap_period or "", 0)
            room, binding = max(0, share.cap[1] - used), Outcome.CAP_REACHED
        if share.budget is not None:
            key = limits_key(share)
            left = self.budget_remaining.get(key, share.budget) - self.budget_deltas.get(key, 0)
            if room is None or max(0, left) <= room:
                room, binding = max(0, left), Outcome.BUDGET_EXHAUSTED
        return room, binding

    def grant(self, share: Share, wanted: int) -> tuple[int, Outcome | None]:
        """How much of ``wanted`` more the share may hold, and the limit that cut it (if one did).
        The caller records the grant with ``hold``."""
        room, binding = self.headroom(share)
        granted, limit = (wanted, None) if room is None or wanted <= room else (room, binding)
        if share.budget is not None and wanted > 0:  # what any view of the budget must leave (Decision.budget_reach)
            key = limits_key(share)
            reach = self.budget_deltas.get(key, 0) + granted
            reach = reach if reach < share.budget else BEYOND_ANY_VIEW  # the whole budget bound it: no view covers it
            self.budget_reach[key] = max(self.budget_reach.get(key, reach), reach)
        return granted, limit

    def hold(self, share: Share, delta: int) -> None:
        """The share's holding changed by ``delta``: move its cap period and its offer's budget."""
        if not delta:
            return
        key = limits_key(share)
        if share.budget is not None:
            self.budget_deltas[key] = self.budget_deltas.get(key, 0) + delta
        if share.cap is not None:
            caps = self.own_caps()
            usage = caps.setdefault(key, {})
            period = share.cap_period or ""  # always set with a cap
            if period in usage or delta > 0:  # a pruned period is over: nothing to give back
                usage[period] = max(0, usage.get(period, 0) + delta)
            if not usage.get(period, 1):
                usage.pop(period, None)
            if not usage:
                del caps[key]

    def own_caps(self) -> dict[str, dict[str, int]]:
        """The cap usage to change: the state's copied (once)."""
        if not self._own_caps:
            self.caps = {k: dict(v) for k, v in self.caps.items()}
            self._own_caps = True
        return self.caps

    def own_carry(self) -> dict[str, int]:
        """The carried remainders to change: the state's copied (once)."""
        if not self._own_carry:
            self.carry = dict(self.carry)
            self._own_carry = True
        return self.carry

    def own_lots(self) -> list[Lot]:
        """The lots to change: the state's copied (once; a lot is replaced, never changed in place)."""
        if not self._own_lots:
            self.lots = list(self.lots)
            self._own_lots = True
        return self.lots

    def own_payouts(self) -> dict[str, Payout]:
        """The payouts to change: the state's copied (once; a payout is replaced, never changed in place)."""
        if not self._own_payouts:
            self.payouts = dict(self.payouts)
            self._own_payouts = True
        return self.payouts

    def _move_wallet(self, key: str, delta: int) -> None:
        """The AVAILABLE book of ``key`` ("<kind>:<unit>") moved by ``delta`` (when the wallet is known)."""
        wallet = self.wallet
        if wallet is None:
            return
        if not self._own_wallet:
            wallet = self.wallet = dict(wallet)
            self._own_wallet = True
        left = wallet.get(key, 0) + delta
        if left:
            wallet[key] = left
        else:
            wallet.pop(key, None)

    def prune_caps(self) -> None:
        """Drop the usage of the cap periods over (``stream.core.rewards.period_over``, judged on
        the local day), and of caps the offer no longer has."""
        if not self.caps:
            return
        today = None
        over: list[tuple[str, str]] = []
        empty: list[str] = []
        for key, usage in self.caps.items():
            offer = self.offers.get(key) or self.offers.get(key.rpartition("@")[0])  # "<offer_id>@<currency>"
            if offer is None:  # not in the book now: kept as is, it may come back
                continue
            cap, dropped = offer.cap, 0
            for period in usage:
                kept = True if cap is None else period_kept_until(period, cap.period._value_, offer.auth_expiry_days)
                if kept is None:
                    continue
                if kept is not True:
                    today = self.local.at.date() if today is None else today
                    if kept >= today:
                        continue
                over.append((key, period))
                dropped += 1
            if dropped == len(usage):
                empty.append(key)
        if over or empty:
            caps = self.own_caps()
            for key, period in over:
                del caps[key][period]
            for key in empty:
                del caps[key]

    def carry_key(self, share: Share) -> str:
        return f"{share.offer_id}:{share.currency}"

    # --- entries ---------------------------------------------------------------------------------

    def entry(
        self,
        kind: str,
        debit: str,
        credit: str,
        amount_minor: int,
        share: Share | None,
        reason: str,
        detail: str,
        basis_minor: int = 0,
        force_post: bool = False,
        amount: Amount | None = None,
        number: str | None = None,
        about: tuple[str, str] | None = None,
        reward_kind: str = "CASH",
    ) -> None:
        """Record one entry; its id is ``<event_id>#<number>``, the number its position unless given (a
        reconciliation item, named, takes none: the entries' ids are those they had before items existed).
        ``about``: for an entry of no share and no purchase (a payout, a redemption), its (reference, unit),
        ``reward_kind`` the kind of such an entry (a share's is its own).

        Every entry into or out of AVAILABLE moves the account's wallet by its amount, here and nowhere else."""
        if amount_minor <= 0 and moves_money(kind):
            return
        event = self.event
        ref = self.purchase if about is None else about[0]
        currency = (share.currency if share else event.billing_currency) if about is None else about[1]
        reward_kind = share.reward_kind if share else reward_kind
        if moves_money(kind) and (debit == _SPENDABLE) != (credit == _SPENDABLE):
            self._move_wallet(f"{reward_kind}:{currency}", amount_minor if credit == _SPENDABLE else -amount_minor)
        bought = self.txns.get(ref)
        beneficiary = share.charity_id if share is not None and share.reward_kind == _CHARITY else None
        sponsor = None if share is None else share.sponsor_id  # who funds it: the share's, kept from the purchase
        if sponsor is None and kind == _AVAILABLE_EXPIRED and share is not None:
            sponsor = self._lot_sponsor(share, bought)
        if beneficiary:
            detail = f"{detail}; charity_id={beneficiary}"
        self.entries.append(
            Entry(
                accrual_id=f"{event.event_id}#{len(self.entries) - self._items if number is None else number}",
                source_event_id=event.event_id,
                account_id=event.account_id,
                transaction_ref=event.transaction_ref if about is None else ref,
                entry_kind=kind,
                debit_book=debit,
                credit_book=credit,
                amount_minor=amount_minor,
                currency=currency,
                reward_kind=reward_kind,
                offer_id=share.offer_id if share else None,
                rule_version=share.version if share else None,
                beneficiary_id=beneficiary,
                occurred_at=self.at_ms,
                explanation=Explanation(
                    reason=reason,
                    detail=detail,
                    basis_minor=basis_minor,
                    basis_currency=event.billing_currency if about is None else currency,
                    rate_bps=amount.rate_bps if amount else share.rate_bps if share else 0,
                    rounding=share.rounding if share else "down",
                    carried_remainder=amount.carried_out if amount else 0,
                    force_post=force_post,
                ),
                merchant_id=(bought.merchant_id if bought is not None else "") or event.merchant_id or None,
                purchase_ref=ref,
                sponsor_id=sponsor,
            )
        )

    def _lot_sponsor(self, share: Share, bought: Txn | None) -> str | None:
        """Who funds an expiry's reward: its terms are rebuilt from the lot (``stream.core.expiry``), which keeps
        no sponsor, so it is the purchase's share of the same offer (what the reward was booked to), else the
        offer's sponsor now (the purchase gone from the state), else the bank. Any other entry's is its share's."""
        if bought is not None:
            for held in bought.shares:
                if held.offer_id == share.offer_id:
                    return held.sponsor_id
        offer = self.offers.get(share.offer_id)
        return None if offer is None else offer.sponsor_id

    def not_earned(self, outcome: Outcome, detail: str, share: Share | None = None, number: str | None = None) -> Outcome:
        basis = purchase_basis(self.event)
        self.entry("NOT_EARNED", "NONE", "NONE", 0, share, outcome._value_, detail, basis, number=number)
        return outcome

    def reconcile(self, kind: str, detail: str) -> None:
        """Record an item for operations to reconcile (``stream.core.entries.ITEM_KINDS``): numbered
        ``<event_id>#reconciliation`` (one per event at most, whatever entries it also makes), with
        the event's own billing amount as its basis."""
        event = self.event
        self._items += 1
        self.entry(
            RECONCILIATION,
            "NONE",
            "NONE",
            0,
            None,
            kind,
            detail,
            event.billing_amount_minor,
            kind == "force_post",
            number="reconciliation",
        )


def limits_key(share: Share) -> str:
    """The key of the cap usage and campaign budget a share counts against: its offer's id, or
    ``<offer_id>@<currency>`` when the offer is priced in the purchase's other currency (money caps
    and budgets are kept per currency: stream.core.offers)."""
    return str(share.limits_key or share.offer_id)


# A reach at or past the budget's whole amount: no view of what is left covers it (Decision.budget_reach).
BEYOND_ANY_VIEW = 1 << 63
FOLLOW_UPS = frozenset({EventType.REFUND, EventType.CHARGEBACK, EventType.CHARGEBACK_REVERSAL})  # about an earlier purchase
_CHARITY = RewardKind.CHARITY.value
_SPENDABLE = "AVAILABLE"  # the book the wallet is
_AVAILABLE_EXPIRED = "AVAILABLE_EXPIRED"  # stream.core.expiry's entry kind (not imported: it imports this module)


def purchase_ref(event: CardEvent) -> str:
    """The purchase an event is about (``Entry.purchase_ref``), the transaction its id is kept with
    (``stream.core.memory``): a refund's or a chargeback's original transaction, else the event's own."""
    if event.event_type in FOLLOW_UPS:
        return event.original_transaction_ref or event.transaction_ref
    return event.transaction_ref


def purchase_basis(event: CardEvent) -> int:
    """The billing amount that can earn cashback: the cash handed over at the till never does.

    DE54 is in the transaction currency; its share of the billing amount is prorated, rounded down.
    """
    if event.cashback_at_pos_minor <= 0 or event.amount_minor <= 0:
        return event.billing_amount_minor
    goods_minor = event.amount_minor - event.cashback_at_pos_minor
    return prorate(event.billing_amount_minor, goods_minor, event.amount_minor)


def limit_note(share: Share, limit: Outcome | None) -> str:
    """The explanation of a cap or budget that cut an amount ("" when none did)."""
    if limit is Outcome.CAP_REACHED and share.cap is not None:
        period, amount = share.cap
        return f"cap {format_minor(amount, share.currency)} per {period.lower()} {share.cap_period} reached"
    if limit is Outcome.BUDGET_EXHAUSTED:
        return "campaign budget exhausted"
    return ""


def spendable_book(share: Share) -> str:
    """Where cashback goes when its return window ends: AVAILABLE to the customer, or DONATED for
    a charity reward (given to the charity, counted in the customer's donated total)."""
    return "DONATED" if share.reward_kind == _CHARITY else "AVAILABLE"
