//! moto 5 refuses CreateImage's `snapshot` TagSpecification (NotImplementedError), which
//! AWS applies to every snapshot of the image (EC2 API Reference, CreateImage: "The same
//! tag is applied to all of the snapshots that are created"). Until the AWS-rules layer
//! answers it, [`SnapshotTagShim`] sits between bbfleet and the recording proxy: it sends
//! that one call to moto without the snapshot specification (unrecorded: the IAM rule
//! test in `iam.rs` checks CreateImage as bbfleet sends it) and tags the image's
//! snapshots itself, as AWS would.

use testkit::harness::Harness;

/// A pass-through proxy that emulates CreateImage's snapshot tags on moto (see the
/// module doc). Every other call goes to the recording proxy unchanged.
pub(super) struct SnapshotTagShim {
    pub(super) endpoint: String,
}

impl SnapshotTagShim {
    pub(super) async fn start(h: &Harness) -> SnapshotTagShim {
        let recorder = h.recorder.endpoint.clone();
        let moto = testkit::moto::moto().endpoint.clone();
        let ec2 = aws_sdk_ec2::Client::new(&h.sdk);
        let http = reqwest::Client::builder().no_proxy().build().unwrap();
        let app = axum::Router::new().fallback(
            move |headers: axum::http::HeaderMap, uri: axum::http::Uri, body: axum::body::Bytes| {
                let (recorder, moto, ec2, http) =
                    (recorder.clone(), moto.clone(), ec2.clone(), http.clone());
                async move { shim(&http, &ec2, (&recorder, &moto), headers, uri, body).await }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        SnapshotTagShim { endpoint }
    }
}

/// Tags as (key, value).
type Tags = Vec<(String, String)>;

/// For a CreateImage with a `snapshot` tag specification: the body without it, and its
/// tags.
fn strip_snapshot_spec(body: &[u8]) -> Option<(Vec<u8>, Tags)> {
    let pairs: Vec<(String, String)> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    if !pairs
        .iter()
        .any(|(k, v)| k == "Action" && v == "CreateImage")
    {
        return None;
    }
    let spec = pairs
        .iter()
        .find(|(k, v)| k.ends_with(".ResourceType") && v == "snapshot")
        .map(|(k, _)| k.trim_end_matches("ResourceType").to_owned())?;
    let get = |key: String| {
        pairs
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
    };
    let tags = (1..=50)
        .map_while(|j| {
            let key = get(format!("{spec}Tag.{j}.Key"))?;
            Some((key, get(format!("{spec}Tag.{j}.Value")).unwrap_or_default()))
        })
        .collect();
    let kept = pairs.iter().filter(|(k, _)| !k.starts_with(&spec));
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(kept)
        .finish();
    Some((body.into_bytes(), tags))
}

/// Forwards one request (see the module doc).
async fn shim(
    http: &reqwest::Client,
    ec2: &aws_sdk_ec2::Client,
    (recorder, moto): (&str, &str),
    headers: axum::http::HeaderMap,
    uri: axum::http::Uri,
    body: axum::body::Bytes,
) -> (axum::http::StatusCode, axum::http::HeaderMap, Vec<u8>) {
    let (base, body, snapshot_tags) = match strip_snapshot_spec(&body) {
        Some((stripped, tags)) => (moto, stripped, Some(tags)),
        None => (recorder, body.to_vec(), None),
    };
    let mut req = http.post(format!("{base}{uri}")).body(body);
    for (k, v) in &headers {
        if k != "host" && k != "content-length" {
            req = req.header(k, v);
        }
    }
    let res = req.send().await.expect("forward");
    let status = axum::http::StatusCode::from_u16(res.status().as_u16()).unwrap();
    let mut out_headers = axum::http::HeaderMap::new();
    if let Some(ct) = res.headers().get("content-type") {
        out_headers.insert("content-type", ct.to_str().unwrap().parse().unwrap());
    }
    let bytes = res.bytes().await.unwrap().to_vec();
    if let (Some(tags), true) = (snapshot_tags, status.is_success()) {
        let text = String::from_utf8_lossy(&bytes);
        let image = text
            .split("<imageId>")
            .nth(1)
            .and_then(|r| r.split("</imageId>").next())
            .expect("CreateImage answered an image id");
        tag_snapshots(ec2, image, &tags).await;
    }
    (status, out_headers, bytes)
}

async fn tag_snapshots(ec2: &aws_sdk_ec2::Client, image: &str, tags: &[(String, String)]) {
    let out = ec2.describe_images().image_ids(image).send().await.unwrap();
    let snapshots: Vec<String> = out.images()[0]
        .block_device_mappings()
        .iter()
        .filter_map(|m| m.ebs().and_then(|e| e.snapshot_id()).map(str::to_owned))
        .collect();
    let tags: Vec<_> = tags
        .iter()
        .map(|(k, v)| aws_sdk_ec2::types::Tag::builder().key(k).value(v).build())
        .collect();
    ec2.create_tags()
        .set_resources(Some(snapshots))
        .set_tags(Some(tags))
        .send()
        .await
        .unwrap();
}
