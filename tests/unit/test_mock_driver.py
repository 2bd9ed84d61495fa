"""The mock driver (simulated tasks), durations and signal names. In-process only."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from corral.client.drivers import KNOWN_DRIVERS, load_drivers
from corral.client.drivers.base import DriverError, TaskConfig, TaskHandle
from corral.client.drivers.durations import format_duration, parse_duration, parse_duration_ns
from corral.client.drivers.mock import MockDriver
from corral.client.drivers.signals import parse_signal, signal_name


def cfg(config: dict[str, Any], alloc_id: str = "a1", task: str = "t") -> TaskConfig:
    return TaskConfig(
        alloc_id=alloc_id,
        task_name=task,
        job_name="j",
        group_name="g",
        node_id="n",
        config=config,
        env={},
        cpu_mhz=100,
        memory_mb=64,
        ports=[],
        alloc_dir="/nonexistent/alloc",
        task_dir="/nonexistent/t",
        stdout_path="/nonexistent/t.stdout",
        stderr_path="/nonexistent/t.stderr",
    )


@pytest.fixture
def driver() -> Any:
    d = MockDriver()
    yield d
    d.close()


# ---------------------------------------------------------------- durations


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        ("10s", 10_000_000_000),
        ("500ms", 500_000_000),
        ("1m30s", 90_000_000_000),
        ("1.5h", 5_400_000_000_000),
        ("2h45m", 9_900_000_000_000),
        ("250us", 250_000),
        ("250µs", 250_000),
        ("7ns", 7),
        ("-1s", -1_000_000_000),
        ("0", 0),
        ("", 0),
        (None, 0),
        (3_000_000_000, 3_000_000_000),
        (3e9, 3_000_000_000),  # protobuf Struct numbers are doubles
        ("42", 42),
    ],
)
def test_parse_duration(text: Any, ns: int) -> None:
    assert parse_duration_ns(text) == ns
    assert parse_duration(text) == pytest.approx(ns / 1e9)


@pytest.mark.parametrize("bad", ["10x", "s", "1s2", "ten seconds", "1 s", True])
def test_parse_duration_rejects(bad: Any) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_duration_ns(bad)


def test_format_duration() -> None:
    assert format_duration(90) == "1m30s"
    assert format_duration(0.25) == "250ms"
    assert format_duration(3600) == "1h0m0s"
    assert format_duration(0) == "0s"


def test_signals() -> None:
    assert parse_signal("SIGTERM") == 15
    assert parse_signal("int") == 2
    assert parse_signal("9") == 9
    assert parse_signal("", default="SIGTERM") == 15
    assert signal_name(15) == "SIGTERM"
    with pytest.raises(ValueError, match="unknown signal"):
        parse_signal("SIGNOPE")


# ---------------------------------------------------------------- registry


def test_load_drivers() -> None:
    drivers = load_drivers()
    assert tuple(drivers) == KNOWN_DRIVERS
    assert {name: d.name for name, d in drivers.items()} == {n: n for n in KNOWN_DRIVERS}
    assert list(load_drivers(["mock"])) == ["mock"]
    with pytest.raises(ValueError, match="unknown driver"):
        load_drivers(["mock", "qemu"])


# ---------------------------------------------------------------- mock behaviour


def test_fingerprint(driver: MockDriver) -> None:
    fp = driver.fingerprint()
    assert fp.detected and fp.healthy


def test_run_for_then_exit_code(driver: MockDriver) -> None:
    handle = driver.start_task(cfg({"run_for": "50ms", "exit_code": 3}))
    assert handle.driver == "mock"
    result = driver.wait_task(handle, timeout=5)
    assert result is not None
    assert result.exit_code == 3
    assert not result.successful


def test_exit_code_as_struct_double(driver: MockDriver) -> None:
    handle = driver.start_task(cfg({"run_for": 0, "exit_code": 2.0}))
    result = driver.wait_task(handle, timeout=1)
    assert result is not None and result.exit_code == 2


def test_runs_until_stopped(driver: MockDriver) -> None:
    handle = driver.start_task(cfg({}))
    assert driver.wait_task(handle, timeout=0.05) is None
    driver.stop_task(handle, timeout=1, signal="SIGINT")
    result = driver.wait_task(handle, timeout=0)
    assert result is not None and result.successful


def test_exit_signal_and_error(driver: MockDriver) -> None:
    handle = driver.start_task(
        cfg({"run_for": "1ms", "exit_signal": 9, "exit_err_msg": "boom", "exit_code": 1})
    )
    result = driver.wait_task(handle, timeout=5)
    assert result is not None
    assert (result.exit_code, result.signal, result.err) == (1, 9, "boom")


def test_start_error(driver: MockDriver) -> None:
    with pytest.raises(DriverError, match="no such image") as info:
        driver.start_task(cfg({"start_error": "no such image"}))
    assert info.value.recoverable is False
    with pytest.raises(DriverError) as info:
        driver.start_task(cfg({"start_error": "flaky", "start_error_recoverable": True}))
    assert info.value.recoverable is True


def test_start_block_for(driver: MockDriver) -> None:
    started = time.monotonic()
    driver.start_task(cfg({"start_block_for": "100ms"}))
    assert time.monotonic() - started >= 0.1


def test_kill_after_within_timeout_is_graceful(driver: MockDriver) -> None:
    handle = driver.start_task(cfg({"kill_after": "100ms", "exit_code": 0}))
    started = time.monotonic()
    driver.stop_task(handle, timeout=5, signal="SIGTERM")
    assert 0.1 <= time.monotonic() - started < 2
    result = driver.wait_task(handle, timeout=0)
    assert result is not None and result.exit_code == 0 and result.signal == 0


def test_kill_after_beyond_timeout_is_killed(driver: MockDriver) -> None:
    handle = driver.start_task(cfg({"kill_after": "10s"}))
    started = time.monotonic()
    driver.stop_task(handle, timeout=0.1, signal="SIGTERM")
    assert time.monotonic() - started < 2
    result = driver.wait_task(handle, timeout=0)
    assert result is not None and (result.exit_code, result.signal) == (137, 9)


def test_stop_on_exited_task_is_a_no_op(driver: MockDriver) -> None:
    handle = driver.start_task(cfg({"run_for": 0, "exit_code": 5}))
    driver.stop_task(handle, timeout=0, signal="SIGINT")
    result = driver.wait_task(handle, timeout=0)
    assert result is not None and result.exit_code == 5


def test_recover_and_destroy(driver: MockDriver) -> None:
    handle = driver.start_task(cfg({}))
    saved = TaskHandle.from_dict(handle.to_dict())
    assert driver.recover_task(saved)
    # another driver instance is another process: it knows nothing
    other = MockDriver()
    assert not other.recover_task(saved)
    driver.destroy_task(handle)
    driver.destroy_task(handle)  # idempotent
    assert not driver.recover_task(saved)
    with pytest.raises(DriverError, match="unknown"):
        driver.wait_task(saved, timeout=0)


def test_validate_config(driver: MockDriver) -> None:
    assert driver.validate_config({"run_for": "1s", "exit_code": 1, "kill_after": "2s"}) == []
    problems = driver.validate_config({"run_for": "soon", "exit_code": "x", "colour": "red"})
    assert any("colour" in p for p in problems)
    assert any(p.startswith("run_for") for p in problems)
    assert any("exit_code" in p for p in problems)
    with pytest.raises(DriverError, match="invalid mock config"):
        driver.start_task(cfg({"run_for": "soon"}))


def test_thousands_of_tasks_need_no_threads(driver: MockDriver) -> None:
    before = threading.active_count()
    handles = [
        driver.start_task(
            cfg({"run_for": f"{50 + i % 100}ms", "exit_code": i % 3}, alloc_id=f"a{i}")
        )
        for i in range(3000)
    ]
    forever = [driver.start_task(cfg({}, alloc_id=f"f{i}")) for i in range(1000)]
    assert threading.active_count() <= before + 1  # the one timer thread
    for i, handle in enumerate(handles):
        result = driver.wait_task(handle, timeout=10)
        assert result is not None and result.exit_code == i % 3
    assert driver.running_count() == len(forever)
    for handle in forever:
        driver.stop_task(handle, timeout=0, signal="SIGINT")
    assert driver.running_count() == 0


def test_concurrent_start_stop_from_many_threads(driver: MockDriver) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(200):
                handle = driver.start_task(cfg({"run_for": "5ms"}, alloc_id=f"w{n}-{i}"))
                if i % 2:
                    driver.stop_task(handle, timeout=0, signal="SIGINT")
                assert driver.wait_task(handle, timeout=5) is not None
                driver.destroy_task(handle)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors
    assert driver.running_count() == 0


def test_earlier_deadline_wakes_the_timer(driver: MockDriver) -> None:
    slow = driver.start_task(cfg({"run_for": "1h"}))
    fast = driver.start_task(cfg({"run_for": "20ms"}))
    assert driver.wait_task(fast, timeout=2) is not None
    assert driver.wait_task(slow, timeout=0) is None
