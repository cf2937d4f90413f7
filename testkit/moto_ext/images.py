"""CreateImage's `snapshot` tag specification, which moto 5.2.5 refuses
(NotImplementedError) and AWS applies: "The same tag is applied to all of the snapshots
that are created" (EC2 API Reference, CreateImage, TagSpecification.N).

The extension takes the snapshot specifications out of the call, lets moto create the
image, then tags the image's snapshot(s) with them. Every other resource type keeps
moto's answer (image: tagged; anything else: InvalidTaggableResourceType).
"""

from moto.ec2.models.amis import AmiBackend


def install() -> None:
    original = AmiBackend.create_image

    def create_image(self, instance_id, name, description, tag_specifications):
        snapshot_tags = []
        rest = []
        for spec in tag_specifications or []:
            if spec.get("ResourceType") == "snapshot":
                snapshot_tags += spec.get("Tags", [])
            else:
                rest.append(spec)
        ami = original(self, instance_id, name, description, tag_specifications=rest)
        snapshot = getattr(ami, "ebs_snapshot", None)
        if snapshot is not None:
            for tag in snapshot_tags:
                snapshot.add_tag(tag["Key"], tag["Value"])
        return ami

    AmiBackend.create_image = create_image
