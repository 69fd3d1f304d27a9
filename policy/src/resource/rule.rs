//! Policy rules (semantics §3) as read from v3 and calicoctl v1 YAML, with Felix's peer scoping (§2.2)
//! already applied, so evaluators never need to know which kind of policy a rule came from.

use std::fmt;

use crate::net::{IpFamily, IpNet};
use crate::selector::{Expr, Selector};
use crate::yaml::{Field, LoadError};

/// What a rule does when it matches (semantics §3 `action`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
    /// Logs and continues with the next rule.
    Log,
    /// Ends the current tier.
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Allow => "Allow",
            Action::Deny => "Deny",
            Action::Log => "Log",
            Action::Pass => "Pass",
        })
    }
}

/// An IP protocol number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Protocol(pub u8);

impl Protocol {
    pub const ICMP: Protocol = Protocol(1);
    pub const TCP: Protocol = Protocol(6);
    pub const UDP: Protocol = Protocol(17);
    pub const ICMPV6: Protocol = Protocol(58);
    pub const SCTP: Protocol = Protocol(132);
    pub const UDPLITE: Protocol = Protocol(136);

    /// A protocol by Calico's names (case-insensitive) or number 1–255.
    pub fn parse(text: &str) -> Option<Protocol> {
        let p = match text.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::TCP,
            "udp" => Protocol::UDP,
            "icmp" => Protocol::ICMP,
            "icmpv6" => Protocol::ICMPV6,
            "sctp" => Protocol::SCTP,
            "udplite" => Protocol::UDPLITE,
            n => match n.parse::<u8>() {
                Ok(v) if v >= 1 => Protocol(v),
                _ => return None,
            },
        };
        Some(p)
    }

    /// Whether numeric ports are meaningful for this protocol (semantics §3 `ports`).
    pub fn has_ports(self) -> bool {
        matches!(self, Protocol::TCP | Protocol::UDP | Protocol::SCTP)
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Protocol::TCP => f.write_str("TCP"),
            Protocol::UDP => f.write_str("UDP"),
            Protocol::ICMP => f.write_str("ICMP"),
            Protocol::ICMPV6 => f.write_str("ICMPv6"),
            Protocol::SCTP => f.write_str("SCTP"),
            Protocol::UDPLITE => f.write_str("UDPLite"),
            Protocol(n) => write!(f, "{n}"),
        }
    }
}

/// One entry of `ports` / `notPorts`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Port {
    /// An inclusive range; a single port is `Range(p, p)`.
    Range(u16, u16),
    /// A named port, resolved per endpoint (semantics §3 "Named port").
    Named(String),
}

/// An ICMP type with an optional code (semantics §3 `icmp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub icmp_type: u8,
    pub code: Option<u8>,
}

/// A Kubernetes Service named by a rule (`source/destination.services`).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ServiceRef {
    pub name: String,
    pub namespace: String,
}

/// One side of a rule after Felix's scoping (semantics §2.2): `selector` is the effective positive selector
/// (namespace and service-account terms folded in), `not_selector` is kept as written.
#[derive(Clone, Debug, Default, PartialEq, Hash)]
pub struct EntityRule {
    pub nets: Vec<IpNet>,
    pub not_nets: Vec<IpNet>,
    pub selector: Option<Selector>,
    pub not_selector: Option<Selector>,
    pub ports: Vec<Port>,
    pub not_ports: Vec<Port>,
    pub services: Option<ServiceRef>,
}

impl EntityRule {
    pub fn has_port_criteria(&self) -> bool {
        !self.ports.is_empty() || !self.not_ports.is_empty()
    }
}

/// One rule of a policy or profile.
#[derive(Clone, Debug, PartialEq, Hash)]
pub struct Rule {
    pub action: Action,
    pub ip_version: Option<IpFamily>,
    pub protocol: Option<Protocol>,
    pub not_protocol: Option<Protocol>,
    pub icmp: Option<IcmpMatch>,
    pub not_icmp: Option<IcmpMatch>,
    pub source: EntityRule,
    pub destination: EntityRule,
}

impl Rule {
    /// A rule with only an action: matches every packet of both families (semantics §3 "Empty rule").
    pub fn new(action: Action) -> Rule {
        Rule {
            action,
            ip_version: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            source: EntityRule::default(),
            destination: EntityRule::default(),
        }
    }

    /// Whether Felix renders this rule into the chains of `family` (semantics §3 "IP-family filtering",
    /// "Negated catch-all"): not when `ipVersion` or an ICMP protocol says the other family, nor when a
    /// side's nets or notNets are all of the other family, nor when a notNets holds the family's catch-all.
    pub fn in_family(&self, family: IpFamily) -> bool {
        let lists = [&self.source.nets, &self.source.not_nets, &self.destination.nets, &self.destination.not_nets];
        let catch_all = |l: &Vec<IpNet>| l.iter().any(|n| n.family() == family && n.is_catch_all());
        self.family().is_none_or(|f| f == family)
            && lists.iter().all(|l| l.is_empty() || l.iter().any(|n| n.family() == family))
            && !catch_all(&self.source.not_nets)
            && !catch_all(&self.destination.not_nets)
    }

    /// The one family this rule can match, if it is restricted to one: `ipVersion`, or implied by
    /// `protocol: ICMP` (v4) / `ICMPv6` (v6) (semantics §3 `protocol`).
    pub fn family(&self) -> Option<IpFamily> {
        self.ip_version.or(match self.protocol {
            Some(Protocol::ICMP) => Some(IpFamily::V4),
            Some(Protocol::ICMPV6) => Some(IpFamily::V6),
            _ => None,
        })
    }
}

/// Which YAML dialect a rule is written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// `projectcalico.org/v3`.
    V3,
    /// calicoctl v1 (`apiVersion: v1`): lower-case actions, `net`/`notNet`, `next-tier`.
    V1,
}

/// How a rule's peers are scoped: the namespace of the policy holding it, if any (semantics §2.2 step 3).
#[derive(Clone, Copy, Debug)]
pub struct RuleScope<'a> {
    pub namespace: Option<&'a str>,
    pub dialect: Dialect,
}

pub(crate) fn parse_rules(list: Option<Field<'_>>, scope: RuleScope<'_>) -> Result<Vec<Rule>, LoadError> {
    match list {
        None => Ok(Vec::new()),
        Some(f) => f.each(|r| parse_rule(r, scope)),
    }
}

fn parse_rule(f: Field<'_>, scope: RuleScope<'_>) -> Result<Rule, LoadError> {
    f.only_keys(&[
        "action",
        "ipVersion",
        "protocol",
        "notProtocol",
        "icmp",
        "notICMP",
        "source",
        "destination",
        "http",
        "metadata",
    ])?;
    let action = f.require("action", |a| parse_action(a, scope.dialect))?;
    let ip_version = f.with("ipVersion", |v| {
        v.map(|v| match v.str()? {
            "4" => Ok(IpFamily::V4),
            "6" => Ok(IpFamily::V6),
            other => Err(v.error(format!("expected 4 or 6, found '{other}'"))),
        })
        .transpose()
    })?;
    let protocol = f.with("protocol", |p| p.map(parse_protocol).transpose())?;
    let not_protocol = f.with("notProtocol", |p| p.map(parse_protocol).transpose())?;
    let icmp = f.with("icmp", |i| i.map(parse_icmp).transpose())?;
    let not_icmp = f.with("notICMP", |i| i.map(parse_icmp).transpose())?;
    // semantics §3 `http`: accepted, validated lightly, and ignored by the Linux dataplane.
    f.with("http", |h| {
        if let Some(h) = h {
            h.only_keys(&["methods", "paths"])?;
        }
        Ok(())
    })?;
    let source = f.with("source", |s| parse_entity(s, scope, protocol, "source"))?;
    let destination = f.with("destination", |d| parse_entity(d, scope, protocol, "destination"))?;

    let rule = Rule { action, ip_version, protocol, not_protocol, icmp, not_icmp, source, destination };
    validate_rule(&rule, f)?;
    Ok(rule)
}

fn parse_action(a: Field<'_>, dialect: Dialect) -> Result<Action, LoadError> {
    let text = a.str()?;
    let action = match (dialect, text) {
        (Dialect::V3, "Allow") => Action::Allow,
        (Dialect::V3, "Deny") => Action::Deny,
        (Dialect::V3, "Log") => Action::Log,
        (Dialect::V3, "Pass") => Action::Pass,
        (Dialect::V1, t) => match t.to_ascii_lowercase().as_str() {
            "allow" => Action::Allow,
            "deny" => Action::Deny,
            "log" => Action::Log,
            "pass" | "next-tier" => Action::Pass,
            _ => return Err(a.error(format!("unknown action '{text}' (expected allow, deny, log, pass or next-tier)"))),
        },
        (Dialect::V3, _) => return Err(a.error(format!("unknown action '{text}' (expected Allow, Deny, Log or Pass)"))),
    };
    Ok(action)
}

fn parse_protocol(p: Field<'_>) -> Result<Protocol, LoadError> {
    let text = p.str()?;
    Protocol::parse(text).ok_or_else(|| {
        p.error(format!("unknown protocol '{text}' (expected TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number 1-255)"))
    })
}

fn parse_icmp(f: Field<'_>) -> Result<IcmpMatch, LoadError> {
    f.only_keys(&["type", "code"])?;
    let icmp_type = f.with("type", |t| t.map(|t| t.uint(254).map(|v| v as u8)).transpose())?;
    let code = f.with("code", |c| c.map(|c| c.uint(255).map(|v| v as u8)).transpose())?;
    match icmp_type {
        Some(icmp_type) => Ok(IcmpMatch { icmp_type, code }),
        None => Err(f.error("an ICMP match needs a type (a code requires a type)")),
    }
}

fn parse_entity(
    f: Option<Field<'_>>,
    scope: RuleScope<'_>,
    protocol: Option<Protocol>,
    side: &str,
) -> Result<EntityRule, LoadError> {
    let Some(f) = f else { return Ok(EntityRule::default()) };
    f.only_keys(&[
        "nets",
        "notNets",
        "net",
        "notNet",
        "selector",
        "notSelector",
        "namespaceSelector",
        "serviceAccounts",
        "services",
        "ports",
        "notPorts",
    ])?;
    let mut nets = f.with("nets", |n| n.map(parse_nets).transpose())?.unwrap_or_default();
    let mut not_nets = f.with("notNets", |n| n.map(parse_nets).transpose())?.unwrap_or_default();
    // calicoctl v1 also had single `net` / `notNet` fields.
    if let Some(n) = f.with("net", |n| n.map(parse_net).transpose())? {
        nets.push(n);
    }
    if let Some(n) = f.with("notNet", |n| n.map(parse_net).transpose())? {
        not_nets.push(n);
    }
    let selector = f.with("selector", |s| s.map(|s| parse_selector(s, false)).transpose())?;
    let not_selector = f.with("notSelector", |s| s.map(|s| parse_selector(s, false)).transpose())?;
    let namespace_selector = f.with("namespaceSelector", |s| s.map(parse_namespace_selector).transpose())?;
    let service_accounts = f.with("serviceAccounts", |s| {
        s.map(|s| {
            s.only_keys(&["names", "selector"])?;
            let names = s.with("names", |n| n.map(|n| n.strings()).transpose())?.unwrap_or_default();
            let sel = s.with("selector", |x| x.map(|x| parse_selector(x, false)).transpose())?;
            Ok((names, sel))
        })
        .transpose()
    })?;
    let services = f.with("services", |s| {
        s.map(|s| {
            s.only_keys(&["name", "namespace"])?;
            let name = s.require("name", |n| n.string())?;
            let namespace = match s.with("namespace", |n| n.map(|n| n.string()).transpose())? {
                Some(ns) => ns,
                None => match scope.namespace {
                    Some(ns) => ns.to_string(),
                    None => return Err(s.error("a service in a global policy needs a namespace")),
                },
            };
            Ok(ServiceRef { name, namespace })
        })
        .transpose()
    })?;
    let ports = f.with("ports", |p| p.map(parse_ports).transpose())?.unwrap_or_default();
    let not_ports = f.with("notPorts", |p| p.map(parse_ports).transpose())?.unwrap_or_default();

    let numeric = ports.iter().chain(&not_ports).any(|p| matches!(p, Port::Range(..)));
    // Calico's validation: named ports may go without a protocol, but no ports go with one that has none.
    if let Some(p) = protocol.filter(|p| !p.has_ports() && !(ports.is_empty() && not_ports.is_empty())) {
        return Err(f.error(format!("{side} has ports, but protocol {p} has none (ports need TCP, UDP or SCTP)")));
    }
    if numeric && !protocol.is_some_and(Protocol::has_ports) {
        return Err(f.error(format!(
            "{side} has numeric ports, which need protocol TCP, UDP or SCTP (named ports may go without a protocol)"
        )));
    }
    if services.is_some() {
        let has_other = selector.is_some()
            || not_selector.is_some()
            || namespace_selector.is_some()
            || service_accounts.is_some()
            || !nets.is_empty()
            || !not_nets.is_empty();
        if has_other {
            return Err(f.error("services cannot be combined with selectors, nets or serviceAccounts"));
        }
        if side == "destination" && !(ports.is_empty() && not_ports.is_empty()) {
            return Err(f.error("destination.services cannot be combined with ports"));
        }
    }

    let selector =
        scope_selector(scope.namespace, selector, not_selector.is_some(), namespace_selector, service_accounts);
    Ok(EntityRule { nets, not_nets, selector, not_selector, ports, not_ports, services })
}

/// semantics §2.2 steps 1–4: the effective positive selector of one rule side.
fn scope_selector(
    policy_namespace: Option<&str>,
    selector: Option<Selector>,
    has_not_selector: bool,
    namespace_selector: Option<NamespaceSelector>,
    service_accounts: Option<(Vec<String>, Option<Selector>)>,
) -> Option<Selector> {
    // Step 1: service accounts, prefixed `pcsa.` and restricted to the names. `serviceAccounts: {}` (no names,
    // no selector) adds nothing: the side matches any address (Felix's `updateprocessors/rules.go`).
    let sa_sel = service_accounts.and_then(|(names, sel)| {
        let sel = sel.map(|s| s.with_label_prefix("pcsa."));
        let by_name = (!names.is_empty())
            .then(|| Selector::from_expr(Expr::In(SERVICE_ACCOUNT_LABEL.into(), names.into_iter().collect())));
        match (sel, by_name) {
            (Some(s), Some(n)) => Some(s.and(n)),
            (s, n) => s.or(n),
        }
    });
    // Step 2: combine with the rule selector.
    let sel = match (sa_sel, selector) {
        (Some(a), Some(b)) => Some(a.and(b)),
        (a, b) => a.or(b),
    };
    // Step 3: the namespace part.
    let has_namespace_selector = namespace_selector.is_some();
    let ns_sel = match namespace_selector {
        Some(NamespaceSelector::Global) => Some(Selector::from_expr(Expr::Has(NAMESPACE_LABEL.into())).negate()),
        Some(NamespaceSelector::Labels(s)) => Some(prefix_namespace_selector(&s)),
        None => policy_namespace.map(|ns| Selector::from_expr(Expr::Eq(NAMESPACE_LABEL.into(), ns.to_string()))),
    };
    // Step 4: the namespace part applies only when the side selects by label at all.
    match ns_sel {
        Some(ns) if sel.is_some() || has_not_selector || has_namespace_selector => Some(match sel {
            Some(s) => ns.and(s),
            None => ns,
        }),
        _ => sel,
    }
}

/// A namespace selector rewritten to match endpoints by their inherited namespace labels: every label gets
/// `pcns.` and `all()` means "any namespaced entity" (semantics §2.2 step 3, §5.5).
pub(crate) fn prefix_namespace_selector(s: &Selector) -> Selector {
    s.with_label_prefix("pcns.").replace_all(&Expr::Has(NAMESPACE_LABEL.into()))
}

/// Calico's label carrying an endpoint's namespace.
pub const NAMESPACE_LABEL: &str = "projectcalico.org/namespace";
/// Calico's label carrying a pod's service account.
pub const SERVICE_ACCOUNT_LABEL: &str = "projectcalico.org/serviceaccount";
/// Calico's label marking Kubernetes pods.
pub const ORCHESTRATOR_LABEL: &str = "projectcalico.org/orchestrator";

enum NamespaceSelector {
    Global,
    Labels(Selector),
}

fn parse_namespace_selector(f: Field<'_>) -> Result<NamespaceSelector, LoadError> {
    let s = parse_selector(f, true)?;
    if s.uses_global() {
        if *s.expr() == Expr::Global {
            return Ok(NamespaceSelector::Global);
        }
        return Err(f.error("global() must be the whole namespaceSelector"));
    }
    Ok(NamespaceSelector::Labels(s))
}

/// Parses a selector field; `global()` is only legal where `allow_global` (namespaceSelector).
pub(crate) fn parse_selector(f: Field<'_>, allow_global: bool) -> Result<Selector, LoadError> {
    let text = f.str()?;
    let sel = Selector::parse(text).map_err(|e| {
        // A long selector (or token) is cut around the error, not echoed whole.
        let shown = crate::selector::excerpt(text, e.column);
        let message: String = match e.message.char_indices().nth(300) {
            Some((cut, _)) => format!("{}…", &e.message[..cut]),
            None => e.message.clone(),
        };
        let mut err = f.error(format!("bad selector \"{shown}\": column {}: {message}", e.column));
        // Point at the character in the file: the scalar's start, past an opening quote.
        if !text.contains('\n') {
            err.col += e.column.saturating_sub(1) + usize::from(f.is_quoted());
        }
        err
    })?;
    if !allow_global && sel.uses_global() {
        let shown = crate::selector::excerpt(text, 1);
        return Err(f.error(format!("bad selector \"{shown}\": global() is only allowed as a whole namespaceSelector")));
    }
    Ok(sel)
}

pub(crate) fn parse_nets(f: Field<'_>) -> Result<Vec<IpNet>, LoadError> {
    f.each(parse_net)
}

pub(crate) fn parse_net(f: Field<'_>) -> Result<IpNet, LoadError> {
    let text = f.str()?;
    text.parse::<IpNet>().map_err(|e| f.error(e.to_string()))
}

fn parse_ports(f: Field<'_>) -> Result<Vec<Port>, LoadError> {
    f.each(parse_port)
}

/// A port entry: a number, `"lo:hi"`, or a name (semantics §3 `ports`).
pub(crate) fn parse_port(f: Field<'_>) -> Result<Port, LoadError> {
    let text = f.str()?;
    if let Ok(p) = text.parse::<u16>() {
        return Ok(Port::Range(p, p));
    }
    if let Some((lo, hi)) = text.split_once(':') {
        return match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
            (Ok(lo), Ok(hi)) if lo <= hi => Ok(Port::Range(lo, hi)),
            _ => Err(f.error(format!("bad port range '{text}' (expected \"low:high\" with low <= high <= 65535)"))),
        };
    }
    if text.chars().all(|c| c.is_ascii_digit()) {
        return Err(f.error(format!("port '{text}' is out of range (0-65535)")));
    }
    if text.starts_with('-') && text[1..].chars().all(|c| c.is_ascii_digit()) {
        return Err(f.error(format!("port '{text}' is negative (ports are 0-65535)")));
    }
    // A port name (IANA service name style, as Kubernetes and Calico validate it) has a letter in it and
    // neither starts nor ends with a dash.
    if !text.chars().any(|c| c.is_ascii_alphabetic()) || text.starts_with('-') || text.ends_with('-') {
        return Err(
            f.error(format!("bad port '{text}' (expected a number, \"low:high\" or a port name with a letter in it)"))
        );
    }
    let valid_name = !text.is_empty()
        && text.len() <= 128
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' || c == '/');
    if !valid_name {
        return Err(f.error(format!("bad port '{text}' (expected a number, \"low:high\" or a port name)")));
    }
    Ok(Port::Named(text.to_string()))
}

fn validate_rule(rule: &Rule, f: Field<'_>) -> Result<(), LoadError> {
    let is_icmp_proto = |p: Option<Protocol>| matches!(p, Some(Protocol::ICMP) | Some(Protocol::ICMPV6));
    if (rule.icmp.is_some() || rule.not_icmp.is_some()) && !is_icmp_proto(rule.protocol) {
        return Err(f.error("icmp/notICMP need protocol ICMP or ICMPv6"));
    }
    if let (Some(v), Some(p)) = (rule.ip_version, rule.protocol) {
        let clash = (v == IpFamily::V4 && p == Protocol::ICMPV6) || (v == IpFamily::V6 && p == Protocol::ICMP);
        if clash {
            return Err(f.error(format!("ipVersion conflicts with protocol {p}")));
        }
    }
    // Validation forbids mixing families across a rule's CIDR fields or against ipVersion (semantics §3).
    let mut families = rule
        .source
        .nets
        .iter()
        .chain(&rule.source.not_nets)
        .chain(&rule.destination.nets)
        .chain(&rule.destination.not_nets)
        .map(IpNet::family);
    if let Some(first) = families.next() {
        if families.any(|fam| fam != first) {
            return Err(f.error("a rule's nets and notNets must all be of one IP family"));
        }
        if rule.ip_version.is_some_and(|v| v != first) {
            return Err(f.error("the rule's nets are not of its ipVersion"));
        }
    }
    if rule.action != Action::Allow {
        // http criteria only with Allow (validation); ignored by the dataplane in any case.
        let has_http = f.with("http", |h| Ok(h.is_some()))?;
        if has_http {
            return Err(f.error("http criteria are only allowed on Allow rules"));
        }
    }
    Ok(())
}
