"""A Redis that may evict keys is named at dispatcher start-up.

bridge's fence marks and pending reports live in Redis; with a memory limit and an
eviction policy other than ``noeviction``, Redis may drop them when full. The
dispatcher cannot fix that, but it must say so where its operator looks.
"""

import redis
from helpers import bridge


def test_dispatcher_warns_when_redis_may_evict_keys(bridge_env, redis_server):
    # Given a Redis with a memory limit and an LRU eviction policy
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("maxmemory", "512mb")
    client.config_set("maxmemory-policy", "allkeys-lru")
    # When a dispatcher starts
    result = bridge("dispatch", "--once", env=bridge_env)
    # Then it warns in one line, naming the policy and the fix
    assert result.returncode == 0, result.stderr
    assert "maxmemory-policy allkeys-lru" in result.stderr
    assert "set maxmemory-policy noeviction" in result.stderr


def test_dispatcher_is_quiet_about_eviction_under_noeviction(bridge_env, redis_server):
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("maxmemory", "512mb")
    client.config_set("maxmemory-policy", "noeviction")
    result = bridge("dispatch", "--once", env=bridge_env)
    assert result.returncode == 0, result.stderr
    assert "maxmemory-policy" not in result.stderr
