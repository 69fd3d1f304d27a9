//! What a level decided about a packet and why: the answer to "why was this packet dropped?".

use std::fmt;
use std::net::SocketAddr;

use crate::resolve::{Direction, Stage};
use crate::resource::{Action, PolicyId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Drop,
}

/// Where a deciding rule lives: a policy or a profile.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RuleOwner {
    Policy { tier: String, id: PolicyId },
    Profile(String),
}

/// One rule, located exactly: the endpoint and direction whose walk reached it, the stage, and the rule's
/// index in its list.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub stage: Stage,
    pub direction: Direction,
    pub endpoint: String,
    pub owner: RuleOwner,
    pub index: usize,
    pub action: Action,
}

/// What decided a packet's fate (or one chain's part in it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// An Allow or Deny rule.
    Rule(RuleRef),
    /// A tier had policies for the endpoint and none gave a verdict (semantics §4.2).
    EndOfTier {
        stage: Stage,
        direction: Direction,
        endpoint: String,
        tier: String,
    },
    /// Evaluation fell out of the last tier and no profile allowed or denied (semantics §4.2).
    NoProfileMatched {
        direction: Direction,
        endpoint: String,
    },
    /// A failsafe port (semantics §7.5); `inbound` tells which list.
    Failsafe {
        inbound: bool,
        protocol: u8,
        port: u16,
    },
    /// DefaultEndpointToHostAction for pod-to-own-host traffic (semantics §7.6).
    EndpointToHost(crate::node::EndpointToHostAction),
    /// Host to a local pod is never policed (semantics §7.2 (O) step 2).
    HostToLocalWorkload,
    /// An established or related conntrack entry (semantics §8.1).
    Established,
    Related,
    /// A packet conntrack calls INVALID, e.g. a SYN-ACK with no entry (semantics §8.1, §8.3).
    Invalid,
    /// No host endpoint governs the interface: Calico has no opinion (semantics §7 intro).
    NoHostEndpoint,
    /// Forwarded traffic through a host endpoint with no applyOnForward policy (semantics §7.4).
    ForwardDefaultAllow,
    /// An untracked (doNotTrack) Allow skipped the rest of this hook (semantics §7.3).
    UntrackedAllow,
    /// A preDNAT Allow skipped normal host policy (semantics §7.3).
    PreDnatAllow,
    /// Strict reverse-path check on a pod interface (semantics §7.1 (R) 3).
    SourceSpoofed,
    /// VXLAN or IP-in-IP sent by a pod (semantics §7.8).
    EncapFromWorkload,
    /// IPv6 neighbour discovery / MLD from a pod to the host (semantics §7.1 (I) 2a).
    Icmpv6FromWorkload,
    /// Every chain the packet met let it through without a Calico verdict.
    NoCalicoVerdict,
    /// The conntrack table is full and the packet would have created an entry.
    ConntrackFull,
    /// A service with no ready backends: kube-proxy rejects.
    ServiceWithoutEndpoints,
    /// What Linux did with the packet under Felix's ruleset (the kernel oracle level): the table, chain and
    /// rule that decided it.
    Kernel(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Rule(r) => {
                let owner = match &r.owner {
                    RuleOwner::Policy { tier, id } => format!("tier {tier} policy {id}"),
                    RuleOwner::Profile(p) => format!("profile {p}"),
                };
                write!(
                    f,
                    "{} {} rule {} ({}) of {owner}, {} {} policy",
                    r.endpoint,
                    r.direction.name(),
                    r.index,
                    r.action,
                    r.stage.name(),
                    r.direction.name()
                )
            }
            Reason::EndOfTier { stage, direction, endpoint, tier } => {
                write!(
                    f,
                    "end of tier {tier} drop: no {} {} policy of {endpoint} matched",
                    stage.name(),
                    direction.name()
                )
            }
            Reason::NoProfileMatched { direction, endpoint } => {
                write!(f, "no {} policy or profile of {endpoint} allowed it", direction.name())
            }
            Reason::Failsafe { inbound, protocol, port } => {
                let proto = crate::resource::Protocol(*protocol);
                write!(f, "{} failsafe {proto}:{port}", if *inbound { "inbound" } else { "outbound" })
            }
            Reason::EndpointToHost(a) => write!(f, "DefaultEndpointToHostAction={a:?}"),
            Reason::HostToLocalWorkload => f.write_str("host to a local workload is always allowed"),
            Reason::Established => f.write_str("conntrack: established"),
            Reason::Related => f.write_str("conntrack: related"),
            Reason::Invalid => f.write_str("conntrack: invalid"),
            Reason::NoHostEndpoint => f.write_str("no host endpoint on the interface"),
            Reason::ForwardDefaultAllow => {
                f.write_str("forwarded traffic is allowed when no applyOnForward policy applies")
            }
            Reason::UntrackedAllow => f.write_str("allowed untracked by a doNotTrack policy"),
            Reason::PreDnatAllow => f.write_str("allowed by a preDNAT policy"),
            Reason::SourceSpoofed => f.write_str("source address is not the workload's (reverse-path check)"),
            Reason::EncapFromWorkload => f.write_str("VXLAN/IP-in-IP from a workload"),
            Reason::Icmpv6FromWorkload => f.write_str("ICMPv6 neighbour discovery from a workload"),
            Reason::NoCalicoVerdict => f.write_str("no Calico verdict; the host's default accepts"),
            Reason::ConntrackFull => f.write_str("conntrack table full"),
            Reason::ServiceWithoutEndpoints => f.write_str("the service has no endpoints"),
            Reason::Kernel(what) => write!(f, "kernel: {what}"),
        }
    }
}

/// Where an allowed packet leaves: the host stack, a local pod, or an uplink.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Egress {
    Host,
    Workload(String),
    Uplink(String),
}

impl fmt::Display for Egress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Egress::Host => f.write_str("host"),
            Egress::Workload(n) | Egress::Uplink(n) => f.write_str(n),
        }
    }
}

/// A Log rule that fired, or (in a walk, before the rate limits are applied) one the packet reached.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEvent {
    pub rule: RuleRef,
    /// The prefix with its placeholders filled in (semantics §9.1).
    pub prefix: String,
    /// Whether the packet matched the rule. A walk reports every Log rule it passes: Felix puts the
    /// `limit` match first in a LOG rule, so reaching the rule takes a token even when the rule's own
    /// criteria do not match. An outcome's logs are the matched ones within their limits.
    pub matched: bool,
}

/// Everything a level says about one packet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub verdict: Verdict,
    /// Where an allowed packet leaves.
    pub out: Option<Egress>,
    /// The packet's destination after NAT, when NAT changed it.
    pub translated: Option<SocketAddr>,
    /// Whether a conntrack entry exists for the flow after this packet.
    pub tracked: bool,
    pub logs: Vec<LogEvent>,
    /// The decisive reason: the drop's cause, or the last chain that allowed.
    pub reason: Reason,
    /// Every chain's part, in order.
    pub trace: Vec<Reason>,
    /// A dropped packet that Felix's `Reject` deny action answered: an ICMP port unreachable went back to
    /// its sender (within the kernel's ICMP rate limits, and through the host's own policy on the way out).
    pub rejected: bool,
}
