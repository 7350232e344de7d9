"""Synthetic customer journeys: pure, seeded generation of TouchpointEvents.

`generate(config, now)` returns one `Journey` per customer. Nothing here touches the network
or the clock (`now` is a parameter), so the same config and `now` always give the same
events. Each customer is drawn from its own `random.Random(f"{seed}:{index}")`: customer 7 is
the same whether 100 or 3000 customers are generated.

A journey: anonymous browsing (web or app), sign-up or login (identify linking the
anonymous id to the customer id, email and sometimes a phone), consent choices, one to three
orders (cart, checkout, confirmation email, dispatch and delivery), marketing emails and app
sessions between orders, feedback (CSAT, CES, NPS, reviews), support questions, store visits
(identified by email only) and phone calls (identified by phone only). A share of customers
(`negative_share`) also get negative experiences, reported by `negative_kinds` with the
shared definition of each kind (`services.common.experience`).

`python -m services.demo.journeys --help`: the command line lives in `services.demo.run`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TypeAlias

from cx.events.v1 import touchpoint_pb2 as ev
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.common.experience import NegativeExperience as Kind
from services.common.experience import negative_experiences

MINUTE = 60.0
HOUR = 3600.0
DAY = 86400.0
# A customer with a negative experience had it lately: the journey ends within this long
# before `now`, with the trouble in its latest order. The alerts service pages only on
# events of the last week (older ones count but open nothing: an incident is about now).
RECENT_END_S = 2 * DAY
CURRENCY = "GBP"
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Channel: TypeAlias = ev.Channel.ValueType
Stage: TypeAlias = ev.JourneyStage.ValueType

WEB, APP, STORE, PHONE = ev.CHANNEL_WEB, ev.CHANNEL_APP, ev.CHANNEL_STORE, ev.CHANNEL_PHONE
CHAT, EMAIL, SOCIAL, PUSH = ev.CHANNEL_CHAT, ev.CHANNEL_EMAIL, ev.CHANNEL_SOCIAL, ev.CHANNEL_PUSH
FIELD, OTHER = ev.CHANNEL_FIELD, ev.CHANNEL_OTHER
AWARENESS = ev.JOURNEY_STAGE_AWARENESS
CONSIDERATION = ev.JOURNEY_STAGE_CONSIDERATION
PURCHASE = ev.JOURNEY_STAGE_PURCHASE
ONBOARDING = ev.JOURNEY_STAGE_ONBOARDING
USAGE = ev.JOURNEY_STAGE_USAGE
SUPPORT = ev.JOURNEY_STAGE_SUPPORT
RENEWAL = ev.JOURNEY_STAGE_RENEWAL
ADVOCACY = ev.JOURNEY_STAGE_ADVOCACY


@dataclass(frozen=True)
class DemoConfig:
    customers: int = 3000
    # Share of customers who get at least one negative experience (exact, rounded).
    negative_share: float = 0.15
    seed: int = 42
    # Every event happens within the last `days` days.
    days: int = 30
    # Share of the other customers who browse anonymously and never sign up or log in.
    anonymous_only_share: float = 0.08
    # A payment provider outage in the last minutes before `now`: this many of the
    # customers with a negative experience try to pay again and fail at checkout.payment,
    # retrying once or twice (a spike of failed payments on one touchpoint). 0: none.
    outage_customers: int = 12


@dataclass(frozen=True)
class Customer:
    index: int
    customer_id: str
    # Web cookie id; app users also have a device id.
    anonymous_id: str
    device_id: str
    email: str
    # E.164, empty when the customer never gave one.
    phone: str
    first_name: str
    last_name: str
    city: str
    identifies: bool
    # The negative experiences planned for this customer, empty for most.
    planned_negative: tuple[Kind, ...]
    # Caught in the payment outage at the end of the run (see DemoConfig.outage_customers).
    in_outage: bool = False

    @property
    def app_user(self) -> bool:
        return bool(self.device_id)


@dataclass(frozen=True)
class Journey:
    customer: Customer
    # In occurred_at order.
    events: list[ev.TouchpointEvent]
    # What negative experiences the events show (see `negative_kinds`).
    negative: frozenset[Kind]


@dataclass(frozen=True)
class Product:
    product_id: str
    category: str
    pence: int


def _catalogue() -> tuple[Product, ...]:
    rng = random.Random("catalogue")
    ranges = {
        "shoes": (45, 140),
        "jackets": (60, 250),
        "bags": (30, 180),
        "knitwear": (35, 120),
        "accessories": (8, 60),
        "home": (12, 90),
    }
    return tuple(
        Product(f"sku-{category[:4]}-{n:03d}", category, rng.randint(low, high) * 100 - 1)
        for category, (low, high) in ranges.items()
        for n in range(1, 13)
    )


CATALOGUE = _catalogue()
CATEGORIES = sorted({p.category for p in CATALOGUE})
BY_CATEGORY = {c: [p for p in CATALOGUE if p.category == c] for c in CATEGORIES}


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


FIRST_NAMES = _words(
    "Ada Alan Amara Ben Chloe Dev Ellie Finn Grace Hana Isla Jack Jonas Kemi Leo Lina Maya "
    "Mohammed Nia Noah Olivia Omar Priya Rhys Rosa Sam Sofia Theo Uma Yusuf Zara Ivy Luca"
)
LAST_NAMES = _words(
    "Adams Ahmed Baker Brown Campbell Chen Clarke Davies Evans Fernandes Green Hughes Jones "
    "Kaur Khan Lewis Martin Murphy Nguyen Novak Patel Roberts Singh Smith Taylor Walker "
    "Ward Williams Wilson Wright Young"
)
CITIES = _words(
    "London Manchester Birmingham Leeds Glasgow Bristol Cardiff Edinburgh Liverpool "
    "Newcastle Sheffield Nottingham Belfast Brighton Leicester"
)
EMAIL_DOMAINS = ("example.com", "example.org", "mail.example.net")
REFERRERS = (
    "https://www.google.com/",
    "https://www.bing.com/",
    "https://www.instagram.com/",
    "https://www.tiktok.com/",
    "",
)
CAMPAIGNS = (
    "newsletter.weekly",
    "promo.spring_sale",
    "promo.free_delivery",
    "lifecycle.back_in_stock",
    "lifecycle.we_miss_you",
)
PAYMENT_METHODS = ("card", "card", "card", "paypal", "apple_pay", "klarna")
PAYMENT_FAILURES = (
    ("card_declined", "The card was declined by the issuer"),
    ("insufficient_funds", "Insufficient funds"),
    ("authentication_failed", "3-D Secure authentication failed"),
    ("processor_timeout", "The payment processor did not answer in time"),
)
# The payment outage at the end of the run (DemoConfig.outage_customers): each caught
# customer's first attempt falls between OUTAGE_FIRST_S and the retries' room before
# `now`, then 1 to OUTAGE_RETRIES retries OUTAGE_RETRY_S apart, the last at least
# OUTAGE_LAST_S before `now`.
OUTAGE_FAILURE = ("processor_timeout", "The payment processor did not answer in time")
OUTAGE_FIRST_S = 4 * MINUTE
OUTAGE_LAST_S = MINUTE
OUTAGE_RETRIES = 2
OUTAGE_RETRY_S = (15.0, 40.0)
CARRIERS = ("dpd", "royal_mail", "evri")
QUESTIONS = (
    "order.status",
    "product.sizing",
    "account.password",
    "delivery.address_change",
    "returns.how_to",
)
ISSUES = ("order.missing_item", "order.damaged", "refund.delayed")
APP_SCREENS = ("app.home", "app.orders", "app.wishlist", "app.search", "app.account")
HAPPY_TEXTS = (
    "Thanks, that sorted it!",
    "Great, thank you for the quick help.",
    "Perfect, appreciate it.",
)
ANGRY_TEXTS = (
    "This is the third time I have asked and still nothing.",
    "Absolutely ridiculous, where is my order?",
    "I was charged and the order never arrived. Very disappointed.",
    "Nobody is helping me, I want a refund now.",
)
AGENT_TEXTS = (
    "Sorry about that, let me look into it for you.",
    "Thanks for waiting, I can see your order here.",
    "I have raised this with our delivery team.",
)
SOURCES = {WEB: "web-frontend", APP: "mobile-app"}
SUPPORT_TOUCHPOINTS = {PHONE: "support.phone", CHAT: "support.chat", EMAIL: "support.email"}
SUPPORT_SOURCES = {PHONE: "genesys", CHAT: "intercom", EMAIL: "zendesk"}
# Delivery status -> (touchpoint, channel, source system; empty: the carrier).
DELIVERY_STEPS: dict[int, tuple[str, Channel, str]] = {
    ev.DeliveryUpdate.STATUS_DISPATCHED: ("delivery.dispatched", OTHER, "wms"),
    ev.DeliveryUpdate.STATUS_IN_TRANSIT: ("delivery.in_transit", OTHER, ""),
    ev.DeliveryUpdate.STATUS_OUT_FOR_DELIVERY: ("delivery.out_for_delivery", OTHER, ""),
    ev.DeliveryUpdate.STATUS_DELIVERED: ("delivery.doorstep", FIELD, ""),
    ev.DeliveryUpdate.STATUS_FAILED: ("delivery.doorstep", FIELD, ""),
    ev.DeliveryUpdate.STATUS_RETURNED_TO_SENDER: ("delivery.returned", OTHER, ""),
}


def money(pence: int) -> ev.Money:
    return ev.Money(currency_code=CURRENCY, units=pence // 100, nanos=(pence % 100) * 10_000_000)


def order_placed(
    order_id: str, total: int, method: str, items: Sequence[tuple[Product, int]]
) -> ev.OrderPlaced:
    return ev.OrderPlaced(
        order_id=order_id,
        total=money(total),
        payment_method=method,
        items=[
            ev.LineItem(
                product_id=p.product_id,
                category=p.category,
                quantity=q,
                unit_price=money(p.pence),
            )
            for p, q in items
        ],
    )


def _plan_negative(rng: random.Random) -> tuple[Kind, ...]:
    kinds = {rng.choice(list(Kind))}
    kinds.update(k for k in Kind if rng.random() < 0.15)
    # Bad experiences cascade: a late parcel leads to calls, calls to complaints, and so on.
    if Kind.LATE_DELIVERY in kinds and rng.random() < 0.5:
        kinds.add(Kind.REPEAT_CONTACT)
    if Kind.REPEAT_CONTACT in kinds and rng.random() < 0.4:
        kinds.add(Kind.HIGH_EFFORT)
    if Kind.REPEAT_CONTACT in kinds and rng.random() < 0.4:
        kinds.add(Kind.COMPLAINT)
    if kinds & {Kind.REPEAT_CONTACT, Kind.COMPLAINT} and rng.random() < 0.5:
        kinds.add(Kind.DETRACTOR)
    return tuple(k for k in Kind if k in kinds)


def _phone(seed: int, index: int) -> str:
    # Spread over nine digits so customers of different runs do not share a number.
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return f"+447{int.from_bytes(digest) % 10**9:09d}"


def make_customer(
    config: DemoConfig, index: int, negative: bool, rng: random.Random, outage: bool = False
) -> Customer:
    first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
    seed = config.seed
    planned = _plan_negative(rng) if negative else ()
    if outage:
        planned = tuple(k for k in Kind if k in planned or k == Kind.PAYMENT_FAILED)
    return Customer(
        index=index,
        customer_id=f"cus-{seed}-{index:05d}",
        anonymous_id=f"anon-{seed}-{index:05d}-{rng.getrandbits(32):08x}",
        device_id=f"dev-{seed}-{index:05d}-{rng.getrandbits(32):08x}" if rng.random() < 0.4 else "",
        email=f"{first}.{last}.{seed}x{index}@{rng.choice(EMAIL_DOMAINS)}".lower(),
        phone=_phone(seed, index) if rng.random() < 0.55 else "",
        first_name=first,
        last_name=last,
        city=rng.choice(CITIES),
        identifies=negative or rng.random() >= config.anonymous_only_share,
        planned_negative=planned,
        in_outage=outage,
    )


@dataclass
class _Order:
    order_id: str
    pence: int
    items: list[tuple[Product, int]]
    placed_at: float
    promised_at: float
    channel: Channel


class _Timeline:
    """One customer's events on a relative clock (seconds since the journey began)."""

    def __init__(self, seed: int, index: int, rng: random.Random) -> None:
        self.rng = rng
        self.t = 0.0
        self._prefix = f"demo-{seed}-{index:05d}-"
        self._ref_suffix = f"{seed}-{index:05d}"
        self._refs = 0
        self._events: list[ev.TouchpointEvent] = []
        self._stamps: list[tuple[Timestamp, float]] = []
        # Events at a fixed time: seconds before `now`, whatever the journey's placement.
        self._fixed: list[tuple[Timestamp, float]] = []
        # The time of the latest event on the timeline.
        self._last = 0.0

    def wait(self, low: float, high: float) -> None:
        self.t += self.rng.uniform(low, high)

    def ref(self, kind: str) -> str:
        """A new id for an order, contact, case and so on, unique in the whole demo."""
        self._refs += 1
        return f"{kind}-{self._ref_suffix}-{self._refs:03d}"

    def stamp(self, ts: Timestamp, at: float) -> None:
        self._stamps.append((ts, at))

    def emit(
        self,
        ids: ev.Identities,
        channel: Channel,
        touchpoint: str,
        stage: Stage,
        source: str,
        payload: str,
        message: Message,
        before_now: float | None = None,
    ) -> ev.TouchpointEvent:
        """A new event at the timeline's time, or `before_now` seconds before `now`."""
        event = ev.TouchpointEvent(
            event_id=f"{self._prefix}{len(self._events):04d}",
            identities=ids,
            channel=channel,
            touchpoint=touchpoint,
            journey_stage=stage,
            source_system=source,
        )
        getattr(event, payload).CopyFrom(message)
        self._events.append(event)
        if before_now is None:
            self._stamps.append((event.occurred_at, self.t))
            self._last = self.t
        else:
            self._fixed.append((event.occurred_at, before_now))
        return event

    def finish(self, now: datetime, days: int, recent: bool = False) -> list[ev.TouchpointEvent]:
        """Places the journey at a random point of the last `days` days (compressed if it is
        longer) and sets every timestamp. Everything lands between `now - days` and a minute
        before `now`; the last event of a `recent` journey within RECENT_END_S of that."""
        window = days * DAY - 2 * MINUTE
        scale = min(1.0, window / self.t) if self.t > 0 else 1.0
        room = window - self.t * scale
        # How much earlier than the journey's end its last event is.
        tail = (self.t - self._last) * scale
        low = min(max(0.0, room + tail - RECENT_END_S), room) if recent else 0.0
        offset = self.rng.uniform(low, room)
        now_ns = (now - EPOCH) // timedelta(microseconds=1) * 1000
        start_ns = now_ns - int((days * DAY - MINUTE - offset) * 1e9)
        for ts, at in self._stamps:
            ts.seconds, ts.nanos = divmod(start_ns + int(at * scale * 1e9), 1_000_000_000)
        for ts, before in self._fixed:
            ts.seconds, ts.nanos = divmod(now_ns - int(before * 1e9), 1_000_000_000)
        if not self._fixed:
            return self._events
        return sorted(self._events, key=lambda e: (e.occurred_at.seconds, e.occurred_at.nanos))


class _Story:
    """Writes one customer's journey onto a timeline."""

    def __init__(self, customer: Customer, timeline: _Timeline) -> None:
        self.c = customer
        self.tl = timeline
        self.rng = timeline.rng
        self.negative = set(customer.planned_negative)
        self.favourites = self.rng.sample(CATEGORIES, 2)
        self.email_consent = False
        self.push_consent = False
        self.last_contact: tuple[str, str] | None = None  # (touchpoint, contact id)

    # --- identities -----------------------------------------------------------------------

    def anon(self, channel: Channel) -> ev.Identities:
        return ev.Identities(
            anonymous_id=self.c.device_id if channel == APP else self.c.anonymous_id
        )

    def session(self, channel: Channel) -> ev.Identities:
        device = self.c.device_id if channel == APP else self.c.anonymous_id
        return ev.Identities(customer_id=self.c.customer_id, anonymous_id=device)

    def known(self) -> ev.Identities:
        return ev.Identities(customer_id=self.c.customer_id)

    def mailbox(self) -> ev.Identities:
        return ev.Identities(customer_id=self.c.customer_id, email=self.c.email)

    def email_only(self) -> ev.Identities:
        # Typed in by store staff: ingestion trims and lower-cases it.
        typed = self.c.email.capitalize() if self.rng.random() < 0.3 else self.c.email
        return ev.Identities(email=typed)

    def caller(self) -> ev.Identities:
        # The phone system knows the caller's number, in the format the carrier gives it.
        if not self.c.phone:
            return self.known()
        p = self.c.phone
        return ev.Identities(phone=f"{p[:3]} {p[3:7]} {p[7:]}" if self.rng.random() < 0.5 else p)

    # --- helpers --------------------------------------------------------------------------

    def pick_product(self) -> Product:
        category = (
            self.rng.choice(self.favourites)
            if self.rng.random() < 0.7
            else self.rng.choice(CATEGORIES)
        )
        return self.rng.choice(BY_CATEGORY[category])

    def browse(self, channel: Channel, ids: ev.Identities, stage: Stage, products: int) -> None:
        source = SOURCES[channel]
        if channel == WEB:
            referrer = self.rng.choice(REFERRERS)
            event = self.tl.emit(
                ids,
                WEB,
                "web.home",
                AWARENESS if stage == AWARENESS else CONSIDERATION,
                source,
                "page_view",
                ev.PageView(
                    page="/", url="https://shop.example.com/", referrer=referrer, title="Home"
                ),
            )
            if referrer and self.rng.random() < 0.3:
                event.properties.update({"utm_source": "search", "utm_medium": "cpc"})
        else:
            self.tl.emit(
                ids, APP, "app.home", CONSIDERATION, source, "page_view", ev.PageView(page="Home")
            )
        for _ in range(products):
            self.tl.wait(15, 150)
            product = self.pick_product()
            if channel == WEB and self.rng.random() < 0.3:
                self.tl.emit(
                    ids,
                    WEB,
                    "catalogue.category",
                    CONSIDERATION,
                    source,
                    "page_view",
                    ev.PageView(
                        page=f"/c/{product.category}",
                        url=f"https://shop.example.com/c/{product.category}",
                    ),
                )
                self.tl.wait(5, 40)
            self.tl.emit(
                ids,
                channel,
                "catalogue.product" if channel == WEB else "app.product",
                CONSIDERATION,
                source,
                "product_view",
                ev.ProductView(
                    product_id=product.product_id,
                    category=product.category,
                    price=money(product.pence),
                ),
            )

    def identify(self, channel: Channel, method: ev.Identify.Method.ValueType) -> None:
        c = self.c
        ids = self.session(channel)
        ids.email = c.email
        ids.phone = c.phone
        identify = ev.Identify(method=method)
        if method == ev.Identify.METHOD_SIGNUP:
            identify.traits.update(
                {
                    "first_name": c.first_name,
                    "last_name": c.last_name,
                    "city": c.city,
                    "signup_channel": "web" if channel == WEB else "app",
                }
            )
        else:
            identify.traits.update({"first_name": c.first_name, "loyalty_tier": "member"})
        touchpoint = "account.signup" if method == ev.Identify.METHOD_SIGNUP else "account.login"
        stage = ONBOARDING if method == ev.Identify.METHOD_SIGNUP else CONSIDERATION
        self.tl.emit(ids, channel, touchpoint, stage, "identity-service", "identify", identify)

    def consent(
        self, channel: Channel, purpose: ev.ConsentChange.Purpose.ValueType, granted: bool
    ) -> None:
        ids = self.mailbox() if channel == EMAIL else self.session(channel)
        touchpoint = "email.preferences" if channel == EMAIL else "account.preferences"
        self.tl.emit(
            ids,
            channel,
            touchpoint,
            ONBOARDING,
            "consent-manager",
            "consent_change",
            ev.ConsentChange(purpose=purpose, granted=granted),
        )
        self.tl.wait(2, 20)

    def email(self, campaign: str, touchpoint: str, stage: Stage) -> bool:
        """An email sent, delivered and perhaps opened; True when it was opened."""
        message_id = self.tl.ref("msg")

        def engage(action: ev.MessageEngagement.Action.ValueType, link: str = "") -> None:
            self.tl.emit(
                self.mailbox(),
                EMAIL,
                touchpoint,
                stage,
                "braze",
                "message_engagement",
                ev.MessageEngagement(
                    campaign_id=campaign, message_id=message_id, action=action, link_url=link
                ),
            )

        engage(ev.MessageEngagement.ACTION_SENT)
        self.tl.wait(1, 30)
        if self.rng.random() < 0.02:
            engage(ev.MessageEngagement.ACTION_BOUNCE)
            return False
        engage(ev.MessageEngagement.ACTION_DELIVERED)
        if self.rng.random() < 0.45:
            return False
        self.tl.wait(5 * MINUTE, 18 * HOUR)
        engage(ev.MessageEngagement.ACTION_OPEN)
        if touchpoint == "email.campaign" and self.rng.random() < 0.3:
            self.tl.wait(5, 90)
            engage(ev.MessageEngagement.ACTION_CLICK, "https://shop.example.com/sale")
        return True

    # --- episodes -------------------------------------------------------------------------

    def discovery(self) -> Channel:
        """Anonymous browsing sessions; returns the channel (web or app) they happened on."""
        channel = APP if self.c.app_user and self.rng.random() < 0.4 else WEB
        for n in range(self.rng.randint(1, 3)):
            if n:
                self.tl.wait(2 * HOUR, 2.5 * DAY)
            self.browse(channel, self.anon(channel), AWARENESS, self.rng.randint(1, 5))
        self.tl.wait(20, 300)
        return channel

    def join(self, channel: Channel) -> None:
        """Sign-up or login on the channel the customer was browsing, then consent choices."""
        signup = self.rng.random() < 0.7
        method = ev.Identify.METHOD_SIGNUP if signup else ev.Identify.METHOD_LOGIN
        self.identify(channel, method)
        self.tl.wait(3, 30)
        self.email_consent = self.rng.random() < 0.65
        self.consent(channel, ev.ConsentChange.PURPOSE_MARKETING_EMAIL, self.email_consent)
        self.consent(channel, ev.ConsentChange.PURPOSE_PERSONALISATION, self.rng.random() < 0.8)
        if self.c.phone:
            sms = self.rng.random() < 0.35
            self.consent(channel, ev.ConsentChange.PURPOSE_MARKETING_SMS, sms)
        if signup:
            self.email("transactional.welcome", "email.welcome", ONBOARDING)

    def app_onboarding(self, logged_in: bool) -> None:
        """First use of the app: login (unless the customer joined on the app), push consent."""
        self.tl.wait(HOUR, 2 * DAY)
        if not logged_in:
            self.identify(APP, ev.Identify.METHOD_LOGIN)
            self.tl.wait(2, 10)
        self.push_consent = self.rng.random() < 0.5
        self.consent(APP, ev.ConsentChange.PURPOSE_MARKETING_PUSH, self.push_consent)
        self.app_session()

    def app_session(self) -> None:
        ids = self.session(APP)
        for _ in range(self.rng.randint(2, 5)):
            screen = self.rng.choice(APP_SCREENS)
            self.tl.emit(
                ids,
                APP,
                screen,
                USAGE,
                "mobile-app",
                "page_view",
                ev.PageView(page=screen.split(".")[1].capitalize()),
            )
            self.tl.wait(10, 120)
        if self.rng.random() < 0.05:
            self.tl.emit(
                ids,
                APP,
                "app.orders",
                USAGE,
                "mobile-app",
                "app_error",
                ev.AppError(
                    error_code="network_timeout",
                    message="Could not load your orders, pull to retry",
                    screen="Orders",
                    fatal=False,
                    app_version="5.12.1",
                ),
            )

    def between_orders(self) -> None:
        for _ in range(self.rng.randint(1, 3)):
            self.tl.wait(6 * HOUR, 3 * DAY)
            roll = self.rng.random()
            if self.email_consent and roll < 0.55:
                clicked = self.email(self.rng.choice(CAMPAIGNS), "email.campaign", RENEWAL)
                if clicked and self.rng.random() < 0.5:
                    self.tl.wait(5, 60)
                    self.browse(WEB, self.session(WEB), RENEWAL, self.rng.randint(1, 3))
            elif self.c.app_user and roll < 0.85:
                if self.push_consent and self.rng.random() < 0.5:
                    self.tl.emit(
                        self.session(APP),
                        PUSH,
                        "push.campaign",
                        RENEWAL,
                        "braze",
                        "message_engagement",
                        ev.MessageEngagement(
                            campaign_id=self.rng.choice(CAMPAIGNS),
                            message_id=self.tl.ref("push"),
                            action=ev.MessageEngagement.ACTION_OPEN,
                        ),
                    )
                    self.tl.wait(2, 30)
                self.app_session()
            else:
                self.browse(WEB, self.session(WEB), CONSIDERATION, self.rng.randint(1, 4))

    def shop(self, channel: Channel, fail_payment: bool) -> _Order:
        ids = self.session(channel)
        source = SOURCES[channel]
        self.browse(channel, ids, CONSIDERATION, self.rng.randint(1, 4))
        cart_id = self.tl.ref("cart")
        items: list[tuple[Product, int]] = []
        for _ in range(self.rng.randint(1, 3)):
            self.tl.wait(20, 180)
            product = self.pick_product()
            quantity = 1 if self.rng.random() < 0.8 else 2
            items.append((product, quantity))
            self.cart(ids, channel, cart_id, ev.CartChange.ACTION_ADD, product, quantity)
        if len(items) > 1 and self.rng.random() < 0.25:
            self.tl.wait(10, 120)
            product, quantity = items.pop()
            self.cart(ids, channel, cart_id, ev.CartChange.ACTION_REMOVE, product, quantity)

        def delivery_page() -> None:
            page = "/checkout/delivery" if channel == WEB else "CheckoutDelivery"
            self.tl.emit(
                ids,
                channel,
                "checkout.delivery",
                PURCHASE,
                source,
                "page_view",
                ev.PageView(page=page),
            )

        self.tl.wait(30, 300)
        delivery_page()
        pence = sum(p.pence * q for p, q in items)
        discount = pence // 10 if self.rng.random() < 0.2 else 0
        total = pence - discount
        method = self.rng.choice(PAYMENT_METHODS)
        order_id = self.tl.ref("ord")
        if fail_payment:
            attempts = 1 + (self.rng.random() < 0.5) + (self.rng.random() < 0.3)
            for attempt in range(1, attempts + 1):
                self.tl.wait(20, 180)
                code, reason = self.rng.choice(PAYMENT_FAILURES)
                self.tl.emit(
                    ids,
                    channel,
                    "checkout.payment",
                    PURCHASE,
                    "payment-gateway",
                    "payment_failed",
                    ev.PaymentFailed(
                        order_id=order_id,
                        amount=money(total),
                        payment_method=method,
                        failure_code=code,
                        failure_reason=reason,
                        attempt=attempt,
                    ),
                )
            if self.rng.random() < 0.3:  # gives up, comes back later
                self.tl.wait(4 * HOUR, 2 * DAY)
                delivery_page()
            method = self.rng.choice([m for m in PAYMENT_METHODS if m != method])
        self.tl.wait(20, 120)
        promised = self.tl.t + self.rng.uniform(3 * DAY, 5 * DAY)
        placed = order_placed(order_id, total, method, items)
        if discount:
            placed.discount.CopyFrom(money(discount))
        event = self.tl.emit(
            ids, channel, "checkout.confirmation", PURCHASE, "oms", "order_placed", placed
        )
        self.tl.stamp(event.order_placed.promised_delivery_at, promised)
        order = _Order(order_id, total, items, self.tl.t, promised, channel)
        self.tl.wait(5, 60)
        self.email("transactional.order_confirmation", "email.order_confirmation", PURCHASE)
        return order

    def cart(
        self,
        ids: ev.Identities,
        channel: Channel,
        cart_id: str,
        action: ev.CartChange.Action.ValueType,
        product: Product,
        quantity: int,
    ) -> None:
        self.tl.emit(
            ids,
            channel,
            "cart.add" if action == ev.CartChange.ACTION_ADD else "cart.remove",
            PURCHASE,
            SOURCES[channel],
            "cart_change",
            ev.CartChange(
                action=action,
                cart_id=cart_id,
                product_id=product.product_id,
                quantity=quantity,
                unit_price=money(product.pence),
            ),
        )

    def delivery(
        self,
        order: _Order,
        shipment: str,
        carrier: str,
        status: ev.DeliveryUpdate.Status.ValueType,
    ) -> None:
        touchpoint, channel, source = DELIVERY_STEPS[status]
        source = source or f"carrier-{carrier.replace('_', '-')}"
        event = self.tl.emit(
            self.known(),
            channel,
            touchpoint,
            PURCHASE,
            source,
            "delivery_update",
            ev.DeliveryUpdate(
                order_id=order.order_id, shipment_id=shipment, status=status, carrier=carrier
            ),
        )
        self.tl.stamp(event.delivery_update.promised_at, order.promised_at)
        self.tl.stamp(event.delivery_update.actual_at, self.tl.t)

    def fulfil(self, order: _Order, late: bool) -> None:
        shipment, carrier = self.tl.ref("shp"), self.rng.choice(CARRIERS)
        self.tl.wait(3 * HOUR, 20 * HOUR)
        self.delivery(order, shipment, carrier, ev.DeliveryUpdate.STATUS_DISPATCHED)
        self.tl.wait(6 * HOUR, 20 * HOUR)
        self.delivery(order, shipment, carrier, ev.DeliveryUpdate.STATUS_IN_TRANSIT)
        if not late:
            # On time: delivered a day or more after ordering, at least two hours early.
            target = self.rng.uniform(order.placed_at + 1.5 * DAY, order.promised_at - 2 * HOUR)
            self.tl.t = max(self.tl.t + HOUR, target - 3 * HOUR)
            self.delivery(order, shipment, carrier, ev.DeliveryUpdate.STATUS_OUT_FOR_DELIVERY)
            self.tl.t = max(self.tl.t + 30 * MINUTE, target)
            self.delivery(order, shipment, carrier, ev.DeliveryUpdate.STATUS_DELIVERED)
            return
        self.tl.t = max(self.tl.t, order.promised_at) + self.rng.uniform(2 * HOUR, 2 * DAY)
        self.delivery(order, shipment, carrier, ev.DeliveryUpdate.STATUS_OUT_FOR_DELIVERY)
        self.tl.wait(HOUR, 8 * HOUR)
        if self.rng.random() < 0.4:
            self.delivery(order, shipment, carrier, ev.DeliveryUpdate.STATUS_FAILED)
            self.tl.wait(DAY, 2 * DAY)
            if self.rng.random() < 0.2:
                self.delivery(order, shipment, carrier, ev.DeliveryUpdate.STATUS_RETURNED_TO_SENDER)
                return
        self.delivery(order, shipment, carrier, ev.DeliveryUpdate.STATUS_DELIVERED)

    def survey(
        self,
        metric: ev.SurveyResponse.Metric.ValueType,
        score: int,
        touchpoint: str,
        stage: Stage,
        rated: tuple[str, str] | None = None,
        comment: str = "",
    ) -> None:
        response = ev.SurveyResponse(
            survey_id=self.tl.ref("srv"), metric=metric, score=score, comment=comment
        )
        if rated:
            response.rated_touchpoint, response.rated_interaction_id = rated
        self.tl.emit(
            self.mailbox(), EMAIL, touchpoint, stage, "qualtrics", "survey_response", response
        )

    def after_delivery(self, order: _Order, bad: bool) -> None:
        self.tl.wait(2 * HOUR, DAY)
        if not bad and self.rng.random() < 0.3:
            score = self.rng.choice((3, 4, 4, 5, 5, 5))
            self.survey(
                ev.SurveyResponse.METRIC_CSAT,
                score,
                "survey.post_delivery",
                PURCHASE,
                ("delivery.doorstep", order.order_id),
            )
            self.tl.wait(MINUTE, HOUR)
        if self.rng.random() < (0.5 if bad else 0.25):
            product = order.items[0][0]
            rating = self.rng.randint(1, 2) if bad else self.rng.choice((3, 4, 4, 5, 5, 5))
            self.tl.wait(HOUR, 3 * DAY)
            self.tl.emit(
                self.session(WEB),
                WEB,
                "review.product",
                ADVOCACY,
                "web-frontend",
                "review",
                ev.Review(
                    review_id=self.tl.ref("rev"),
                    product_id=product.product_id,
                    rating=rating,
                    title="Arrived late" if bad else "Really happy with it",
                    text="Took far too long." if bad else "Good quality, fits well.",
                ),
            )

    def chat(self, conversation: str, channel: Channel, angry: bool, public: bool = False) -> None:
        ids = self.known() if channel == SOCIAL else self.session(WEB)
        touchpoint = "social.mention" if channel == SOCIAL else "support.chat"
        source = "sprout-social" if channel == SOCIAL else "intercom"
        for n in range(1 if public else self.rng.randint(2, 4)):
            inbound = n % 2 == 0
            if inbound:
                text = self.rng.choice(ANGRY_TEXTS if angry else HAPPY_TEXTS)
                sentiment = -self.rng.uniform(0.4, 0.95) if angry else self.rng.uniform(0.1, 0.9)
            else:
                text, sentiment = self.rng.choice(AGENT_TEXTS), self.rng.uniform(0.2, 0.6)
            self.tl.emit(
                ids,
                channel,
                touchpoint,
                SUPPORT,
                source,
                "conversation_message",
                ev.ConversationMessage(
                    conversation_id=conversation,
                    direction=ev.ConversationMessage.DIRECTION_INBOUND
                    if inbound
                    else ev.ConversationMessage.DIRECTION_OUTBOUND,
                    text=text,
                    sentiment=round(sentiment, 3),
                    public=public,
                ),
            )
            self.tl.wait(20, 180)

    def contact(
        self,
        channel: Channel,
        reason: str,
        case_id: str,
        *,
        first: bool,
        resolved: bool,
        angry: bool,
    ) -> None:
        contact_id = self.tl.ref("ct")
        wait = self.rng.uniform(5 * MINUTE, 35 * MINUTE) if angry else self.rng.uniform(5, 150)
        handle = self.rng.uniform(4 * MINUTE, 20 * MINUTE) if angry else self.rng.uniform(90, 600)
        self.tl.t += wait
        if channel == CHAT:
            self.chat(self.tl.ref("conv"), CHAT, angry)
        self.tl.t += handle
        if channel == PHONE:
            ids = self.caller()
        elif channel == CHAT:
            ids = self.session(WEB)
        else:
            ids = self.mailbox()
        touchpoint = SUPPORT_TOUCHPOINTS[channel]
        self.tl.emit(
            ids,
            channel,
            touchpoint,
            SUPPORT,
            SUPPORT_SOURCES[channel],
            "support_contact",
            ev.SupportContact(
                contact_id=contact_id,
                case_id=case_id,
                reason=reason,
                wait_time=Duration(seconds=int(wait)),
                handle_time=Duration(seconds=int(handle)),
                resolved=resolved,
                first_contact=first,
                agent_id=f"agent-{self.rng.randint(1, 60):03d}",
                queue=reason.split(".")[0],
            ),
        )
        self.last_contact = (touchpoint, contact_id)

    def question(self) -> None:
        """A simple question, answered at the first contact."""
        self.tl.wait(HOUR, 2 * DAY)
        channel = self.rng.choice((CHAT, PHONE, EMAIL))
        self.contact(
            channel,
            self.rng.choice(QUESTIONS),
            self.tl.ref("case"),
            first=True,
            resolved=True,
            angry=False,
        )
        self.tl.wait(MINUTE, 2 * HOUR)
        if self.rng.random() < 0.5:
            score = self.rng.choice((4, 5, 5))
            self.survey(
                ev.SurveyResponse.METRIC_CSAT,
                score,
                "survey.post_contact",
                SUPPORT,
                self.last_contact,
            )
        if self.rng.random() < 0.3:
            self.tl.wait(10, 300)
            score = self.rng.randint(1, 3)
            self.survey(
                ev.SurveyResponse.METRIC_CES,
                score,
                "survey.post_contact",
                SUPPORT,
                self.last_contact,
            )

    def trouble(self, order: _Order) -> None:
        """Everything that follows a bad experience with `order`."""
        kinds = self.negative
        if Kind.LATE_DELIVERY in kinds:
            reason = "delivery.late"
        elif Kind.PAYMENT_FAILED in kinds:
            reason = "payment.failed"
        else:
            reason = self.rng.choice(ISSUES)
        case_id = self.tl.ref("case")
        self.tl.wait(HOUR, DAY)
        if Kind.REPEAT_CONTACT in kinds:
            first_channel = (
                CHAT if Kind.NEGATIVE_SENTIMENT in kinds else self.rng.choice((PHONE, EMAIL))
            )
            self.contact(first_channel, reason, case_id, first=True, resolved=False, angry=True)
            repeats = self.rng.randint(1, 3)
            # Angry chats are the negative_sentiment experience: others call or write.
            repeat_channels = (
                (PHONE, PHONE, EMAIL, CHAT) if Kind.NEGATIVE_SENTIMENT in kinds else (PHONE, EMAIL)
            )
            for n in range(repeats):
                self.tl.wait(6 * HOUR, 2 * DAY)
                # The first repeat is never resolved; the last one sometimes is.
                resolved = n > 0 and n == repeats - 1 and self.rng.random() < 0.4
                channel = self.rng.choice(repeat_channels)
                self.contact(channel, reason, case_id, first=False, resolved=resolved, angry=True)
        elif Kind.NEGATIVE_SENTIMENT in kinds:
            if self.rng.random() < 0.3:
                self.chat(self.tl.ref("post"), SOCIAL, angry=True, public=True)
            else:
                resolved = self.rng.random() < 0.5
                self.contact(CHAT, reason, case_id, first=True, resolved=resolved, angry=True)
        if Kind.COMPLAINT in kinds:
            self.complaint(reason)
        if Kind.LOW_CSAT in kinds:
            comment = self.rng.choice(("Took far too long.", "Nobody listened.", ""))
            self.rate(order, ev.SurveyResponse.METRIC_CSAT, self.rng.randint(1, 2), comment)
        if Kind.HIGH_EFFORT in kinds:
            self.rate(order, ev.SurveyResponse.METRIC_CES, self.rng.randint(5, 7))

    def rate(
        self,
        order: _Order,
        metric: ev.SurveyResponse.Metric.ValueType,
        score: int,
        comment: str = "",
    ) -> None:
        """A survey about the last support contact, or about the delivery of `order`."""
        self.tl.wait(MINUTE, 6 * HOUR)
        rated = self.last_contact or ("delivery.doorstep", order.order_id)
        touchpoint = "survey.post_contact" if self.last_contact else "survey.post_delivery"
        stage = SUPPORT if self.last_contact else PURCHASE
        self.survey(metric, score, touchpoint, stage, rated, comment)

    def complaint(self, reason: str) -> None:
        complaint_id = self.tl.ref("cmpl")
        category = reason.split(".")[0]
        self.tl.wait(HOUR, DAY)
        channel = self.rng.choice((WEB, EMAIL))
        ids = self.session(WEB) if channel == WEB else self.mailbox()

        def update(
            status: ev.Complaint.Status.ValueType, severity: ev.Complaint.Severity.ValueType
        ) -> None:
            self.tl.emit(
                ids,
                channel,
                "support.complaint",
                SUPPORT,
                "zendesk",
                "complaint",
                ev.Complaint(
                    complaint_id=complaint_id,
                    status=status,
                    severity=severity,
                    category=category,
                    description=f"Customer complaint about {reason.replace('.', ' ')}",
                ),
            )

        severity = self.rng.choice((ev.Complaint.SEVERITY_MEDIUM, ev.Complaint.SEVERITY_HIGH))
        update(ev.Complaint.STATUS_OPENED, severity)
        if self.rng.random() < 0.4:
            self.tl.wait(6 * HOUR, 2 * DAY)
            update(ev.Complaint.STATUS_ESCALATED, ev.Complaint.SEVERITY_HIGH)
        if self.rng.random() < 0.35:
            self.tl.wait(DAY, 4 * DAY)
            update(ev.Complaint.STATUS_RESOLVED, severity)

    def store_visit(self) -> None:
        self.tl.wait(HOUR, 3 * DAY)
        items = [(self.pick_product(), 1) for _ in range(self.rng.randint(1, 2))]
        total = sum(p.pence for p, _ in items)
        self.tl.emit(
            self.email_only(),
            STORE,
            "store.checkout",
            PURCHASE,
            "pos",
            "order_placed",
            order_placed(self.tl.ref("pos"), total, "card", items),
        )

    def store_return(self, order: _Order) -> None:
        self.tl.wait(DAY, 4 * DAY)
        product, quantity = order.items[-1]
        self.tl.emit(
            self.email_only(),
            STORE,
            "store.returns",
            USAGE,
            "pos",
            "order_returned",
            ev.OrderReturned(
                order_id=order.order_id,
                reason="size",
                refunded=money(product.pence * quantity),
                product_ids=[product.product_id],
            ),
        )

    def nps(self) -> None:
        self.tl.wait(DAY, 4 * DAY)
        if Kind.DETRACTOR in self.negative:
            score = self.rng.randint(0, 6)
            comment = self.rng.choice(("Too many problems with my order.", "Poor service.", ""))
        else:
            score = self.rng.choice((7, 8, 8, 9, 9, 10, 10))
            comment = "" if score < 9 else "Always a smooth experience."
        self.survey(ev.SurveyResponse.METRIC_NPS, score, "survey.nps", ADVOCACY, comment=comment)

    def write(self) -> None:
        rng = self.rng
        first_channel = self.discovery()
        if not self.c.identifies:
            return
        self.join(first_channel)
        if self.c.app_user:
            self.app_onboarding(logged_in=first_channel == APP)
        orders = 1 + (rng.random() < 0.5) + (rng.random() < 0.2)
        # The bad experience comes with the latest order: it is recent (see `finish`).
        trouble_at = rng.randrange(orders)
        if self.negative:
            trouble_at = orders - 1
        question_at = rng.randrange(orders) if rng.random() < 0.3 else -1
        placed: list[_Order] = []
        for k in range(orders):
            if k:
                self.between_orders()
            bad = bool(self.negative) and k == trouble_at
            channel = APP if self.c.app_user and rng.random() < 0.5 else WEB
            order = self.shop(channel, fail_payment=bad and Kind.PAYMENT_FAILED in self.negative)
            placed.append(order)
            self.fulfil(order, late=bad and Kind.LATE_DELIVERY in self.negative)
            self.after_delivery(order, bad=bad and Kind.LATE_DELIVERY in self.negative)
            if bad:
                self.trouble(order)
            elif k == question_at:
                self.question()
        if rng.random() < 0.06:
            self.store_return(placed[0])
        if rng.random() < 0.15:
            self.store_visit()
        if rng.random() < 0.5:
            self.between_orders()
        if Kind.DETRACTOR in self.negative or rng.random() < 0.35:
            self.nps()
        if self.c.in_outage:
            self.outage()

    def outage(self) -> None:
        """Caught in the payment outage: a new checkout a few minutes before `now` whose
        payment fails (the processor times out), and fails again on each retry."""
        channel = APP if self.c.app_user and self.rng.random() < 0.5 else WEB
        ids = self.session(channel)
        product = self.pick_product()
        order_id = self.tl.ref("ord")
        method = self.rng.choice(PAYMENT_METHODS)
        code, reason = OUTAGE_FAILURE
        before_now = self.rng.uniform(
            OUTAGE_LAST_S + OUTAGE_RETRIES * OUTAGE_RETRY_S[1], OUTAGE_FIRST_S
        )
        for attempt in range(1, 3 + self.rng.randrange(OUTAGE_RETRIES)):
            self.tl.emit(
                ids,
                channel,
                "checkout.payment",
                PURCHASE,
                "payment-gateway",
                "payment_failed",
                ev.PaymentFailed(
                    order_id=order_id,
                    amount=money(product.pence),
                    payment_method=method,
                    failure_code=code,
                    failure_reason=reason,
                    attempt=attempt,
                ),
                before_now=before_now,
            )
            before_now -= self.rng.uniform(*OUTAGE_RETRY_S)


def generate_journey(
    config: DemoConfig, index: int, negative: bool, now: datetime, outage: bool = False
) -> Journey:
    rng = random.Random(f"{config.seed}:{index}")
    customer = make_customer(config, index, negative, rng, outage)
    timeline = _Timeline(config.seed, index, rng)
    _Story(customer, timeline).write()
    events = timeline.finish(now, config.days, recent=bool(customer.planned_negative))
    return Journey(customer, events, negative_kinds(events))


def negative_customers(config: DemoConfig) -> frozenset[int]:
    """Indexes of the customers who get a negative experience: exactly the requested share."""
    count = round(config.customers * min(max(config.negative_share, 0.0), 1.0))
    return frozenset(
        random.Random(f"{config.seed}:negative").sample(range(config.customers), count)
    )


def outage_customers(config: DemoConfig, negative: frozenset[int]) -> frozenset[int]:
    """Indexes of the customers caught in the payment outage: `outage_customers` of the
    customers with a negative experience (all of them when there are fewer)."""
    count = min(max(config.outage_customers, 0), len(negative))
    return frozenset(random.Random(f"{config.seed}:outage").sample(sorted(negative), count))


def generate(config: DemoConfig, now: datetime) -> list[Journey]:
    """Every customer's journey, ending before `now` (timezone-aware)."""
    negative = negative_customers(config)
    outage = outage_customers(config, negative)
    return [
        generate_journey(config, i, i in negative, now, i in outage)
        for i in range(config.customers)
    ]


def negative_kinds(events: Iterable[ev.TouchpointEvent]) -> frozenset[Kind]:
    """The kinds of negative experience that a customer's events show."""
    return frozenset(kind for event in events for kind in negative_experiences(event))


if __name__ == "__main__":
    import sys

    from services.demo.run import main

    sys.exit(main())
