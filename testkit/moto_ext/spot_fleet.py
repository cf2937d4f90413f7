"""The on-demand part of a Spot Fleet, which moto 5.2.5 ignores.

EC2 API Reference, SpotFleetRequestConfigData: "OnDemandTargetCapacity - The number of
On-Demand units to request. You can choose to set the target capacity in terms of
instances or a performance characteristic ... If the request type is maintain, you can
specify a target capacity of 0 and add capacity later"; TargetCapacity is the whole
fleet, so the fleet launches OnDemandTargetCapacity on-demand instances and the rest as
Spot. ModifySpotFleetRequest takes OnDemandTargetCapacity too. DescribeSpotFleetRequests
shows OnDemandTargetCapacity and OnDemandFulfilledCapacity, and DescribeSpotFleetInstances
lists the on-demand instances (without a Spot request id).

moto's Spot Fleet launches Spot instances only (create_spot_requests). Here the fleet
first launches the on-demand instances it lacks (from the same launch specs), then Spot
instances for the rest; cancelling with TerminateInstances terminates both kinds.
Lowering OnDemandTargetCapacity alone does not terminate on-demand instances.
"""

import threading

from moto.ec2.models.spot_requests import SpotFleetRequest, SpotRequestBackend
from moto.ec2.responses.spot_fleets import SpotFleets

from ec2_fleet import DEAD

# The OnDemandTargetCapacity of the RequestSpotFleet being handled in this thread.
_REQUEST = threading.local()


def live_on_demand(fleet):
    return [i for i in getattr(fleet, "on_demand_instances", []) if i.state not in DEAD]


def _launch_on_demand(fleet, count):
    weight_map, added = fleet.get_launch_spec_counts(count)
    for spec, n in weight_map.items():
        reservation = fleet.ec2_backend.run_instances(
            image_id=spec.image_id,
            count=n,
            user_data=spec.user_data,
            instance_type=spec.instance_type,
            is_instance_type_default=False,
            subnet_id=spec.subnet_id,
            key_name=spec.key_name,
            security_group_names=[],
            security_group_ids=[
                g if isinstance(g, str) else g.get("GroupId") for g in spec.group_set
            ],
            tags=spec.tag_specifications,
        )
        fleet.on_demand_instances.extend(reservation.instances)
    fleet.fulfilled_capacity += added


def _wrap_init(original):
    def init(self, *args, **kwargs):
        self.on_demand_target_capacity = getattr(_REQUEST, "on_demand", 0)
        self.on_demand_instances = []
        original(self, *args, **kwargs)

    return init


def _wrap_create(original):
    def create_spot_requests(self, weight_to_add):
        missing = self.on_demand_target_capacity - len(live_on_demand(self))
        if missing > 0:
            n = min(missing, int(weight_to_add))
            if n > 0:
                _launch_on_demand(self, n)
                weight_to_add -= n
        if weight_to_add > 0:
            original(self, weight_to_add)

    return create_spot_requests


def _wrap_config(original):
    def spot_fleet_request_config(self):
        config = original.fget(self)
        config["OnDemandTargetCapacity"] = self.on_demand_target_capacity
        config["OnDemandFulfilledCapacity"] = float(len(live_on_demand(self)))
        return config

    return property(spot_fleet_request_config)


def _wrap_request(original):
    def request_spot_fleet(self):
        config = self._get_param("SpotFleetRequestConfig", {})
        _REQUEST.on_demand = int(config.get("OnDemandTargetCapacity") or 0)
        try:
            return original(self)
        finally:
            _REQUEST.on_demand = 0

    return request_spot_fleet


def _wrap_modify(original):
    def modify_spot_fleet_request(self):
        on_demand = self._get_param("OnDemandTargetCapacity")
        fleet = self.ec2_backend.get_spot_fleet_request(
            self._get_param("SpotFleetRequestId")
        )
        if fleet is not None and on_demand is not None:
            fleet.on_demand_target_capacity = int(on_demand)
        return original(self)

    return modify_spot_fleet_request


def _wrap_instances(original):
    def describe_spot_fleet_instances(self):
        result = original(self)
        fleet = self.ec2_backend.get_spot_fleet_request(
            self._get_param("SpotFleetRequestId")
        )
        if fleet is not None:
            result.result["ActiveInstances"].extend(
                {"InstanceId": i.id, "InstanceType": i.instance_type}
                for i in live_on_demand(fleet)
            )
        return result

    return describe_spot_fleet_instances


def _wrap_cancel(original):
    def cancel_spot_fleet_requests(self, spot_fleet_request_ids, terminate_instances):
        ids = []
        if terminate_instances:
            for fleet_id in spot_fleet_request_ids:
                fleet = self.spot_fleet_requests.get(fleet_id)
                ids += [i.id for i in live_on_demand(fleet)] if fleet else []
        answer = original(self, spot_fleet_request_ids, terminate_instances)
        if ids:
            self.terminate_instances(ids)
        return answer

    return cancel_spot_fleet_requests


def install():
    """Adds the on-demand part to moto's Spot Fleet."""
    SpotFleetRequest.__init__ = _wrap_init(SpotFleetRequest.__init__)
    SpotFleetRequest.create_spot_requests = _wrap_create(
        SpotFleetRequest.create_spot_requests
    )
    SpotFleetRequest.spot_fleet_request_config = _wrap_config(
        SpotFleetRequest.spot_fleet_request_config
    )
    SpotFleets.request_spot_fleet = _wrap_request(SpotFleets.request_spot_fleet)
    SpotFleets.modify_spot_fleet_request = _wrap_modify(
        SpotFleets.modify_spot_fleet_request
    )
    SpotFleets.describe_spot_fleet_instances = _wrap_instances(
        SpotFleets.describe_spot_fleet_instances
    )
    SpotRequestBackend.cancel_spot_fleet_requests = _wrap_cancel(
        SpotRequestBackend.cancel_spot_fleet_requests
    )
