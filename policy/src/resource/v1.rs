//! calicoctl v1 resources (`apiVersion: v1`, `kind: policy` / `hostEndpoint` / `profile`), converted to the
//! v3 model as the v1→v3 migration does, so manifests from older Calico posts still load.

use super::rule::Dialect;
use super::v3::{parse_host_endpoint, parse_policy, parse_profile};
use super::{PolicyKind, Resource};
use crate::yaml::{Field, LoadError};

pub(super) fn parse(f: Field<'_>, kind: &str, _warnings: &mut Vec<String>) -> Result<Resource, LoadError> {
    f.only_keys(&["apiVersion", "kind", "metadata", "spec"])?;
    match kind.to_ascii_lowercase().as_str() {
        // v1 policies were all global.
        "policy" => parse_policy(f, PolicyKind::GlobalNetworkPolicy, Dialect::V1),
        "hostendpoint" => parse_host_endpoint(f, Dialect::V1),
        "profile" => parse_profile(f, Dialect::V1),
        other => Err(f
            .with("kind", |k| {
                Ok(k.map(|k| {
                    k.error(format!(
                        "unsupported calicoctl v1 kind '{other}' (expected policy, hostEndpoint or profile)"
                    ))
                }))
            })?
            .unwrap_or_else(|| f.error("missing kind"))),
    }
}
