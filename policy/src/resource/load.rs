//! From files and texts to resources: multi-document streams, top-level lists (calicoctl v1 style),
//! `kind: List` with `items`, and directories of such files.

use std::path::{Path, PathBuf};

use super::{cnp, k8s, v1, v3, Resource};
use crate::yaml::{parse_documents, Field, LoadError, Origin};

/// A loaded resource and where it was written.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceDoc {
    pub resource: Resource,
    pub file: String,
    pub line: usize,
    /// Things Calico would accept but warn about (e.g. a k8s policy whose egress rules are not enforced).
    pub warnings: Vec<String>,
}

/// Loads every resource of a YAML text. Any bad document fails the whole text.
pub fn load_text(text: &str, origin: &Origin) -> Result<Vec<ResourceDoc>, LoadError> {
    let docs = parse_documents(text, origin)?;
    let mut out = Vec::new();
    for doc in &docs {
        load_node(Field::root(doc, origin), &mut out)?;
    }
    Ok(out)
}

/// Loads a file, or every `.yaml`/`.yml`/`.json` file below a directory (in name order). Any bad file fails
/// the whole load.
pub fn load_path(path: &Path) -> Result<Vec<ResourceDoc>, LoadError> {
    let mut files = Vec::new();
    collect_files(path, &mut files).map_err(|e| LoadError {
        file: path.display().to_string(),
        line: 0,
        col: 0,
        field: String::new(),
        message: e,
    })?;
    let mut out = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let text = std::fs::read_to_string(&file).map_err(|e| LoadError {
            file: name.clone(),
            line: 0,
            col: 0,
            field: String::new(),
            message: format!("cannot read: {e}"),
        })?;
        out.extend(load_text(&text, &Origin::file(name))?);
    }
    Ok(out)
}

fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read: {e}"))?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| format!("cannot list directory: {e}"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            collect_files(&p, out)?;
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            out.push(p);
        }
    }
    Ok(())
}

fn load_node(f: Field<'_>, out: &mut Vec<ResourceDoc>) -> Result<(), LoadError> {
    if matches!(f.node.value, crate::yaml::Value::Seq(_)) {
        // calicoctl v1 style: a top-level list of resources.
        f.each(|item| load_node(item, out))?;
        return Ok(());
    }
    let kind = f.require("kind", |k| k.string())?;
    if kind == "List" || (kind.ends_with("List") && f.with("items", |i| Ok(i.is_some()))?) {
        f.with("items", |items| match items {
            Some(items) => items.each(|item| load_node(item, out)).map(|_| ()),
            None => Ok(()),
        })?;
        return Ok(());
    }
    let api_version = f.require("apiVersion", |a| a.string())?;
    let mut warnings = Vec::new();
    let resource = match api_version.as_str() {
        "projectcalico.org/v3" | "crd.projectcalico.org/v1" => v3::parse(f, &kind, &mut warnings)?,
        "networking.k8s.io/v1" if kind == "NetworkPolicy" => k8s::parse(f, &mut warnings)?,
        "policy.networking.k8s.io/v1alpha2" if kind == "ClusterNetworkPolicy" => {
            cnp::parse_cluster(f, &mut warnings)?
        }
        "policy.networking.k8s.io/v1alpha1" if kind == "AdminNetworkPolicy" || kind == "BaselineAdminNetworkPolicy" => {
            cnp::parse_v1alpha1(f, &kind, &mut warnings)?
        }
        "v1" => v1::parse(f, &kind, &mut warnings)?,
        other => {
            return Err(f.with("apiVersion", |a| {
                Ok(a.map(|a| a.error(format!(
                    "unsupported apiVersion '{other}' for kind '{kind}' (expected projectcalico.org/v3, networking.k8s.io/v1 for NetworkPolicy, policy.networking.k8s.io/v1alpha2 for ClusterNetworkPolicy, policy.networking.k8s.io/v1alpha1 for AdminNetworkPolicy and BaselineAdminNetworkPolicy, or calicoctl v1)"
                ))))
            })?
            .unwrap_or_else(|| f.error("missing apiVersion")))
        }
    };
    out.push(ResourceDoc {
        resource,
        file: f.origin.file.clone(),
        line: f.pos().line + f.origin.line_offset,
        warnings,
    });
    Ok(())
}
