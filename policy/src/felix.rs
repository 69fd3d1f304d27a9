//! Felix's configuration as calxdp reads it: the settings that change verdicts, each as Felix parses and
//! validates it, from the node file's `config:` and from `FelixConfiguration` resources.
//!
//! Felix merges its sources per parameter: a parameter takes its value from the highest source that sets
//! it, and a value is never merged with a lower one (lists and maps are replaced whole). calxdp's sources,
//! lowest first: Felix's defaults, the node file's `config:`, `FelixConfiguration/default`,
//! `FelixConfiguration/node.<nodename>` (Felix's `config_params.go` source order, with the node file in the
//! place of the environment's defaults). A [`FelixSettings`] is what one source sets; [`FelixConfig`] the
//! merged result.

use std::time::Duration;

use crate::conntrack::Timeouts;
use crate::net::IpNet;
use crate::resource::rule::Protocol;
use crate::yaml::{Field, LoadError};

/// `DefaultEndpointToHostAction` (semantics §7.6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EndpointToHostAction {
    Drop,
    /// Hand the packet to the host's own INPUT rules; calxdp delivers it (FORMAT.md).
    Return,
    Accept,
}

/// What Felix's filter table does with a denied packet (`IptablesFilterDenyAction` /
/// `NftablesFilterDenyAction`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DenyAction {
    Drop,
    /// The kernel's REJECT with its default answer: ICMP (v6) port unreachable, for TCP too.
    Reject,
}

/// What Felix's chains do with an allowed packet (`…FilterAllowAction`, `…MangleAllowAction`). RETURN hands
/// the packet back to the kernel chain that jumped to Felix's: the host's own rules and the chain policy
/// decide. calxdp models no host rules (FORMAT.md: the host's own firewall accepts), so both allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AllowAction {
    Accept,
    Return,
}

/// `NftablesMode`: which of the iptables and nftables action settings Felix uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NftablesMode {
    Enabled,
    Disabled,
    /// Follows kube-proxy's mode; calxdp assumes kube-proxy in iptables mode.
    Auto,
}

/// One failsafe entry (semantics §7.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failsafe {
    pub protocol: Protocol,
    pub port: u16,
    /// For inbound entries the source must be inside; for outbound the destination.
    pub net: Option<IpNet>,
}

impl Failsafe {
    /// The entry of `list` matching the packet's protocol and `port`, with `remote` inside its CIDR if it
    /// has one (semantics §7.5). Packets without ports never match.
    pub fn find<'a>(
        list: &'a [Failsafe],
        pkt: &crate::packet::PacketHeader,
        port: u16,
        remote: std::net::IpAddr,
    ) -> Option<&'a Failsafe> {
        if !pkt.has_ports() {
            return None;
        }
        list.iter().find(|f| f.protocol == pkt.protocol && f.port == port && f.net.is_none_or(|n| n.contains(remote)))
    }

    fn list(entries: &[(&str, u16)]) -> Vec<Failsafe> {
        entries
            .iter()
            .map(|(p, port)| Failsafe { protocol: Protocol::parse(p).unwrap_or(Protocol::TCP), port: *port, net: None })
            .collect()
    }
}

/// A `LogActionRateLimit` Felix would refuse (the text as given).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not a rate Felix accepts: N/second, N/minute, N/hour or N/day with N from 1 to 9999 (the unit \
     spelled out)"
)]
pub struct BadLogRate(pub String);

/// `LogActionRateLimit`: `N/second|minute|hour|day`, N from 1 to 9999 (Felix's `LogActionRateRegexp`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct LogRate {
    pub count: u32,
    pub per: Duration,
}

impl LogRate {
    /// Parses Felix's form; the error says what is wrong.
    pub fn parse(text: &str) -> Result<LogRate, BadLogRate> {
        let bad = || BadLogRate(text.to_string());
        let (n, unit) = text.split_once('/').ok_or_else(bad)?;
        let digits_ok = !n.is_empty() && n.len() <= 4 && !n.starts_with('0') && n.bytes().all(|b| b.is_ascii_digit());
        if !digits_ok {
            return Err(bad());
        }
        let count: u32 = n.parse().map_err(|_| bad())?;
        let per = match unit {
            "second" => Duration::from_secs(1),
            "minute" => Duration::from_secs(60),
            "hour" => Duration::from_secs(3_600),
            "day" => Duration::from_secs(86_400),
            _ => return Err(bad()),
        };
        Ok(LogRate { count, per })
    }

    /// Nanoseconds between two lines at this rate.
    pub fn interval_nanos(self) -> u64 {
        (self.per.as_nanos() / u128::from(self.count.max(1))) as u64
    }
}

/// Felix's form, `N/unit`, as iptables' `--limit` takes it.
impl std::fmt::Display for LogRate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            1 => "second",
            60 => "minute",
            3_600 => "hour",
            _ => "day",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

/// One element of `InterfaceExclude`: an interface name, or a regular expression between slashes
/// (unanchored, as Felix compiles it).
#[derive(Clone, Debug)]
pub struct InterfaceMatch {
    text: String,
    regex: Option<regex::Regex>,
}

impl PartialEq for InterfaceMatch {
    fn eq(&self, other: &InterfaceMatch) -> bool {
        self.text == other.text
    }
}

impl InterfaceMatch {
    /// Whether interface `name` is excluded by this element.
    /// The entry as written (`eth0`, `/^veth/`).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, name: &str) -> bool {
        match &self.regex {
            Some(r) => r.is_match(name),
            None => self.text == name,
        }
    }

    /// Felix's `RegexpPatternListParam`: comma-separated names (`[a-zA-Z0-9_-]{1,15}`) or `/regex/` without
    /// whitespace. The error is a bare sentence: the caller puts it under its own position (the YAML field's
    /// line), so a type would only be formatted at once.
    pub fn parse_list(text: &str) -> Result<Vec<InterfaceMatch>, String> {
        text.split(',')
            .map(|item| {
                if item.len() >= 2 && item.starts_with('/') && item.ends_with('/') {
                    let inner = &item[1..item.len() - 1];
                    if inner.is_empty() || inner.chars().any(char::is_whitespace) {
                        return Err(format!("'{item}' is not a /regex/ Felix accepts (no whitespace, not empty)"));
                    }
                    let regex =
                        regex::Regex::new(inner).map_err(|e| format!("'{item}' is not a regular expression: {e}"))?;
                    return Ok(InterfaceMatch { text: item.to_string(), regex: Some(regex) });
                }
                let name_ok = (1..=15).contains(&item.len())
                    && item.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !name_ok {
                    return Err(format!(
                        "'{item}' is neither an interface name (1-15 of a-z A-Z 0-9 _ -) nor a /regex/; Felix would \
                         ignore the whole list"
                    ));
                }
                Ok(InterfaceMatch { text: item.to_string(), regex: None })
            })
            .collect()
    }
}

/// The Felix configuration that changes verdicts (semantics §10), with Felix's defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct FelixConfig {
    pub default_endpoint_to_host_action: EndpointToHostAction,
    pub failsafe_inbound: Vec<Failsafe>,
    pub failsafe_outbound: Vec<Failsafe>,
    pub disable_conntrack_invalid_check: bool,
    pub allow_vxlan_from_workloads: bool,
    pub allow_ipip_from_workloads: bool,
    pub vxlan_port: u16,
    pub log_prefix: String,
    /// `LogActionRateLimit`: each Log rule's own limit (`-m limit` on its LOG rule); `None` for no limit.
    pub log_rate_limit: Option<LogRate>,
    /// `LogActionRateLimitBurst` (Felix's default 5; 0 means iptables' default, also 5).
    pub log_rate_burst: u32,
    /// Conntrack entries the node holds in all (Felix's `BPFMapSizeConntrack`; split evenly between the
    /// workers, each of which owns its flows).
    pub conntrack_capacity: usize,
    /// Conntrack timeouts (Felix's `BPFConntrackTimeouts`, with the kernel's finer states as defaults).
    pub conntrack_timeouts: Timeouts,
    /// `InterfaceExclude`: interfaces Felix never sees, so no host endpoint binds to them.
    pub interface_exclude: Vec<InterfaceMatch>,
    pub iptables_filter_deny_action: DenyAction,
    pub nftables_filter_deny_action: DenyAction,
    pub iptables_filter_allow_action: AllowAction,
    pub iptables_mangle_allow_action: AllowAction,
    pub nftables_filter_allow_action: AllowAction,
    pub nftables_mangle_allow_action: AllowAction,
    pub nftables_mode: NftablesMode,
}

/// Felix's default `BPFMapSizeConntrack`.
pub const DEFAULT_CONNTRACK_CAPACITY: usize = 512_000;

impl Default for FelixConfig {
    fn default() -> FelixConfig {
        FelixConfig {
            default_endpoint_to_host_action: EndpointToHostAction::Drop,
            failsafe_inbound: Failsafe::list(&[
                ("tcp", 22),
                ("udp", 68),
                ("tcp", 179),
                ("tcp", 2379),
                ("tcp", 2380),
                ("tcp", 5473),
                ("tcp", 6443),
                ("tcp", 6666),
                ("tcp", 6667),
            ]),
            failsafe_outbound: Failsafe::list(&[
                ("udp", 53),
                ("udp", 67),
                ("tcp", 179),
                ("tcp", 2379),
                ("tcp", 2380),
                ("tcp", 5473),
                ("tcp", 6443),
                ("tcp", 6666),
                ("tcp", 6667),
            ]),
            disable_conntrack_invalid_check: false,
            allow_vxlan_from_workloads: false,
            allow_ipip_from_workloads: false,
            vxlan_port: 4789,
            log_prefix: "calico-packet".into(),
            log_rate_limit: None,
            log_rate_burst: 5,
            conntrack_capacity: DEFAULT_CONNTRACK_CAPACITY,
            conntrack_timeouts: Timeouts::default(),
            interface_exclude: vec![InterfaceMatch { text: "kube-ipvs0".into(), regex: None }],
            iptables_filter_deny_action: DenyAction::Drop,
            nftables_filter_deny_action: DenyAction::Drop,
            iptables_filter_allow_action: AllowAction::Accept,
            iptables_mangle_allow_action: AllowAction::Accept,
            nftables_filter_allow_action: AllowAction::Accept,
            nftables_mangle_allow_action: AllowAction::Accept,
            nftables_mode: NftablesMode::Auto,
        }
    }
}

impl FelixConfig {
    /// Whether Felix runs its nftables dataplane (`Config.NFTablesEnabled`); `Auto` follows kube-proxy,
    /// which calxdp takes to be in iptables mode.
    pub fn nftables(&self) -> bool {
        self.nftables_mode == NftablesMode::Enabled
    }

    /// The deny action of the filter table in force (`Config.FilterDenyAction()`).
    pub fn filter_deny_action(&self) -> DenyAction {
        if self.nftables() {
            self.nftables_filter_deny_action
        } else {
            self.iptables_filter_deny_action
        }
    }

    /// The Log rules' burst: 0 is the default of iptables' limit match and of nftables' limit, 5.
    pub fn log_burst(&self) -> u32 {
        if self.log_rate_burst == 0 {
            5
        } else {
            self.log_rate_burst
        }
    }

    /// How many bytes of `"<prefix>: "` the kernel logs: iptables' LOG target keeps 29 (its 30-byte
    /// prefix field), nftables' log statement 127.
    pub fn log_prefix_limit(&self) -> usize {
        if self.nftables() {
            127
        } else {
            29
        }
    }

    /// Whether `InterfaceExclude` hides interface `name` from Felix.
    pub fn excludes_interface(&self, name: &str) -> bool {
        self.interface_exclude.iter().any(|m| m.matches(name))
    }

    /// Puts what `s` sets over this configuration, parameter by parameter.
    pub fn apply(&mut self, s: &FelixSettings) {
        fn set<T: Clone>(slot: &mut T, v: &Option<T>) {
            if let Some(v) = v {
                *slot = v.clone();
            }
        }
        set(&mut self.default_endpoint_to_host_action, &s.default_endpoint_to_host_action);
        set(&mut self.failsafe_inbound, &s.failsafe_inbound);
        set(&mut self.failsafe_outbound, &s.failsafe_outbound);
        set(&mut self.disable_conntrack_invalid_check, &s.disable_conntrack_invalid_check);
        set(&mut self.allow_vxlan_from_workloads, &s.allow_vxlan_from_workloads);
        set(&mut self.allow_ipip_from_workloads, &s.allow_ipip_from_workloads);
        set(&mut self.vxlan_port, &s.vxlan_port);
        set(&mut self.log_prefix, &s.log_prefix);
        if s.log_rate_limit.is_some() {
            self.log_rate_limit = s.log_rate_limit;
        }
        set(&mut self.log_rate_burst, &s.log_rate_burst);
        set(&mut self.conntrack_capacity, &s.conntrack_capacity);
        set(&mut self.conntrack_timeouts, &s.conntrack_timeouts);
        set(&mut self.interface_exclude, &s.interface_exclude);
        set(&mut self.iptables_filter_deny_action, &s.iptables_filter_deny_action);
        set(&mut self.nftables_filter_deny_action, &s.nftables_filter_deny_action);
        set(&mut self.iptables_filter_allow_action, &s.iptables_filter_allow_action);
        set(&mut self.iptables_mangle_allow_action, &s.iptables_mangle_allow_action);
        set(&mut self.nftables_filter_allow_action, &s.nftables_filter_allow_action);
        set(&mut self.nftables_mangle_allow_action, &s.nftables_mangle_allow_action);
        set(&mut self.nftables_mode, &s.nftables_mode);
    }
}

/// What one configuration source sets: `None` for a parameter it leaves to lower sources.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FelixSettings {
    pub default_endpoint_to_host_action: Option<EndpointToHostAction>,
    pub failsafe_inbound: Option<Vec<Failsafe>>,
    pub failsafe_outbound: Option<Vec<Failsafe>>,
    pub disable_conntrack_invalid_check: Option<bool>,
    pub allow_vxlan_from_workloads: Option<bool>,
    pub allow_ipip_from_workloads: Option<bool>,
    pub vxlan_port: Option<u16>,
    pub log_prefix: Option<String>,
    pub log_rate_limit: Option<LogRate>,
    pub log_rate_burst: Option<u32>,
    pub conntrack_capacity: Option<usize>,
    pub conntrack_timeouts: Option<Timeouts>,
    pub interface_exclude: Option<Vec<InterfaceMatch>>,
    pub iptables_filter_deny_action: Option<DenyAction>,
    pub nftables_filter_deny_action: Option<DenyAction>,
    pub iptables_filter_allow_action: Option<AllowAction>,
    pub iptables_mangle_allow_action: Option<AllowAction>,
    pub nftables_filter_allow_action: Option<AllowAction>,
    pub nftables_mangle_allow_action: Option<AllowAction>,
    pub nftables_mode: Option<NftablesMode>,
}

/// The parameters calxdp implements.
const IMPLEMENTED: &[&str] = &[
    "defaultEndpointToHostAction",
    "failsafeInboundHostPorts",
    "failsafeOutboundHostPorts",
    "disableConntrackInvalidCheck",
    "allowVXLANPacketsFromWorkloads",
    "allowIPIPPacketsFromWorkloads",
    "vxlanPort",
    "logPrefix",
    "logActionRateLimit",
    "logActionRateLimitBurst",
    "bpfMapSizeConntrack",
    "bpfConntrackTimeouts",
    "interfaceExclude",
    "iptablesFilterDenyAction",
    "nftablesFilterDenyAction",
    "iptablesFilterAllowAction",
    "iptablesMangleAllowAction",
    "nftablesFilterAllowAction",
    "nftablesMangleAllowAction",
    "nftablesMode",
];

/// Parameters calxdp accepts without acting on them: they do not change a verdict of calxdp's (logging,
/// metrics, health, routing, encapsulation set-up, Felix's own tuning, the eBPF dataplane's knobs).
const INERT: &[&str] = &[
    "useInternalDataplaneDriver",
    "dataplaneDriver",
    "dataplaneWatchdogTimeout",
    "routeRefreshInterval",
    "interfaceRefreshInterval",
    "iptablesRefreshInterval",
    "iptablesPostWriteCheckInterval",
    "iptablesLockProbeInterval",
    "featureDetectOverride",
    "featureGates",
    "ipsetsRefreshInterval",
    "maxIpsetSize",
    "iptablesBackend",
    "xdpRefreshInterval",
    "netlinkTimeout",
    "metadataAddr",
    "metadataPort",
    "openstackRegion",
    "interfacePrefix",
    "chainInsertMode",
    "logFilePath",
    "logSeverityFile",
    "logSeverityScreen",
    "logSeveritySys",
    "logDebugFilenameRegex",
    "ipipEnabled",
    "ipipMTU",
    "vxlanEnabled",
    "vxlanMTU",
    "vxlanMTUV6",
    "vxlanVNI",
    "reportingInterval",
    "reportingTTL",
    "endpointReportingEnabled",
    "endpointReportingDelay",
    "endpointStatusPathPrefix",
    "iptablesMarkMask",
    "healthEnabled",
    "healthHost",
    "healthPort",
    "healthTimeoutOverrides",
    "prometheusMetricsEnabled",
    "prometheusMetricsHost",
    "prometheusMetricsPort",
    "prometheusGoMetricsEnabled",
    "prometheusProcessMetricsEnabled",
    "prometheusWireGuardMetricsEnabled",
    "prometheusMetricsCAFile",
    "prometheusMetricsCertFile",
    "prometheusMetricsKeyFile",
    "prometheusMetricsClientAuth",
    "kubeNodePortRanges",
    "policySyncPathPrefix",
    "usageReportingEnabled",
    "usageReportingInitialDelay",
    "usageReportingInterval",
    "natPortRange",
    "natOutgoingAddress",
    "natOutgoingExclusions",
    "deviceRouteSourceAddress",
    "deviceRouteSourceAddressIPv6",
    "deviceRouteProtocol",
    "removeExternalRoutes",
    "programClusterRoutes",
    "externalNodesList",
    "debugMemoryProfilePath",
    "debugDisableLogDropping",
    "debugSimulateCalcGraphHangAfter",
    "debugSimulateDataplaneHangAfter",
    "debugSimulateDataplaneApplyDelay",
    "debugHost",
    "debugPort",
    "iptablesNATOutgoingInterfaceFilter",
    "sidecarAccelerationEnabled",
    "xdpEnabled",
    "genericXDPEnabled",
    "nftablesFlowTableOffload",
    "nftablesFlowTableDataIfacePattern",
    "nftablesRefreshInterval",
    "nftablesMarkMask",
    "bpfOverlayHostSourceIP",
    "bpfDisableUnprivileged",
    "bpfJITHardening",
    "bpfLogLevel",
    "bpfConntrackLogLevel",
    "bpfConntrackMode",
    "bpfIPFragTimeout",
    "bpfLogFilters",
    "bpfCTLBLogFilter",
    "bpfDataIfacePattern",
    "bpfL3IfacePattern",
    "bpfConnectTimeLoadBalancingEnabled",
    "bpfConnectTimeLoadBalancing",
    "bpfHostNetworkedNATWithoutCTLB",
    "bpfExternalServiceMode",
    "bpfDSROptoutCIDRs",
    "bpfExtToServiceConnmark",
    "bpfKubeProxyIptablesCleanupEnabled",
    "bpfKubeProxyMinSyncPeriod",
    "bpfKubeProxyHealthzPort",
    "bpfPSNATPorts",
    "bpfMapSizeNATFrontend",
    "bpfMapSizeNATBackend",
    "bpfMapSizeNATAffinity",
    "bpfMapSizeRoute",
    "bpfMapSizePerCpuConntrack",
    "bpfMapSizeConntrackScaling",
    "bpfMapSizeConntrackCleanupQueue",
    "bpfMapSizeIPSets",
    "bpfMapSizeIfState",
    "bpfHostConntrackBypass",
    "bpfIPFragmentReassemblyEnabled",
    "bpfEnforceRPF",
    "bpfPolicyDebugEnabled",
    "bpfForceTrackPacketsFromIfaces",
    "bpfDisableGROForIfaces",
    "bpfExcludeCIDRsFromNAT",
    "bpfExportBufferSizeMB",
    "bpfRedirectToPeer",
    "bpfAttachType",
    "bpfProfiling",
    "bpfMaglevMaxEndpointsPerService",
    "bpfMaglevMaxServices",
    "istioAmbientMode",
    "istioDSCPMark",
    "cgroupV2Path",
    "flowLogsPolicyEvaluationMode",
    "flowLogsFlushInterval",
    "flowLogsCollectorDebugTrace",
    "flowLogsGoldmaneServer",
    "flowLogsLocalReporter",
    "routeSource",
    "routeTableRanges",
    "routeTableRange",
    "routeSyncDisabled",
    "ipv4NormalRoutePriority",
    "ipv4ElevatedRoutePriority",
    "ipv6NormalRoutePriority",
    "ipv6ElevatedRoutePriority",
    "liveMigrationRouteConvergenceTime",
    "wireguardEnabled",
    "wireguardEnabledV6",
    "wireguardThreadingEnabled",
    "wireguardListeningPort",
    "wireguardListeningPortV6",
    "wireguardRoutingRulePriority",
    "wireguardInterfaceName",
    "wireguardInterfaceNameV6",
    "wireguardMTU",
    "wireguardMTUV6",
    "wireguardHostEncryptionEnabled",
    "wireguardKeepAlive",
    "awsSrcDstCheck",
    "serviceLoopPrevention",
    "workloadSourceSpoofing",
    "mtuIfacePattern",
    "floatingIPs",
    "localSubnetL2Reachability",
    "localSubnetL2ReachabilityRefreshInterval",
    "windowsManageFirewallRules",
    "goGCThreshold",
    "goMemoryLimitMB",
    "goMaxProcs",
    "requireMTUFile",
];

/// Parameters that would change verdicts in a way calxdp does not implement: accepted only at the value
/// that changes nothing, refused otherwise with the reason.
const REFUSED: &[&str] = &["ipv6Support", "bpfEnabled", "ipForwarding", "nodeSelector"];

/// Every spec key of a FelixConfiguration (or the node file's `config:`) calxdp knows.
pub fn known_keys() -> Vec<&'static str> {
    IMPLEMENTED.iter().chain(INERT).chain(REFUSED).copied().collect()
}

/// Reads a Felix configuration mapping (a FelixConfiguration's `spec`, or the node file's `config:`): the
/// parameters it sets, validated as Felix's CRD and its parsers validate them.
pub fn parse_settings(f: Field<'_>) -> Result<FelixSettings, LoadError> {
    f.only_keys(&known_keys())?;
    refuse_unenforceable(f)?;
    let default_endpoint_to_host_action = f.with("defaultEndpointToHostAction", |a| {
        a.map(|a| {
            one_of(a, &["Drop", "Return", "Accept"])
                .map(|i| [EndpointToHostAction::Drop, EndpointToHostAction::Return, EndpointToHostAction::Accept][i])
        })
        .transpose()
    })?;
    let failsafe_inbound = f.with("failsafeInboundHostPorts", |l| l.map(parse_failsafes).transpose())?;
    let failsafe_outbound = f.with("failsafeOutboundHostPorts", |l| l.map(parse_failsafes).transpose())?;
    let flag = |key: &str| f.with(key, |b| b.map(|b| b.bool()).transpose());
    let disable_conntrack_invalid_check = flag("disableConntrackInvalidCheck")?;
    let allow_vxlan_from_workloads = flag("allowVXLANPacketsFromWorkloads")?;
    let allow_ipip_from_workloads = flag("allowIPIPPacketsFromWorkloads")?;
    let vxlan_port = f.with("vxlanPort", |p| p.map(|p| p.uint(65535).map(|v| v as u16)).transpose())?;
    let log_prefix = f.with("logPrefix", |p| {
        p.map(|p| {
            let text = p.string()?;
            // The CRD's pattern: letters, digits and `%: /_-`.
            let ok = text.chars().all(|c| c.is_ascii_alphanumeric() || "%: /_-".contains(c));
            if !ok {
                return Err(p.error(format!(
                    "'{text}' has characters Felix does not accept in a log prefix (only letters, digits and % : / _ - \
                     and spaces)"
                )));
            }
            Ok(text)
        })
        .transpose()
    })?;
    let log_rate_limit = f.with("logActionRateLimit", |p| {
        p.map(|p| LogRate::parse(p.str()?).map_err(|e| p.error(e.to_string()))).transpose()
    })?;
    let log_rate_burst =
        f.with("logActionRateLimitBurst", |p| p.map(|p| p.uint(9999).map(|v| v as u32)).transpose())?;
    let conntrack_capacity = f.with("bpfMapSizeConntrack", |p| {
        p.map(|p| match p.uint(1 << 26)? {
            0 => Err(p.error("bpfMapSizeConntrack must be at least 1")),
            n => Ok(n as usize),
        })
        .transpose()
    })?;
    let conntrack_timeouts = f.with("bpfConntrackTimeouts", |t| t.map(parse_conntrack_timeouts).transpose())?;
    let interface_exclude = f.with("interfaceExclude", |i| {
        i.map(|i| InterfaceMatch::parse_list(i.str()?).map_err(|m| i.error(m))).transpose()
    })?;
    let deny = |key: &str| {
        f.with(key, |a| {
            a.map(|a| one_of(a, &["Drop", "Reject"]).map(|i| [DenyAction::Drop, DenyAction::Reject][i])).transpose()
        })
    };
    let iptables_filter_deny_action = deny("iptablesFilterDenyAction")?;
    let nftables_filter_deny_action = deny("nftablesFilterDenyAction")?;
    let allow = |key: &str| {
        f.with(key, |a| {
            a.map(|a| one_of(a, &["Accept", "Return"]).map(|i| [AllowAction::Accept, AllowAction::Return][i]))
                .transpose()
        })
    };
    let iptables_filter_allow_action = allow("iptablesFilterAllowAction")?;
    let iptables_mangle_allow_action = allow("iptablesMangleAllowAction")?;
    let nftables_filter_allow_action = allow("nftablesFilterAllowAction")?;
    let nftables_mangle_allow_action = allow("nftablesMangleAllowAction")?;
    let nftables_mode = f.with("nftablesMode", |m| {
        m.map(|m| {
            one_of(m, &["Enabled", "Disabled", "Auto"])
                .map(|i| [NftablesMode::Enabled, NftablesMode::Disabled, NftablesMode::Auto][i])
        })
        .transpose()
    })?;
    Ok(FelixSettings {
        default_endpoint_to_host_action,
        failsafe_inbound,
        failsafe_outbound,
        disable_conntrack_invalid_check,
        allow_vxlan_from_workloads,
        allow_ipip_from_workloads,
        vxlan_port,
        log_prefix,
        log_rate_limit,
        log_rate_burst,
        conntrack_capacity,
        conntrack_timeouts,
        interface_exclude,
        iptables_filter_deny_action,
        nftables_filter_deny_action,
        iptables_filter_allow_action,
        iptables_mangle_allow_action,
        nftables_filter_allow_action,
        nftables_mangle_allow_action,
        nftables_mode,
    })
}

/// One of Felix's enumerations, matched without regard to case as Felix's `oneof` parser does; the index
/// of the match.
fn one_of(f: Field<'_>, values: &[&str]) -> Result<usize, LoadError> {
    let text = f.str()?;
    values
        .iter()
        .position(|v| v.eq_ignore_ascii_case(text))
        .ok_or_else(|| f.error(format!("expected {}, found '{text}'", join_or(values))))
}

fn join_or(values: &[&str]) -> String {
    match values {
        [] => String::new(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The parameters whose non-default values calxdp cannot enforce, refused with a sentence naming them.
fn refuse_unenforceable(f: Field<'_>) -> Result<(), LoadError> {
    f.with("ipv6Support", |v| match v {
        Some(v) if !v.bool()? => Err(v.error(
            "with ipv6Support false Felix leaves IPv6 traffic unpoliced; calxdp polices IPv6 as Felix does with it on \
             (remove the field or set it true)",
        )),
        _ => Ok(()),
    })?;
    f.with("bpfEnabled", |v| match v {
        Some(v) if v.bool()? => Err(v.error(
            "bpfEnabled: true selects Felix's eBPF dataplane, which decides some traffic differently; calxdp enforces \
             the verdicts of the iptables/nftables dataplane (remove the field or set it false)",
        )),
        _ => Ok(()),
    })?;
    f.with("ipForwarding", |v| match v {
        Some(v) if !v.str()?.eq_ignore_ascii_case("Enabled") => Err(v.error(
            "ipForwarding other than Enabled stops the node forwarding, which calxdp does not model (remove the field \
             or set it Enabled)",
        )),
        _ => Ok(()),
    })?;
    f.with("nodeSelector", |v| match v {
        Some(v) => Err(v.error(
            "calxdp does not know the node's labels, so it cannot tell whether a selector-scoped FelixConfiguration \
             applies; name it default or node.<nodename> instead",
        )),
        None => Ok(()),
    })
}

/// `BPFConntrackTimeouts` as FelixConfiguration writes it: a map of Felix's keys (v3's lower-camel
/// `tcpSynSent` or Felix's `TCPSynSent`) to Go durations or `Auto` (the default), or the env-var string form
/// `TCPEstablished=1h,UDPTimeout=60s`. A source that sets it replaces the whole map. Felix's keys set the
/// kernel states they stand for: TCPSynSent (SYN_SENT, SYN_RECV), TCPEstablished, TCPFinsSeen (FIN_WAIT,
/// CLOSE_WAIT, LAST_ACK, TIME_WAIT), TCPResetSeen (CLOSE), UDPTimeout (UDP without a reply), ICMPTimeout,
/// GenericTimeout. calxdp adds UDPStreamTimeout (UDP that has seen replies, the kernel's
/// `nf_conntrack_udp_timeout_stream`). CreationGracePeriod has no meaning here and is accepted.
fn parse_conntrack_timeouts(f: Field<'_>) -> Result<Timeouts, LoadError> {
    let pairs: Vec<(String, String)> = match f.str() {
        Ok(text) => text
            .split(',')
            .filter(|p| !p.trim().is_empty())
            .map(|p| match p.split_once('=') {
                Some((k, v)) => Ok((k.trim().to_string(), v.trim().to_string())),
                None => Err(f.error(format!("'{p}' is not Key=duration"))),
            })
            .collect::<Result<_, _>>()?,
        Err(_) => f.string_map()?.into_iter().collect(),
    };
    let mut t = Timeouts::default();
    for (key, value) in pairs {
        if value.eq_ignore_ascii_case("auto") {
            continue;
        }
        let d = parse_go_duration(&value)
            .ok_or_else(|| f.error(format!("{key}: '{value}' is not a duration (e.g. 30s, 10m, 1h30m) or Auto")))?;
        match key.to_ascii_lowercase().as_str() {
            "tcpsynsent" => {
                t.tcp_syn_sent = d;
                t.tcp_syn_recv = d;
            }
            "tcpestablished" => t.tcp_established = d,
            "tcpfinsseen" => {
                t.tcp_fin_wait = d;
                t.tcp_close_wait = d;
                t.tcp_last_ack = d;
                t.tcp_time_wait = d;
            }
            "tcpresetseen" => t.tcp_close = d,
            "udptimeout" => t.udp_unreplied = d,
            "udpstreamtimeout" => t.udp_replied = d,
            "icmptimeout" => t.icmp = d,
            "generictimeout" => t.generic = d,
            "creationgraceperiod" => {}
            _ => {
                return Err(f.error(format!(
                    "unknown conntrack timeout '{key}' (expected TCPSynSent, TCPEstablished, TCPFinsSeen, \
                     TCPResetSeen, UDPTimeout, UDPStreamTimeout, ICMPTimeout, GenericTimeout, CreationGracePeriod)"
                )))
            }
        }
    }
    Ok(t)
}

/// A Go duration as Felix's configuration writes them: `300ms`, `30s`, `10m`, `1h30m`; no sign.
pub fn parse_go_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let value: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest.find(|c: char| c.is_ascii_digit() || c == '.').unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Some(Duration::from_secs_f64(total))
}

/// A failsafe list as FelixConfiguration writes it: `[{protocol, port, net}]`; `[]` disables
/// (semantics §7.5). The env-var string form (`tcp:22,udp:68`, `none`) is accepted too. Felix's failsafe
/// parser takes TCP and UDP only: an SCTP entry makes its configuration invalid and Felix does not start.
fn parse_failsafes(f: Field<'_>) -> Result<Vec<Failsafe>, LoadError> {
    if let Ok(text) = f.str() {
        return parse_failsafe_string(text).map_err(|m| f.error(m));
    }
    f.each(|e| {
        e.only_keys(&["protocol", "port", "net"])?;
        let protocol = e.with("protocol", |p| {
            p.map(|p| match p.str()?.to_ascii_lowercase().as_str() {
                "tcp" => Ok(Protocol::TCP),
                "udp" => Ok(Protocol::UDP),
                other => Err(p.error(format!(
                    "expected TCP or UDP, found '{other}' (Felix's failsafe ports take TCP and UDP only; with \
                     another protocol Felix does not start)"
                ))),
            })
            .transpose()
        })?;
        let port = e.require("port", |p| p.uint(65535).map(|v| v as u16))?;
        let net = e.with("net", |n| n.map(crate::resource::rule::parse_net).transpose())?;
        Ok(Failsafe { protocol: protocol.unwrap_or(Protocol::TCP), port, net })
    })
}

/// Felix's string form of a failsafe list (`tcp:22,udp:68`, `tcp:10.0.0.0/8:22`, `none`). The error is a bare
/// sentence for the caller to place (a YAML field's line, the Felix parameter's name), as
/// [`InterfaceMatch::parse_list`].
pub fn parse_failsafe_string(text: &str) -> Result<Vec<Failsafe>, String> {
    let text = text.trim();
    if text.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    text.split(',')
        .map(|entry| {
            let entry = entry.trim();
            let (proto, rest) = match entry.split_once(':') {
                Some((p, r)) if p.eq_ignore_ascii_case("tcp") || p.eq_ignore_ascii_case("udp") => {
                    (Protocol::parse(p), r)
                }
                _ => (Some(Protocol::TCP), entry),
            };
            let (net, port) = match rest.rsplit_once(':') {
                Some((net, port)) => {
                    let net = net.trim_start_matches('[').trim_end_matches(']');
                    (Some(net.parse::<IpNet>().map_err(|e| e.to_string())?), port)
                }
                None => (None, rest),
            };
            let port = port
                .parse::<u16>()
                .map_err(|_| format!("bad failsafe entry '{entry}' (expected proto:port or proto:cidr:port)"))?;
            Ok(Failsafe { protocol: proto.unwrap_or(Protocol::TCP), port, net })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::yaml::{parse_documents, Origin};

    fn settings(text: &str) -> Result<FelixSettings, LoadError> {
        let origin = Origin::file("c.yaml");
        let docs = parse_documents(text, &origin).unwrap();
        parse_settings(Field::root(&docs[0], &origin))
    }

    #[test]
    fn log_rate_takes_felix_pattern_only() {
        assert_eq!(LogRate::parse("10/second").unwrap().interval_nanos(), 100_000_000);
        assert_eq!(LogRate::parse("9999/day").unwrap().count, 9999);
        for bad in ["10/sec", "10/s", "0/second", "01/second", "10000/second", "ten/second", "10", "/minute"] {
            assert!(LogRate::parse(bad).is_err(), "{bad}");
        }
        let e = settings("logActionRateLimit: 10/s\n").unwrap_err();
        assert_eq!((e.line, e.col, e.field.as_str()), (1, 21, "logActionRateLimit"), "{e}");
    }

    #[test]
    fn interface_exclude_is_names_or_unanchored_regexes() {
        let l = InterfaceMatch::parse_list("kube-ipvs0,/^veth/,/dummy/").unwrap();
        let excluded = |n: &str| l.iter().any(|m| m.matches(n));
        assert!(excluded("kube-ipvs0") && !excluded("kube-ipvs00"));
        assert!(excluded("veth12") && !excluded("xveth"));
        assert!(excluded("mydummy1"), "a regex is unanchored");
        assert!(InterfaceMatch::parse_list("eth0.100").is_err(), "a dot needs a regex");
        assert!(InterfaceMatch::parse_list("/a b/").is_err());
        assert!(InterfaceMatch::parse_list("").is_err());
    }

    #[test]
    fn enumerations_ignore_case_and_sctp_failsafes_are_refused() {
        let s = settings("iptablesFilterDenyAction: reject\nnftablesMode: enabled\n").unwrap();
        assert_eq!(s.iptables_filter_deny_action, Some(DenyAction::Reject));
        assert_eq!(s.nftables_mode, Some(NftablesMode::Enabled));
        assert!(settings("failsafeInboundHostPorts: [{protocol: SCTP, port: 9}]\n").is_err());
        assert!(settings("bpfEnabled: true\n").is_err());
        assert!(settings("bpfEnabled: false\nipv6Support: true\nlogSeverityScreen: Info\n").is_ok());
    }

    #[test]
    fn a_higher_source_replaces_parameters_it_sets_and_keeps_the_rest() {
        let mut c = FelixConfig::default();
        c.apply(&settings("defaultEndpointToHostAction: Accept\nlogActionRateLimit: 5/minute\n").unwrap());
        c.apply(&settings("defaultEndpointToHostAction: Return\nfailsafeInboundHostPorts: []\n").unwrap());
        assert_eq!(c.default_endpoint_to_host_action, EndpointToHostAction::Return);
        assert_eq!(c.log_rate_limit, LogRate::parse("5/minute").ok());
        assert!(c.failsafe_inbound.is_empty());
        assert_eq!(c.failsafe_outbound, FelixConfig::default().failsafe_outbound);
    }
}
