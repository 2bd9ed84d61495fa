"""What corral accepts in a job today, in one place.

``NOT_YET_SUPPORTED`` names Nomad jobspec blocks and attributes that corral does not
implement yet. Those that the proto already models (constraint, service, update, ...)
are still parsed in full, so enabling one later is only removing its name here.
"""

from __future__ import annotations

NOT_YET_SUPPORTED: frozenset[str] = frozenset(
    {
        "template",
        "artifact",
        "volume",
        "volume_mount",
        "vault",
        "consul",
        "lifecycle",
        "scaling",
        "periodic",
        "parameterized",
        "multiregion",
        "csi_plugin",
        "dispatch_payload",
        "logs",
        "identity",
        "ephemeral_disk",
        "dynamic",
        "sidecar_service",
        "connect",
    }
)


def gated(name: str) -> bool:
    """True when the block or attribute ``name`` is not supported yet.

    Looked up at call time, so that a test (or a feature flag) can swap the set.
    """
    return name in NOT_YET_SUPPORTED


# Task drivers a client can run (client/drivers); the jobspec must not import the
# client package (the CLI uses this module), so the names are repeated here.
KNOWN_DRIVERS: frozenset[str] = frozenset({"docker", "raw_exec", "mock"})

# Nomad API JSON keys that corral's proto does not model, by their HCL block name:
# used to report a JSON job's block with the same words as an HCL job's.
JSON_BLOCK_NAMES: dict[str, str] = {
    "Templates": "template",
    "Artifacts": "artifact",
    "Volumes": "volume",
    "VolumeMounts": "volume_mount",
    "Vault": "vault",
    "Consul": "consul",
    "Lifecycle": "lifecycle",
    "Scaling": "scaling",
    "ScalingPolicies": "scaling",
    "Periodic": "periodic",
    "ParameterizedJob": "parameterized",
    "Multiregion": "multiregion",
    "CSIPluginConfig": "csi_plugin",
    "DispatchPayload": "dispatch_payload",
    "LogConfig": "logs",
    "Identity": "identity",
    "Identities": "identity",
    "EphemeralDisk": "ephemeral_disk",
    "Connect": "connect",
    "Reschedule": "reschedule",
    "Migrate": "migrate",
}

# Values Nomad itself fills in (`nomad job inspect` output): harmless when a JSON job
# carries them, so they are not reported as unsupported or unknown; compared after
# dropping empty values (null, "", 0, false).
NOMAD_JSON_DEFAULTS: dict[str, list[object]] = {
    "LogConfig": [{"MaxFiles": 10, "MaxFileSizeMB": 10}],
    "EphemeralDisk": [{"SizeMB": 300}],
    "NodePool": ["default"],
    "OnUpdate": ["require_healthy"],
}

JOB_TYPES: tuple[str, ...] = ("service", "batch", "system")

CONSTRAINT_OPERATORS: frozenset[str] = frozenset(
    {
        "=",
        "==",
        "is",
        "!=",
        "not",
        "<",
        "<=",
        ">",
        ">=",
        "regexp",
        "version",
        "semver",
        "set_contains",
        "set_contains_all",
        "set_contains_any",
        "is_set",
        "is_not_set",
        "distinct_hosts",
        "distinct_property",
    }
)

# HCL shorthands inside constraint/affinity: `version = ">= 1.2"` means
# operator "version" with that value (Nomad's jobspec2 does the same).
CONSTRAINT_SHORTHANDS: tuple[str, ...] = (
    "version",
    "semver",
    "regexp",
    "set_contains",
    "set_contains_any",
    "set_contains_all",
)
