from __future__ import annotations

import hashlib

import pytest

from glmserve.admission.cache_salt import CacheSalter, cache_salt
from glmserve.common.errors import ConfigError
from tests.admission.helpers import tenant

SECRET = b"0123456789abcdef0123456789abcdef"


def test_one_salt_per_tenant_unless_grouped() -> None:
    a, b = cache_salt(SECRET, "acme"), cache_salt(SECRET, "globex")
    assert a != b
    assert a == cache_salt(SECRET, "acme")
    assert len(a) == 32
    assert int(a, 16) >= 0
    # tenants of one sharing group share a salt, whatever their ids
    assert cache_salt(SECRET, "acme", "research") == cache_salt(SECRET, "globex", "research")
    assert cache_salt(SECRET, "acme", "research") != cache_salt(SECRET, "acme", "other")
    # a group named like a tenant is still a different cache
    assert cache_salt(SECRET, "x", "acme") != a


def test_salt_depends_on_the_secret_and_hides_the_tenant() -> None:
    salt = cache_salt(SECRET, "acme")
    assert salt != cache_salt(b"another secret of 32 bytes......", "acme")
    assert "acme" not in salt
    assert salt not in hashlib.sha256(b"acme").hexdigest()  # not a plain, enumerable hash


def test_salter_binds_the_secret() -> None:
    salter = CacheSalter(SECRET)
    assert salter.salt(tenant(tenant_id="acme")) == cache_salt(SECRET, "acme")
    assert "0123" not in repr(salter)
    with pytest.raises(ConfigError, match="at least 16 bytes"):
        CacheSalter(b"short")
    assert CacheSalter.ephemeral().salt(tenant()) != CacheSalter.ephemeral().salt(tenant())
