//! IAM: every AWS request the suite made, evaluated with a real IAM evaluator
//! (`@cloud-copilot/iam-simulate`, AWS's action/resource/condition data) against the
//! filled `policies/operator.json` (bbfleet's calls) and `policies/instance.json` (the
//! userdata hosts' calls). moto ignores IAM Resource and Condition; this is where they are
//! checked. The rule tests show the evaluator answering as AWS does.
//!
//! `every_request_the_suite_made_is_allowed` reads the dumps the recording proxies wrote
//! during the whole run (`testkit::iam`, into `target/tmp/aws-requests`); `scripts/test.sh`
//! runs it after `cargo test --workspace`, so it is ignored in a plain `cargo test`.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{json, Value};
use testkit::iam::{
    self, denials, evaluate, iam_requests, Fill, IamRequest, Principal, Recorded, ACCOUNT, REGION,
};

use crate::KIT;

const FLEET: &str = "iamrules";

/// `policies/NAME.json` filled for `fill` in us-east-1 of moto's account, through
/// `bbfleet::policy::render` (the KMS key named by alias: every key of the account, as
/// `bbfleet policy` prints it for the harness's config).
pub(crate) fn policy(name: &str, fill: &Fill) -> Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut config = bbfleet::config::Config::load(&root.join("examples/bbfleet.toml"))
        .expect("examples/bbfleet.toml is valid");
    config.name = fill.fleet.clone();
    config.spot.fleet_role = fill.fleet_role.clone();
    config.instance.instance_profile = fill.instance_profile.clone();
    config.kms.key = format!("alias/bbfleet-{}", fill.fleet);
    let o = bbfleet::policy::Overrides {
        account_id: Some(ACCOUNT.to_owned()),
        ..Default::default()
    };
    let text = bbfleet::policy::render(name, &config, REGION, &o)
        .unwrap_or_else(|e| panic!("fill {name}.json for {fill:?}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}.json is not JSON: {e}"))
}

fn arn(kind: &str, id: &str) -> String {
    format!("arn:aws:ec2:us-east-1:123456789012:{kind}/{id}")
}

fn request(
    principal: Principal,
    action: &str,
    resource: &str,
    context: &[(&str, Value)],
) -> IamRequest {
    IamRequest {
        origin: "rule test".into(),
        operation: action.into(),
        proxy: "rule".into(),
        principal,
        action: action.into(),
        resource: resource.into(),
        context: context
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
        fleet: Some(FLEET.into()),
    }
}

fn decide(policy: &Value, r: &IamRequest) -> iam::Decision {
    evaluate(&[(policy.clone(), r)]).remove(0)
}

fn fill() -> Fill {
    Fill::harness(FLEET)
}

/// A recorded call, as the proxy dumps it.
pub(crate) fn call(operation: &str, body: &str, response: &str, access_key: &str) -> Recorded {
    Recorded {
        origin: "synthetic".into(),
        proxy: "p".into(),
        upstream: "moto".into(),
        operation: operation.into(),
        body: body.into(),
        access_key: access_key.into(),
        throttled: false,
        status: 200,
        response: response.into(),
    }
}

#[test]
fn request_spot_fleet_is_authorized_on_every_resource_it_names_and_the_landed_statement_denies_it()
{
    // The operator statement as it landed: RequestSpotFleet only on spot-fleet-request/*.
    let landed = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "ec2:RequestSpotFleet",
        "Resource": "arn:aws:ec2:us-east-1:123456789012:spot-fleet-request/*",
        "Condition": {"StringEquals": {"aws:RequestTag/bbfleet:fleet": FLEET}}
    }]});
    let tags = [
        ("aws:RequestTag/bbfleet:fleet", json!(FLEET)),
        ("aws:TagKeys", json!(["bbfleet:fleet"])),
    ];
    let fleet_request = request(
        Principal::Operator,
        "ec2:RequestSpotFleet",
        &arn("spot-fleet-request", "sfr-1"),
        &tags,
    );
    assert!(decide(&landed, &fleet_request).allowed());
    let on_template = request(
        Principal::Operator,
        "ec2:RequestSpotFleet",
        &arn("launch-template", "lt-0123456789abcdef0"),
        &[
            ("aws:ResourceTag/bbfleet:fleet", json!(FLEET)),
            ("ec2:ResourceTag/bbfleet:fleet", json!(FLEET)),
        ],
    );
    let d = decide(&landed, &on_template);
    assert_eq!(d.decision, "ImplicitlyDenied", "{d:?}");
    assert!(d.reason.contains("resource not in"), "{}", d.reason);

    // The shipped policy allows the request on the template it names, only when that
    // template is the fleet's.
    let operator = policy("operator", &fill());
    assert!(decide(&operator, &fleet_request).allowed());
    let d = decide(&operator, &on_template);
    assert!(d.allowed(), "{d:?}");
    let mut foreign = on_template.clone();
    foreign
        .context
        .insert("aws:ResourceTag/bbfleet:fleet".into(), json!("other"));
    foreign
        .context
        .insert("ec2:ResourceTag/bbfleet:fleet".into(), json!("other"));
    assert!(!decide(&operator, &foreign).allowed());
    for (kind, id) in [
        ("subnet", "subnet-0123456789abcdef0"),
        ("security-group", "sg-0123456789abcdef0"),
    ] {
        let r = request(
            Principal::Operator,
            "ec2:RequestSpotFleet",
            &arn(kind, id),
            &[],
        );
        assert!(decide(&operator, &r).allowed(), "{kind}");
        assert!(!decide(&landed, &r).allowed(), "{kind}");
    }
    let image = request(
        Principal::Operator,
        "ec2:RequestSpotFleet",
        "arn:aws:ec2:us-east-1::image/ami-0123456789abcdef0",
        &[],
    );
    assert!(decide(&operator, &image).allowed());
    assert!(!decide(&landed, &image).allowed());
}

#[test]
fn self_termination_on_aws_arn_is_denied_and_the_instance_policy_allows_only_itself() {
    let me = "i-0123456789abcdef0";
    let other = "i-0fedcba9876543210";
    let terminate = |target: &str| {
        request(
            Principal::Instance(me.into()),
            "ec2:TerminateInstances",
            &arn("instance", target),
            &[
                ("aws:ResourceTag/bbfleet:fleet", json!(FLEET)),
                ("ec2:ResourceTag/bbfleet:fleet", json!(FLEET)),
                ("ec2:InstanceID", json!(target)),
                ("ec2:SourceInstanceARN", json!(arn("instance", me))),
            ],
        )
    };
    // The landed statement: `aws:ARN` is no documented global condition key; the
    // evaluator never finds it in a request, so the Allow never applies.
    let landed = json!({"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow", "Action": "ec2:TerminateInstances",
        "Resource": "arn:aws:ec2:us-east-1:123456789012:instance/*",
        "Condition": {"StringEquals": {
            "aws:ARN": "${ec2:SourceInstanceARN}",
            "aws:ResourceTag/bbfleet:fleet": FLEET
        }}
    }]});
    let d = decide(&landed, &terminate(me));
    assert_eq!(d.decision, "ImplicitlyDenied", "{d:?}");
    assert!(d.reason.contains("aws:ARN"), "{}", d.reason);

    let instance = policy("instance", &fill());
    let d = decide(&instance, &terminate(me));
    assert!(d.allowed(), "{d:?}");
    let d = decide(&instance, &terminate(other));
    assert_eq!(d.decision, "ImplicitlyDenied", "{d:?}");
    assert!(d.reason.contains("ec2:SourceInstanceARN"), "{}", d.reason);
    // Not a fleet instance: denied even for itself.
    let mut untagged = terminate(me);
    untagged.context.retain(|k, _| !k.contains("ResourceTag"));
    assert!(!decide(&instance, &untagged).allowed());
    // The operator's credentials have no source instance.
    let mut operator_call = terminate(me);
    operator_call.principal = Principal::Operator;
    operator_call.context.remove("ec2:SourceInstanceARN");
    assert!(!decide(&instance, &operator_call).allowed());
}

/// EC2 query body from pairs.
pub(crate) fn body(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[test]
fn a_fleet_request_is_translated_into_every_resource_it_names_with_the_tags_seen_before() {
    let create = call(
        "ec2:CreateLaunchTemplate",
        &body(&[
            ("Action", "CreateLaunchTemplate"),
            ("LaunchTemplateName", "bbfleet-iamrules"),
            ("LaunchTemplateData.ImageId", "ami-0aaaaaaaaaaaaaaaa"),
            ("LaunchTemplateData.SecurityGroupId.1", "sg-0bbbbbbbbbbbbbbbb"),
            ("LaunchTemplateData.IamInstanceProfile.Name", "bbfleet-runner"),
            ("TagSpecification.1.ResourceType", "launch-template"),
            ("TagSpecification.1.Tag.1.Key", "bbfleet:fleet"),
            ("TagSpecification.1.Tag.1.Value", FLEET),
        ]),
        "<CreateLaunchTemplateResponse><launchTemplate><launchTemplateId>lt-0ccccccccccccccc0</launchTemplateId><launchTemplateName>bbfleet-iamrules</launchTemplateName><latestVersionNumber>1</latestVersionNumber></launchTemplate></CreateLaunchTemplateResponse>",
        "testing",
    );
    let fleet = call(
        "ec2:RequestSpotFleet",
        &body(&[
            ("Action", "RequestSpotFleet"),
            (
                "SpotFleetRequestConfig.IamFleetRole",
                "arn:aws:iam::123456789012:role/aws-ec2-spot-fleet-tagging-role",
            ),
            (
                "SpotFleetRequestConfig.LaunchTemplateConfigs.1.LaunchTemplateSpecification.LaunchTemplateId",
                "lt-0ccccccccccccccc0",
            ),
            (
                "SpotFleetRequestConfig.LaunchTemplateConfigs.1.LaunchTemplateSpecification.Version",
                "1",
            ),
            (
                "SpotFleetRequestConfig.LaunchTemplateConfigs.1.Overrides.1.SubnetId",
                "subnet-0ddddddddddddddd0",
            ),
            (
                "SpotFleetRequestConfig.LaunchTemplateConfigs.1.Overrides.2.SubnetId",
                "subnet-0eeeeeeeeeeeeeee0",
            ),
            ("SpotFleetRequestConfig.TagSpecification.1.ResourceType", "spot-fleet-request"),
            ("SpotFleetRequestConfig.TagSpecification.1.Tag.1.Key", "bbfleet:fleet"),
            ("SpotFleetRequestConfig.TagSpecification.1.Tag.1.Value", FLEET),
        ]),
        "<RequestSpotFleetResponse><spotFleetRequestId>sfr-11111111-2222-3333-4444-555555555555</spotFleetRequestId></RequestSpotFleetResponse>",
        "testing",
    );
    let modify = call(
        "ec2:ModifySpotFleetRequest",
        &body(&[
            ("Action", "ModifySpotFleetRequest"),
            (
                "SpotFleetRequestId",
                "sfr-11111111-2222-3333-4444-555555555555",
            ),
            ("TargetCapacity", "2"),
        ]),
        "<ModifySpotFleetRequestResponse><return>true</return></ModifySpotFleetRequestResponse>",
        "testing",
    );
    let reqs = iam_requests(&[create, fleet, modify]);
    let got: Vec<(String, String)> = reqs
        .iter()
        .map(|r| (r.action.clone(), r.resource.clone()))
        .collect();
    let sfr = arn(
        "spot-fleet-request",
        "sfr-11111111-2222-3333-4444-555555555555",
    );
    let lt = arn("launch-template", "lt-0ccccccccccccccc0");
    for expected in [
        ("ec2:CreateLaunchTemplate", lt.clone()),
        ("ec2:CreateTags", lt.clone()),
        ("ec2:RequestSpotFleet", sfr.clone()),
        ("ec2:CreateTags", sfr.clone()),
        (
            "iam:PassRole",
            "arn:aws:iam::123456789012:role/aws-ec2-spot-fleet-tagging-role".into(),
        ),
        ("ec2:RequestSpotFleet", lt.clone()),
        (
            "ec2:RequestSpotFleet",
            arn("subnet", "subnet-0ddddddddddddddd0"),
        ),
        (
            "ec2:RequestSpotFleet",
            arn("subnet", "subnet-0eeeeeeeeeeeeeee0"),
        ),
        (
            "ec2:RequestSpotFleet",
            "arn:aws:ec2:us-east-1::image/ami-0aaaaaaaaaaaaaaaa".into(),
        ),
        (
            "ec2:RequestSpotFleet",
            arn("security-group", "sg-0bbbbbbbbbbbbbbbb"),
        ),
        (
            "iam:PassRole",
            "arn:aws:iam::123456789012:role/bbfleet-runner".into(),
        ),
        ("ec2:ModifySpotFleetRequest", sfr.clone()),
        ("ec2:ModifySpotFleetRequest", lt.clone()),
    ] {
        let expected = (expected.0.to_owned(), expected.1);
        assert!(got.contains(&expected), "{expected:?} not in {got:#?}");
    }
    let on_lt = reqs
        .iter()
        .find(|r| r.action == "ec2:RequestSpotFleet" && r.resource == lt)
        .expect("the template");
    assert_eq!(
        on_lt.context.get("aws:ResourceTag/bbfleet:fleet"),
        Some(&json!(FLEET)),
        "the template's tag, learned from CreateLaunchTemplate"
    );
    let tagging = reqs
        .iter()
        .find(|r| r.action == "ec2:CreateTags" && r.resource == sfr)
        .expect("tag on create");
    assert_eq!(
        tagging.context.get("ec2:CreateAction"),
        Some(&json!("RequestSpotFleet"))
    );
    assert!(reqs.iter().all(|r| r.fleet.as_deref() == Some(FLEET)));
    // The landed operator.json denied exactly the resources the issue lists; the shipped
    // one allows every request.
    let operator = policy("operator", &fill());
    let items: Vec<(Value, &IamRequest)> = reqs.iter().map(|r| (operator.clone(), r)).collect();
    let denied: Vec<_> = evaluate(&items)
        .into_iter()
        .zip(&reqs)
        .filter(|(d, _)| !d.allowed())
        .map(|(d, r)| format!("{} {}: {}", r.action, r.resource, d.reason))
        .collect();
    assert!(denied.is_empty(), "{denied:#?}");
}

#[test]
fn a_host_secure_string_read_is_a_kms_decrypt_via_ssm_with_the_parameter_arn() {
    let me = "i-0123456789abcdef0";
    let key = iam::instance_access_key(me);
    let name = format!("/bbfleet/{FLEET}/runners/abc");
    let get = call(
        "ssm:GetParameter",
        &json!({"Name": name, "WithDecryption": true}).to_string(),
        &json!({"Parameter": {"Name": name, "Type": "SecureString", "Value": "x"}}).to_string(),
        &key,
    );
    // Not bound to it: denied (the command is readable only while its holder tag names
    // the instance).
    let unbound = iam_requests(std::slice::from_ref(&get));
    let read = unbound.iter().find(|r| r.action == "ssm:GetParameter");
    let instance = policy("instance", &fill());
    assert!(!decide(&instance, read.expect("ssm:GetParameter")).allowed());
    // Bound to it first, as the claim does.
    let bind = call(
        "ssm:AddTagsToResource",
        &json!({"ResourceType": "Parameter", "ResourceId": name,
                "Tags": [{"Key": "bbfleet:holder", "Value": arn("instance", me)}]})
        .to_string(),
        "{}",
        &key,
    );
    let reqs = iam_requests(&[bind, get]);
    let decrypt = reqs
        .iter()
        .find(|r| r.action == "kms:Decrypt")
        .expect("kms:Decrypt");
    assert_eq!(
        decrypt.context.get("kms:EncryptionContext:PARAMETER_ARN"),
        Some(&json!(format!(
            "arn:aws:ssm:us-east-1:123456789012:parameter/bbfleet/{FLEET}/runners/abc"
        )))
    );
    assert_eq!(decrypt.principal, Principal::Instance(me.into()));
    for r in &reqs {
        let d = decide(&instance, r);
        assert!(d.allowed(), "{} {}: {d:?}", r.action, r.resource);
    }
    // Another fleet's runner command: denied.
    let other = "/bbfleet/other/runners/abc";
    let get = call(
        "ssm:GetParameter",
        &json!({"Name": other, "WithDecryption": true}).to_string(),
        &json!({"Parameter": {"Name": other, "Type": "SecureString"}}).to_string(),
        &key,
    );
    for r in &iam_requests(&[get]) {
        assert!(
            !decide(&instance, r).allowed(),
            "{} {}",
            r.action,
            r.resource
        );
    }
}

fn principal_kind(p: &Principal) -> &'static str {
    match p {
        Principal::Operator => "operator",
        Principal::Instance(_) => "instance",
    }
}

#[test]
#[ignore = "run by scripts/test.sh after the whole suite: it reads that run's dumps"]
fn every_request_the_suite_made_is_allowed() {
    let dir = KIT.dump_dir().expect("the tests dump their AWS requests");
    let dumps = iam::load_dumps(dir);
    let calls: Vec<Recorded> = dumps.iter().flat_map(|(_, c)| c.clone()).collect();
    assert!(
        !calls.is_empty(),
        "no AWS request dumps in {}: run the suite first (scripts/test.sh)",
        dir.display()
    );
    let (requests, denied) = denials(&calls, policy);
    let evaluated = requests.len();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for r in &requests {
        let kind = r.resource.rsplit(':').next().unwrap_or("*");
        let kind = kind.split('/').next().unwrap_or(kind);
        *seen
            .entry(format!(
                "{} {} on {kind}",
                principal_kind(&r.principal),
                r.action
            ))
            .or_default() += 1;
    }
    eprintln!("evaluated (principal, action, resource type: count): {seen:#?}");
    let mut by_action: BTreeMap<String, usize> = BTreeMap::new();
    for d in &denied {
        *by_action.entry(d.request.action.clone()).or_default() += 1;
    }
    let list: Vec<String> = denied
        .iter()
        .take(60)
        .map(|d| {
            format!(
                "{} ({:?}, from {} at {}) on {}: {} {}",
                d.request.action,
                d.request.principal,
                d.request.operation,
                d.request.origin,
                d.request.resource,
                d.decision.decision,
                d.decision.reason
            )
        })
        .collect();
    eprintln!(
        "IAM: {} dump file(s), {} calls, {evaluated} IAM requests evaluated, {} denied",
        dumps.len(),
        calls.len(),
        denied.len()
    );
    assert!(
        denied.is_empty(),
        "{} of {evaluated} IAM requests denied (by action: {by_action:?}):\n{}",
        denied.len(),
        list.join("\n")
    );
}
