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
    let whole = |file: &Path, message: String| LoadError {
        file: file.display().to_string(),
        line: 0,
        col: 0,
        field: String::new(),
        message,
    };
    let files = policy_files(path).map_err(|(file, e)| whole(&file, e.to_string()))?;
    let mut out = Vec::new();
    for file in files {
        let name = file.display().to_string();
        let text = read_policy_file(&file).map_err(|e| whole(&file, e.to_string()))?;
        out.extend(load_text(&text, &Origin::file(name))?);
    }
    Ok(out)
}

/// The largest policy file calxdp reads: far beyond any real manifest, small enough that a runaway file
/// (a log written into the folder, a symlink to something endless) cannot exhaust memory.
pub const MAX_FILE_BYTES: u64 = 16 << 20;

/// Why a policy file could not be read; the message follows the file's name.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("cannot read: {0}")]
    Io(#[from] std::io::Error),
    /// What the entry is instead ("a FIFO", "a device", "a socket", "not a file").
    #[error("{0}, not a regular file: calxdp reads policies only from regular files")]
    NotRegular(&'static str),
    #[error("{0} bytes is more than calxdp reads from one policy file ({MAX_FILE_BYTES})")]
    TooLarge(u64),
    #[error("cannot resolve: {0}")]
    Resolve(std::io::Error),
    #[error("cannot list directory: {0}")]
    List(std::io::Error),
    #[error("grew past {MAX_FILE_BYTES} bytes while being read")]
    Grew,
    /// The offset of the first byte that is not valid UTF-8.
    #[error("not UTF-8 text (byte {0} is not valid UTF-8)")]
    NotUtf8(usize),
}

/// Reads one policy file: a regular file of at most [`MAX_FILE_BYTES`], as UTF-8 text.
pub fn read_policy_file(file: &Path) -> Result<String, ReadError> {
    use std::io::Read;
    let meta = std::fs::metadata(file)?;
    if !meta.is_file() {
        return Err(ReadError::NotRegular(not_regular(&meta)));
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(ReadError::TooLarge(meta.len()));
    }
    let f = std::fs::File::open(file)?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ReadError::Grew);
    }
    String::from_utf8(bytes).map_err(|e| ReadError::NotUtf8(e.utf8_error().valid_up_to()))
}

fn not_regular(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() || t.is_block_device() {
        "a device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Every policy file under `path` (a file, or a directory walked in name order), hidden entries skipped.
/// Symbolic links are followed, each directory at most once (a link back to a parent is not a loop to
/// walk forever), and an entry with a policy file's name that is not a regular file (a FIFO, a device) is an
/// error, never something to read. The error names the entry.
pub fn policy_files(path: &Path) -> Result<Vec<PathBuf>, (PathBuf, ReadError)> {
    let mut out = Vec::new();
    let mut seen = std::collections::HashSet::new();
    collect_files(path, &mut out, &mut seen, 0)?;
    Ok(out)
}

/// How deep directories may nest under the policy path.
const MAX_DIR_DEPTH: usize = 32;

fn collect_files(
    path: &Path,
    out: &mut Vec<PathBuf>,
    seen: &mut std::collections::HashSet<PathBuf>,
    depth: usize,
) -> Result<(), (PathBuf, ReadError)> {
    let fail = |p: &Path, e: ReadError| (p.to_path_buf(), e);
    let meta = std::fs::metadata(path).map_err(|e| fail(path, ReadError::Io(e)))?;
    if meta.is_file() {
        out.push(path.to_path_buf());
        return Ok(());
    }
    if !meta.is_dir() {
        return Err(fail(path, ReadError::NotRegular(not_regular(&meta))));
    }
    let real = std::fs::canonicalize(path).map_err(|e| fail(path, ReadError::Resolve(e)))?;
    if !seen.insert(real) || depth > MAX_DIR_DEPTH {
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
        .map_err(|e| fail(path, ReadError::List(e)))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort();
    for p in entries {
        let hidden = p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        // A dangling link or an unreadable entry is named as itself, not by its directory.
        let meta = std::fs::metadata(&p).map_err(|e| fail(&p, ReadError::Io(e)))?;
        if meta.is_dir() {
            collect_files(&p, out, seen, depth + 1)?;
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            if !meta.is_file() {
                return Err(fail(&p, ReadError::NotRegular(not_regular(&meta))));
            }
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

#[cfg(test)]
mod file_tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("calxdp-load-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const POLICY: &str =
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: a}\nspec: {selector: all()}\n";

    /// A 100 KB selector with a mistake at its end: the error says where, shows the text around it, and is
    /// short.
    #[test]
    fn a_selector_error_does_not_echo_a_huge_selector() {
        let selector = format!("{}oops oops", "a == 'x' && ".repeat(9_000));
        let yaml = format!(
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: a}}\nspec: {{selector: \"{selector}\"}}\n"
        );
        let e = load_text(&yaml, &Origin::file("big.yaml")).expect_err("refused").to_string();
        assert!(e.len() < 600, "{} bytes: {}", e.len(), &e[..600.min(e.len())]);
        assert!(e.contains("bad selector \"…") && e.contains("oops"), "{e}");
        assert!(e.starts_with("big.yaml:4:"), "{e}");
    }

    #[test]
    fn links_back_to_the_folder_are_walked_once() {
        let d = dir("links");
        std::fs::write(d.join("a.yaml"), POLICY).unwrap();
        std::fs::create_dir(d.join("sub")).unwrap();
        std::os::unix::fs::symlink(&d, d.join("loop1")).unwrap();
        std::os::unix::fs::symlink(&d, d.join("sub/loop2")).unwrap();
        let files = policy_files(&d).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        assert_eq!(load_path(&d).unwrap().len(), 1);
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn a_fifo_or_a_device_named_like_a_policy_is_an_error_naming_it_and_never_read() {
        let d = dir("fifo");
        let fifo = d.join("x.yaml");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let e = load_path(&d).unwrap_err();
            assert!(e.file.ends_with("x.yaml") && e.message.contains("a FIFO"), "{e}");
            std::fs::remove_file(&fifo).unwrap();
        }
        std::os::unix::fs::symlink("/dev/zero", d.join("zero.yaml")).unwrap();
        let e = load_path(&d).unwrap_err();
        assert!(e.file.ends_with("zero.yaml") && e.message.contains("a device"), "{e}");
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn a_dangling_link_is_named_as_itself() {
        let d = dir("dangling");
        std::os::unix::fs::symlink(d.join("nowhere"), d.join("gone.yaml")).unwrap();
        let e = load_path(&d).unwrap_err();
        assert!(e.file.ends_with("gone.yaml"), "{e}");
        std::fs::remove_dir_all(d).ok();
    }

    #[test]
    fn a_negative_or_nameless_port_is_refused_at_its_position() {
        for bad in ["-1", "-", "8080-"] {
            let text = format!(
                "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: a}}\nspec:\n  ingress: [{{action: Allow, protocol: TCP, destination: {{ports: ['{bad}']}}}}]\n"
            );
            let e = load_text(&text, &Origin::file("p.yaml")).unwrap_err();
            assert!(e.field.ends_with("ports[0]") && e.line == 5, "{bad}: {e}");
        }
    }
}
