"""``corral.api.jobdiff``: the Nomad-style diff behind ``job history -p`` and plans.

What a reader of a diff relies on: only the spec counts (never the fields the
server sets), every group and task is listed so that the plan can annotate it, a
change reads ``+/- Field: "old" => "new"``, and the columns line up as Nomad's do.
"""

from __future__ import annotations

import pytest

from corral import structs
from corral.api.jobdiff import ADDED, DELETED, EDITED, NONE, diff_jobs, job_diff
from corral.api.jsonmap import to_json
from corral.proto import pb
from tests.support.fake_server import sample_job


def job(**kw: object) -> pb.Job:
    j = sample_job("web", **kw)  # type: ignore[arg-type]
    structs.canonicalize(j)
    return j


def test_identical_specs_list_groups_and_tasks_without_markers() -> None:
    a, b = job(), job()
    # what the server sets differs between versions but is not a change of the spec
    b.version, b.submit_time, b.job_modify_index, b.status = 3, 12345, 99, "running"
    b.stable = True
    d = job_diff(a, b)
    assert d.type == NONE and not d.changed
    assert diff_jobs(a, b) == ['Job: "web"', 'Task Group: "web"', '  Task: "server"']


def test_edited_fields_and_nested_object() -> None:
    old, new = job(count=1), job(count=3, memory_mb=512)
    assert diff_jobs(old, new) == [
        '+/- Job: "web"',
        '+/- Task Group: "web"',
        '  +/- Count: "1" => "3"',
        '  +/- Task: "server"',
        "    +/- Resources {",
        '      +/- MemoryMB: "256" => "512"',
        "        }",
    ]
    d = job_diff(old, new)
    assert d.type == EDITED and d.task_groups[0].type == EDITED


def test_new_and_removed_job() -> None:
    new = job()
    assert diff_jobs(None, new) == ['+ Job: "web"', '+ Task Group: "web"', '  + Task: "server"']
    assert diff_jobs(new, None) == ['- Job: "web"', '- Task Group: "web"', '  - Task: "server"']
    assert job_diff(None, new).type == ADDED and job_diff(new, None).type == DELETED
    with pytest.raises(ValueError):
        job_diff(None, None)


def test_json_inputs_give_the_same_diff() -> None:
    old, new = job(count=1), job(count=2)
    expected = diff_jobs(old, new)
    assert diff_jobs({"Job": to_json(old)}, to_json(new)) == expected
    assert diff_jobs(to_json(old, omit_empty=True), {"Job": to_json(new, omit_empty=True)}) == (
        expected
    )


def test_job_level_fields_maps_sets_and_alignment() -> None:
    old, new = job(), job()
    new.priority = 70
    new.meta["owner"] = "ops"
    new.datacenters.append("dc2")
    new.constraints.add(l_target="${attr.kernel.name}", operand="=", r_target="linux")
    assert diff_jobs(old, new) == [
        '+/- Job: "web"',
        '+   Meta[owner]: "ops"',
        '+/- Priority:    "50" => "70"',
        "+   Constraint {",
        '    + LTarget: "${attr.kernel.name}"',
        '    + Operand: "="',
        '    + RTarget: "linux"',
        "    }",
        "+/- Datacenters {",
        '  + Datacenters: "dc2"',
        "    }",
        # padded like Nomad: the widest marker at this level is "+/- "
        '    Task Group: "web"',
        '      Task: "server"',
    ]


def test_changed_constraint_reads_as_removed_and_added() -> None:
    old, new = job(), job()
    old.constraints.add(l_target="${attr.kernel.name}", operand="=", r_target="linux")
    new.constraints.add(l_target="${attr.kernel.name}", operand="=", r_target="darwin")
    assert diff_jobs(old, new) == [
        '+/- Job: "web"',
        "- Constraint {",
        '  - LTarget: "${attr.kernel.name}"',
        '  - Operand: "="',
        '  - RTarget: "linux"',
        "  }",
        "+ Constraint {",
        '  + LTarget: "${attr.kernel.name}"',
        '  + Operand: "="',
        '  + RTarget: "darwin"',
        "  }",
        '  Task Group: "web"',
        '    Task: "server"',
    ]


def test_task_env_config_and_services_keyed_by_name() -> None:
    old, new = job(), job()
    told, tnew = old.task_groups[0].tasks[0], new.task_groups[0].tasks[0]
    told.config.update({"image": "redis:6", "args": ["-p", "1"]})
    tnew.config.update({"image": "redis:7", "args": ["-p", "1"]})
    told.env["A"] = "1"
    tnew.env["A"] = "2"
    told.services.add(name="web", port_label="http", tags=["a"])
    tnew.services.add(name="web", port_label="http", tags=["a", "b"])
    assert diff_jobs(old, new) == [
        '+/- Job: "web"',
        '+/- Task Group: "web"',
        '  +/- Task: "server"',
        '    +/- Env[A]: "1" => "2"',
        "    +/- Config {",
        '      +/- image: "redis:6" => "redis:7"',
        "        }",
        "    +/- Service {",
        "      +/- Tags {",
        '        + Tags: "b"',
        "          }",
        "        }",
    ]


def test_added_and_removed_groups_and_tasks() -> None:
    old, new = job(), job()
    api = new.task_groups.add(name="api", count=1)
    api.tasks.add(name="app", driver="mock")
    new.task_groups[0].tasks.add(name="sidecar", driver="mock")
    lines = diff_jobs(old, new)
    assert lines == [
        '+/- Job: "web"',
        '+   Task Group: "api"',
        '    + Task: "app"',
        '+/- Task Group: "web"',
        '    Task: "server"',
        '  + Task: "sidecar"',
    ]
    assert diff_jobs(new, old)[1] == '-   Task Group: "api"'
    verbose = diff_jobs(old, new, verbose=True)
    assert verbose[:5] == [
        '+/- Job: "web"',
        '+   Task Group: "api"',
        '    + Count: "1"',
        '    + Task: "app"',
        '      + Driver: "mock"',
    ]


def test_unset_optional_blocks_and_zero_values() -> None:
    old, new = job(), job()
    for j in (old, new):  # as decoded from a file without an update block
        j.task_groups[0].ClearField("update")
    new.task_groups[0].update.CopyFrom(pb.UpdateStrategy(max_parallel=2, canary=0))
    lines = diff_jobs(old, new)
    # an added block shows what is set, not every zero field
    assert lines == [
        '+/- Job: "web"',
        '+/- Task Group: "web"',
        "  + Update {",
        '    + MaxParallel: "2"',
        "    }",
        '    Task: "server"',
    ]
    assert not any("Canary" in line for line in lines)
    # an empty block added changes nothing
    empty = job()
    empty.task_groups[0].ClearField("update")
    empty.task_groups[0].update.SetInParent()
    assert job_diff(old, empty).type == NONE
