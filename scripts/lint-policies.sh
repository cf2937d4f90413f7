#!/usr/bin/env bash
# Lints every IAM document of policies/ with parliament (PyPI), filled in from
# examples/bbfleet.toml by `bbfleet policy` (IAM cannot read unfilled placeholders).
# Zero findings, except the suppressions below, each with its reason. Exit 1 on any other.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/tools.sh >/dev/null
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# The binary the tests build (same features as `cargo test`, so after scripts/test.sh
# this is a no-op; a plain `cargo run` would rebuild every dependency without dev features).
cargo test --quiet --workspace --locked --test it --no-run 2>/dev/null
files=()
for name in operator instance spot-fleet-trust instance-trust bitbucket-oidc-trust; do
    target/debug/bbfleet --config examples/bbfleet.toml policy "$name" \
        --kms-key-arn arn:aws:kms:eu-west-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab \
        --workspace-uuid 0f3c5a6e-1111-2222-3333-444455556666 \
        --repository-uuid 9a8b7c6d-1111-2222-3333-444455556666 >"$out/$name.json"
    files+=("$out/$name.json")
done
# parliament reads stdin when it is not a terminal, unless --files is used.
rc=0
findings=$(IFS=,; .venv-lint/bin/parliament --json --minimum_severity LOW --files "${files[*]}" </dev/null) || rc=$?
# 0 = no finding, 1 = findings; anything else is parliament failing, not a clean lint.
if [ "$rc" -gt 1 ]; then
    echo "parliament failed (exit $rc)" >&2
    exit 1
fi
printf '%s\n' "$findings" >"$out/findings.jsonl"
.venv-lint/bin/python3 - "$out/findings.jsonl" <<'PY'
import json, re, sys
# (file, issue, detail regex, why the finding is a false positive)
SUPPRESSED = [
    ("operator.json", "RESOURCE_MISMATCH", r".*ec2:RunInstances.*",
     "RunInstances is split over several statements, one condition per resource type (the "
     "fleets' launches from the fleet's launch template; the bake builder tagged on create); "
     "parliament checks each statement alone"),
    ("operator.json", "RESOURCE_MISMATCH",
     r"\[(\{'action': 'ec2:CreateImage', 'required_format': 'arn:\*:ec2:\*:(\*)?:(image|snapshot|instance)/\*'\}(, )?)+\]",
     "CreateImage (bbfleet bake) is split over two statements: the builder instance it images "
     "with the resource tag condition, the image and snapshots it creates with the request tag "
     "condition; parliament checks each statement alone"),
    ("operator.json", "RESOURCE_MISMATCH", r".*ssm:GetParameter.*parameter/\*.*",
     "public AMI parameters have no account in their ARN (arn:aws:ssm:REGION::parameter/aws/...), "
     "which parliament does not match"),
    ("operator.json", "RESOURCE_MISMATCH",
     r"\[\{'action': 'ec2:CreateFleet', 'required_format': 'arn:\*:ec2:\*:\*:(fleet|instance)/\*'\}\]",
     "CreateFleet's two required resource types are split over two statements, the fleet with the "
     "request tag condition, the instances it launches (instance/*, no tags asked for them) without; "
     "parliament checks each statement alone"),
    ("operator.json", "RESOURCE_MISMATCH",
     r"\[((\{'action': 'ec2:(ModifySpotFleetRequest|RequestSpotFleet)', 'required_format': 'arn:\*:ec2:\*:\*:spot-fleet-request/\*'\}"
     r"|\{'action': 'ec2:CreateFleet', 'required_format': 'arn:\*:ec2:\*:\*:(fleet|instance)/\*'\}"
     r"|\{'action': 'ec2:ModifyFleet', 'required_format': 'arn:\*:ec2:\*:\*:fleet/\*'\})(, )?)+\]",
     "the Service Authorization Reference lists launch-template, image, subnet and security-group "
     "(ModifySpotFleetRequest: launch-template, subnet; CreateFleet and ModifyFleet: launch-template, "
     "image, subnet) as resource types of these actions, which AWS authorizes when a request names "
     "them (tests/it/iam.rs, tests/it/policies/ec2_fleet.rs); parliament checks the statements on "
     "those resources against the required spot-fleet-request / fleet / instance alone"),
    ("instance.json", "UNKNOWN_CONDITION_FOR_ACTION", r"Unknown condition ec2:SourceInstanceARN for action ec2:TerminateInstances",
     "ec2:SourceInstanceArn is a global condition key (IAM User Guide, AWS global condition context "
     "keys, properties of the role session), unknown to parliament 1.6.4"),
    ("-trust.json", "MALFORMED", r"Statement contains neither Resource nor NotResource",
     "trust policies have no Resource (IAM rejects one); parliament lints identity policies"),
    ("bitbucket-oidc-trust.json", "UNKNOWN_FEDERATION_SOURCE", r"arn:aws:iam::\d{12}:oidc-provider/api\.bitbucket\.org/2\.0/workspaces/[^/]+/pipelines-config/identity/oidc",
     "Bitbucket Pipelines OIDC provider, unknown to parliament"),
]
bad = 0
for line in open(sys.argv[1]):
    if not line.strip():
        continue
    f = json.loads(line)
    path = f["location"].get("filepath", "")
    why = next((w for (file, issue, detail, w) in SUPPRESSED
                if path.endswith(file) and f["issue"] == issue and re.fullmatch(detail, str(f["detail"]))), None)
    name = path.rsplit("/", 1)[-1]
    if why:
        print("suppressed %s: %s: %s" % (name, f["issue"], why))
    else:
        bad += 1
        print("FINDING %s: %s %s: %s at line %s" % (name, f["severity"], f["issue"], f["detail"], f["location"].get("line")))
print("parliament: %d finding(s) besides the documented suppressions" % bad)
sys.exit(1 if bad else 0)
PY
