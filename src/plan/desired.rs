//! The desired state: resolved capacity, the launch template's contents, the fleet request.

use super::Desired;
use crate::config::{Capacity, Config};
use crate::names;
use crate::userdata::{self, UserdataError, UserdataVars};
use crate::world::{FleetSpec, ImageInfo, LaunchTemplateSpec};

/// What `config` asks for in `region`, on `image`, for `capacity` runners.
pub fn desired(
    config: &Config,
    region: &str,
    image: &ImageInfo,
    capacity: Capacity,
) -> Result<Desired, UserdataError> {
    let userdata = userdata::render(
        config.instance.os,
        &UserdataVars::from_config(config, region),
    )?;
    let launch_template = LaunchTemplateSpec {
        name: names::launch_template(&config.name),
        fleet: config.name.clone(),
        image_id: image.id.clone(),
        root_device: image.root_device.clone(),
        root_volume_gb: config.instance.root_volume_gb,
        instance_profile: config.instance.instance_profile.clone(),
        security_groups: config.instance.security_groups.clone(),
        userdata,
    };
    let fleet = FleetSpec {
        fleet: config.name.clone(),
        role: config.spot.fleet_role.clone(),
        strategy: config.spot.allocation_strategy,
        instance_types: config.spot.instance_types.clone(),
        subnets: config.spot.subnets.clone(),
        launch_template_fingerprint: launch_template.fingerprint(),
        api: config.spot.fleet_api,
    };
    Ok(Desired {
        capacity,
        launch_template,
        fleet,
    })
}
