//! `calxdp check`: validates resource manifests (and parity scenarios, with every manifest they embed)
//! without applying anything.

use std::path::{Path, PathBuf};

use calxdp_policy::resource::{load_path, ReadError};
use calxdp_policy::yaml::LoadError;

use crate::parity::scenario::{looks_like_scenario, parse_scenario};

/// Why a path did not check; each is `file:line:col: field: message` or names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// A file or directory under the path could not be listed or is not a regular file.
    #[error("{}: {error}", .path.display())]
    List { path: PathBuf, error: ReadError },
    #[error("{}: cannot read: {error}", .path.display())]
    Read { path: PathBuf, error: std::io::Error },
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Every bad file of a directory, one error a line, in file order.
    #[error("{}", lines(.0))]
    Files(Vec<CheckError>),
}

fn lines(errors: &[CheckError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

/// The result of checking one path.
#[derive(Debug)]
pub struct Checked {
    pub path: PathBuf,
    pub resources: usize,
    pub warnings: Vec<String>,
}

/// Checks a file or directory. A scenario file is checked as a scenario; anything else as manifests. In a
/// directory each file is recognised on its own (a folder of scenarios, or scenarios beside manifests), and
/// every file's errors are reported, not only the first.
pub fn check_path(path: &Path) -> Result<Checked, CheckError> {
    if path.is_dir() {
        let files =
            calxdp_policy::resource::policy_files(path).map_err(|(path, error)| CheckError::List { path, error })?;
        let mut resources = 0;
        let mut warnings = Vec::new();
        let mut errors = Vec::new();
        for f in files {
            match check_file(&f) {
                Ok(c) => {
                    resources += c.resources;
                    warnings.extend(c.warnings);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(CheckError::Files(errors));
        }
        return Ok(Checked { path: path.to_path_buf(), resources, warnings });
    }
    check_file(path)
}

fn check_file(path: &Path) -> Result<Checked, CheckError> {
    if path.is_file() {
        let text =
            std::fs::read_to_string(path).map_err(|error| CheckError::Read { path: path.to_path_buf(), error })?;
        if looks_like_scenario(&text) {
            let file = path.display().to_string();
            let parsed = parse_scenario(&text, &file)?;
            let resources = match parsed {
                crate::parity::scenario::ScenarioFile::Scenario(s) => {
                    s.resources.len()
                        + s.steps
                            .iter()
                            .map(|st| match st {
                                crate::parity::scenario::Step::Apply { docs, .. } => docs.len(),
                                _ => 0,
                            })
                            .sum::<usize>()
                }
                crate::parity::scenario::ScenarioFile::Selectors(_) => 0,
            };
            return Ok(Checked { path: path.to_path_buf(), resources, warnings: Vec::new() });
        }
    }
    let docs = load_path(path)?;
    let warnings = docs
        .iter()
        .flat_map(|d| d.warnings.iter().map(move |w| format!("{}:{}: warning: {w}", d.file, d.line)))
        .collect();
    Ok(Checked { path: path.to_path_buf(), resources: docs.len(), warnings })
}
