"""EC2 Fleet as AWS runs it, where moto 5.2.5 does not.

- ModifyFleet (moto has none). EC2 API Reference, ModifyFleet: "You can only modify an EC2
  Fleet request of type maintain"; TargetCapacitySpecification (TotalTargetCapacity
  required with it), ExcessCapacityTerminationPolicy (no-termination | termination) and
  LaunchTemplateConfigs, which the fleet uses for the instances it launches from then on.
  "To scale up your EC2 Fleet, increase its target capacity. The EC2 Fleet launches the
  additional Spot Instances according to the allocation strategy"; "To scale down ...
  You can request that the EC2 Fleet terminate Spot Instances until the size of the fleet
  no longer exceeds the new target capacity" ("termination"), or keep them running
  ("no-termination"). Here each part (on-demand, spot) is brought to its target: the
  missing instances of a part are launched, and with "termination" the excess of a part
  is terminated, newest first (AWS picks per allocation strategy).
- DescribeFleetInstances: only live instances ("the running instances"); an on-demand
  instance has no SpotInstanceRequestId (moto gives it its reservation id).
- DescribeFleets: FulfilledCapacity and FulfilledOnDemandCapacity count the live instances
  (moto never counts the on-demand ones, nor the ones terminated since).
"""

from moto.core.responses import ActionResult
from moto.ec2.exceptions import EC2ClientError, MissingParameterError
from moto.ec2.models.fleets import Fleet
from moto.ec2.responses.fleets import Fleets

DEAD = ("shutting-down", "terminated")


def _live(instance):
    return instance is not None and instance.state not in DEAD


def _weight(spec):
    return float(spec.weighted_capacity) if spec is not None else 1.0


def running_spot(fleet):
    """The fleet's Spot requests whose instance lives."""
    return [
        r
        for r in getattr(fleet, "spot_requests", [])
        if _live(getattr(r, "instance", None))
    ]


def running_on_demand(fleet):
    """The fleet's on-demand entries ({instance, launch_spec}) whose instance lives."""
    return [d for d in getattr(fleet, "on_demand_instances", []) if _live(d["instance"])]


def fulfilled_on_demand(fleet):
    return sum(_weight(d.get("launch_spec")) for d in running_on_demand(fleet))


def fulfilled_spot(fleet):
    return sum(_weight(getattr(r, "launch_spec", None)) for r in running_spot(fleet))


def _computed(getter):
    # moto's Fleet assigns these counters; the assignment is ignored, the count is live.
    return property(getter, lambda self, value: None)


def parts(spec):
    """(on-demand, spot) targets of a TargetCapacitySpecification: the rest of the total
    goes to DefaultTargetCapacityType (default on-demand, as moto's CreateFleet)."""
    total = int(spec.get("TotalTargetCapacity") or 0)
    on_demand = min(int(spec.get("OnDemandTargetCapacity") or 0), total)
    spot = min(int(spec.get("SpotTargetCapacity") or 0), total - on_demand)
    rest = total - on_demand - spot
    if (spec.get("DefaultTargetCapacityType") or "on-demand") == "spot":
        return on_demand, spot + rest
    return on_demand + rest, spot


def _terminate(fleet, ids):
    if not ids:
        return
    fleet.spot_requests = [r for r in fleet.spot_requests if r.instance.id not in ids]
    fleet.on_demand_instances = [
        d for d in fleet.on_demand_instances if d["instance"].id not in ids
    ]
    fleet.ec2_backend.terminate_instances(ids)


def _excess(entries, instance_of, weight_of, have, want):
    ids = []
    for entry in reversed(entries):
        if have <= want:
            break
        ids.append(instance_of(entry).id)
        have -= weight_of(entry)
    return ids


def scale(fleet):
    """Brings each part of the fleet to its target (see the module's doc)."""
    on_demand, spot = parts(fleet.target_capacity_specification)
    have_od, have_spot = fulfilled_on_demand(fleet), fulfilled_spot(fleet)
    if on_demand > have_od:
        fleet.create_on_demand_requests(on_demand - have_od)
    if spot > have_spot:
        fleet.create_spot_requests(spot - have_spot)
    if fleet.excess_capacity_termination_policy != "termination":
        return
    ids = _excess(
        running_spot(fleet),
        lambda r: r.instance,
        lambda r: _weight(getattr(r, "launch_spec", None)),
        have_spot,
        spot,
    )
    ids += _excess(
        running_on_demand(fleet),
        lambda d: d["instance"],
        lambda d: _weight(d.get("launch_spec")),
        have_od,
        on_demand,
    )
    _terminate(fleet, ids)


def _replace_launch_specs(fleet, configs):
    # moto builds the launch specs in Fleet.__init__: a fleet of no capacity builds them
    # from the new configs and launches nothing.
    spare = Fleet(
        fleet.ec2_backend,
        fleet.id,
        fleet.on_demand_options,
        fleet.spot_options,
        {"TotalTargetCapacity": 0},
        configs,
        fleet.excess_capacity_termination_policy,
        fleet.replace_unhealthy_instances,
        fleet.terminate_instances_with_expiration,
        fleet.fleet_type,
        None,
        None,
        [],
    )
    fleet.launch_specs = spare.launch_specs
    fleet.launch_template_configs = configs


def modify_fleet(backend, fleet_id, spec, policy, configs):
    """ModifyFleet on moto's model."""
    if not fleet_id:
        raise MissingParameterError("FleetId")
    fleet = backend.fleets.get(fleet_id)
    if fleet is None:
        raise EC2ClientError(
            "InvalidFleetId.NotFound", f"The fleet ID '{fleet_id}' does not exist"
        )
    if fleet.state.startswith("deleted"):
        raise EC2ClientError(
            "IncorrectState", f"The fleet '{fleet_id}' is in the {fleet.state} state"
        )
    if fleet.fleet_type != "maintain":
        raise EC2ClientError(
            "UnsupportedOperation",
            f"Fleet {fleet_id} is of type {fleet.fleet_type}; only a fleet of type maintain can be modified",
        )
    if spec and spec.get("TotalTargetCapacity") is None:
        raise MissingParameterError("TargetCapacitySpecification.TotalTargetCapacity")
    if policy:
        fleet.excess_capacity_termination_policy = policy
    if configs:
        _replace_launch_specs(fleet, configs)
    if spec:
        new = dict(fleet.target_capacity_specification)
        new.update(spec)
        fleet.target_capacity_specification = new
        fleet.target_capacity = int(new["TotalTargetCapacity"])
        fleet.on_demand_target_capacity = int(new.get("OnDemandTargetCapacity") or 0)
        fleet.spot_target_capacity = int(new.get("SpotTargetCapacity") or 0)
    scale(fleet)


def _modify_fleet_response(self):
    fleet_id = self._get_param("FleetId")
    spec = self._get_param("TargetCapacitySpecification", {})
    policy = self._get_param("ExcessCapacityTerminationPolicy")
    configs = self._get_param("LaunchTemplateConfigs", [])
    self.error_on_dryrun()
    modify_fleet(self.ec2_backend, fleet_id, spec, policy, configs)
    return ActionResult({"Return": True})


def _describe_fleet_instances_response(self):
    fleet_id = self._get_param("FleetId")
    fleet = self.ec2_backend.get_fleet(fleet_id)
    active = []
    if fleet is not None:
        for r in running_spot(fleet):
            active.append(
                {
                    "InstanceId": r.instance.id,
                    "InstanceType": r.instance.instance_type,
                    "SpotInstanceRequestId": r.id,
                    "InstanceHealth": "healthy",
                }
            )
        for d in running_on_demand(fleet):
            active.append(
                {
                    "InstanceId": d["instance"].id,
                    "InstanceType": d["instance"].instance_type,
                    "InstanceHealth": "healthy",
                }
            )
    return ActionResult({"ActiveInstances": active, "FleetId": fleet_id})


def install():
    """Adds the above to moto's EC2 (its response class dispatches Action=ModifyFleet to
    the method modify_fleet)."""
    Fleet.fulfilled_capacity = _computed(
        lambda f: fulfilled_on_demand(f) + fulfilled_spot(f)
    )
    Fleet.fulfilled_on_demand_capacity = _computed(fulfilled_on_demand)
    Fleet.fulfilled_spot_capacity = _computed(fulfilled_spot)
    Fleets.modify_fleet = _modify_fleet_response
    Fleets.describe_fleet_instances = _describe_fleet_instances_response
