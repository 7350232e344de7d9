"""Erasure of a profile (right to be forgotten): every key of the profile and its
identity links are deleted; its identifiers are kept only as salted hashes that expire
after the suppression period, so events carrying them are not applied meanwhile."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from services.profile.adapters.layout import (
    SEGMENTS,
    SNAPSHOT,
    as_text,
    decode_segment_list,
    erased_digest,
    main_field,
)

if TYPE_CHECKING:
    from services.profile.adapters.reader import ProfileReader


class ProfileEraser:
    def __init__(self, reader: ProfileReader) -> None:
        self.reader = reader
        self.client = reader.client
        self.settings = reader.settings
        self.keys = reader.keys

    def erasure_salt(self) -> str:
        if self.settings.erasure_salt:
            return self.settings.erasure_salt
        self.client.set(self.keys.salt, secrets.token_hex(16), nx=True)
        return as_text(self.client.get(self.keys.salt) or b"")

    def erase(self, pid: str) -> tuple[int, int]:
        """Keys deleted and identifiers suppressed; (0, 0) when there is no such profile."""
        loaded = self.reader.load(pid)
        if loaded is None:
            return 0, 0
        salt = self.erasure_salt()
        ttl = self.settings.erasure_suppression_days * 86_400
        segments = loaded.stored.main.get(main_field(SNAPSHOT, SEGMENTS), "")
        aliases = [
            as_text(k) for k, v in self.client.hgetall(self.keys.alias).items() if as_text(v) == pid
        ]
        pipe = self.client.pipeline(transaction=True)
        keys = self.keys.all_of_profile(pid)
        for t, value in (ln.identifier for ln in loaded.lineage):
            keys.append(self.keys.identity(t, value))
            pipe.set(self.keys.erased(erased_digest(salt, t, value)), 1, ex=ttl)
        for seg in decode_segment_list(segments):
            pipe.zrem(self.keys.segment(seg), pid)
        if aliases:
            pipe.hdel(self.keys.alias, *aliases)
        pipe.delete(*keys)
        results = pipe.execute()
        return int(results[-1]), len(loaded.lineage)
