//! Loading a rendering into a network namespace: IP sets first (rules refer to them), then each family's
//! tables with `iptables-legacy-restore` / `ip6tables-legacy-restore` replacing them whole, then the sets
//! no rule uses any more are destroyed (Felix's order: sets, rules, deletions). The legacy binaries are
//! named explicitly: on this kind of machine plain `iptables` is the nf_tables variant, a separate ruleset.

use std::io::Write as _;
use std::process::{Command, Stdio};

use super::{FamilyRuleset, Ruleset};

/// The programs the kernel rendering needs, with the Debian package that has each.
pub const TOOLS: &[(&str, &str)] = &[
    ("iptables-legacy-restore", "iptables"),
    ("ip6tables-legacy-restore", "iptables"),
    ("iptables-legacy-save", "iptables"),
    ("ipset", "ipset"),
    ("conntrack", "conntrack"),
];

/// The first tool that is missing, as a sentence; `None` when all are there.
pub fn missing_tool() -> Option<String> {
    for (tool, package) in TOOLS {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false)
            || ["/usr/sbin", "/sbin"].iter().any(|d| std::path::Path::new(d).join(tool).is_file());
        if !found {
            return Some(format!("{tool} is not installed (apt-get install {package})"));
        }
    }
    None
}

/// Why a command of the rendering failed; each names the command.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run {cmd}: {error}")]
    Spawn { cmd: String, error: std::io::Error },
    #[error("{cmd}: {error}")]
    Wait { cmd: String, error: std::io::Error },
    /// The command line, " in namespace NS" or nothing, and what the command wrote to stderr (trimmed).
    #[error("`{command}`{place} failed: {stderr}")]
    Failed { command: String, place: String, stderr: String },
}

impl CommandError {
    /// Whether the command ran and said `text` on stderr.
    pub fn said(&self, text: &str) -> bool {
        matches!(self, CommandError::Failed { stderr, .. } if stderr.contains(text))
    }
}

/// Runs `cmd args` inside namespace `ns` (or here, when `ns` is `None`) with `input` on its standard
/// input; its standard output, or an error naming the command and what it said.
pub fn run_in(ns: Option<&str>, cmd: &str, args: &[&str], input: Option<&str>) -> Result<String, CommandError> {
    let mut c = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, cmd]);
            c
        }
        None => Command::new(cmd),
    };
    c.args(args).stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|error| CommandError::Spawn { cmd: cmd.to_string(), error })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        // A write error (the command quit early) shows in its exit status and stderr below.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = child.wait_with_output().map_err(|error| CommandError::Wait { cmd: cmd.to_string(), error })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(CommandError::Failed {
            command: format!("{cmd} {}", args.join(" ")),
            place: ns.map(|n| format!(" in namespace {n}")).unwrap_or_default(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

fn restore_cmd(r: &FamilyRuleset) -> &'static str {
    match r.family {
        calxdp_policy::net::IpFamily::V4 => "iptables-legacy-restore",
        calxdp_policy::net::IpFamily::V6 => "ip6tables-legacy-restore",
    }
}

/// Loads the rendering into namespace `ns` (`None`: this one), replacing the raw, mangle, nat and filter
/// tables of both families. `prelude` rules per family and table go first in their kernel chains.
pub fn apply(
    ns: Option<&str>,
    rules: &Ruleset,
    prelude: &[(&str, String)],
    prelude6: &[(&str, String)],
) -> Result<(), CommandError> {
    let sets = format!("{}{}", rules.v4.ipset_text(), rules.v6.ipset_text());
    run_in(ns, "ipset", &["restore", "-exist"], Some(&sets))?;
    for (r, pre) in [(&rules.v4, prelude), (&rules.v6, prelude6)] {
        run_in(ns, restore_cmd(r), &[], Some(&r.restore_text(pre)))?;
    }
    // Sets of ours no rule refers to any more.
    let listed = run_in(ns, "ipset", &["list", "-n"], None)?;
    for name in listed.lines().map(str::trim).filter(|n| n.starts_with("cali")) {
        if !rules.v4.sets.contains_key(name) && !rules.v6.sets.contains_key(name) {
            run_in(ns, "ipset", &["destroy", name], None)?;
        }
    }
    Ok(())
}
