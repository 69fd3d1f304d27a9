//! What decided a packet's fate, in the two forms the dataplane keeps: the nameless [`Decision`] a packet
//! carries through the pipeline (turned into a named `Reason` only when someone asks why, `pipeline::explain`),
//! and the [`DropReason`] counter a drop is filed under.

use calxdp_policy::ids::EndpointRef;
use calxdp_policy::node::EndpointToHostAction;
use calxdp_policy::resolve::{Direction, Stage};

/// A decision without names: which rule (by its index in the program that decided), or which static
/// behaviour. Turned into a [`Reason`] only when someone asks why.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Rule {
        ep: EndpointRef,
        stage: Stage,
        dir: Direction,
        rule: u32,
    },
    EndOfTier {
        ep: EndpointRef,
        stage: Stage,
        dir: Direction,
        tier: u32,
    },
    NoProfile {
        ep: EndpointRef,
        dir: Direction,
    },
    Failsafe {
        inbound: bool,
        protocol: u8,
        port: u16,
    },
    EndpointToHost(EndpointToHostAction),
    HostToLocalWorkload,
    Established,
    Related,
    Invalid,
    NoHostEndpoint,
    ForwardDefaultAllow,
    UntrackedAllow,
    PreDnatAllow,
    SourceSpoofed,
    EncapFromWorkload,
    Icmpv6FromWorkload,
    NoCalicoVerdict,
    ConntrackFull,
    ServiceWithoutEndpoints,
    /// A frame that did not parse.
    Malformed(crate::wire::Malformed),
    /// A frame that is not IP (ARP and friends), which the pipeline does not forward.
    NotIp,
    /// An 802.1Q-tagged frame (VLAN id other than 0): the node has no VLAN subinterface, so Linux drops it
    /// before any hook.
    VlanTagged,
    /// An IPv4 packet with a loose or strict source route option: Linux drops it (`accept_source_route` is
    /// 0 on every interface by default).
    SourceRouted,
}

impl Decision {
    /// The counter a drop with this decision goes to; `None` for the decisions that only ever accept (a
    /// drop carrying one would be a pipeline bug: the commit stage asserts it in debug builds and the
    /// pipeline fuzz target checks it). Exhaustive, so a new decision must say which counter it drops to.
    pub fn drop_reason(&self) -> Option<DropReason> {
        Some(match self {
            Decision::Rule { .. } => DropReason::PolicyDeny,
            Decision::EndOfTier { .. } => DropReason::EndOfTier,
            Decision::NoProfile { .. } => DropReason::NoProfile,
            Decision::EndpointToHost(_) => DropReason::EndpointToHost,
            Decision::Invalid => DropReason::Invalid,
            Decision::SourceSpoofed => DropReason::SourceSpoofed,
            Decision::EncapFromWorkload => DropReason::EncapFromWorkload,
            Decision::ConntrackFull => DropReason::ConntrackFull,
            Decision::ServiceWithoutEndpoints => DropReason::ServiceWithoutEndpoints,
            Decision::Malformed(_) => DropReason::Malformed,
            Decision::NotIp => DropReason::NotIp,
            Decision::VlanTagged => DropReason::VlanTagged,
            Decision::SourceRouted => DropReason::SourceRouted,
            Decision::Failsafe { .. }
            | Decision::HostToLocalWorkload
            | Decision::Established
            | Decision::Related
            | Decision::NoHostEndpoint
            | Decision::ForwardDefaultAllow
            | Decision::UntrackedAllow
            | Decision::PreDnatAllow
            | Decision::Icmpv6FromWorkload
            | Decision::NoCalicoVerdict => return None,
        })
    }
}

/// Why packets were dropped, as counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    PolicyDeny,
    EndOfTier,
    NoProfile,
    EndpointToHost,
    Invalid,
    SourceSpoofed,
    EncapFromWorkload,
    ConntrackFull,
    ServiceWithoutEndpoints,
    Malformed,
    NotIp,
    TtlExceeded,
    VlanTagged,
    SourceRouted,
    /// Fragments: overlapping (the datagram discarded with them), duplicates, impossible lengths, too big
    /// a datagram, no room for another datagram, not complete in time (`crate::reassembly`).
    FragmentOverlap,
    FragmentDuplicate,
    FragmentInvalid,
    FragmentTooBig,
    ReassemblyFull,
    ReassemblyTimeout,
}

impl DropReason {
    pub const ALL: [DropReason; 20] = [
        DropReason::PolicyDeny,
        DropReason::EndOfTier,
        DropReason::NoProfile,
        DropReason::EndpointToHost,
        DropReason::Invalid,
        DropReason::SourceSpoofed,
        DropReason::EncapFromWorkload,
        DropReason::ConntrackFull,
        DropReason::ServiceWithoutEndpoints,
        DropReason::Malformed,
        DropReason::NotIp,
        DropReason::TtlExceeded,
        DropReason::VlanTagged,
        DropReason::SourceRouted,
        DropReason::FragmentOverlap,
        DropReason::FragmentDuplicate,
        DropReason::FragmentInvalid,
        DropReason::FragmentTooBig,
        DropReason::ReassemblyFull,
        DropReason::ReassemblyTimeout,
    ];

    pub fn name(self) -> &'static str {
        match self {
            DropReason::PolicyDeny => "policy_deny",
            DropReason::EndOfTier => "end_of_tier",
            DropReason::NoProfile => "no_profile_matched",
            DropReason::EndpointToHost => "endpoint_to_host_action",
            DropReason::Invalid => "conntrack_invalid",
            DropReason::SourceSpoofed => "source_spoofed",
            DropReason::EncapFromWorkload => "encap_from_workload",
            DropReason::ConntrackFull => "conntrack_full",
            DropReason::ServiceWithoutEndpoints => "service_without_endpoints",
            DropReason::Malformed => "malformed",
            DropReason::NotIp => "not_ip",
            DropReason::TtlExceeded => "ttl_exceeded",
            DropReason::VlanTagged => "vlan_tagged",
            DropReason::SourceRouted => "ipv4_source_route",
            DropReason::FragmentOverlap => "fragment_overlap",
            DropReason::FragmentDuplicate => "fragment_duplicate",
            DropReason::FragmentInvalid => "fragment_invalid",
            DropReason::FragmentTooBig => "fragment_too_big",
            DropReason::ReassemblyFull => "reassembly_full",
            DropReason::ReassemblyTimeout => "reassembly_timeout",
        }
    }

    /// The counter of fragments dropped for `d`.
    pub fn of_fragment(d: crate::reassembly::FragmentDrop) -> DropReason {
        use crate::reassembly::FragmentDrop as F;
        match d {
            F::Overlap => DropReason::FragmentOverlap,
            F::Duplicate => DropReason::FragmentDuplicate,
            F::Invalid => DropReason::FragmentInvalid,
            F::TooBig => DropReason::FragmentTooBig,
            F::NoRoom => DropReason::ReassemblyFull,
            F::Timeout => DropReason::ReassemblyTimeout,
        }
    }
}
