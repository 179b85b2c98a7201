"""Leaving the consumer group on purpose, as a static member (KIP-345).

With ``NEXTBEST_KAFKA_GROUP_INSTANCE_ID`` a worker is a static member: when it
dies and comes back under the same id within the session timeout, the group
coordinator hands it its partitions again without a rebalance, so a worker
killed with ``kill -9`` and restarted serves again in seconds. By design a
static member does not leave the group when it closes (aiokafka sends no
LeaveGroup then), so a worker stopped for good (a scale-down) would hold its
partitions until the session times out. :func:`leave_group` sends the
LeaveGroup request that names the member by its instance id (LeaveGroup v3,
which aiokafka's protocol module does not have), so a stop hands the
partitions over at once.
"""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.errors import for_code
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Int16, Int32, Schema, String

log = logging.getLogger(__name__)


class LeaveGroupResponse_v3(Response):  # type: ignore[misc]  # Kafka's naming
    API_KEY = 13
    API_VERSION = 3
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("error_code", Int16),
        (
            "members",
            Array(
                ("member_id", String("utf-8")),
                ("group_instance_id", String("utf-8")),
                ("error_code", Int16),
            ),
        ),
    )


class LeaveGroupRequest_v3(RequestStruct):  # type: ignore[misc]
    API_KEY = 13
    API_VERSION = 3
    RESPONSE_TYPE = LeaveGroupResponse_v3
    SCHEMA = Schema(
        ("group_id", String("utf-8")),
        ("members", Array(("member_id", String("utf-8")), ("group_instance_id", String("utf-8")))),
    )


class StaticLeaveGroupRequest(Request[LeaveGroupRequest_v3]):  # type: ignore[misc]
    """A static member's LeaveGroup (v3: members named by member and instance id)."""

    API_KEY = 13

    def __init__(self, group: str, member_id: str, instance_id: str) -> None:
        self._group = group
        self._member_id = member_id
        self._instance_id = instance_id

    def build(self, request_struct_class: type[LeaveGroupRequest_v3]) -> LeaveGroupRequest_v3:
        return request_struct_class(self._group, [(self._member_id, self._instance_id)])


async def leave_group(consumer: Any) -> bool:
    """Make the static member ``consumer`` (aiokafka's) leave its group; True if it did.

    Runs on the consumer's own event loop. A dynamic member leaves by itself
    when it closes; nothing is sent for one.
    """
    coordinator = consumer._coordinator
    instance_id = coordinator._group_instance_id
    node = coordinator.coordinator_id
    if instance_id is None or node is None or coordinator.generation <= 0:
        return False
    request = StaticLeaveGroupRequest(coordinator.group_id, coordinator.member_id, instance_id)
    response = await consumer._client.send(node, request)
    errors = [response.error_code, *(member[2] for member in response.members)]
    failed = next((code for code in errors if code != 0), None)
    if failed is not None:
        log.warning("leaving the consumer group failed (%s)", for_code(failed).__name__)
        return False
    log.info("left the consumer group as static member %s", instance_id)
    return True
