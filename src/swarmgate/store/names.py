"""Every Redis key and channel name swarmgate uses, in one place."""

PREFIX = "swarmgate:"
KEY_EVENTS = PREFIX + "events:keys"  # pub/sub: key ids whose cached principals must be dropped
IP_EVENTS = PREFIX + "events:ip"  # pub/sub: CIDRs blocked or unblocked by an operator
LIMITS = PREFIX + "limit:"  # + scope:ident:limit (rpm, tpd...): one counter of one limit
REPLICAS = PREFIX + "limits:replicas"  # sorted set: replica id -> its last heartbeat
CAPACITY_FREED = PREFIX + "events:capacity"  # pub/sub: a pool's capacity key, a slot freed
PLACEMENTS = PREFIX + "events:placements"  # pub/sub: prompts' block hashes -> who served them
FLEET_EVENTS = PREFIX + "events:fleet"  # pub/sub: a worker added, drained, restarted or removed
CONFIG_EVENTS = PREFIX + "events:config"  # pub/sub: re-read the config file (a reload elsewhere)
