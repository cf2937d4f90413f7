//! The whole life of a fleet against a real moto server and the Bitbucket fake:
//! validate -> plan -> apply -> plan (no changes) -> apply (0 writes) -> destroy -> destroy.
//! The world is checked through the AWS SDK after each step, and writes are counted at
//! the fake and at a recording proxy in front of moto.

mod full;
mod refused;
mod repository;

pub(super) fn query_values(body: &str, suffix: &str) -> Vec<String> {
    body.split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| k.ends_with(suffix))
        .map(|(_, v)| {
            url::form_urlencoded::parse(format!("v={v}").as_bytes())
                .next()
                .unwrap()
                .1
                .into_owned()
        })
        .collect()
}
