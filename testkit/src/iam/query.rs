//! Parsing of EC2 query bodies (`Action=...&Name.1=...`).

/// The (decoded) pairs of an EC2 query body.
pub(super) fn query(body: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

pub(super) fn q<'a>(params: &'a [(String, String)], key: &str) -> Option<&'a str> {
    params
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Values of keys `prefix` + `N` + `suffix` (N any index), in order.
pub(super) fn q_list(params: &[(String, String)], prefix: &str, suffix: &str) -> Vec<String> {
    params
        .iter()
        .filter(|(k, _)| {
            k.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix(suffix))
                .is_some_and(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        })
        .map(|(_, v)| v.clone())
        .collect()
}

/// Tags of the query's tag specifications (under `prefix`, e.g. `SpotFleetRequestConfig.`)
/// for `resource_type`.
pub(super) fn q_tags(
    params: &[(String, String)],
    prefix: &str,
    resource_type: &str,
) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for i in 1..=20 {
        let spec = format!("{prefix}TagSpecification.{i}");
        match q(params, &format!("{spec}.ResourceType")) {
            Some(t) if t == resource_type => {}
            Some(_) => continue,
            None => break,
        }
        out.extend(q_tag_list(params, &format!("{spec}.")));
    }
    out
}

/// The query's `{prefix}Tag.N.Key` / `{prefix}Tag.N.Value` pairs (CreateTags names them
/// at the top level, a tag specification under its own prefix).
pub(crate) fn q_tag_list(params: &[(String, String)], prefix: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for j in 1..=50 {
        let Some(k) = q(params, &format!("{prefix}Tag.{j}.Key")) else {
            break;
        };
        let v = q(params, &format!("{prefix}Tag.{j}.Value")).unwrap_or_default();
        out.push((k.to_owned(), v.to_owned()));
    }
    out
}
