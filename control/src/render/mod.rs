//! `calxdp render iptables`: the node programmed the way Felix's iptables (legacy) dataplane programs it —
//! the raw, mangle, nat and filter tables with Felix's chains, names, marks and `cali:` rule hashes, the IP
//! sets its rules match on, and kube-proxy's service NAT — as `ipset restore` and `iptables-restore` input,
//! or loaded into a network namespace. Built from the resolved node model, with the project's own selector
//! evaluation deciding set members, so Linux itself can be asked what the node's policy means
//! (docs/kernel-oracle.md; the layout is notes/felix-iptables.md, written from Felix's `rules` package).

pub mod apply;
mod felix;
pub mod hash;
mod kube;
mod policy;

pub use felix::WORKLOAD_PREFIX;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use calxdp_policy::net::IpFamily;
use calxdp_policy::resolve::ResolvedNode;

/// One iptables rule as Felix builds it: comments, match fragments and an action.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub comments: Vec<String>,
    /// Match fragments joined by spaces (may be empty).
    pub matches: String,
    /// `--jump X`, `--goto X`, `--jump MARK --set-mark …`; empty for a comment-only rule.
    pub action: String,
}

impl Rule {
    pub fn new(matches: impl Into<String>, action: impl Into<String>) -> Rule {
        Rule { comments: Vec::new(), matches: matches.into(), action: action.into() }
    }

    /// The rule with one more comment (after the ones it has).
    pub fn comment(mut self, c: impl Into<String>) -> Rule {
        self.comments.push(c.into());
        self
    }

    /// The text after `-A <chain> `: the hash comment (or `HASH` when hashing), comments, match, action.
    fn body(&self, hash: Option<&str>) -> String {
        let mut parts: Vec<String> = Vec::new();
        match hash {
            Some("HASH") => parts.push("HASH".into()),
            Some(h) => parts.push(format!("-m comment --comment \"cali:{h}\"")),
            None => {}
        }
        for c in &self.comments {
            parts.push(format!("-m comment --comment \"{}\"", escape_comment(c)));
        }
        if !self.matches.is_empty() {
            parts.push(self.matches.clone());
        }
        if !self.action.is_empty() {
            parts.push(self.action.clone());
        }
        parts.join(" ")
    }

    /// The chain this rule jumps or goes to, if any.
    fn target(&self) -> Option<&str> {
        let mut words = self.action.split_whitespace();
        match (words.next(), words.next()) {
            (Some("--jump" | "--goto" | "-j" | "-g"), Some(t)) => Some(t),
            _ => None,
        }
    }
}

/// Felix's comment escaping: anything outside a safe set becomes `_`; at most 256 bytes.
fn escape_comment(c: &str) -> String {
    let mut s: String =
        c.chars().map(|ch| if ch.is_ascii_alphanumeric() || "_ @%+=:,./-".contains(ch) { ch } else { '_' }).collect();
    s.truncate(256);
    s
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Chain {
    pub name: String,
    pub rules: Vec<Rule>,
}

impl Chain {
    pub fn new(name: impl Into<String>, rules: Vec<Rule>) -> Chain {
        Chain { name: name.into(), rules }
    }
}

/// Where Felix's rule goes in a kernel chain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Position {
    /// At the top (Felix's default `ChainInsertMode=insert`).
    Insert,
    /// At the bottom (nat POSTROUTING and the FORWARD tail).
    Append,
}

/// A rule of Felix's in a kernel chain.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hook {
    pub kernel_chain: &'static str,
    pub position: Position,
    pub rule: Rule,
}

/// One table: Felix's hooks and chains, and kube-proxy's lines (its own form, no hashes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Table {
    pub name: &'static str,
    pub hooks: Vec<Hook>,
    pub chains: Vec<Chain>,
    /// kube-proxy's chains (declared) and its `-A` lines, kernel chains included.
    pub kube_chains: Vec<String>,
    pub kube_rules: Vec<String>,
}

/// The kernel chains of each table (their policy stays ACCEPT).
fn kernel_chains(table: &str) -> &'static [&'static str] {
    match table {
        "raw" => &["PREROUTING", "OUTPUT"],
        "mangle" => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        "filter" => &["INPUT", "FORWARD", "OUTPUT"],
        _ => &[],
    }
}

impl Table {
    /// Felix programs only the chains the kernel hooks reach (notes §1 "Which chains exist").
    fn reachable(&self) -> Vec<&Chain> {
        let by_name: BTreeMap<&str, &Chain> = self.chains.iter().map(|c| (c.name.as_str(), c)).collect();
        let mut seen: BTreeSet<&str> = BTreeSet::new();
        let mut stack: Vec<&str> = self.hooks.iter().filter_map(|h| h.rule.target()).collect();
        while let Some(name) = stack.pop() {
            let Some(c) = by_name.get(name) else { continue };
            if seen.insert(name) {
                stack.extend(c.rules.iter().filter_map(Rule::target));
            }
        }
        self.chains.iter().filter(|c| seen.contains(c.name.as_str())).collect()
    }

    /// `iptables-restore` input replacing the whole table (a fresh load: kernel chains flushed and
    /// rebuilt). `prelude` lines (harness rules, `-A <chain> …`) go first in their kernel chains.
    pub fn restore_text(&self, prelude: &[String]) -> String {
        let mut out = format!("*{}\n", self.name);
        for k in kernel_chains(self.name) {
            let _ = writeln!(out, ":{k} ACCEPT [0:0]");
        }
        let chains = self.reachable();
        for c in &chains {
            let _ = writeln!(out, ":{} - [0:0]", c.name);
        }
        for c in &self.kube_chains {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for l in prelude {
            let _ = writeln!(out, "{l}");
        }
        // Inserted hooks first, kube-proxy's kernel-chain rules after them, Felix's appends last.
        for k in kernel_chains(self.name) {
            let inserted: Vec<&Rule> = self
                .hooks
                .iter()
                .filter(|h| h.kernel_chain == *k && h.position == Position::Insert)
                .map(|h| &h.rule)
                .collect();
            write_hashed(&mut out, k, k, &inserted);
            let kube_prefix = format!("-A {k} ");
            for l in self.kube_rules.iter().filter(|l| l.starts_with(&kube_prefix)) {
                let _ = writeln!(out, "{l}");
            }
            let appended: Vec<&Rule> = self
                .hooks
                .iter()
                .filter(|h| h.kernel_chain == *k && h.position == Position::Append)
                .map(|h| &h.rule)
                .collect();
            write_hashed(&mut out, k, &format!("{k}*appends*"), &appended);
        }
        for c in &chains {
            let rules: Vec<&Rule> = c.rules.iter().collect();
            write_hashed(&mut out, &c.name, &c.name, &rules);
        }
        for l in &self.kube_rules {
            if !kernel_chains(self.name).iter().any(|k| l.starts_with(&format!("-A {k} "))) {
                let _ = writeln!(out, "{l}");
            }
        }
        out.push_str("COMMIT\n");
        out
    }

    /// Every chain this table programs, by name.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.reachable().into_iter().find(|c| c.name == name)
    }
}

/// Writes rules of `chain` with their `cali:` hashes, computed as Felix does under `hash_name`.
fn write_hashed(out: &mut String, chain: &str, hash_name: &str, rules: &[&Rule]) {
    let texts: Vec<String> = rules.iter().map(|r| format!("-A {hash_name} {}", r.body(Some("HASH")))).collect();
    let hashes = hash::rule_hashes(hash_name, &texts);
    for (r, h) in rules.iter().zip(hashes) {
        let _ = writeln!(out, "-A {chain} {}", r.body(Some(&h)));
    }
}

/// The type of an IP set (Felix's `NET`, `IP_AND_PORT`, `IP`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetKind {
    Net,
    IpPort,
    Ip,
}

impl SetKind {
    fn ipset_type(self) -> &'static str {
        match self {
            SetKind::Net => "hash:net",
            SetKind::IpPort => "hash:ip,port",
            SetKind::Ip => "hash:ip",
        }
    }
}

/// An IP set with its members in `ipset` syntax.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IpSet {
    pub name: String,
    pub kind: SetKind,
    pub members: BTreeSet<String>,
}

/// Felix's ruleset of a node for one IP family.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FamilyRuleset {
    pub family: IpFamily,
    /// raw, mangle, nat, filter.
    pub tables: Vec<Table>,
    pub sets: BTreeMap<String, IpSet>,
}

impl FamilyRuleset {
    /// `ipset restore` input creating (or, with `-exist`, keeping) every set and filling it afresh.
    pub fn ipset_text(&self) -> String {
        let family = match self.family {
            IpFamily::V4 => "inet",
            IpFamily::V6 => "inet6",
        };
        let mut out = String::new();
        for s in self.sets.values() {
            let _ = writeln!(out, "create {} {} family {family} maxelem 1048576", s.name, s.kind.ipset_type());
            let _ = writeln!(out, "flush {}", s.name);
            for m in &s.members {
                let _ = writeln!(out, "add {} {m}", s.name);
            }
        }
        out
    }

    /// `iptables-restore` (or `ip6tables-restore`) input for every table.
    pub fn restore_text(&self, prelude: &[(&str, String)]) -> String {
        let mut out = String::new();
        for t in &self.tables {
            let lines: Vec<String> = prelude.iter().filter(|(tn, _)| *tn == t.name).map(|(_, l)| l.clone()).collect();
            out.push_str(&t.restore_text(&lines));
        }
        out
    }

    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| t.name == name)
    }
}

/// The node's whole rendering: IPv4 and IPv6.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ruleset {
    pub v4: FamilyRuleset,
    pub v6: FamilyRuleset,
}

impl Ruleset {
    /// Both families' `ipset restore` input, then both rulesets, as `calxdp render iptables` prints them.
    pub fn text(&self) -> String {
        let mut out = String::new();
        out.push_str("# ipset restore -exist\n");
        out.push_str(&self.v4.ipset_text());
        out.push_str(&self.v6.ipset_text());
        out.push_str("# iptables-legacy-restore\n");
        out.push_str(&self.v4.restore_text(&[]));
        out.push_str("# ip6tables-legacy-restore\n");
        out.push_str(&self.v6.restore_text(&[]));
        out
    }
}

/// Felix configuration the node file does not carry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Options {
    /// Felix's `InterfacePrefix`: the name prefixes of workload interfaces (default `cali`).
    pub interface_prefixes: Vec<String>,
}

impl Default for Options {
    fn default() -> Options {
        Options { interface_prefixes: vec![WORKLOAD_PREFIX.to_string()] }
    }
}

/// Felix's (and kube-proxy's) ruleset for the node.
pub fn render(world: &ResolvedNode) -> Ruleset {
    render_with(world, &Options::default())
}

/// [`render`] with Felix configuration the node file does not carry.
pub fn render_with(world: &ResolvedNode, opts: &Options) -> Ruleset {
    Ruleset { v4: render_family_with(world, IpFamily::V4, opts), v6: render_family_with(world, IpFamily::V6, opts) }
}

/// One family's tables and sets.
pub fn render_family(world: &ResolvedNode, family: IpFamily) -> FamilyRuleset {
    render_family_with(world, family, &Options::default())
}

fn render_family_with(world: &ResolvedNode, family: IpFamily, opts: &Options) -> FamilyRuleset {
    let mut sets = policy::SetRegistry::new(world, family);
    let mut tables = felix::tables(world, family, &mut sets, &opts.interface_prefixes);
    kube::add(world, family, &mut tables);
    FamilyRuleset { family, tables, sets: sets.into_sets() }
}

/// Why `calxdp render` could not render or load.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// The node file or a policy file does not load (file:line:col: field: message).
    #[error(transparent)]
    Load(#[from] calxdp_policy::yaml::LoadError),
    /// Which tool is missing and the package that has it ([`apply::missing_tool`]).
    #[error("{0}")]
    MissingTool(String),
    #[error(transparent)]
    Command(#[from] apply::CommandError),
}

/// `calxdp render iptables`: the rendering of a node file and a policy file or directory, as text; or,
/// with `apply_in`, loaded into that network namespace (and a line saying so).
pub fn render_files(
    node: &std::path::Path,
    policies: &std::path::Path,
    apply_in: Option<&str>,
) -> Result<String, RenderError> {
    let node = calxdp_policy::node::NodeConfig::load(node)?;
    let mut resources = calxdp_policy::resource::ResourceSet::new();
    resources.apply_all(calxdp_policy::resource::load_path(policies)?.into_iter().map(|d| d.resource));
    let world = ResolvedNode::new(&node, &resources);
    let rules = render(&world);
    match apply_in {
        None => Ok(rules.text()),
        Some(ns) => {
            if let Some(why) = apply::missing_tool() {
                return Err(RenderError::MissingTool(why));
            }
            apply::apply(Some(ns), &rules, &[], &[])?;
            let count = |r: &FamilyRuleset| r.restore_text(&[]).lines().filter(|l| l.starts_with("-A ")).count();
            Ok(format!(
                "loaded into namespace {ns}: {} IPv4 and {} IPv6 rules, {} IP sets\n",
                count(&rules.v4),
                count(&rules.v6),
                rules.v4.sets.len() + rules.v6.sets.len()
            ))
        }
    }
}

#[cfg(test)]
mod tests;
