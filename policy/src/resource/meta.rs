//! What the policy dialects share: the Kubernetes object metadata every resource carries, and the selector
//! a policy targets its endpoints with, combined as Felix's update processors combine it.

use super::rule::{NAMESPACE_LABEL, SERVICE_ACCOUNT_LABEL};
use super::Labels;
use crate::selector::{Expr, Selector};
use crate::yaml::{Field, LoadError};

/// Kubernetes object metadata fields calxdp reads or knowingly ignores.
const METADATA_KEYS: &[&str] = &[
    "name",
    "namespace",
    "labels",
    "annotations",
    "uid",
    "resourceVersion",
    "creationTimestamp",
    "generation",
    "managedFields",
    "finalizers",
    "ownerReferences",
    "generateName",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];

pub(super) struct Metadata {
    pub name: String,
    pub namespace: Option<String>,
    pub labels: Labels,
}

pub(super) fn metadata(f: Field<'_>, extra_keys: &[&str]) -> Result<Metadata, LoadError> {
    f.require("metadata", |m| {
        let mut allowed = METADATA_KEYS.to_vec();
        allowed.extend_from_slice(extra_keys);
        m.only_keys(&allowed)?;
        let name = m.require("name", |n| {
            let name = n.string()?;
            if name.is_empty() || name.len() > 253 {
                return Err(n.error("a name must be 1 to 253 characters"));
            }
            Ok(name)
        })?;
        let namespace = m.with("namespace", |n| n.map(|n| n.string()).transpose())?;
        let labels = m.with("labels", |l| l.map(|l| l.string_map()).transpose())?.unwrap_or_default();
        Ok(Metadata { name, namespace, labels })
    })
}

/// semantics §2.1: the selector a policy uses to pick its endpoints, combined as Felix's update processors
/// combine it. A namespaced policy (`namespace`) ANDs its namespace and its service-account selector and
/// rewrites nothing (`networkpolicyprocessor.go`). A global one appends the namespace selector (labels
/// `pcns.`) and then every `all()` of the whole combined selector, the policy's own `selector` included,
/// becomes `has(projectcalico.org/namespace)`; then the service-account selector (labels `pcsa.`), and every
/// remaining `all()` becomes `has(projectcalico.org/serviceaccount)` (`globalnetworkpolicyprocessor.go`).
/// An absent `selector` is empty text there, so it has no `all()` to rewrite.
pub(super) fn target_selector(
    selector: Option<Selector>,
    namespace: Option<&str>,
    namespace_selector: Option<Selector>,
    service_account_selector: Option<Selector>,
) -> Selector {
    // `(cur) && new`, keeping an `all()` on either side for the rewrite that follows.
    fn append(cur: Option<Selector>, new: Selector) -> Selector {
        match cur {
            None => new,
            Some(cur) => Selector::from_expr(Expr::And(vec![cur.expr().clone(), new.expr().clone()])),
        }
    }
    if let Some(ns) = namespace {
        let sel = selector
            .unwrap_or_else(Selector::all)
            .and(Selector::from_expr(Expr::Eq(NAMESPACE_LABEL.into(), ns.to_string())));
        return match service_account_selector {
            Some(sa) => sel.and(sa.with_label_prefix("pcsa.")),
            None => sel,
        };
    }
    let mut sel = selector;
    if let Some(ns_sel) = namespace_selector {
        let combined = append(sel, ns_sel.with_label_prefix("pcns."));
        sel = Some(combined.replace_all(&Expr::Has(NAMESPACE_LABEL.into())));
    }
    if let Some(sa_sel) = service_account_selector {
        let combined = append(sel, sa_sel.with_label_prefix("pcsa."));
        sel = Some(combined.replace_all(&Expr::Has(SERVICE_ACCOUNT_LABEL.into())));
    }
    sel.unwrap_or_else(Selector::all)
}
