"""The stored layout of a profile: key names, every codec's round trip, and the constants
the Lua scripts get from it."""

from __future__ import annotations

import ast
import hashlib
import json
import re
from pathlib import Path

import pytest

from services.profile.adapters.layout import (
    CREATED,
    EVENTS,
    IDENTITY_UPDATED,
    LUA_DIR,
    SUBKEYS,
    ComplaintValue,
    ConsentValue,
    Keys,
    Lineage,
    MergeRecord,
    Stat,
    StoredProfile,
    contact_member,
    decode_complaint,
    decode_consent,
    decode_contact,
    decode_latest,
    decode_lineage,
    decode_merge,
    decode_segment_list,
    decode_signal,
    decode_stats,
    encode_complaint,
    encode_consent,
    encode_contact,
    encode_latest,
    encode_lineage,
    encode_number,
    encode_segment_list,
    encode_signal,
    erased_digest,
    id_count_field,
    identifier_member,
    lua_constants,
    lua_script,
    main_field,
    pairs,
    scored,
    split_field,
    split_member,
    state_from_redis,
    state_to_redis,
    text_map,
)
from services.profile.domain import codec
from services.profile.domain.state import Contact, Latest, ProfileState

KEYS = Keys("cx:")


def test_key_names() -> None:
    assert KEYS.profile("p_1") == "cx:p:p_1"
    assert KEYS.profile("p_1", "ids") == "cx:p:p_1:ids"
    assert KEYS.identity("e", "a@b.io") == "cx:id:e:a@b.io"
    assert KEYS.segment("detractors") == "cx:seg:detractors"
    assert KEYS.seen("ev-1") == "cx:seen:ev-1"
    assert KEYS.erased("abc") == "cx:erased:abc"
    assert (KEYS.alias, KEYS.workers, KEYS.salt, KEYS.stats) == (
        "cx:alias",
        "cx:workers",
        "cx:erasure-salt",
        "cx:stats",
    )
    assert KEYS.all_of_profile("p_1") == ["cx:p:p_1"] + [f"cx:p:p_1:{s}" for s in SUBKEYS]


def test_profile_id_of_names_only_main_hashes() -> None:
    assert KEYS.profile_id_of(b"cx:p:p_1") == "p_1"
    assert KEYS.profile_id_of("cx:p:p_1") == "p_1"
    assert KEYS.profile_id_of("cx:p:p_1:ids") is None
    assert KEYS.profile_id_of("cx:id:c:p:1") is None
    assert KEYS.profile_id_of("other:p:p_1") is None


def test_main_fields() -> None:
    assert main_field("c", "orders") == "c:orders"
    assert split_field("l:u.identity") == ("l", "u.identity")
    assert (EVENTS, CREATED, IDENTITY_UPDATED) == ("c:events", "mn:created", "l:u.identity")
    assert id_count_field("e") == "c:ids.e"
    assert [encode_number(x) for x in (3.0, 2.5, -1, 0.1)] == ["3", "2.5", "-1", "0.1"]


@pytest.mark.parametrize("names", [[], ["a"], ["b", "a", "c"]])
def test_segment_list_round_trip(names: list[str]) -> None:
    packed = encode_segment_list(names)
    assert decode_segment_list(packed) == sorted(names)
    assert packed == ",".join(sorted(names))


@pytest.mark.parametrize(("ts", "value"), [(5, "x"), (1_800_000_000_000, "a|b"), (0, "")])
def test_latest_round_trip(ts: int, value: str) -> None:
    packed = encode_latest(ts, value)
    assert packed == f"{ts}|{value}"
    assert decode_latest(packed) == Latest(value, ts)


@pytest.mark.parametrize(("t", "value"), [("c", "cust-1"), ("e", "a@b.io"), ("a", "x:y")])
def test_identifier_member_round_trip(t: str, value: str) -> None:
    member = identifier_member(t, value)
    assert member == f"{t}:{value}"
    assert split_member(member) == (t, value)


def test_lineage_round_trip() -> None:
    packed = encode_lineage("ev-1", 1_700_000_000_000, "web")
    assert packed == "ev-1|1700000000000|web"
    assert decode_lineage("e:a@b.io", packed) == Lineage(
        ("e", "a@b.io"), "ev-1", 1_700_000_000_000, "web"
    )
    # A source with the separator stays whole; a missing lineage reads as empty.
    assert decode_lineage("c:1", "e|1|a|b").source_system == "a|b"
    assert decode_lineage("c:1", "") == Lineage(("c", "1"), "", 0, "")


@pytest.mark.parametrize("granted", [True, False])
def test_consent_round_trip(granted: bool) -> None:
    packed = encode_consent(granted, "crm", "ev-9")
    assert packed == f"{int(granted)}|crm|ev-9"
    assert decode_consent(packed) == ConsentValue(granted, "crm", "ev-9")


def test_complaint_round_trip() -> None:
    packed = encode_complaint(3, "resolved", "high", "delivery|late")
    assert packed == "3|resolved|high|delivery|late"
    assert decode_complaint(packed) == ComplaintValue("3", "resolved", "high", "delivery|late")
    assert decode_complaint("1|opened") == ComplaintValue("1", "opened", "", "")


@pytest.mark.parametrize("resolved", [True, False])
def test_contact_round_trip(resolved: bool) -> None:
    member = encode_contact("k-1", "billing", resolved)
    assert member == f"k-1|billing|{int(resolved)}"
    contact = decode_contact(member, 1234.0)
    assert contact == Contact(1234, "k-1", "billing", resolved)
    assert contact_member(contact) == member


def test_a_contact_id_loses_its_separator() -> None:
    member = encode_contact("a|b", "billing", True)
    assert decode_contact(member, 1.0) == Contact(1, "a/b", "billing", True)


def test_erased_digest_hashes_salt_and_member() -> None:
    assert erased_digest("s", "e", "a@b.io") == hashlib.sha1(b"se:a@b.io").hexdigest()
    assert erased_digest("s", "e", "a@b.io") != erased_digest("t", "e", "a@b.io")


def test_signal_round_trip() -> None:
    packed = encode_signal("nps_detractor", "ev-1", {"score": 2})
    assert json.loads(packed) == {"k": "nps_detractor", "e": "ev-1", "score": 2}
    assert decode_signal(packed.encode()) == {"k": "nps_detractor", "e": "ev-1", "score": 2}


def test_merge_record_decodes_what_the_resolve_script_writes() -> None:
    raw = json.dumps({"loser": "p_2", "e": "ev-1", "t": 5, "ids": ["a:x", "e:y"]})
    assert decode_merge(raw) == MergeRecord("p_2", frozenset({"a:x", "e:y"}))
    # cjson writes an empty Lua table as {}.
    assert decode_merge(b'{"loser": "p_3", "ids": {}}') == MergeRecord("p_3", frozenset())


def test_stats_and_replies() -> None:
    assert decode_stats({b"applied": b"3", b"merges": b"1"}) == {
        Stat.APPLIED: 3,
        Stat.MERGES: 1,
    }
    assert text_map({b"a": b"1", "b": "2"}) == {"a": "1", "b": "2"}
    assert pairs([b"a", b"1", "b", "2"]) == {"a": "1", "b": "2"}
    assert pairs({}) == {}
    assert scored([b"m", "2.5"]) == {"m": 2.5}
    assert scored({}) == {}


def _state() -> ProfileState:
    return ProfileState(
        "p_1",
        sums={"orders": 2.0, "revenue": 10.5},
        minima={"first_seen": 100.0},
        maxima={"last_seen": 200.0},
        latest={"stage": Latest("purchase", 150)},
        identities={("c", "cust-1"), ("e", "a@b.io")},
        traits={"tier": Latest('"gold"', 120)},
        consent={"marketing_email": Latest(encode_consent(True, "crm", "ev-3"), 130)},
        complaints={"cp-1": Latest(encode_complaint(1, "opened", "low", "billing"), 140)},
        contacts=[Contact(110, "k-1", "billing", False), Contact(160, "k-2", "late", True)],
        touchpoints={"catalogue.product": 3},
    )


def test_state_round_trip() -> None:
    state = _state()
    raw = state_to_redis(state)
    assert raw["main"] == {
        "c:orders": "2",
        "c:revenue": "10.5",
        "mn:first_seen": "100",
        "mx:last_seen": "200",
        "l:stage": "150|purchase",
    }
    assert raw["contacts"] == [["k-1|billing|0", 110], ["k-2|late|1", 160]]
    parsed = state_from_redis(
        "p_1",
        {**raw["main"], "s:stage": "purchase"},
        identities={identifier_member(t, v) for t, v in state.identities},
        traits=raw["traits"],
        consent=raw["consent"],
        complaints=raw["complaints"],
        contacts={member: float(score) for member, score in raw["contacts"]},
        touchpoints=raw["touchpoints"],
    )
    assert parsed.snapshot == {"stage": "purchase"}
    parsed.snapshot = {}
    assert parsed == state


def test_stored_profile_from_the_apply_reply() -> None:
    # As cjson encodes apply.lua's reply: flat arrays, an empty one as {}.
    reply = [
        "p_1",
        ["c:orders", "2", "l:stage", "150|purchase"],
        ["c:cust-1"],
        {},
        ["marketing_email", "130|1|crm|ev-3"],
        {},
        ["k-1|billing|0", "110"],
        [encode_signal("merged", "ev-4", {"loser": "p_2"})],
    ]
    stored = StoredProfile.from_reply(reply)
    assert stored == StoredProfile(
        "p_1",
        main={"c:orders": "2", "l:stage": "150|purchase"},
        ids={"c:cust-1"},
        traits={},
        consent={"marketing_email": "130|1|crm|ev-3"},
        complaints={},
        contacts={"k-1|billing|0": 110.0},
        outbox=[{"k": "merged", "e": "ev-4", "loser": "p_2"}],
    )
    state = stored.state()
    assert state.identities == {("c", "cust-1")}
    assert state.contacts == [Contact(110, "k-1", "billing", False)]
    assert ProfileState.from_redis("p_1", stored.main) == state_from_redis("p_1", stored.main)


def test_lua_constants_render_the_key_names() -> None:
    rendered = lua_constants()
    assert "local KEY = {profile = 'p:', identity = 'id:', segment = 'seg:'" in rendered
    assert "ids = ':ids'" in rendered
    assert "applied = 'applied'" in rendered
    assert "local FOLLOW_HOPS = 16" in rendered
    for name in ("resolve.lua", "apply.lua", "publish.lua", "split.lua"):
        script = lua_script(name)
        assert script.startswith(rendered)
        assert script.index("local KEY =") < script.index("local prefix = ARGV[1]")


@pytest.mark.parametrize("path", sorted(LUA_DIR.glob("*.lua")), ids=lambda p: p.name)
def test_scripts_spell_no_key_names_themselves(path: Path) -> None:
    """Key names come from the rendered constants, never from literals in a script."""
    text = path.read_text()
    literals = set(re.findall(r"'([^']*)'", text))
    names = {"p:", "id:", "seg:", "seen:", "erased:", "alias", "stats", "workers"}
    names |= {f":{sub}" for sub in SUBKEYS}
    assert literals & names == set()


@pytest.mark.parametrize(
    "path", sorted(Path(codec.__file__).parent.glob("*.py")), ids=lambda p: p.name
)
def test_the_domain_imports_no_adapter(path: Path) -> None:
    """The values the domain writes are in domain/codec.py (the layout re-exports them),
    so no module of the pure domain imports services.profile.adapters when it is loaded
    (ProfileState.from_redis defers its import of the layout to the call)."""
    body = ast.parse(path.read_text()).body
    modules = {n.module or "" for n in body if isinstance(n, ast.ImportFrom)}
    modules |= {a.name for n in body if isinstance(n, ast.Import) for a in n.names}
    assert not [m for m in modules if m.startswith("services.profile.adapters")]
