"""The processes a bench counts CPU and memory of, read from a `conveyor run --addresses-json` file."""

from __future__ import annotations

from conveyor_benchmarks.local_pipeline import gateway_process, process_pids


def test_process_pids_name_the_gateway_and_each_replica_with_a_process_of_its_own() -> None:
    addresses = {
        "pid": 10,
        "steps": {
            "pre": [{"pid": 21, "inProcessWith": "classify"}],
            "classify": [{"pid": 21}, {"pid": 22}],
            "post": [{"pid": 31}],
        },
    }
    assert process_pids(addresses) == {"gateway": 10, "classify[0]": 21, "classify[1]": 22, "post[0]": 31}


def test_process_pids_leave_the_gateway_out_of_a_file_that_does_not_name_it() -> None:
    assert process_pids({"steps": {"classify": [{"pid": 21}]}}) == {"classify[0]": 21}


def test_process_pids_name_the_replica_an_embedded_gateway_runs_in_and_the_runner_as_itself() -> None:
    addresses = {
        "pid": 10,
        "gatewayIn": "classify",
        "steps": {"pre": [{"pid": 21, "inProcessWith": "classify"}], "classify": [{"pid": 21}], "post": [{"pid": 31}]},
    }
    assert process_pids(addresses) == {"runner": 10, "classify[0] + gateway": 21, "post[0]": 31}
    assert gateway_process(process_pids(addresses)) == "classify[0] + gateway"


def test_gateway_process_is_the_gateways_own_where_it_has_one_and_none_where_the_file_names_none() -> None:
    assert gateway_process(process_pids({"pid": 10, "steps": {"classify": [{"pid": 21}]}})) == "gateway"
    assert gateway_process(process_pids({"steps": {"classify": [{"pid": 21}]}})) is None
