"""moto_server with what bbfleet's tests need and moto 5.2.5 lacks.

Run as `python server.py -H 127.0.0.1 -p PORT` (the arguments of `moto_server`):
it loads moto, adds the extensions below to moto's EC2 and runs moto's own server in
this process, so moto's models see them.

- ec2_fleet: ModifyFleet; DescribeFleetInstances and DescribeFleets as AWS answers them
  (live instances only, on-demand instances without a Spot request id, the fulfilled
  on-demand capacity counted);
- spot_fleet: the on-demand part of a Spot Fleet (OnDemandTargetCapacity);
- images: CreateImage's `snapshot` tag specification (the image's snapshots tagged).
"""

import os
import sys

# No __pycache__ in the checkout.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ec2_fleet  # noqa: E402
import images  # noqa: E402
import spot_fleet  # noqa: E402
from moto.server import main  # noqa: E402

if __name__ == "__main__":
    ec2_fleet.install()
    spot_fleet.install()
    images.install()
    main(sys.argv[1:])
